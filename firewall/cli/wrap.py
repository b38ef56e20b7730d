"""``mcpwall wrap``: run a stdio MCP server behind mcpwall, speaking stdio ourselves.

Exit codes: 0 the client closed the session; the server's code (or 1) if the
server died first; 127 the server could not be started; 2 usage error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import msgspec
import trio

from firewall.cli import CONTEXT, load_or_default
from firewall.config import Config, ConfigError, StdioServer
from firewall.gateway.approvals.desk import ApprovalError
from firewall.gateway.runtime import run_wrap_session
from firewall.log import configure
from firewall.policy.decision import Caller


@click.command("wrap", context_settings={**CONTEXT, "ignore_unknown_options": True,
                                        "allow_interspersed_args": False},
               short_help="Run a stdio MCP server behind mcpwall.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Gateway config (TOML): its policy, audit and log settings apply.")
@click.option("--policy", "policy_files", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Policy file (repeatable); overrides the config's policy files.")
@click.option("--principal", default=None, help="Who the client is (default: $USER).")
@click.option("--grant", default=None, help="Grant id for rate limits (default: wrap:PRINCIPAL).")
@click.option("--group", "groups", multiple=True, help="Group the principal belongs to.")
@click.option("--server-name", default=None,
              help="Name of the wrapped server in policy and audit (default: command name).")
@click.option("--dry-run", is_flag=True, help="Decide and record, enforce nothing.")
@click.option("--audit-db", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Audit database (default: the config's [audit] path with --config, "
                   "else no audit trail).")
@click.option("--approvals-db", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Where calls held for approval wait (default: the config's [approvals] "
                   "path with --config, else held calls are refused at once).")
@click.option("--kill-switch-db", type=click.Path(path_type=Path, dir_okay=False),
              default=None,
              help="Kill switch file to obey (default: the config's [kill_switch] path with "
                   "--config, else none).")
@click.option("--max-line-bytes", type=int, default=None,
              help="Refuse messages longer than this (default 16 MiB).")
@click.option("--terminate-grace", type=float, default=None,
              help="Seconds the server gets to exit after stdin closes, and again after "
                   "SIGTERM, before SIGKILL (default 5).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def wrap(
    config_path: Path | None,
    policy_files: tuple[Path, ...],
    principal: str | None,
    grant: str | None,
    groups: tuple[str, ...],
    server_name: str | None,
    dry_run: bool,
    audit_db: Path | None,
    approvals_db: Path | None,
    kill_switch_db: Path | None,
    max_line_bytes: int | None,
    terminate_grace: float | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (a stdio MCP server) behind mcpwall, speaking stdio ourselves.

    \b
    Put it in an MCP client's server config in place of the server command:
      mcpwall wrap --policy rules/git.json -- uvx mcp-server-git --repository .
    \b
    Exit codes: 0 the client closed the session; the server's code (or 1) if
    the server died first; 127 the server could not be started; 2 usage error.
    """
    config = load_or_default(config_path) if config_path else Config(source="<wrap>")
    configure(config.log.level, config.log.format)
    files = [str(p) for p in policy_files] or config.policy.files
    settings = StdioServer(command=command[0], args=list(command[1:]))
    if max_line_bytes is not None:
        settings = msgspec.structs.replace(settings, max_line_bytes=max_line_bytes)
    if terminate_grace is not None:
        settings = msgspec.structs.replace(settings, terminate_grace_seconds=terminate_grace)
    who = principal or os.environ.get("USER") or "local"
    caller = Caller(principal=who, grant=grant or f"wrap:{who}", groups=tuple(groups))
    name = server_name or Path(command[0]).name
    if audit_db is not None:
        config = msgspec.structs.replace(
            config, audit=msgspec.structs.replace(config.audit, path=str(audit_db.resolve())))
    if approvals_db is not None:
        config = msgspec.structs.replace(config, approvals=msgspec.structs.replace(
            config.approvals, enabled=True, path=str(approvals_db.resolve())))
    elif config_path is None:
        config = msgspec.structs.replace(
            config, approvals=msgspec.structs.replace(config.approvals, enabled=False))
    if kill_switch_db is not None:
        config = msgspec.structs.replace(config, kill_switch=msgspec.structs.replace(
            config.kill_switch, persist=True, path=str(kill_switch_db.resolve())))
    elif config_path is None:
        config = msgspec.structs.replace(
            config, kill_switch=msgspec.structs.replace(config.kill_switch, persist=False))
    try:
        code = trio.run(run_wrap_session, config, settings, name, caller, files, dry_run,
                        audit_db is not None or config_path is not None)
    except (ConfigError, ApprovalError) as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(code)


__all__ = ["wrap"]
