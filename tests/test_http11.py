"""HTTP/1.1 of the front on the wire: raw bytes over real sockets to a real front.

The front (``HttpFront`` + ``run_front``) serves the demo MCP server (a real
stdio child); each test writes bytes a client might send, good, tricky or bad,
and reads what comes back. Every test runs with both parsers
(``[http] parser``): httptools and hypercorn's h11; they must agree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from firewall.config import Config, HttpSettings, ListenSettings, StdioServer
from firewall.gateway.front.http_front import HttpFront, run_front
from firewall.policy.decision import AllowAll
from firewall.protocol import jsonrpc

PARSERS = ["httptools", "h11"]
INIT = json.dumps({"jsonrpc": "2.0", "id": "init-7", "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "raw", "version": "1"}}}).encode()
MCP_HEADERS = (b"Host: x\r\nAccept: application/json, text/event-stream\r\n"
               b"Content-Type: application/json\r\n")
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@asynccontextmanager
async def front(parser: str, app_type: type[HttpFront] = HttpFront,
                **listen: Any) -> AsyncIterator[tuple[str, int]]:
    config = Config(listen=ListenSettings(port=0, **listen),
                    http=HttpSettings(parser=parser),  # type: ignore[arg-type]
                    servers={"demo": StdioServer(command=sys.executable,
                                                 args=["-m", "firewall.demo"])})
    app = app_type(config, AllowAll())
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run_front, app)
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        try:
            yield host, int(port)
        finally:
            app.begin_shutdown()
            nursery.cancel_scope.cancel()


class Wire:
    """A raw client connection: send bytes, read whole responses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        return bool(chunk)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-case), body (de-chunked)."""
        with trio.fail_after(30):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._more():
                    raise EOFError(self.buffer)
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status < 200 or status in (204, 304):
                return status, headers, b""
            if "content-length" in headers:
                size = int(headers["content-length"])
                while len(self.buffer) < size:
                    if not await self._more():
                        raise EOFError(self.buffer)
                body, self.buffer = self.buffer[:size], self.buffer[size:]
                return status, headers, body
            if headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    while b"\r\n" not in self.buffer:
                        await self._more()
                    size_line, rest = self.buffer.split(b"\r\n", 1)
                    size = int(size_line, 16)
                    while len(rest) < size + 2:
                        await self._more()
                        rest = self.buffer.split(b"\r\n", 1)[1]
                    body += rest[:size]
                    self.buffer = rest[size + 2:]
                    if size == 0:
                        return status, headers, body
            while await self._more():  # delimited by the connection's end
                pass
            body, self.buffer = self.buffer, b""
            return status, headers, body

    async def closed(self) -> bool:
        """True when the server closed the connection (after what was buffered)."""
        with trio.fail_after(30):
            try:
                return not await self._more()
            except trio.BrokenResourceError:
                return True


@asynccontextmanager
async def wire(address: tuple[str, int]) -> AsyncIterator[Wire]:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        yield Wire(stream)


def post(body: bytes, extra: bytes = b"", path: bytes = b"/servers/demo/mcp") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\n" + MCP_HEADERS + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.slow
async def test_keep_alive_and_pipelined_requests_answer_in_order(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        await client.send(HEALTH + post(INIT) + HEALTH
                          + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await client.response()
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, headers, body = await client.response()
        assert status == 200 and headers.get("mcp-session-id")
        assert b'"init-7"' in body
        status, _, _ = await client.response()
        assert status == 200
        status, _, body = await client.response()
        assert status == 404 and json.loads(body)["error"]["code"] == -32600
        await client.send(HEALTH)  # the connection lives on
        assert (await client.response())[0] == 200


@pytest.mark.slow
async def test_requests_split_byte_by_byte(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        for byte in post(INIT):
            await client.send(bytes([byte]))
        status, _, body = await client.response()
        assert status == 200 and b'"init-7"' in body


@pytest.mark.slow
async def test_chunked_request_body(parser: str) -> None:
    chunks = [INIT[:10], INIT[10:50], INIT[50:]]
    framed = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    request = (b"POST /servers/demo/mcp HTTP/1.1\r\n" + MCP_HEADERS
               + b"Transfer-Encoding: chunked\r\n\r\n" + framed)
    async with front(parser) as address, wire(address) as client:
        await client.send(request + HEALTH)
        status, _, body = await client.response()
        assert status == 200 and b'"init-7"' in body
        assert (await client.response())[0] == 200


@pytest.mark.slow
async def test_expect_100_continue(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        await client.send(b"POST /servers/demo/mcp HTTP/1.1\r\n" + MCP_HEADERS
                          + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(INIT))
        status, _, _ = await client.response()
        assert status == 100
        await client.send(INIT)
        status, _, body = await client.response()
        assert status == 200 and b'"init-7"' in body


async def test_http_1_0_gets_an_answer_and_a_close(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        await client.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, _, body = await client.response()
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert await client.closed()


async def test_connection_close_is_honoured(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = await client.response()
        assert status == 200 and headers.get("connection") == "close"
        assert await client.closed()


async def test_oversized_body_gets_413_with_a_json_rpc_error(parser: str) -> None:
    async with front(parser, max_body_bytes=1000) as address:
        async with wire(address) as client:  # announced by Content-Length
            await client.send(post(b"x" * 5000))
            status, headers, body = await client.response()
            assert status == 413 and headers.get("connection") == "close"
            assert json.loads(body)["error"]["code"] == jsonrpc.MESSAGE_TOO_LARGE
            assert await client.closed()
        async with wire(address) as client:  # chunked: found out while reading
            big = b"%x\r\n%b\r\n" % (800, b"y" * 800)
            await client.send(b"POST /servers/demo/mcp HTTP/1.1\r\n" + MCP_HEADERS
                              + b"Transfer-Encoding: chunked\r\n\r\n" + big + big)
            status, _, body = await client.response()
            assert status == 413 and "max_body_bytes" in json.loads(body)["error"]["message"]
            assert await client.closed()
        async with wire(address) as client:  # the front lives on
            await client.send(HEALTH)
            assert (await client.response())[0] == 200


@pytest.mark.parametrize("bad", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST /servers/demo/mcp HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    b"POST /servers/demo/mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_malformed_requests_get_400_and_a_close(parser: str, bad: bytes) -> None:
    async with front(parser) as address:
        async with wire(address) as client:
            await client.send(bad)
            status, headers, _ = await client.response()
            assert status == 400 and headers.get("connection") == "close"
            assert await client.closed()
        async with wire(address) as client:
            await client.send(HEALTH)
            assert (await client.response())[0] == 200


async def test_unknown_http_version_is_refused() -> None:
    async with front("httptools") as address, wire(address) as client:  # h11 answers it
        await client.send(b"GET /healthz HTTP/9.9\r\n\r\n")
        status, headers, _ = await client.response()
        assert status == 400 and headers.get("connection") == "close"
        assert await client.closed()


async def test_oversized_headers_are_refused(parser: str) -> None:
    async with front(parser) as address:
        if parser == "httptools":  # h11 limits only a head still incomplete
            async with wire(address) as client:
                await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
                                  + b"a" * 40_000 + b"\r\n\r\n")
                status, headers, _ = await client.response()
                assert status == 431 and headers.get("connection") == "close"
                assert await client.closed()
        async with wire(address) as client:  # a head that never ends
            await client.send(b"GET /healthz HTTP/1.1\r\nX-Endless: " + b"b" * 40_000)
            status, _, _ = await client.response()
            assert status == 431
            assert await client.closed()
        async with wire(address) as client:
            await client.send(HEALTH)
            assert (await client.response())[0] == 200


async def test_client_gone_mid_body(parser: str) -> None:
    async with front(parser) as address:
        for _ in range(3):
            async with wire(address) as client:
                await client.send(b"POST /servers/demo/mcp HTTP/1.1\r\n" + MCP_HEADERS
                                  + b"Content-Length: 500\r\n\r\n" + INIT[:40])
        async with wire(address) as client:
            await client.send(HEALTH)
            assert (await client.response())[0] == 200


@pytest.mark.slow
async def test_upgrade_requests_are_answered_in_http_1_1(parser: str) -> None:
    async with front(parser) as address:
        async with wire(address) as client:  # h2c with a body, as curl --http2 sends it
            await client.send(post(INIT, b"Connection: Upgrade, HTTP2-Settings\r\n"
                                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n")
                              + HEALTH)
            status, _, body = await client.response()
            assert status == 200 and b'"init-7"' in body
            assert (await client.response())[0] == 200
        async with wire(address) as client:  # websocket: not served, and said so
            await client.send(b"GET /servers/demo/mcp HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                              b"Sec-WebSocket-Version: 13\r\n"
                              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            status, _, _ = await client.response()
            assert status != 101 and status >= 400
        async with wire(address) as client:
            await client.send(HEALTH)
            assert (await client.response())[0] == 200


@pytest.mark.slow
async def test_sse_stream_is_chunked_and_flushed_per_event(parser: str) -> None:
    async with front(parser, keepalive_seconds=0.2) as address, wire(address) as client:
        await client.send(post(INIT))
        _, headers, _ = await client.response()
        sid = headers["mcp-session-id"].encode()
        await client.send(post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                               b"Mcp-Session-Id: " + sid + b"\r\n"))
        assert (await client.response())[0] == 202
        await client.send(b"GET /servers/demo/mcp HTTP/1.1\r\nHost: x\r\n"
                          b"Accept: text/event-stream\r\nMcp-Session-Id: " + sid + b"\r\n\r\n")
        with trio.fail_after(30):
            while b"\r\n\r\n" not in client.buffer:
                await client._more()
            head = client.buffer.split(b"\r\n\r\n", 1)[0].lower()
            assert b"200" in head.split(b"\r\n")[0]
            assert b"transfer-encoding: chunked" in head and b"text/event-stream" in head
            # A keepalive comment arrives on its own, while the stream stays open.
            while b":" not in client.buffer.split(b"\r\n\r\n", 1)[1]:
                await client._more()


async def test_http2_prior_knowledge_goes_to_hypercorns_http2(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
        await client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
        with trio.fail_after(30):
            while len(client.buffer) < 9:
                assert await client._more()
        assert client.buffer[3] == 0x04  # the server's SETTINGS frame, not HTTP/1.1


@pytest.mark.slow
async def test_pipelined_posts_answer_in_order_and_close_when_asked(parser: str) -> None:
    # With httptools each POST whose body came whole is served without ASGI
    # (http11 rule 7); the GET between them goes through ASGI.
    notification = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    async with front(parser) as address:
        async with wire(address) as client:
            await client.send(post(INIT) + post(b"{not json") + HEALTH)
            status, headers, body = await client.response()
            assert status == 200 and b'"init-7"' in body and headers.get("mcp-session-id")
            status, _, body = await client.response()
            assert status == 400 and json.loads(body)["error"]["code"] == jsonrpc.PARSE_ERROR
            assert (await client.response())[0] == 200
        async with wire(address) as client:
            await client.send(post(INIT, b"Connection: close\r\n"))
            status, headers, body = await client.response()
            assert status == 200 and b'"init-7"' in body and headers.get("connection") == "close"
            assert await client.closed()
        for refused in (post(INIT, path=b"/servers/nowhere/mcp"),
                        post(notification, b"Mcp-Session-Id: unknown\r\n")):
            async with wire(address) as client:  # refused before its body was read: closed
                await client.send(refused)
                status, headers, body = await client.response()
                assert status == 404 and headers.get("connection") == "close"
                assert json.loads(body)["error"]["code"] == jsonrpc.INVALID_REQUEST
                assert await client.closed()


@pytest.mark.slow
async def test_http_1_0_post_gets_its_answer_and_a_close(parser: str) -> None:
    async with front(parser) as address, wire(address) as client:
        await client.send(b"POST /servers/demo/mcp HTTP/1.0\r\n" + MCP_HEADERS
                          + b"Content-Length: %d\r\n\r\n" % len(INIT) + INIT)
        status, headers, body = await client.response()
        assert status == 200 and b'"init-7"' in body and "chunked" not in str(headers)
        assert await client.closed()


@pytest.mark.slow
async def test_posts_reach_the_front_without_asgi_only_with_httptools(parser: str) -> None:
    seen: list[str] = []

    class Counting(HttpFront):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append(scope["method"])
            await super().__call__(scope, receive, send)

    async with front(parser, Counting) as address, wire(address) as client:
        await client.send(post(INIT) + HEALTH)
        assert (await client.response())[0] == 200
        assert (await client.response())[0] == 200
    assert seen == (["GET"] if parser == "httptools" else ["POST", "GET"])
