"""The ``mcpwall`` command line: the group, and where each command lives.

One module per command group: ``serve``, ``wrap``, ``policy`` (``check``,
``explain``, ``schema``, ``hash-token``), ``audit``, ``approvals``,
``kill_switch``, ``status``, ``scan`` and ``demo``; ``operator_client`` is their side of the
operator API. A command's module is imported when the command runs (or when
``--help`` lists it), so ``mcpwall check`` and ``mcpwall audit`` never load
trio or the gateway.

Exit codes (all commands): 0 success; 1 the command ran and found a problem
(a failed check, tampering, a session that ended because its upstream died);
2 usage error (bad option, unreadable or invalid config or policy file).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Final

import click

from firewall import __version__
from firewall.config import Config, ConfigError, default_config, load_config

CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Command name -> (module, attribute): imported on first use.
_COMMANDS: Final = {
    "approvals": ("firewall.cli.approvals", "approvals"),
    "audit": ("firewall.cli.audit", "audit"),
    "check": ("firewall.cli.policy", "check"),
    "demo": ("firewall.cli.demo", "demo"),
    "convert": ("firewall.cli.policy", "convert"),
    "explain": ("firewall.cli.policy", "explain"),
    "hash-token": ("firewall.cli.policy", "hash_token_command"),
    "kill-switch": ("firewall.cli.kill_switch", "kill_switch"),
    "schema": ("firewall.cli.policy", "schema"),
    "scan": ("firewall.cli.scan", "scan"),
    "serve": ("firewall.cli.serve", "serve"),
    "status": ("firewall.cli.status", "status"),
    "wrap": ("firewall.cli.wrap", "wrap"),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported when used, not when the group is."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            module, name = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), name)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="mcpwall")
def main() -> None:
    """mcpwall: a firewall for the Model Context Protocol.

    \b
    Quick start:
      mcpwall serve                      # the demo fleet on http://127.0.0.1:8765
      mcpwall wrap -- npx -y @modelcontextprotocol/server-everything
      mcpwall check mcpwall.toml
    \b
    Exit codes: 0 success; 1 the command ran and found a problem; 2 usage
    error (each command's --help says more).
    """


def load_or_default(path: Path | None) -> Config:
    """The config at PATH (the built-in demo config without one); usage error if bad."""
    try:
        return default_config() if path is None else load_config(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


__all__ = ["CONTEXT", "load_or_default", "main"]
