"""``mcpwall kill-switch on|off|status|history``: deny every call at once, or undo it.

Like ``mcpwall approvals``: through the operator API with ``--admin-url`` or
``--admin-token`` (or their environment variables), else on the kill switch
file (``--db``, the ``[kill_switch] path`` of ``--config``, else
``mcpwall-kill-switch.db`` in the working directory).

Exit codes: 0 done; 1 the switch was not on (off); 2 usage error (bad option, no
token, a token the listener refuses, the listener unreachable).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from firewall.cli.operator_client import admin_options, api_url, call_api
from firewall.config import ConfigError, load_config
from firewall.gateway.operator.api import switch_view
from firewall.gateway.operator.killswitch import Scope, armed
from firewall.gateway.operator.switch_store import SwitchStoreError, open_switch_store
from firewall.settings.kill_switch import KillSwitchSettings


def _scope(server: str | None, principal: str | None) -> dict[str, Any]:
    if server and principal:
        raise click.UsageError("give --server or --principal, not both")
    if server:
        return {"scope": "server", "name": server}
    if principal:
        return {"scope": "principal", "name": principal}
    return {"scope": "global"}


def _print_switches(switches: list[dict[str, Any]]) -> None:
    if not switches:
        click.echo("kill switch: off everywhere")
        return
    for s in switches:
        click.echo(s["reason"])


def _options(fn: Any) -> Any:
    """What every subcommand takes: where the switches are, who acts, the output."""
    for opt in reversed([
        click.option("--db", "db", type=click.Path(path_type=Path, dir_okay=False),
                     default=None, help="Work on this kill switch file directly."),
        click.option("--config", "config_path",
                     type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     default=None,
                     help="Work on the kill switch file of this gateway config "
                          "(default without --db: mcpwall-kill-switch.db here)."),
        click.option("--by", default=None,
                     help="On the file: the name recorded as the operator (default: $USER)."),
    ]):
        fn = opt(fn)
    return admin_options(fn)


def _scope_options(fn: Any) -> Any:
    fn = click.option("--comment", default=None,
                      help="Why (the agents and the audit trail see it).")(fn)
    fn = click.option("--principal", default=None, help="Only this principal.")(fn)
    return click.option("--server", default=None,
                        help="Only this server (default: the whole firewall).")(fn)


_json_option = click.option("--json", "fmt", flag_value="json", help="One JSON document.")
_nl_option = click.option("--nl", "fmt", flag_value="nl", help="One JSON object per line.")
_table_option = click.option("--table", "fmt", flag_value="text", default=True,
                             help="Text for people (default).")


@click.group("kill-switch", short_help="Deny every call of a server, a principal or all.")
def kill_switch() -> None:
    """Deny every call at once (for a server, a principal or everything), or undo it.

    \b
    Through the operator listener of a running `mcpwall serve` (the change is
    audited with the token's operator name and saved in the kill switch file),
    with --admin-url or --admin-token ($MCPWALL_ADMIN_URL, $MCPWALL_ADMIN_TOKEN):
      export MCPWALL_ADMIN_TOKEN=...      # an [[admin.tokens]] token
      mcpwall kill-switch on --server vm --comment "runaway agent, INC-42"
      mcpwall kill-switch status
      mcpwall kill-switch off --server vm
    \b
    Otherwise on the kill switch file itself, with no listener (every `serve`
    and `wrap` using that file applies it within [kill_switch] poll_seconds and
    audits it; a stopped one applies it when it starts):
      mcpwall kill-switch on --config mcpwall.toml --comment "INC-42"
      mcpwall kill-switch history --config mcpwall.toml
    \b
    Exit codes: 0 done; 1 the switch was not on (off); 2 usage error,
    unreachable listener, refused token or unusable file.
    """


def _run(state: str, server: str | None, principal: str | None, comment: str | None,
         admin_url: str | None, admin_token: str | None, db: Path | None,
         config_path: Path | None, by: str | None) -> dict[str, Any]:
    """The API's answer, or the same answer from the file."""
    url = api_url(admin_url, admin_token)
    if url is None:
        return _on_file(_switch_file(db, config_path), state, server, principal, comment,
                        by or os.environ.get("USER") or "local")
    if state == "history":
        raise click.UsageError("history reads the kill switch file: give --config or --db, "
                               "not --admin-url")
    if state == "status":
        answer: dict[str, Any] = call_api(url, admin_token, "GET", "/api/kill-switch")
        return answer
    body = _scope(server, principal)
    if comment:
        body["comment"] = comment
    answer = call_api(url, admin_token, "POST" if state == "on" else "DELETE",
                      "/api/kill-switch", body)
    return answer


@kill_switch.command("on")
@_scope_options
@_json_option
@_options
def on_command(fmt: str | None, **kw: Any) -> None:
    """Turn a kill switch on: its calls are denied until it is turned off.

    \b
    Examples:
      mcpwall kill-switch on --server vm --comment "INC-42"
      mcpwall kill-switch on --principal ci-bot --config mcpwall.toml
    \b
    Exit codes: 0 on; 2 usage error, unreachable listener, refused token or
    unusable file.
    """
    answer = _run("on", **kw)
    if fmt == "json":
        click.echo(json.dumps(answer))
        return
    click.echo(answer["switch"]["reason"])
    if "warning" in answer:
        click.echo(f"Warning: {answer['warning']}", err=True)


@kill_switch.command("off")
@_scope_options
@_json_option
@_options
def off_command(fmt: str | None, **kw: Any) -> None:
    """Turn a kill switch off.

    \b
    Example:
      mcpwall kill-switch off --server vm
    \b
    Exit codes: 0 off; 1 the switch was not on; 2 usage error, unreachable
    listener, refused token or unusable file.
    """
    answer = _run("off", **kw)
    if fmt == "json":
        click.echo(json.dumps(answer))
        return
    was = answer["switch"]
    click.echo(f"kill switch off for {_what(was['scope'], was['name'])}")


@kill_switch.command("status")
@_table_option
@_json_option
@_nl_option
@_options
def status_command(fmt: str, **kw: Any) -> None:
    """The switches that are on, with the reason the agents see.

    \b
    Examples:
      mcpwall kill-switch status
      mcpwall kill-switch status --config mcpwall.toml --json
    \b
    Exit codes: 0 listed (on or off); 2 usage error, unreachable listener,
    refused token or unusable file.
    """
    answer = _run("status", None, None, None, **kw)
    if fmt == "json":
        click.echo(json.dumps(answer))
    elif fmt == "nl":
        for s in answer["switches"]:
            click.echo(json.dumps(s))
    else:
        _print_switches(answer["switches"])


@kill_switch.command("history")
@_table_option
@_json_option
@_nl_option
@_options
def history_command(fmt: str, **kw: Any) -> None:
    """Who turned what on and off, oldest first (from the kill switch file).

    \b
    Example:
      mcpwall kill-switch history --config mcpwall.toml
    \b
    Exit codes: 0 listed; 2 usage error (--admin-url: the history is in the
    file) or unusable file.
    """
    answer = _run("history", None, None, None, **kw)
    if fmt == "json":
        click.echo(json.dumps(answer))
    elif fmt == "nl":
        for h in answer["history"]:
            click.echo(json.dumps(h))
    else:
        for h in answer["history"]:
            click.echo(f"{_when(h['ts_ns'])}  {h['state']:<3}  {_what(h['scope'], h['name'])}"
                       f"  by {h['by']} on {h['instance']}"
                       + (f": {h['comment']}" if h["comment"] else ""))


def _what(scope: str, name: str | None) -> str:
    return "the whole firewall" if scope == "global" else f"{scope} {name}"


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _switch_file(db: Path | None, config_path: Path | None) -> Path:
    if db is not None:
        return db
    if config_path is None:
        return Path(KillSwitchSettings().path)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not config.kill_switch.persist:
        raise click.UsageError(f"{config_path}: [kill_switch] persist is false: the switches "
                               "live in the running process only (use --admin-url)")
    return Path(config.kill_switch.path)


def _on_file(path: Path, state: str, server: str | None, principal: str | None,
             comment: str | None, by: str) -> dict[str, Any]:
    """The same answers as the API's, from the kill switch file."""
    def view(switch: Any) -> dict[str, Any]:
        return switch_view(armed(switch))  # with the reason the agents will see

    try:
        with open_switch_store(path) as store:
            if state == "status":
                return {"switches": [view(s) for s in store.switches()]}
            if state == "history":
                return {"history": [
                    {"ts_ns": h.ts_ns, "state": h.state, "scope": h.scope.kind,
                     "name": h.scope.name, "by": h.by, "comment": h.comment,
                     "instance": h.instance} for h in store.history()]}
            body = _scope(server, principal)
            scope = Scope(body["scope"], body.get("name"))
            instance = f"cli:{socket.gethostname()}"
            if state == "on":
                switch = store.turn_on(scope, by=by, comment=comment, instance=instance)
                return {"switch": view(switch), "saved": True}
            was = store.turn_off(scope, by=by, comment=comment, instance=instance)
    except SwitchStoreError as exc:
        raise click.UsageError(str(exc)) from None
    if was is None:
        click.echo(f"Error: the kill switch is not on for {scope.describe()}", err=True)
        sys.exit(1)
    return {"switch": view(was), "state": "off"}


__all__ = ["kill_switch"]
