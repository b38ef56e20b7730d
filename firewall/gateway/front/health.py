"""Operator endpoints of the HTTP front: ``GET /healthz``.

``/healthz`` answers 200 ``{"status": "ok", ...}`` while the front takes
requests and 503 ``{"status": "draining", ...}`` once shutdown began, with the
open sessions per server, so a load balancer or an orchestrator can route
around an instance that is stopping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from firewall.gateway.http.exchange import Exchange, refuse
from firewall.protocol import jsonrpc

if TYPE_CHECKING:
    from firewall.gateway.front.http_front import HttpFront

HEALTH_PATH: Final = "/healthz"


def health_report(front: HttpFront) -> dict[str, Any]:
    """The health document: status, session count, per-server details."""
    report: dict[str, Any] = {
        "status": "draining" if front.draining else "ok",
        "sessions": len(front.context.table),
        "max_sessions": front.listen.max_sessions,
        "servers": {name: ep.health() for name, ep in front.endpoints.items()},
    }
    if front.connections is not None:
        report["connections"] = front.connections.report()
    return report


async def health(ex: Exchange, front: HttpFront) -> None:
    """Answer ``GET /healthz`` (and HEAD); other methods get 405."""
    if ex.method not in ("GET", "HEAD"):
        await refuse(ex, 405, jsonrpc.INVALID_REQUEST, f"Method Not Allowed: {ex.method}",
                     [("allow", "GET, HEAD")])
        return
    report = health_report(front)
    status = 200 if report["status"] == "ok" else 503
    body = b"" if ex.method == "HEAD" else jsonrpc.encode(report)
    await ex.respond(status, body, headers=[("cache-control", "no-store")])
