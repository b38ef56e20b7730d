"""``mcpwall approvals``: list held calls, approve or reject them.

Two ways to reach the requests, as for ``mcpwall kill-switch``: with
``--admin-url`` or ``--admin-token`` (or ``$MCPWALL_ADMIN_URL``,
``$MCPWALL_ADMIN_TOKEN``) the operator API of a running ``mcpwall serve``,
which records the token's operator name; otherwise the approvals database
itself (``--db``, or the ``[approvals] path`` of ``--config``; file
permissions decide who may approve).

Exit codes: 0 done; 1 the request is unknown, already decided, expired,
withdrawn or abandoned (its mcpwall process is gone); 2 usage error (bad
option or scope, unreadable database or config, unreachable operator listener
or refused token).
"""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import click
import msgspec
from tabulate import tabulate

from firewall.audit.escaping import visible
from firewall.cli.operator_client import admin_options, api_url, call_api
from firewall.config import ConfigError, load_config
from firewall.gateway.approvals.desk import (
    ApprovalError,
    ApprovalRequest,
    Status,
    open_store,
    parse_scope,
)
from firewall.settings.approvals import ApprovalSettings

_db_option = click.option(
    "--db", "db", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Approvals database (default: the config's [approvals] path, else "
         "mcpwall-approvals.db here).")
_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None, help="Gateway config whose [approvals] path to use.")


def _path(db: Path | None, config_path: Path | None) -> Path:
    if db is not None:
        return db
    if config_path is not None:
        try:
            return Path(load_config(config_path).approvals.path)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    return Path(ApprovalSettings().path)


def _when(ns: int | None) -> str:
    if ns is None:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group("approvals", short_help="List, approve or reject calls held for approval.")
def approvals() -> None:
    """Calls held for human approval: list them, approve or reject them.

    \b
    A rule with "action": "require_approval" holds a call until someone
    decides (or [approvals] timeout_seconds pass, and the call is refused):
      mcpwall approvals list
      mcpwall approvals approve 3f9c2a1b --comment "planned maintenance"
      mcpwall approvals approve 3f9c2a1b --scope session   # and the rest of the session
      mcpwall approvals approve 3f9c2a1b --scope minutes:30
      mcpwall approvals reject 3f9c2a1b --comment "not during business hours"
    \b
    Through a running gateway's operator API instead of the database:
      export MCPWALL_ADMIN_URL=http://127.0.0.1:8766 MCPWALL_ADMIN_TOKEN=...
      mcpwall approvals list

    \b
    Exit codes: 0 done; 1 the request is unknown, already decided, expired,
    withdrawn or abandoned; 2 usage error (bad option or scope, unreadable
    database or config, unreachable listener or refused token).
    """


@approvals.command("list")
@_db_option
@_config_option
@click.option("--all", "show_all", is_flag=True, help="Also decided and expired requests.")
@click.option("--json", "fmt", flag_value="json", help="One JSON array.")
@click.option("--nl", "fmt", flag_value="nl", help="One JSON object per line.")
@click.option("--table", "fmt", flag_value="table", default=True,
              help="A table for people (default).")
@admin_options
def list_command(db: Path | None, config_path: Path | None, show_all: bool,
                 fmt: str, admin_url: str | None, admin_token: str | None) -> None:
    """List pending requests (newest first).

    \b
      mcpwall approvals list --config mcpwall.toml
      mcpwall approvals list --admin-url http://127.0.0.1:8766 --json
    \b
    Exit codes: 0 listed (also when nothing is held); 2 usage error (no
    approvals database, bad option, unreachable listener or refused token).
    """
    status: Status | None = None if show_all else "pending"
    admin_url = api_url(admin_url, admin_token)
    if admin_url is not None:
        answer = call_api(admin_url, admin_token, "GET",
                          f"/api/approvals?status={status or 'all'}")
        requests = [msgspec.convert(r, ApprovalRequest) for r in answer["approvals"]]
    else:
        requests = _from_db(db, config_path, status)
    if fmt == "json":
        click.echo(msgspec.json.encode(requests).decode())
        return
    if fmt == "nl":
        for request in requests:
            sys.stdout.write(msgspec.json.encode(request).decode() + "\n")
        return
    if not requests:
        click.echo("no pending requests" if not show_all else "no requests")
        return
    # What an agent sent (target, arguments) never reaches the terminal raw.
    rows = [[visible(str(cell)) if cell is not None else cell for cell in (
             r.id, _when(r.created_ns), r.status, r.principal, r.grant, r.server, r.target,
             msgspec.json.encode(r.arguments).decode() if r.arguments else "", r.rule,
             _when(r.expires_ns) if r.status == "pending" else _ended(r))]
            for r in requests]
    click.echo(tabulate(rows, headers=["id", "held at (UTC)", "status", "principal", "grant",
                                       "server", "target", "arguments", "rule",
                                       "expires / by"]))


def _ended(r: ApprovalRequest) -> str:
    """Who decided (and for how long), or why the request ended without anyone."""
    if r.decided_by is None:
        return r.note or ""
    if r.scope == "session":
        return f"{r.decided_by} (session)"
    if r.scope == "minutes":
        return f"{r.decided_by} (until {_when(r.scope_until_ns)})"
    return r.decided_by


def _from_db(db: Path | None, config_path: Path | None,
             status: Status | None) -> list[ApprovalRequest]:
    path = _path(db, config_path)
    if not path.exists():
        raise click.UsageError(f"{path}: no approvals database (nothing was ever held)")
    try:
        with open_store(path) as store:
            return store.list(status)
    except ApprovalError as exc:
        raise click.UsageError(str(exc)) from None


def _decide(verdict: Literal["approved", "rejected"], ident: str, db: Path | None,
            config_path: Path | None, by: str | None, note: str | None, as_json: bool,
            scope: str = "call", admin_url: str | None = None,
            admin_token: str | None = None) -> None:
    try:
        parse_scope(scope)
    except ApprovalError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from None
    admin_url = api_url(admin_url, admin_token)
    if admin_url is not None:
        verb = "approve" if verdict == "approved" else "reject"
        body: dict[str, Any] = {"comment": note} if note is not None else {}
        if by is not None:
            body["by"] = by
        if verdict == "approved":
            body["scope"] = scope
        answer = call_api(admin_url, admin_token, "POST",
                          f"/api/approvals/{quote(ident, safe='')}/{verb}", body)
        _report(msgspec.convert(answer["approval"], ApprovalRequest), as_json)
        return
    path = _path(db, config_path)
    if not path.exists():
        raise click.UsageError(f"{path}: no approvals database")
    try:
        with open_store(path) as store:
            request = store.decide(ident, verdict, by or getpass.getuser(), note, scope=scope)
    except ApprovalError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    _report(request, as_json)


def _report(request: ApprovalRequest, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(request).decode())
    else:
        scope = {"session": " for the rest of the session",
                 "minutes": f" until {_when(request.scope_until_ns)} UTC"}.get(request.scope, "")
        click.echo(f"{request.id} {request.status} by {request.decided_by}{scope}: "
                   f"{request.principal} -> {request.server} {request.target}")


def _verdict_command(verdict: Literal["approved", "rejected"], name: str, doc: str) -> Any:
    @approvals.command(name, help=doc)
    @click.argument("ident", metavar="ID")
    @_db_option
    @_config_option
    @click.option("--by", default=None,
                  help="Who decides (default: the login name; with --admin-url the "
                       "token's operator).")
    @click.option("--comment", "--note", "note", default=None,
                  help="Why; the agent and the audit trail see it (--note is an alias).")
    @click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
    @admin_options
    def command(ident: str, db: Path | None, config_path: Path | None, by: str | None,
                note: str | None, as_json: bool, admin_url: str | None,
                admin_token: str | None, scope: str = "call") -> None:
        _decide(verdict, ident, db, config_path, by, note, as_json, scope, admin_url,
                admin_token)

    if verdict == "approved":
        command = click.option(
            "--scope", default="call", show_default=True, metavar="call|session|minutes:N",
            help="What else this approval lets through, for the same server, tool and "
                 "rule: nothing (call), the rest of the call's client session (session), "
                 "or that principal's calls for N minutes (minutes:N).")(command)
    return command


approve = _verdict_command("approved", "approve", """Let a held call through.

\b
  mcpwall approvals approve 3f9c2a1b --comment "ticket OPS-112"
  mcpwall approvals approve 3f9c2a1b --scope session      # later calls of it too
  mcpwall approvals approve 3f9c2a1b --scope minutes:30   # this agent, 30 minutes

\b
Exit codes: 0 done; 1 the request is unknown, already decided, expired,
withdrawn or abandoned; 2 usage error (bad option or scope, unreadable
database or config, unreachable listener or refused token).
""")
reject = _verdict_command("rejected", "reject", """Refuse a held call.

\b
  mcpwall approvals reject 3f9c2a1b --comment "use a snapshot instead"

\b
Exit codes: 0 done; 1 the request is unknown, already decided, expired,
withdrawn or abandoned; 2 usage error (bad option or scope, unreadable
database or config, unreachable listener or refused token).
""")
