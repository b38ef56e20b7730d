"""``mcpwall serve``: the fleet of a config over Streamable HTTP.

Exit codes: 0 stopped (Ctrl-C, SIGTERM); 2 usage error (bad option, invalid
config or policy, an unusable approvals database).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
import msgspec
import trio

from firewall.cli import CONTEXT, load_or_default
from firewall.config import ConfigError, check_admin
from firewall.gateway.approvals.desk import ApprovalError
from firewall.gateway.runtime import serve as run_serve
from firewall.log import configure


@click.command("serve", context_settings=CONTEXT,
               short_help="Serve a config's fleet over Streamable HTTP.")
@click.argument("config_path", required=False, metavar="[CONFIG]",
                type=click.Path(path_type=Path, dir_okay=False))
@click.option("--config", "config_option", default=None,
              type=click.Path(path_type=Path, dir_okay=False),
              help="The config, as in the other commands (same as CONFIG).")
@click.option("--host", default=None, help="Listen address (overrides the config).")
@click.option("--port", type=int, default=None, help="Listen port (overrides the config).")
@click.option("--admin-port", type=int, default=None,
              help="Operator listener port (overrides [admin] port; needs an [admin] table).")
def serve(config_path: Path | None, config_option: Path | None, host: str | None,
          port: int | None, admin_port: int | None) -> None:
    """Serve the fleet of CONFIG over Streamable HTTP (the demo fleet without CONFIG).

    \b
    Each server is at http://HOST:PORT/servers/NAME/mcp.
      mcpwall serve                  # bundled demo server + rules/virtualization.json
      mcpwall serve mcpwall.toml --port 9000
      mcpwall serve --config mcpwall.toml   # the same as: mcpwall serve mcpwall.toml
    \b
    With an [admin] table, the operator API, /metrics and the console listen
    on their own address (127.0.0.1:8766 by default): see docs/admin.md.
    \b
    Exit codes: 0 stopped (Ctrl-C, SIGTERM); 2 usage error (bad option,
    invalid config or policy, an unusable approvals database).
    """
    if config_path is not None and config_option is not None:
        raise click.UsageError("give CONFIG or --config, not both")
    config = load_or_default(config_path or config_option)
    listen = config.listen
    if host is not None:
        listen = msgspec.structs.replace(listen, host=host)
    if port is not None:
        listen = msgspec.structs.replace(listen, port=port)
    config = msgspec.structs.replace(config, listen=listen)
    if admin_port is not None:
        if config.admin is None:
            raise click.UsageError("--admin-port: the config has no [admin] table")
        config = msgspec.structs.replace(
            config, admin=msgspec.structs.replace(config.admin, port=admin_port))
    if config.admin is not None:
        try:
            check_admin(config.admin, config.listen, config.source)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    configure(config.log.level, config.log.format)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(run_serve, config)
    except (ConfigError, ApprovalError) as exc:
        raise click.UsageError(str(exc)) from None


__all__ = ["serve"]
