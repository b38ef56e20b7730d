"""The echo MCP server of ``echo_server.py`` over Streamable HTTP, for benchmarks.

A bare hypercorn (trio worker) ASGI app: every POST body is one JSON-RPC
message, answered as ``application/json`` by the same ``answer`` function as
the stdio server; initialize hands out a fresh ``Mcp-Session-Id``. It is both
the HTTP upstream behind the proxies and the "direct" HTTP baseline.

It speaks both eras of MCP, as a dual-era server does. A POST whose
``MCP-Protocol-Version`` is 2026-07-28 is a stateless request of that
revision: no session; its ``params._meta`` must carry that version and the
client capabilities, ``Mcp-Method`` must be its method and ``Mcp-Name`` its
tool's name (else 400 with -32602 or HeaderMismatch -32020); its result
carries ``resultType: "complete"``, ``server/discover`` names both eras and
``initialize`` is no method there (404, -32601). Any other POST is answered
as before (2025, sessions handed out, never required).

    python benchmarks/http_echo_server.py PORT [--tools N]
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

sys.path.insert(0, str(Path(__file__).resolve().parent))

from echo_server import answer, tool_list

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

MODERN = "2026-07-28"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
DISCOVERED = {"supportedVersions": [MODERN, "2025-11-25", "2025-06-18"],
              "capabilities": {"tools": {}},
              "serverInfo": {"name": "bench-echo", "version": "1"}}


def modern_answer(message: dict[str, Any], headers: dict[bytes, bytes],
                  tools: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """HTTP status and reply to one request of the 2026-07-28 revision."""
    rid = message.get("id")
    params = message.get("params") or {}
    meta = params.get("_meta") if isinstance(params, dict) else None

    def error(status: int, code: int, text: str) -> tuple[int, dict[str, Any]]:
        return status, {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": text}}

    if not isinstance(meta, dict) or meta.get(VERSION_KEY) != MODERN \
            or CAPABILITIES_KEY not in meta:
        return error(400, -32602, "params._meta must name 2026-07-28 and the capabilities")
    method = message.get("method")
    if headers.get(b"mcp-method", b"").decode() != method:
        return error(400, -32020, "Header mismatch: Mcp-Method")
    if method == "tools/call" and headers.get(b"mcp-name", b"").decode() != params.get("name"):
        return error(400, -32020, "Header mismatch: Mcp-Name")
    if method in ("initialize", "ping"):
        return error(404, -32601, f"Method not found: {method}")
    if method == "server/discover":
        return 200, {"jsonrpc": "2.0", "id": rid, "result": {**DISCOVERED,
                                                               "resultType": "complete"}}
    reply = answer(message, tools)
    if reply is None:
        return 202, None
    reply["result"]["resultType"] = "complete"
    return 200, reply


async def _lifespan(receive: Any, send: Any) -> None:
    """Acknowledge startup, then shutdown."""
    phase = ""
    while phase != "shutdown":
        phase = (await receive())["type"].removeprefix("lifespan.")
        await send({"type": f"lifespan.{phase}.complete"})


def make_app(tools: list[dict[str, Any]]) -> Any:
    """An ASGI app answering MCP POSTs from the echo server's ``answer``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body, event = bytearray(), {"more_body": True}
        while event.get("more_body"):
            event = await receive()
            body += event.get("body", b"")
        status, headers, out = 405, [], b""
        if scope["method"] == "DELETE":
            status = 200
        elif scope["method"] == "POST":
            message = _decode(body)
            sent = dict(scope["headers"])
            headers = [(b"content-type", b"application/json")]
            if sent.get(b"mcp-protocol-version") == MODERN.encode():
                status, reply = modern_answer(message, sent, tools)
                out = _encode(reply) if reply is not None else b""
            else:
                reply = answer(message, tools)
                status, out = (200, _encode(reply)) if reply is not None else (202, b"")
                if message.get("method") == "initialize":
                    headers.append((b"mcp-session-id", uuid.uuid4().hex.encode()))
        headers.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def main() -> None:
    port = int(sys.argv[1])
    tools = tool_list(int(sys.argv[sys.argv.index("--tools") + 1])
                      if "--tools" in sys.argv else 0)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.backlog = 2048
    trio.run(serve, make_app(tools), config)


if __name__ == "__main__":
    main()
