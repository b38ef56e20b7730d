"""``mcpwall wrap``: an MCP server behind mcpwall, speaking stdio ourselves.

The server is a command mcpwall starts (``-- COMMAND ARGS...``) or one
reached over Streamable HTTP (``--upstream URL``).

Exit codes: 0 the client closed the session; the server's code (or 1) if the
server died first; 127 the server could not be started; 2 usage error.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import click
import msgspec
import trio

from firewall.cli import CONTEXT, load_or_default
from firewall.config import Config, ConfigError, HttpServer, StdioServer
from firewall.gateway.approvals.desk import ApprovalError
from firewall.gateway.runtime import run_wrap_session
from firewall.log import configure
from firewall.policy.decision import Caller


@click.command("wrap", context_settings={**CONTEXT, "ignore_unknown_options": True,
                                        "allow_interspersed_args": False},
               short_help="Run an MCP server (a command or a URL) behind mcpwall, on stdio.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Gateway config (TOML): its policy, audit and log settings apply.")
@click.option("--policy", "policy_files", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Policy file (repeatable); overrides the config's policy files.")
@click.option("--upstream", "upstream_url", default=None, metavar="URL",
              help="A Streamable HTTP server (http:// or https://) instead of COMMAND.")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="With --upstream: a header sent on every request (repeatable), "
                   "e.g. 'Authorization: Bearer ...'.")
@click.option("--upstream-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --upstream: seconds a call may wait for its answer (default: the "
                   "config's listen.upstream_timeout_seconds, 300).")
@click.option("--principal", default=None, help="Who the client is (default: $USER).")
@click.option("--grant", default=None, help="Grant id for rate limits (default: wrap:PRINCIPAL).")
@click.option("--group", "groups", multiple=True, help="Group the principal belongs to.")
@click.option("--server-name", default=None,
              help="Name of the wrapped server in policy and audit (default: the command's "
                   "name, or the URL's host).")
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
@click.option("--bridge", is_flag=True,
              help="Carry a 2026-07-28 client's requests to a COMMAND that speaks only the "
                   "2025 revisions, over a 2025 session mcpwall opens itself (its own "
                   "initialize); the server's own requests (sampling, elicitation, roots) "
                   "are refused. A 2025 client in front of a server of the new revision "
                   "only is bridged without it.")
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED)
def wrap(
    config_path: Path | None,
    policy_files: tuple[Path, ...],
    upstream_url: str | None,
    headers: tuple[str, ...],
    upstream_timeout: float | None,
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
    bridge: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (a stdio MCP server), or reach --upstream URL (a Streamable
    HTTP server), behind mcpwall, speaking stdio ourselves.

    \b
    Put it in an MCP client's server config in place of the server command:
      mcpwall wrap --policy rules/git.json -- uvx mcp-server-git --repository .
      mcpwall wrap --upstream https://mcp.example.com/mcp \\
          --header 'Authorization: Bearer ...' --policy rules/git.json
    A client of the 2026-07-28 revision in front of a 2025-only server:
      mcpwall wrap --bridge --policy rules/time.json -- uvx mcp-server-time
    \b
    With --upstream, a server that cannot be reached answers each call with an
    error (and a log line on stderr); mcpwall runs on until the client closes
    stdin.
    \b
    Exit codes: 0 the client closed the session; the server's code (or 1) if
    the server died first; 127 the server could not be started; 2 usage error.
    """
    config = load_or_default(config_path) if config_path else Config(source="<wrap>")
    configure(config.log.level, config.log.format)
    files = [str(p) for p in policy_files] or config.policy.files
    stdio = StdioServer(command="-")
    if max_line_bytes is not None:
        stdio = msgspec.structs.replace(stdio, max_line_bytes=max_line_bytes)
    if terminate_grace is not None:
        stdio = msgspec.structs.replace(stdio, terminate_grace_seconds=terminate_grace)
    settings: StdioServer | HttpServer
    if upstream_url is not None:
        if command:
            raise click.UsageError("give --upstream URL or -- COMMAND, not both")
        if bridge:
            raise click.UsageError("--bridge goes with -- COMMAND (a stdio server)")
        settings = _http_upstream(upstream_url, headers)
        name = server_name or _host(upstream_url)
    else:
        if not command:
            raise click.UsageError("give the server: -- COMMAND [ARGS]... or --upstream URL")
        if headers or upstream_timeout is not None:
            raise click.UsageError("--header and --upstream-timeout go with --upstream")
        settings = msgspec.structs.replace(stdio, command=command[0], args=list(command[1:]),
                                           bridge=bridge)
        name = server_name or Path(command[0]).name
    if upstream_timeout is not None:
        config = msgspec.structs.replace(config, listen=msgspec.structs.replace(
            config.listen, upstream_timeout_seconds=upstream_timeout))
    who = principal or os.environ.get("USER") or "local"
    caller = Caller(principal=who, grant=grant or f"wrap:{who}", groups=tuple(groups))
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
        code = trio.run(partial(
            run_wrap_session, config, settings, name, caller, files, dry_run,
            audit_db is not None or config_path is not None,
            terminate_grace=stdio.terminate_grace_seconds, max_line=stdio.max_line_bytes))
    except (ConfigError, ApprovalError) as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(code)


def _http_upstream(url: str, headers: tuple[str, ...]) -> HttpServer:
    """The --upstream server with its --header values; usage error if either is bad."""
    parsed: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise click.BadParameter(f"{header!r}: expected 'Name: value'",
                                     param_hint="--header")
        parsed[name.strip().lower()] = value.strip()
    settings = HttpServer(url=url, headers=parsed)
    # Deferred: the HTTP client (h11, httptools) is loaded only for --upstream.
    from firewall.gateway.upstream.http import HttpUpstream, UpstreamError

    try:
        HttpUpstream(url, parsed).prepare()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--upstream") from None
    except UpstreamError as exc:
        raise click.BadParameter(f"a header cannot be sent: {exc.detail}",
                                 param_hint="--header") from None
    return settings


def _host(url: str) -> str:
    """The server name an --upstream URL gets by default: its host."""
    return urlsplit(url).hostname or "upstream"


__all__ = ["wrap"]
