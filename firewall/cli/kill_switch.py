"""``mcpwall kill-switch``: deny every call at once, or undo it.

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

from firewall.cli.operator_client import admin_options, call_api
from firewall.config import ConfigError, load_config
from firewall.gateway.operator.api import switch_view
from firewall.gateway.operator.killswitch import Scope, armed
from firewall.gateway.operator.switch_store import SwitchStoreError, open_switch_store


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


@click.command("kill-switch")
@click.argument("state", type=click.Choice(["on", "off", "status", "history"]))
@click.option("--server", default=None, help="Only this server (default: the whole firewall).")
@click.option("--principal", default=None, help="Only this principal.")
@click.option("--comment", default=None, help="Why (the agents and the audit trail see it).")
@admin_options(required=True)
@click.option("--db", "db", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Work on this kill switch file directly, not through the API.")
@click.option("--config", "config_path",
              type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Work directly on the kill switch file of this gateway config.")
@click.option("--by", default=None,
              help="With --db/--config: the name recorded as the operator (default: $USER).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def kill_switch(state: str, server: str | None, principal: str | None, comment: str | None,
                admin_url: str, admin_token: str | None, db: Path | None,
                config_path: Path | None, by: str | None, as_json: bool) -> None:
    """Deny every call at once (for a server, a principal or everything), or undo it.

    \b
    Through the operator listener of a running `mcpwall serve` (the change is
    audited with the token's operator name and saved in the kill switch file):
      export MCPWALL_ADMIN_TOKEN=...      # an [[admin.tokens]] token
      mcpwall kill-switch on --server vm --comment "runaway agent, INC-42"
      mcpwall kill-switch status
      mcpwall kill-switch off --server vm
    \b
    Or on the kill switch file itself, with no listener (every `serve` and
    `wrap` using that file applies it within [kill_switch] poll_seconds and
    audits it; a stopped one applies it when it starts):
      mcpwall kill-switch on --config mcpwall.toml --comment "INC-42"
      mcpwall kill-switch history --config mcpwall.toml
    \b
    Exit codes: 0 done; 1 the switch was not on (off); 2 usage error,
    unreachable listener, refused token or unusable file.
    """
    direct = db is not None or config_path is not None
    if state == "history" and not direct:
        raise click.UsageError("history reads the kill switch file: give --config or --db")
    if direct:
        answer = _on_file(_switch_file(db, config_path), state, server, principal, comment,
                          by or os.environ.get("USER") or "local")
    elif state == "status":
        answer = call_api(admin_url, admin_token, "GET", "/api/kill-switch")
    else:
        body = _scope(server, principal)
        if comment:
            body["comment"] = comment
        method = "POST" if state == "on" else "DELETE"
        answer = call_api(admin_url, admin_token, method, "/api/kill-switch", body)
    if as_json:
        click.echo(json.dumps(answer))
    elif state == "status":
        _print_switches(answer["switches"])
    elif state == "history":
        for h in answer["history"]:
            click.echo(f"{_when(h['ts_ns'])}  {h['state']:<3}  {_what(h['scope'], h['name'])}"
                       f"  by {h['by']} on {h['instance']}"
                       + (f": {h['comment']}" if h["comment"] else ""))
    elif state == "on":
        click.echo(answer["switch"]["reason"])
        if "warning" in answer:
            click.echo(f"Warning: {answer['warning']}", err=True)
    else:
        was = answer["switch"]
        click.echo(f"kill switch off for {_what(was['scope'], was['name'])}")


def _what(scope: str, name: str | None) -> str:
    return "the whole firewall" if scope == "global" else f"{scope} {name}"


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _switch_file(db: Path | None, config_path: Path | None) -> Path:
    if db is not None:
        return db
    assert config_path is not None
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
