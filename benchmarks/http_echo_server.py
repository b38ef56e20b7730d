"""The echo MCP server of ``echo_server.py`` over Streamable HTTP, for benchmarks.

A bare hypercorn (trio worker) ASGI app: every POST body is one JSON-RPC
message, answered as ``application/json`` by the same ``answer`` function as
the stdio server; initialize hands out a fresh ``Mcp-Session-Id``. It is both
the HTTP upstream behind the proxies and the "direct" HTTP baseline.

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
            reply = answer(message, tools)
            status, out = (200, _encode(reply)) if reply is not None else (202, b"")
            headers = [(b"content-type", b"application/json")]
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
