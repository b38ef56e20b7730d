"""``mcpwall kill-switch``, and the operator-API options ``mcpwall approvals`` shares.

Exit codes: 0 done; 1 the API refused on the merits (unknown or already
decided request, a switch that is not on); 2 usage error (bad option, no
token, a token the listener refuses, the listener unreachable).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from firewall.gateway.admin_client import (
    ENV_TOKEN,
    ENV_URL,
    AdminClient,
    AdminRefused,
    AdminUnreachable,
)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:8766"


def admin_options(required: bool) -> Callable[[F], F]:
    """``--admin-url`` and ``--admin-token`` (both also from the environment)."""
    def decorate(fn: F) -> F:
        fn = click.option("--admin-token", envvar=ENV_TOKEN, default=None,
                          help=f"Operator token (default: ${ENV_TOKEN}).")(fn)
        help_url = (f"Operator listener (default: ${ENV_URL}, else {DEFAULT_URL})." if required
                    else f"Operator listener to go through (default: ${ENV_URL}); "
                         "without it, the approvals database is used directly.")
        return click.option("--admin-url", envvar=ENV_URL,
                            default=DEFAULT_URL if required else None, help=help_url)(fn)
    return decorate


def call_api(url: str, token: str | None, method: str, path: str,
             body: dict[str, Any] | None = None) -> Any:
    """One API call for a command: exit 1 on a refusal on the merits, 2 on the rest."""
    try:
        return AdminClient(url, token).call(method, path, body)
    except AdminUnreachable as exc:
        raise click.UsageError(f"cannot reach the operator listener: {exc}") from None
    except AdminRefused as exc:
        if exc.status in (404, 409):
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        raise click.UsageError(f"the operator listener refused ({exc.status}): {exc}") from None


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
@click.argument("state", type=click.Choice(["on", "off", "status"]))
@click.option("--server", default=None, help="Only this server (default: the whole firewall).")
@click.option("--principal", default=None, help="Only this principal.")
@click.option("--comment", default=None, help="Why (the agents and the audit trail see it).")
@admin_options(required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON.")
def kill_switch(state: str, server: str | None, principal: str | None, comment: str | None,
                admin_url: str, admin_token: str | None, as_json: bool) -> None:
    """Deny every call at once (for a server, a principal or everything), or undo it.

    \b
    Goes through the operator listener of a running `mcpwall serve`; the
    switch and its removal are audited with the token's operator name.
      export MCPWALL_ADMIN_TOKEN=...      # an [[admin.tokens]] token
      mcpwall kill-switch on --server vm --comment "runaway agent, INC-42"
      mcpwall kill-switch status
      mcpwall kill-switch off --server vm
    \b
    Exit codes: 0 done; 1 the switch was not on (off); 2 usage error,
    unreachable listener or refused token.
    """
    import json

    if state == "status":
        answer = call_api(admin_url, admin_token, "GET", "/api/kill-switch")
        if as_json:
            click.echo(json.dumps(answer))
        else:
            _print_switches(answer["switches"])
        return
    body = _scope(server, principal)
    if comment:
        body["comment"] = comment
    method = "POST" if state == "on" else "DELETE"
    answer = call_api(admin_url, admin_token, method, "/api/kill-switch", body)
    if as_json:
        click.echo(json.dumps(answer))
    elif state == "on":
        click.echo(answer["switch"]["reason"])
    else:
        was = answer["switch"]
        click.echo(f"kill switch off for "
                   f"{'the whole firewall' if was['scope'] == 'global' else was['scope']} "
                   f"{was['name'] or ''}".rstrip())


__all__ = ["admin_options", "call_api", "kill_switch"]
