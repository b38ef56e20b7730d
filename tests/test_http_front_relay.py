"""The HTTP front in front of a Streamable HTTP upstream (firewall.gateway.front.http_endpoint).

The upstream is a small raw ASGI MCP server on hypercorn (trio worker) that
records what reaches it; mcpwall runs in-process on real sockets; the client
is mcpwall's own pooled upstream client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from firewall.audit.events import OutcomeEvent
from firewall.config import Config, HttpServer, HttpSettings, ListenSettings
from firewall.gateway.front import http_front
from firewall.gateway.front.http_front import HttpFront, run_front
from firewall.gateway.upstream.http import HttpUpstream
from firewall.policy.decision import ALLOW, DENY, PENDING, AllowAll, Caller, Decision
from firewall.protocol import jsonrpc
from firewall.protocol.jsonrpc import Kind
from firewall.protocol.mcp import Call
from firewall.protocol.sse import Event, SSEParser, encode_event
from tests.test_mediator import Recorder

ACCEPT_BOTH = "application/json, text/event-stream"
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"}}}


def compact(message: Any) -> bytes:
    """JSON as the MCP SDKs write it (no whitespace): relayed byte for byte."""
    return json.dumps(message, separators=(",", ":")).encode()


def note(text: str) -> bytes:
    return compact({"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "info", "data": text}})


def answer(rid: Any, text: str = "ok") -> bytes:
    return compact({"jsonrpc": "2.0", "id": rid,
                    "result": {"content": [{"type": "text", "text": text}]}})


# A priming event, as the MCP Python SDK writes it (2025-11-25: resumable streams).
PRIMING = b"id: p1\r\ndata: \r\nretry: 3000\r\n\r\n"
SAMPLING = compact({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage",
                    "params": {"messages": [], "maxTokens": 1}})


class RecordingUpstream:
    """An MCP server over Streamable HTTP: JSON answers, GET streams held open.

    A tools/call of one of these tools is answered on an event stream instead:
    ``burst`` (a notification, a block with only an id and a retry, the answer:
    all in one write, then the end), ``spaced`` (a notification; the answer once
    :attr:`go` is set), ``ask`` (a sampling request, then the answer, in one
    write), ``silent`` (the stream's head, then nothing until released) and
    ``priming`` (a priming event as the MCP SDK writes it: ``id``, an empty
    ``data`` line and ``retry``, CRLF-terminated; then the answer). ``broken``
    is answered with a plain-text HTTP 500, ``mute`` with nothing at all until
    :attr:`release_streams` is set.
    With :attr:`quiet_get` set, a GET stream sends its head and no event.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.bodies: list[bytes] = []
        self.streams_open = 0
        self.stream_opened = trio.Event()
        self.release_streams = trio.Event()
        self.go = trio.Event()
        self.response_seen = trio.Event()  # a client's answer to a request of ours came
        self.quiet_get = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append((scope["method"], headers))
        if scope["method"] == "GET":
            await self._stream(send)
            return
        self.bodies.append(body)
        msg = jsonrpc.decode(body)
        if msg.kind is Kind.RESPONSE:
            self.response_seen.set()
        if msg.request_id is None or msg.kind is Kind.RESPONSE:
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        tool = json.loads(body)["params"]["name"] if msg.method == "tools/call" else None
        if tool == "broken":
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
            return
        if tool == "mute":
            await self.release_streams.wait()
        if tool not in (None, "echo", "mute"):
            await self._answer_on_stream(send, msg.request_id, tool)
            return
        extra: list[tuple[bytes, bytes]] = []
        result: dict[str, Any] = {"content": [{"type": "text", "text": "ok"}]}
        if msg.method == "initialize":
            extra = [(b"mcp-session-id", b"upstream-1")]
            result = {"protocolVersion": "2025-06-18", "capabilities": {},
                      "serverInfo": {"name": "up", "version": "1"}}
        out = compact({"jsonrpc": "2.0", "id": msg.request_id, "result": result})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": out})

    async def _answer_on_stream(self, send: Any, rid: Any, tool: str) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        if tool == "burst":
            body = (encode_event(note("first"), id="n1") + b"id: n2\nretry: 1500\n\n"
                    + encode_event(answer(rid), id="a1", event="message"))
            await send({"type": "http.response.body", "body": body})
        elif tool == "spaced":
            await send({"type": "http.response.body", "more_body": True,
                        "body": encode_event(note("first"), id="n1")})
            await self.go.wait()
            await send({"type": "http.response.body", "body": encode_event(answer(rid), id="a1")})
        elif tool == "priming":
            await send({"type": "http.response.body", "more_body": True, "body": PRIMING})
            await self.go.wait()
            await send({"type": "http.response.body", "body": encode_event(answer(rid), id="a1")})
        elif tool == "ask":
            await send({"type": "http.response.body",
                        "body": encode_event(SAMPLING) + encode_event(answer(rid))})
        else:  # silent
            await send({"type": "http.response.body", "more_body": True, "body": b""})
            await self.release_streams.wait()
            await send({"type": "http.response.body", "body": b""})

    async def _stream(self, send: Any) -> None:
        self.streams_open += 1
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            if self.quiet_get:
                await send({"type": "http.response.body", "more_body": True, "body": b""})
                await self.release_streams.wait()
                await send({"type": "http.response.body", "body": b""})
                return
            note = {"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "info", "data": "hello"}}
            await send({"type": "http.response.body", "more_body": True,
                        "body": encode_event(json.dumps(note).encode(), id="e1")})
            self.stream_opened.set()
            await self.release_streams.wait()
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.streams_open -= 1


# Every test of this file runs with each HTTP/1.1 parser; through() reads it here.
PARSER: list[Any] = ["httptools"]


@pytest.fixture(autouse=True)
def _each_parser(http_parser: str) -> None:
    PARSER[0] = http_parser


class NoServerRequests:
    """A policy that allows every call of the client and refuses the server's requests."""

    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        if call.direction == "server":
            return Decision(DENY, rule="no-server-requests")
        return Decision(ALLOW, rule="clients")

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        return True


class AskTheClient:
    """Allows every call; holds calls of ``mute`` for the person in the client (elicitation)."""

    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        if call.target == "mute":
            return Decision(PENDING, rule="ask", approval="client")
        return Decision(ALLOW, rule="clients")

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        return True


@asynccontextmanager
async def through(max_connections: int = 1, keepalive: float = 30, upstream_timeout: float = 300,
                  policy: Any = None, audit: Recorder | None = None,
                  up_url: str | None = None) -> AsyncIterator[tuple[str, RecordingUpstream]]:
    """mcpwall in front of a RecordingUpstream (or of ``up_url``); yields
    (mcpwall's URL, upstream)."""
    upstream = RecordingUpstream()
    hyper = HypercornConfig()
    hyper.bind = ["127.0.0.1:0"]
    hyper.accesslog = None
    hyper.errorlog = None
    async with trio.open_nursery() as nursery:
        up_base = (await nursery.start(partial(serve, upstream, hyper)))[0]
        config = Config(listen=ListenSettings(port=0, keepalive_seconds=keepalive,
                                              upstream_timeout_seconds=upstream_timeout),
                        http=HttpSettings(parser=PARSER[0]),
                        servers={"up": HttpServer(url=up_url or up_base + "/mcp",
                                                  max_connections=max_connections)})
        front = HttpFront(config, policy or AllowAll(), audit)
        binds = await nursery.start(run_front, front)
        try:
            yield binds[0] + "/servers/up/mcp", upstream
        finally:
            upstream.release_streams.set()
            front.begin_shutdown()
            nursery.cancel_scope.cancel()


async def initialize(http: HttpUpstream) -> str:
    async with http.request("POST", {"accept": ACCEPT_BOTH, "content-type": "application/json"},
                            json.dumps(INIT).encode()) as resp:
        assert resp.status == 200
        await resp.read()
        sid = resp.header("mcp-session-id")
    assert sid is not None and sid != "upstream-1"
    return sid


def call(rid: int, tool: str = "echo") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                       "params": {"name": tool, "arguments": {}}}).encode()


def post_headers(sid: str) -> dict[str, str]:
    return {"accept": ACCEPT_BOTH, "content-type": "application/json", "mcp-session-id": sid}


def events_of(body: bytes) -> list[Event]:
    return SSEParser(keep_dataless=True).feed(body)


async def test_second_get_stream_is_refused_with_409() -> None:
    with trio.fail_after(60):  # a guard against a hang, not a timing claim
        await _second_get_stream_is_refused_with_409()


async def _second_get_stream_is_refused_with_409() -> None:
    async with through() as (url, upstream), HttpUpstream(url, max_connections=4) as http:
        sid = await initialize(http)
        headers = {"accept": "text/event-stream", "mcp-session-id": sid}
        async with http.request("GET", headers) as first:
            assert first.status == 200
            events = first.events()
            event = await events.__anext__()
            assert event.id == "e1" and b"hello" in (event.data or b"")
            async with http.request("GET", headers) as second:
                assert second.status == 409
                assert json.loads(await second.read())["error"]["code"] == jsonrpc.INVALID_REQUEST
            # A resumption names one of the upstream's streams: the upstream decides.
            async with http.request("GET", {**headers, "last-event-id": "e1"}) as resumed:
                assert resumed.status == 200
        gets = [h for method, h in upstream.seen if method == "GET"]
        assert len(gets) == 2 and gets[1]["last-event-id"] == "e1"
        assert all(h["mcp-session-id"] == "upstream-1" for h in gets)
        # Once the first stream is gone (its client left), a new GET is served.
        statuses = []
        with trio.fail_after(30):
            while not statuses or statuses[-1] == 409:
                async with http.request("GET", headers) as again:
                    statuses.append(again.status)
                await trio.sleep(0.01)
        assert statuses[-1] == 200


async def test_silent_stream_gets_keepalive_comments_between_events() -> None:
    async with through(keepalive=0.2) as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        headers = {"accept": "text/event-stream", "mcp-session-id": sid}
        async with http.request("GET", headers) as stream:
            assert stream.status == 200
            seen = b""
            with trio.fail_after(10):
                while b"hello" not in seen or seen.count(b": keepalive") < 2:
                    seen += await stream.receive_chunk()
            # The upstream's event came through whole, between the comments.
            assert b"id: e1" in seen
            upstream.release_streams.set()


async def test_get_streams_leave_the_request_pool_to_posts() -> None:
    # One request connection to the upstream; the GET stream must not take it.
    async with through(max_connections=1) as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        get_headers = {"accept": "text/event-stream", "mcp-session-id": sid}
        post_headers = {"accept": ACCEPT_BOTH, "content-type": "application/json",
                        "mcp-session-id": sid}
        async with http.request("GET", get_headers) as stream:
            assert stream.status == 200
            # A POST that waits for the GET stream's connection waits until the stream
            # ends: this bound only turns that deadlock into a failure.
            with trio.move_on_after(30) as waited:
                await upstream.stream_opened.wait()
                for rid in (1, 2):
                    async with http.request("POST", post_headers, call(rid)) as resp:
                        assert resp.status == 200
                        assert json.loads(await resp.read())["id"] == rid
            assert not waited.cancelled_caught, "a POST waited for the GET stream's connection"
            assert upstream.streams_open == 1


async def test_json_answer_has_a_length_and_headers_follow_the_client() -> None:
    async with through() as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        for rid, version in ((1, "2025-06-18"), (2, "2025-06-18"), (3, "2025-11-25")):
            headers = {"accept": ACCEPT_BOTH, "content-type": "application/json",
                       "mcp-session-id": sid, "mcp-protocol-version": version,
                       "authorization": "Bearer client-secret"}
            async with http.request("POST", headers, call(rid)) as resp:
                body = await resp.read()
                assert resp.status == 200 and json.loads(body)["id"] == rid
                assert resp.header("content-length") == str(len(body))
                assert resp.header("transfer-encoding") is None
        posts = [h for method, h in upstream.seen if method == "POST"][-3:]
        # A changed header reaches the upstream: the per-session cache follows the client.
        assert [h["mcp-protocol-version"] for h in posts] == ["2025-06-18", "2025-06-18",
                                                              "2025-11-25"]
        assert all(h["mcp-session-id"] == "upstream-1" for h in posts)
        assert all("authorization" not in h for h in posts)


async def test_events_that_arrive_together_are_relayed_whole_and_in_order() -> None:
    async with through() as (url, _upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(7, "burst")) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            body = await resp.read()
        # Ids, the event type and retry pass through unchanged (Last-Event-ID
        # resumption stays the upstream's); the id-only block is kept.
        assert events_of(body) == [Event(data=note("first"), id="n1"),
                                   Event(data=None, id="n2", retry=1500),
                                   Event(data=answer(7), id="a1", event="message")]
        # The connection to mcpwall is still good for the next call.
        async with http.request("POST", post_headers(sid), call(8)) as resp:
            assert json.loads(await resp.read())["id"] == 8


async def test_events_spaced_in_time_are_relayed_as_they_come() -> None:
    async with through(keepalive=0.2) as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(7, "spaced")) as resp:
            assert resp.status == 200
            seen = b""
            with trio.fail_after(10):  # a guard against a hang, not a timing claim
                # The first event reaches the client while the upstream holds the answer,
                # and silences are filled with comments.
                while b"keepalive" not in seen.partition(b"first")[2]:
                    seen += await resp.receive_chunk()
            assert not upstream.go.is_set()
            assert events_of(seen) == [Event(data=note("first"), id="n1")]
            upstream.go.set()
            seen += await resp.read()
        assert events_of(seen) == [Event(data=note("first"), id="n1"),
                                   Event(data=answer(7), id="a1")]


async def test_a_silent_stream_ends_with_a_timeout_error_for_the_call() -> None:
    async with through(keepalive=0.2, upstream_timeout=1) as (url, upstream), \
            HttpUpstream(url) as http:
        sid = await initialize(http)
        with trio.fail_after(30):  # a guard against a hang, not a timing claim
            async with http.request("POST", post_headers(sid), call(7, "silent")) as resp:
                assert resp.status == 200
                body = await resp.read()
        assert body.startswith(b": keepalive")
        [event] = events_of(body)
        error = json.loads(event.data or b"")
        assert error["id"] == 7 and error["error"]["code"] == jsonrpc.UPSTREAM_TIMEOUT
        upstream.release_streams.set()


async def test_a_refused_server_request_is_answered_though_its_stream_ended() -> None:
    async with through(max_connections=2, policy=NoServerRequests()) as (url, upstream), \
            HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(7, "ask")) as resp:
            body = await resp.read()
        # The sampling request never reaches the client; its answer does.
        assert events_of(body) == [Event(data=answer(7))]
        with trio.fail_after(10):  # a guard against a hang, not a timing claim
            await upstream.response_seen.wait()
        refusal = json.loads(next(seen for seen in upstream.bodies if b'"s1"' in seen))
        assert refusal["id"] == "s1" and "error" in refusal


async def test_keep_alive_timeout_closes_idle_connections_never_busy_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = http_front.hypercorn_config

    def short_keep_alive(*args: Any, **kwargs: Any) -> Any:
        hyper = original(*args, **kwargs)
        hyper.keep_alive_timeout = 0.3
        return hyper

    monkeypatch.setattr(http_front, "hypercorn_config", short_keep_alive)
    async with through() as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(7, "spaced")) as resp:
            seen = b""
            with trio.fail_after(10):  # a guard against a hang, not a timing claim
                while b"first" not in seen:
                    seen += await resp.receive_chunk()
            await trio.sleep(1)  # silent, and past the keep-alive timeout: still busy
            upstream.go.set()
            seen += await resp.read()
        assert events_of(seen)[-1] == Event(data=answer(7), id="a1")
        async with http.request("POST", post_headers(sid), call(8)) as resp:
            assert json.loads(await resp.read())["id"] == 8
        assert http.stats().opened == 1  # the connection outlived the long exchange
        # Idle past the timeout, mcpwall closes the connection: wait for its EOF to reach
        # the pooled connection (what the pool checks before reuse), not for a fixed time.
        (idle,) = http._idle
        with trio.fail_after(10):  # a guard against a hang, not a timing claim
            while not idle.has_pending_input():  # noqa: ASYNC110 (a socket poll, no event)
                await trio.sleep(0.02)
        async with http.request("POST", post_headers(sid), call(9)) as resp:
            assert json.loads(await resp.read())["id"] == 9
        assert http.stats().opened == 2


# The keepalive interval of the next two tests: the head must not wait for it.
LONG_KEEPALIVE = 600.0


async def test_a_get_stream_head_reaches_the_client_before_any_event() -> None:
    async with through(keepalive=LONG_KEEPALIVE) as (url, upstream), HttpUpstream(url) as http:
        upstream.quiet_get = True
        sid = await initialize(http)
        # A guard well below the keepalive: a head held for the first event
        # (or keepalive comment) would trip it.
        with trio.fail_after(LONG_KEEPALIVE / 20):
            async with http.request("GET", {"accept": "text/event-stream",
                                            "mcp-session-id": sid}) as stream:
                assert stream.status == 200
                assert stream.content_type == "text/event-stream"
                assert upstream.streams_open == 1


async def test_an_sse_answer_head_reaches_the_client_before_any_event() -> None:
    async with through(keepalive=LONG_KEEPALIVE) as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        with trio.fail_after(LONG_KEEPALIVE / 20):
            async with http.request("POST", post_headers(sid), call(5, "silent")) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/event-stream"
                upstream.release_streams.set()
                # The upstream ended the stream without an answer: the call's error.
                events = events_of(await resp.read())
                assert json.loads(events[-1].data or b"")["id"] == 5


async def test_a_priming_event_is_relayed_with_its_empty_data_line() -> None:
    async with through() as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(6, "priming")) as resp:
            assert resp.status == 200
            seen = b""
            with trio.fail_after(30):  # a guard against a hang
                while b"\n\n" not in seen:
                    seen += await resp.receive_chunk()
            # The priming event came on its own, before the answer was released.
            block = seen.split(b"\n\n")[0]
            primed = block + b"\n\n"
            assert sorted(block.split(b"\n")) == [b"data: ", b"id: p1", b"retry: 3000"]
            assert events_of(primed) == [Event(data=b"", id="p1", retry=3000)]
            upstream.go.set()
            seen += await resp.read()
        events = events_of(seen)
        assert events[0] == Event(data=b"", id="p1", retry=3000)
        assert json.loads(events[1].data or b"")["id"] == 6 and events[1].id == "a1"
        # The priming event is not a message: nothing about it reached the upstream
        # (a refused or broken message would be answered with an error POST).
        assert len(upstream.bodies) == 2


def outcomes(audit: Recorder) -> list[tuple[str, int | None]]:
    return [(o.status, o.error_code) for o in audit.of(OutcomeEvent)]


async def test_a_stream_ended_without_the_answer_is_the_calls_upstream_failure() -> None:
    audit = Recorder()
    async with through(audit=audit) as (url, upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(5, "silent")) as resp:
            upstream.release_streams.set()
            [event] = events_of(await resp.read())
        error = json.loads(event.data or b"")
        assert error["id"] == 5 and error["error"] == {
            "code": jsonrpc.UPSTREAM_UNAVAILABLE, "data": {"server": "up"},
            "message": "upstream server 'up' ended the stream without an answer"}
    # Answered by mcpwall, and recorded as such (not as the upstream's own error).
    assert outcomes(audit) == [("ok", None), ("upstream_failure", jsonrpc.UPSTREAM_UNAVAILABLE)]


async def test_an_answer_that_is_no_answer_is_the_calls_upstream_failure() -> None:
    audit = Recorder()
    async with through(audit=audit) as (url, _upstream), HttpUpstream(url) as http:
        sid = await initialize(http)
        async with http.request("POST", post_headers(sid), call(6, "broken")) as resp:
            assert resp.status == 500
            error = json.loads(await resp.read())
        assert error["id"] == 6 and error["error"]["code"] == jsonrpc.UPSTREAM_UNAVAILABLE
        assert error["error"]["message"] == ("upstream server 'up' answered HTTP 500 with "
                                             "text/plain")
        # The call is no longer pending: the next one is served as usual.
        async with http.request("POST", post_headers(sid), call(7)) as resp:
            assert json.loads(await resp.read())["id"] == 7
    assert outcomes(audit) == [("ok", None), ("upstream_failure", jsonrpc.UPSTREAM_UNAVAILABLE),
                               ("ok", None)]


async def test_an_unreachable_upstream_is_the_calls_upstream_failure() -> None:
    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    audit = Recorder()
    stateless = {"accept": ACCEPT_BOTH, "content-type": "application/json"}  # no session
    async with through(audit=audit, up_url=f"http://127.0.0.1:{port}/mcp") as (url, _), \
            HttpUpstream(url) as http, http.request("POST", stateless, call(8)) as resp:
        assert resp.status == 502
        error = json.loads(await resp.read())
    assert error["id"] == 8 and error["error"]["code"] == jsonrpc.UPSTREAM_UNAVAILABLE
    assert error["error"]["message"] == "upstream server 'up' failed: connect_refused"
    assert outcomes(audit) == [("upstream_failure", jsonrpc.UPSTREAM_UNAVAILABLE)]


async def test_a_held_call_whose_upstream_times_out_is_answered_on_its_stream() -> None:
    audit = Recorder()
    async with through(max_connections=2, upstream_timeout=1, policy=AskTheClient(),
                       audit=audit) as (url, upstream), \
            HttpUpstream(url, max_connections=2) as http:
        init = {**INIT, "params": {**INIT["params"], "capabilities": {"elicitation": {}}}}
        async with http.request("POST", {"accept": ACCEPT_BOTH, "content-type":
                                         "application/json"}, json.dumps(init).encode()) as resp:
            await resp.read()
            sid = resp.header("mcp-session-id")
        assert sid is not None
        with trio.fail_after(30):  # a guard against a hang, not a timing claim
            async with http.request("POST", post_headers(sid), call(9, "mute")) as resp:
                assert resp.content_type == "text/event-stream"
                events = resp.events()
                ask = json.loads((await events.__anext__()).data or b"")
                assert ask["method"] == "elicitation/create"
                yes = compact({"jsonrpc": "2.0", "id": ask["id"], "result": {
                    "action": "accept", "content": {"approve": True}}})
                async with http.request("POST", post_headers(sid), yes) as answered:
                    assert answered.status == 202
                # Approved, forwarded, and the upstream sends nothing, not even a head.
                last = [json.loads(e.data or b"") async for e in events][-1]
        upstream.release_streams.set()
    assert last["id"] == 9 and last["error"]["code"] == jsonrpc.UPSTREAM_TIMEOUT
    assert outcomes(audit)[-1] == ("timeout", jsonrpc.UPSTREAM_TIMEOUT)
