"""The operators' console: server-rendered HTML plus one small script, no build step.

Rules this package keeps:

1. Every value from a request, the approvals database or the audit trail is
   HTML-escaped on the server (:func:`html.escape`) and set with
   ``textContent`` in the browser: a tool argument is never markup.
2. Pages are sent with a strict Content-Security-Policy (scripts and styles
   from this listener only, no inline script, no framing), ``nosniff`` and
   ``same-origin`` referrers; nothing is cached.
3. The templates (``page.html``, ``login.html``) and the assets
   (``console.js``, ``console.css``) are package resources.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Iterable
from importlib import resources
from string import Template
from typing import Any, Final

from firewall.audit.query import format_ts
from firewall.gateway.http.exchange import Exchange
from firewall.gateway.operator.auth import Login
from firewall.gateway.operator.killswitch import Switch

ASSETS: Final = {"/console.js": "text/javascript; charset=utf-8",
                 "/console.css": "text/css; charset=utf-8"}
SECURITY_HEADERS: Final = (
    ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),  # "no-referrer" makes form posts Origin: null
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
)
HTML: Final = "text/html; charset=utf-8"


@functools.cache
def _resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def esc(value: Any) -> str:
    """HTML-escape any value (None is empty); quotes too, so it is safe in attributes."""
    return "" if value is None else html.escape(str(value), quote=True)


async def asset(ex: Exchange, path: str) -> None:
    """Serve ``/console.js`` or ``/console.css``."""
    body = _resource(path.lstrip("/")).encode()
    await ex.respond(200, body, ASSETS[path], SECURITY_HEADERS)


async def login_page(ex: Exchange, status: int, error: str | None,
                     headers: Iterable[tuple[str, str]] = ()) -> None:
    """The login form (with ``error`` above it, escaped)."""
    page = Template(_resource("login.html")).substitute(error=esc(error))
    await ex.respond(status, page.encode(), HTML, [*SECURITY_HEADERS, *headers])


def _when(ns: int | None) -> str:
    return "" if not ns else format_ts(ns)[:19].replace("T", " ")


def _pre(value: Any) -> str:
    text = "" if value is None else (value if isinstance(value, str)
                                     else json.dumps(value, indent=1, ensure_ascii=False))
    return f"<td><pre>{esc(text)}</pre></td>"


def approval_rows(rows: Iterable[dict[str, Any]]) -> str:
    """The pending approvals as table rows (the same markup the script builds)."""
    out = []
    for a in rows:
        ident = esc(a["id"])
        rule = (a.get("rule") or "") + (f": {a['reason']}" if a.get("reason") else "")
        out.append(
            f'<tr data-id="{ident}"><td>{ident}</td><td>{esc(_when(a.get("created_ns")))}</td>'
            f'<td>{esc(a.get("principal"))}</td><td>{esc(a.get("server"))}</td>'
            f'<td>{esc(a.get("target") or a.get("method"))}</td>{_pre(a.get("arguments"))}'
            f'<td>{esc(rule)}</td><td class="decide">'
            f'<input placeholder="comment" aria-label="comment for {ident}">'
            f'<button type="button" class="approve" data-action="approve" data-id="{ident}">'
            f'Approve</button><button type="button" class="reject" data-action="reject" '
            f'data-id="{ident}">Reject</button></td></tr>')
    return "\n".join(out)


def decision_rows(rows: Iterable[dict[str, Any]]) -> str:
    """Recent decisions (rows of the audit ``calls`` view) as table rows."""
    out = []
    for d in rows:
        ts = (d.get("ts") or "")[:19].replace("T", " ")
        target = d.get("tool") or d.get("uri") or d.get("prompt")
        out.append(
            f"<tr><td>{esc(ts)}</td><td>{esc(d.get('principal'))}</td>"
            f"<td>{esc(d.get('server'))}</td><td>{esc(d.get('method'))}</td>"
            f"<td>{esc(target)}</td>"
            f'<td class="d-{esc(d.get("decision"))}">{esc(d.get("decision"))}</td>'
            f"<td>{esc(d.get('rule'))}</td><td>{esc(d.get('reason'))}</td></tr>")
    return "\n".join(out)


def switch_items(switches: Iterable[Switch], may_change: bool = True) -> str:
    """The kill switches that are on, as list items, each with its Turn off button."""
    disabled = "" if may_change else " disabled"
    return "\n".join(
        f'<li data-scope="{esc(s.scope.kind)}" data-name="{esc(s.scope.name or "")}">'
        f"<span>{esc(s.decision.reason if s.decision else s.scope.describe())}</span> "
        f'<button type="button" class="off"{disabled}>Turn off</button></li>'
        for s in switches)


async def main_page(ex: Exchange, login: Login, pending: list[dict[str, Any]],
                    decisions: list[dict[str, Any]], switches: list[Switch]) -> None:
    """The console: kill switches, pending approvals, recent decisions, search."""
    page = Template(_resource("page.html")).substitute(
        csrf=esc(login.csrf), operator=esc(login.operator.name), role=esc(login.operator.role),
        switch_class="" if switches else "hidden",
        switches=switch_items(switches, login.operator.may_change),
        kill_disabled="" if login.operator.may_change else " disabled",
        pending_count=len(pending), approvals=approval_rows(pending),
        empty_hidden=" hidden" if pending else "", decisions=decision_rows(decisions))
    await ex.respond(200, page.encode(), HTML, SECURITY_HEADERS)


__all__ = ["ASSETS", "approval_rows", "asset", "decision_rows", "esc", "login_page",
           "main_page"]
