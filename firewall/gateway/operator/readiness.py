"""``/readyz``: may this instance take traffic? Upstreams reachable, audit writable.

Checks, each bounded by :data:`CHECK_SECONDS` and run concurrently:

- ``front``: the agents' listener is not draining;
- ``audit``: every event appended so far commits (a flush that returns
  without error): a failed or stuck writer makes the instance unready,
  since it refuses to forward unaudited calls anyway;
- ``upstream:NAME``: a stdio server's command resolves to an executable
  file; an HTTP server's host accepts a TCP connection.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import trio

from firewall.config import Config, HttpServer, StdioServer

if TYPE_CHECKING:  # annotations only: the kill-switch CLI imports the plane; no hypercorn
    from firewall.gateway.front.http_front import HttpFront

CHECK_SECONDS: Final = 2.0


def command_found(settings: StdioServer) -> str | None:
    """None when the server's command resolves to an executable, else why not."""
    command = settings.command
    if os.sep in command:
        base = settings.cwd or "."
        path = command if os.path.isabs(command) else os.path.join(base, command)
        return None if os.access(path, os.X_OK) and os.path.isfile(path) \
            else f"{command}: not an executable file"
    return None if shutil.which(command) else f"{command}: not found on PATH"


async def tcp_reachable(url: str) -> str | None:
    """None when the URL's host accepts a TCP connection, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with trio.fail_after(CHECK_SECONDS):
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
    except trio.TooSlowError:
        return f"{host}:{port}: no answer within {CHECK_SECONDS:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    return None


async def audit_writable(writer: Any) -> str | None:
    """None when the audit writer commits what it was given, else why not."""
    if writer is None:
        return "no audit trail"
    try:
        with trio.fail_after(CHECK_SECONDS):
            await writer.flush()
    except trio.TooSlowError:
        return f"the audit writer did not commit within {CHECK_SECONDS:g} s"
    except Exception as exc:  # AuditError and what caused it
        return f"the audit trail failed: {exc}"
    return None


async def check(config: Config, front: HttpFront, writer: Any) -> dict[str, Any]:
    """The readiness document: ``status`` (``ready`` or ``unready``) and each check."""
    results: dict[str, str | None] = {
        "front": "draining (shutting down)" if front.draining else None}

    async def run(name: str, probe: Any, *args: Any) -> None:
        results[name] = await probe(*args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "audit", audit_writable, writer)
        for name, settings in config.servers.items():
            if isinstance(settings, HttpServer):
                nursery.start_soon(run, f"upstream:{name}", tcp_reachable, settings.url)
            elif isinstance(settings, StdioServer):
                results[f"upstream:{name}"] = command_found(settings)
    ok = all(v is None for v in results.values())
    return {"status": "ready" if ok else "unready",
            "checks": {k: {"ok": v is None, **({"error": v} if v else {})}
                       for k, v in sorted(results.items())}}


__all__ = ["check", "command_found", "tcp_reachable"]
