"""The pooled HTTP/1.1 upstream client (firewall.gateway.upstream.http).

Every test talks to a real server on 127.0.0.1: hypercorn (trio worker)
serving a small ASGI app, raw trio TCP servers for broken peers, and the MCP
Python SDK's own Streamable HTTP server.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import h11
import msgspec
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from mcp.server.mcpserver import Context, MCPServer

from firewall.gateway.upstream.http import MAX_HEAD_BYTES, HttpUpstream, Reason, UpstreamError
from firewall.protocol import jsonrpc
from firewall.protocol.sse import Event, SSEParser, encode_event

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ScriptedApp:
    """An ASGI app with one route per behaviour the client must handle."""

    def __init__(self) -> None:
        self.clients: list[tuple[str, int]] = []  # (host, port) of each request
        self.arrived = 0
        self.release = trio.Event()
        self.disconnected = trio.Event()
        self._arrival = trio.Event()

    async def wait_arrived(self, count: int) -> None:
        """Until ``count`` requests have reached the app."""
        while self.arrived < count:
            await self._arrival.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.clients.append(tuple(scope["client"]))
        self.arrived += 1
        self._arrival.set()
        self._arrival = trio.Event()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        handler = getattr(self, "route_" + scope["path"].strip("/").replace("-", "_"))
        await handler(scope, body, receive, send)

    @staticmethod
    async def respond(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        base = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send(
            {"type": "http.response.start", "status": status, "headers": base + (headers or [])}
        )
        await send({"type": "http.response.body", "body": body})

    async def route_mcp(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        msg = jsonrpc.decode(body)
        answer = {"jsonrpc": "2.0", "id": msg.request_id, "result": {"method": msg.method}}
        await self.respond(send, 200, json.dumps(answer).encode())

    async def route_headers(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        seen = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        answer = {"method": scope["method"], "headers": seen, "body": body.decode()}
        await self.respond(send, 200, json.dumps(answer).encode())

    async def route_chunked(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        # No content-length: hypercorn frames the body with chunked encoding.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def route_close(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await self.respond(send, 200, b"{}", [(b"connection", b"close")])

    async def route_empty(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await self.respond(send, 202, b"")

    async def route_big(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await self.respond(send, 200, b"x" * (1024 * 1024))

    async def route_error(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await self.respond(send, 503, b'{"error":"overloaded"}')

    async def route_hold(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await self.release.wait()
        await self.respond(send, 200, b"{}")

    async def route_slow(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await trio.sleep_forever()

    async def route_abort(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        await send({"type": "http.response.body", "body": b"0123456789", "more_body": True})
        raise RuntimeError("handler dies mid-body")  # hypercorn drops the connection

    async def route_sse(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """One event, then wait for the test to release the rest."""

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": encode_event(b'{"progress":1}', id="1"),
                }
            )
            await self.release.wait()
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": b": keepalive\n\n" + encode_event(b'{"progress":2}', id="2"),
                }
            )
            await send(
                {"type": "http.response.body", "body": encode_event(b'{"result":"done"}', id="3")}
            )
            nursery.cancel_scope.cancel()


class Server(msgspec.Struct):
    url: str
    app: Any

    @property
    def ports(self) -> set[int]:
        return {port for _, port in self.app.clients}


async def start_hypercorn(
    nursery: trio.Nursery, app: Any, keep_alive: float = 30.0, tls: tuple[Path, Path] | None = None
) -> str:
    """Serve ``app`` on a free port of 127.0.0.1; return its base URL."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = keep_alive
    config.accesslog = None
    config.errorlog = None
    if tls is not None:
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
    binds: list[str] = await nursery.start(partial(serve, app, config))
    return binds[0]


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    app = ScriptedApp()
    return Server(await start_hypercorn(nursery, app), app)


async def start_raw_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/mcp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(ident: int, method: str = "tools/call") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": {}}).encode()


JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


# --- answers ---------------------------------------------------------------------


async def test_json_answer(server: Server) -> None:
    async with (
        HttpUpstream(server.url + "/mcp") as upstream,
        upstream.request("POST", JSON_HEADERS, call(7)) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.header("Content-Length") is not None
        assert json.loads(await resp.read()) == {
            "jsonrpc": "2.0",
            "id": 7,
            "result": {"method": "tools/call"},
        }


async def test_error_status_is_an_answer_not_a_failure(server: Server) -> None:
    async with (
        HttpUpstream(server.url + "/error") as upstream,
        upstream.request("POST", JSON_HEADERS, call(1)) as resp,
    ):
        assert resp.status == 503
        assert await resp.read() == b'{"error":"overloaded"}'


async def test_headers_sent(server: Server) -> None:
    upstream = HttpUpstream(
        server.url + "/headers?x=1", {"Authorization": "Bearer upstream", "X-Team": "a"}
    )
    async with upstream:
        headers = {
            "x-team": "b",
            "Mcp-Session-Id": "s1",
            "Connection": "upgrade",
            "Host": "evil",
            "Transfer-Encoding": "chunked",
        }
        async with upstream.request("POST", headers, b"{}") as resp:
            seen = json.loads(await resp.read())
    pairs = {name: value for name, value in seen["headers"]}
    assert seen["body"] == "{}"
    assert pairs["authorization"] == "Bearer upstream"
    assert pairs["x-team"] == "b"  # the request's own header wins
    assert pairs["mcp-session-id"] == "s1"
    assert pairs["host"] == server.url.removeprefix("http://")
    assert pairs["content-length"] == "2"
    assert "transfer-encoding" not in pairs
    assert pairs.get("connection") != "upgrade"


async def test_prepared_headers_are_sent_like_a_mapping(server: Server) -> None:
    upstream = HttpUpstream(server.url + "/headers", {"Authorization": "Bearer upstream"})
    async with upstream:
        prepared = upstream.prepare({"Mcp-Session-Id": "s1", "Host": "evil", "authorization": "x"})
        seen = []
        for body in (b"{}", b'{"a":1}'):  # one prepared set, many requests
            async with upstream.request("POST", prepared, body) as resp:
                seen.append(json.loads(await resp.read()))
        async with upstream.request("POST", {"Mcp-Session-Id": "s1", "Host": "evil",
                                             "authorization": "x"}, b'{"a":1}') as resp:
            plain = json.loads(await resp.read())
    assert seen[1] == plain
    pairs = dict(seen[0]["headers"])
    assert pairs["mcp-session-id"] == "s1"
    assert pairs["authorization"] == "x"  # the request's own header wins
    assert pairs["host"] == server.url.removeprefix("http://")
    assert pairs["content-length"] == "2"
    assert upstream.stats().opened == 1


@pytest.mark.parametrize("headers", [{"x-bad": "a\r\nb"}, {"bad name": "x"}, {"nämé": "x"}])
async def test_prepare_refuses_what_h11_would_not_send(
    server: Server, headers: dict[str, str]
) -> None:
    async with HttpUpstream(server.url + "/mcp") as upstream:
        with pytest.raises(UpstreamError) as info:
            upstream.prepare(headers)
        assert info.value.reason is Reason.INVALID_REQUEST
        # A configured header is checked with the request's.
        bad_default = HttpUpstream(server.url + "/mcp", headers)
        with pytest.raises(UpstreamError) as info:
            bad_default.prepare({"accept": "application/json"})
        assert info.value.reason is Reason.INVALID_REQUEST


async def test_get_and_delete_send_no_body(server: Server) -> None:
    async with HttpUpstream(server.url + "/headers") as upstream:
        for method in ("GET", "DELETE"):
            async with upstream.request(method, {"last-event-id": "5"}) as resp:
                seen = json.loads(await resp.read())
            assert seen["method"] == method
            names = [name for name, _ in seen["headers"]]
            assert "content-length" not in names
            assert ["last-event-id", "5"] in seen["headers"]


async def test_chunked_body(server: Server) -> None:
    async with HttpUpstream(server.url + "/chunked") as upstream:
        for _ in range(2):
            async with upstream.request("GET") as resp:
                assert resp.header("transfer-encoding") == "chunked"
                assert b"".join([chunk async for chunk in resp.body()]) == b"one,two,three"
        assert upstream.stats().opened == 1


async def test_large_body_and_read_limit(server: Server) -> None:
    async with HttpUpstream(server.url + "/big") as upstream:
        async with upstream.request("GET") as resp:
            assert len(await resp.read()) == 1024 * 1024
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("GET") as resp:
                await resp.read(max_bytes=1000)
        assert info.value.reason is Reason.TOO_LARGE
        assert info.value.code == jsonrpc.MESSAGE_TOO_LARGE
        stats = upstream.stats()
        assert (stats.opened, stats.closed, stats.idle) == (1, 1, 0)


# --- keep-alive and the pool -----------------------------------------------------


async def test_keep_alive_reuses_one_connection(server: Server) -> None:
    async with HttpUpstream(server.url + "/mcp") as upstream:
        for ident in range(20):
            async with upstream.request("POST", JSON_HEADERS, call(ident)) as resp:
                assert json.loads(await resp.read())["id"] == ident
        stats = upstream.stats()
    assert len(server.ports) == 1
    assert (stats.opened, stats.reused, stats.in_flight) == (1, 19, 0)


async def test_unread_body_already_buffered_keeps_the_connection(server: Server) -> None:
    async with HttpUpstream(server.url + "/empty") as upstream:
        for _ in range(3):
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                assert resp.status == 202  # body (empty) never read
    assert len(server.ports) == 1


async def test_unread_body_closes_the_connection(server: Server) -> None:
    async with HttpUpstream(server.url + "/big") as upstream:
        for _ in range(2):
            async with upstream.request("GET") as resp:
                assert await resp.receive_chunk()  # part of the body only
        assert upstream.stats().closed == 2
    assert len(server.ports) == 2


async def test_connection_close_header_is_honoured(server: Server) -> None:
    async with HttpUpstream(server.url + "/close") as upstream:
        for _ in range(3):
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                assert await resp.read() == b"{}"
        assert upstream.stats().opened == 3
    assert len(server.ports) == 3


async def test_concurrent_requests_stay_within_the_bound(server: Server) -> None:
    async with HttpUpstream(server.url + "/mcp", max_connections=3) as upstream:
        answers: dict[int, int] = {}

        async def one(ident: int) -> None:
            async with upstream.request("POST", JSON_HEADERS, call(ident)) as resp:
                answers[ident] = json.loads(await resp.read())["id"]

        async with trio.open_nursery() as nursery:
            for ident in range(40):
                nursery.start_soon(one, ident)
        stats = upstream.stats()
    assert answers == {i: i for i in range(40)}
    assert stats.opened <= 3
    assert len(server.ports) <= 3


async def test_waiters_queue_when_the_pool_is_full(server: Server) -> None:
    async with HttpUpstream(server.url + "/hold", max_connections=2) as upstream:
        done = []

        async def one(i: int) -> None:
            async with upstream.request("POST", JSON_HEADERS, b"{}") as resp:
                await resp.read()
                done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(one, i)
            await server.app.wait_arrived(2)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert server.app.arrived == 2  # the other three wait in the client
            assert upstream._slots.statistics().tasks_waiting == 3
            assert upstream.stats().in_flight == 2
            server.app.release.set()
        assert sorted(done) == [0, 1, 2, 3, 4]
        assert upstream.stats().opened == 2
    assert len(server.ports) == 2


async def test_pool_timeout(server: Server) -> None:
    async with (
        HttpUpstream(server.url + "/hold", max_connections=1, pool_timeout=0.1) as upstream,
        trio.open_nursery() as nursery,
    ):

        async def hold() -> None:
            async with upstream.request("POST", JSON_HEADERS, b"{}") as resp:
                await resp.read()

        nursery.start_soon(hold)
        await server.app.wait_arrived(1)
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, b"{}"):
                pass
        assert info.value.reason is Reason.POOL_TIMEOUT
        assert info.value.code == jsonrpc.UPSTREAM_TIMEOUT
        server.app.release.set()


async def test_connection_closed_by_server_while_idle_is_not_reused(nursery: trio.Nursery) -> None:
    # A server that answers with keep-alive framing, then hangs up once idle
    # (as any server does when its keep-alive timeout runs out).
    hung_up: list[trio.Event] = []

    async def answer_then_hang_up(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif type(event) is h11.EndOfMessage:
                break
        body = b'{"ok":true}'
        head = h11.Response(status_code=200, headers=[("content-length", str(len(body)))])
        await stream.send_all(
            conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        await stream.aclose()
        hung_up[-1].set()

    url = await start_raw_server(nursery, answer_then_hang_up)
    async with HttpUpstream(url) as upstream:
        for _ in range(3):
            hung_up.append(trio.Event())
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                assert await resp.read() == b'{"ok":true}'
            with trio.fail_after(30):
                await hung_up[-1].wait()
            await trio.sleep(0.05)  # let the FIN reach our socket
        stats = upstream.stats()
    assert stats.opened == 3
    assert stats.reused == 0


async def test_connection_closed_by_hypercorn_keep_alive_timeout(nursery: trio.Nursery) -> None:
    app = ScriptedApp()
    url = await start_hypercorn(nursery, app, keep_alive=0.1)
    async with HttpUpstream(url + "/mcp") as upstream:
        for ident in range(2):
            async with upstream.request("POST", JSON_HEADERS, call(ident)) as resp:
                assert json.loads(await resp.read())["id"] == ident
            await trio.sleep(0.5)  # past the server's keep-alive timeout
        stats = upstream.stats()
    # Whether or not the server had closed it yet, no request failed.
    assert stats.opened + stats.reused == 2


async def test_keepalive_expiry(server: Server) -> None:
    async with HttpUpstream(server.url + "/mcp", keepalive_expiry=0) as upstream:
        for ident in range(3):
            async with upstream.request("POST", JSON_HEADERS, call(ident)) as resp:
                await resp.read()
        assert upstream.stats().opened == 3


# --- streaming ---------------------------------------------------------------------


async def test_sse_events_arrive_before_the_stream_ends(server: Server) -> None:
    async with HttpUpstream(server.url + "/sse") as upstream:
        async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
            assert resp.content_type == "text/event-stream"
            events = resp.events()
            first = await events.__anext__()
            # The server is still holding the rest back: the first event came alone.
            assert first == Event(data=b'{"progress":1}', id="1")
            assert not server.app.release.is_set()
            server.app.release.set()
            rest = [event async for event in events]
        assert [e.id for e in rest] == ["2", "3"]
        assert rest[-1].data == b'{"result":"done"}'
        assert upstream.stats().idle == 1  # read to the end: the connection is kept


async def test_cancel_mid_stream_closes_the_connection(server: Server) -> None:
    async with HttpUpstream(server.url + "/sse") as upstream:
        with trio.CancelScope() as scope:
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                parser = SSEParser()
                while not parser.feed(await resp.receive_chunk()):
                    pass
                scope.cancel()
                await resp.receive_chunk()  # cancelled here, mid-stream
        assert scope.cancelled_caught
        stats = upstream.stats()
        assert (stats.idle, stats.in_flight, stats.closed) == (0, 0, 1)
        with trio.fail_after(30):
            await server.app.disconnected.wait()  # the server saw the close
        # Nothing broken went back to the pool: the next request gets a new connection.
        server.app.release.set()
        async with upstream.request("POST", JSON_HEADERS, call(2)) as resp:
            assert [e.id async for e in resp.events()] == ["1", "2", "3"]
        assert upstream.stats().opened == 2
    assert len(server.ports) == 2


async def test_response_is_unusable_after_its_block(server: Server) -> None:
    async with HttpUpstream(server.url + "/big") as upstream:
        async with upstream.request("GET") as resp:
            await resp.receive_chunk()
        with pytest.raises(UpstreamError) as info:
            await resp.read()
        assert info.value.reason is Reason.CLOSED


# --- failures ------------------------------------------------------------------------


async def test_upstream_dead_is_connect_refused() -> None:
    async with HttpUpstream(f"http://127.0.0.1:{free_port()}/mcp") as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, call(1)):
                pass
        assert info.value.reason is Reason.CONNECT_REFUSED
        assert info.value.code == jsonrpc.UPSTREAM_UNAVAILABLE
        assert upstream.stats().in_flight == 0


async def test_unknown_host_is_connect_failed() -> None:
    async with HttpUpstream("http://no-such-host.invalid/mcp") as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("GET"):
                pass
        assert info.value.reason is Reason.CONNECT_FAILED


async def test_connect_timeout() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            await trio.sleep(0.05)
            upstream = HttpUpstream(f"http://127.0.0.1:{port}/mcp", connect_timeout=0.2)
            with pytest.raises(UpstreamError) as info:
                async with upstream.request("GET"):
                    pass
            assert info.value.reason is Reason.CONNECT_TIMEOUT
            assert info.value.code == jsonrpc.UPSTREAM_TIMEOUT
        finally:
            for filler in fillers:
                filler.close()


async def test_response_timeout(server: Server) -> None:
    async with HttpUpstream(server.url + "/slow", response_timeout=0.2) as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, call(1)):
                pass
        assert info.value.reason is Reason.TIMEOUT
        stats = upstream.stats()
        assert (stats.in_flight, stats.idle, stats.closed) == (0, 0, 1)


async def test_read_timeout_between_events(server: Server) -> None:
    async with HttpUpstream(server.url + "/sse", read_timeout=0.2) as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                async for _ in resp.events():
                    pass  # the second event never comes (release is not set)
        assert info.value.reason is Reason.TIMEOUT
        # A per-request override lifts the limit.
        server.app.release.set()
        async with upstream.request("POST", JSON_HEADERS, call(1), read_timeout=math.inf) as resp:
            assert len([e async for e in resp.events()]) == 3


async def test_server_dies_mid_body_is_disconnected(server: Server) -> None:
    async with HttpUpstream(server.url + "/abort") as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("GET") as resp:
                await resp.read()
        assert info.value.reason is Reason.DISCONNECTED
        assert upstream.stats().idle == 0


async def test_garbage_is_protocol_error(nursery: trio.Nursery) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await trio.sleep(1)

    url = await start_raw_server(nursery, garbage)
    async with HttpUpstream(url) as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, call(1)):
                pass
        assert info.value.reason is Reason.PROTOCOL_ERROR


def raw_answers(*wires: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A server that answers its connection's n-th request with the n-th wire bytes,
    then closes; answers of one connection, in order, whatever the requests say."""

    async def answer(stream: trio.SocketStream) -> None:
        for wire in wires:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            await stream.send_all(wire)
            if not wire:
                break
        await trio.sleep(0.5)
        await stream.aclose()

    return answer


async def test_interim_1xx_answers_are_skipped(nursery: trio.Nursery) -> None:
    wire = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
    url = await start_raw_server(nursery, raw_answers(wire, wire))
    async with HttpUpstream(url) as upstream:
        for _ in range(2):
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                assert (resp.status, resp.reason) == (200, b"OK")
                assert resp.header("link") is None
                assert await resp.read() == b"{}"
        assert upstream.stats().opened == 1  # a complete exchange keeps the connection


async def test_body_delimited_by_close_is_complete_and_not_reused(nursery: trio.Nursery) -> None:
    async def close_delimited(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\"")
        await stream.send_all(b":1}")
        await stream.aclose()

    url = await start_raw_server(nursery, close_delimited)
    async with HttpUpstream(url) as upstream:
        for _ in range(2):
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                assert await resp.read() == b'{"a":1}'
        stats = upstream.stats()
        assert (stats.opened, stats.reused, stats.idle) == (2, 0, 0)


async def test_bytes_after_the_answer_make_the_connection_unusable(
        nursery: trio.Nursery) -> None:
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n"
    garbage = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}\x00\x01garbage"
    url = await start_raw_server(nursery, raw_answers(extra))
    url2 = await start_raw_server(nursery, raw_answers(garbage))
    for target in (url, url2):
        async with HttpUpstream(target) as upstream:
            async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
                assert await resp.read() == b"{}"
            assert upstream.stats().idle == 0


async def test_head_answer_has_no_body(nursery: trio.Nursery) -> None:
    wire = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n"
    url = await start_raw_server(nursery, raw_answers(wire))
    async with HttpUpstream(url) as upstream, upstream.request("HEAD") as resp:
        assert resp.header("content-length") == "40"
        assert await resp.read() == b""


async def test_oversized_head_is_protocol_error(nursery: trio.Nursery) -> None:
    wire = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n"
    url = await start_raw_server(nursery, raw_answers(wire))
    async with HttpUpstream(url) as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, call(1)):
                pass
        assert info.value.reason is Reason.PROTOCOL_ERROR


async def test_http_1_0_answer_is_not_kept_alive(nursery: trio.Nursery) -> None:
    wire = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    url = await start_raw_server(nursery, raw_answers(wire))
    async with HttpUpstream(url) as upstream:
        async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
            assert resp.http_version == b"1.0"
            assert await resp.read() == b"{}"
        assert upstream.stats().idle == 0


async def test_close_without_answer_is_disconnected(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    url = await start_raw_server(nursery, hang_up)
    async with HttpUpstream(url) as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request("POST", JSON_HEADERS, call(1)):
                pass
        assert info.value.reason is Reason.DISCONNECTED


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("POST", {"x-bad": "a\r\nb"}),
        ("POST", {"bad name": "x"}),
        ("POST", {"nämé": "x"}),
        ("PÖST", {}),
        ("GET /x", {}),
    ],
)
async def test_bad_request_is_invalid_request(
    server: Server, method: str, headers: dict[str, str]
) -> None:
    async with HttpUpstream(server.url + "/mcp") as upstream:
        with pytest.raises(UpstreamError) as info:
            async with upstream.request(method, headers, call(1)):
                pass
        assert info.value.reason is Reason.INVALID_REQUEST
        # The slot came back: the pool still works.
        async with upstream.request("POST", JSON_HEADERS, call(2)) as resp:
            assert json.loads(await resp.read())["id"] == 2


async def test_aclose_closes_everything_and_refuses_new_requests(server: Server) -> None:
    upstream = HttpUpstream(server.url + "/mcp")
    async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
        await resp.read()
    assert upstream.stats().idle == 1
    await upstream.aclose()
    assert upstream.stats().idle == 0
    assert upstream.stats().closed == 1
    with pytest.raises(UpstreamError) as info:
        async with upstream.request("POST", JSON_HEADERS, call(2)):
            pass
    assert info.value.reason is Reason.CLOSED


async def test_aclose_interrupts_a_running_stream(server: Server) -> None:
    upstream = HttpUpstream(server.url + "/sse")
    with pytest.raises(UpstreamError) as info:
        async with upstream.request("POST", JSON_HEADERS, call(1)) as resp:
            await resp.receive_chunk()
            await upstream.aclose()
            await resp.read()
    assert info.value.reason is Reason.CLOSED
    assert upstream.stats().in_flight == 0


@pytest.mark.parametrize(
    "url",
    ["ftp://host/mcp", "http:///mcp", "http://host:99999/mcp", "host:80/mcp", "http://h/é",
     "http://h\x00st/mcp"],
)
def test_bad_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        HttpUpstream(url)


# --- the MCP SDK's own Streamable HTTP server -------------------------------------------


@pytest.fixture
async def mcp_server(nursery: trio.Nursery) -> AsyncIterator[str]:
    server: MCPServer[Any] = MCPServer("upstream-test")

    @server.tool()
    async def add(a: int, b: int, ctx: Context) -> int:
        """Add two numbers, reporting progress on the way."""
        await ctx.report_progress(1, 2, "half way")
        return a + b

    app = server.streamable_http_app()
    yield await start_hypercorn(nursery, app) + "/mcp"


async def test_against_the_mcp_sdk_server(mcp_server: str) -> None:
    headers = dict(JSON_HEADERS)

    async def post(message: dict[str, Any]) -> tuple[int, list[dict[str, Any]], str | None]:
        async with upstream.request("POST", headers, json.dumps(message).encode()) as resp:
            session = resp.header("mcp-session-id")
            if resp.content_type == "text/event-stream":
                messages = [json.loads(e.data) async for e in resp.events() if e.data]
            else:
                body = await resp.read()
                messages = [json.loads(body)] if body else []
            return resp.status, messages, session

    async with HttpUpstream(mcp_server) as upstream:
        status, messages, session = await post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "mcpwall-test", "version": "0"},
                },
            }
        )
        assert status == 200
        assert session
        assert messages[-1]["id"] == 1
        version = messages[-1]["result"]["protocolVersion"]
        headers["mcp-session-id"] = session
        headers["mcp-protocol-version"] = version

        status, messages, _ = await post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert status == 202
        assert messages == []

        status, messages, _ = await post(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "add",
                    "arguments": {"a": 2, "b": 3},
                    "_meta": {"progressToken": "p"},
                },
            }
        )
        assert status == 200
        assert messages[0]["method"] == "notifications/progress"
        assert messages[-1]["id"] == 2
        assert messages[-1]["result"]["content"][0]["text"] == "5"

        async with upstream.request("DELETE", headers) as resp:
            assert resp.status in (200, 204)
            await resp.read()
        async with upstream.request("POST", headers, call(3, "tools/list")) as resp:
            assert resp.status == 404  # the session is gone
            await resp.read()
        assert upstream.stats().opened == 1  # one kept-alive connection for the whole session


# --- TLS ---------------------------------------------------------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost and 127.0.0.1 (PEM cert, PEM key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_upstream(nursery: trio.Nursery, tmp_path: Path) -> None:
    cert_path, key_path = self_signed_certificate(tmp_path)
    url = await start_hypercorn(nursery, ScriptedApp(), tls=(cert_path, key_path)) + "/mcp"
    assert url.startswith("https://")

    trusted = ssl.create_default_context(cafile=str(cert_path))
    async with HttpUpstream(url, ssl_context=trusted) as upstream:
        for ident in range(3):
            async with upstream.request("POST", JSON_HEADERS, call(ident)) as resp:
                assert json.loads(await resp.read())["id"] == ident
        assert upstream.stats().opened == 1

    # The system trust store does not know this certificate: a clear connect failure.
    async with HttpUpstream(url) as untrusting:
        with pytest.raises(UpstreamError) as info:
            async with untrusting.request("POST", JSON_HEADERS, call(1)):
                pass
        assert info.value.reason is Reason.CONNECT_FAILED
        assert "CERTIFICATE_VERIFY_FAILED" in info.value.detail
