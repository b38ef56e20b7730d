"""The HTTP front in-process (trio), in front of a real stdio child.

The child is a small stdio MCP server written for these tests (below): it
answers initialize, tools/list and a few tools that exercise the front's
routing (progress, elicitation, crash, slow, notifications after the answer).
Requests go over real sockets through hypercorn, with mcpwall's own h11 client.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from firewall.config import Config, HttpSettings, ListenSettings, StdioServer
from firewall.gateway.front.http_front import HttpFront, origin_allowed, run_front
from firewall.gateway.front.sessions import SessionStream, parse_event_id
from firewall.gateway.upstream.http import HttpUpstream, UpstreamError
from firewall.identity import TokenEntry, hash_token
from firewall.policy.decision import AllowAll, Caller, Decision
from firewall.protocol.mcp import Call

CHILD = r'''
import json, os, sys, time
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
def text(mid, t, **extra):
    result = {"content": [{"type": "text", "text": t}], **extra}
    send({"jsonrpc": "2.0", "id": mid, "result": result})
waiting = {}
for line in sys.stdin:
    m = json.loads(line)
    mid, method = m.get("id"), m.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {
            "protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
            "serverInfo": {"name": "child", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
            {"name": n, "inputSchema": {"type": "object"}}
            for n in ("echo", "pid", "slow", "progress", "crash", "ask", "notify", "secret")]}})
    elif method == "tools/call":
        name, args = m["params"]["name"], m["params"].get("arguments") or {}
        if name == "echo":
            text(mid, args.get("text", ""))
        elif name == "pid":
            text(mid, str(os.getpid()))
        elif name == "slow":
            time.sleep(args.get("seconds", 1))
            text(mid, "slept")
        elif name == "progress":
            token = m["params"]["_meta"]["progressToken"]
            for i in range(3):
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": i, "total": 3}})
            text(mid, "done")
        elif name == "crash":
            os._exit(3)
        elif name == "ask":
            send({"jsonrpc": "2.0", "id": "srv-1", "method": "elicitation/create",
                  "params": {"message": "name?", "requestedSchema": {"type": "object"}}})
            waiting["srv-1"] = mid
        elif name == "notify":
            text(mid, "will notify")
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "data": "after"}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": "no tool"}})
    elif method is None and mid in waiting:
        text(waiting.pop(mid), json.dumps(m.get("result")))
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
'''

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"}}}
ACCEPT_BOTH = "application/json, text/event-stream"


class Reply(msgspec.Struct):
    status: int
    headers: dict[str, str]
    messages: list[dict[str, Any]]
    events: list[tuple[str | None, bytes | None]]
    raw: bytes = b""

    def only(self) -> dict[str, Any]:
        assert len(self.messages) == 1, self.messages
        return self.messages[-1]


class Client:
    """A raw Streamable HTTP client on mcpwall's own pooled upstream client (trio)."""

    def __init__(self, base: str, name: str, token: str | None = None) -> None:
        self.url = f"{base}/servers/{name}/mcp"
        self.http = HttpUpstream(self.url, max_connections=8)
        self.token = token
        self.sid: str | None = None

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"accept": ACCEPT_BOTH, "content-type": "application/json",
                   "mcp-protocol-version": "2025-06-18"}
        if self.sid:
            headers["mcp-session-id"] = self.sid
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return {k: v for k, v in headers.items() if v}

    async def request(self, method: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, until_id: Any = None,
                      on_event: Any = None) -> Reply:
        async with self.http.request(method, self._headers(headers), body) as resp:
            hdrs = {k.decode(): v.decode() for k, v in resp.headers}
            if resp.content_type == "text/event-stream":
                messages, events = [], []
                async for event in resp.events(keep_dataless=True):
                    events.append((event.id, event.data))
                    if event.data is None:
                        continue
                    msg = json.loads(event.data)
                    messages.append(msg)
                    if on_event is not None:
                        await on_event(msg)
                    if until_id is not None and msg.get("id") == until_id and "method" not in msg:
                        break
                return Reply(resp.status, hdrs, messages, events)
            raw = await resp.read()
            messages = [json.loads(raw)] if raw and resp.content_type == "application/json" else []
            return Reply(resp.status, hdrs, messages, [], raw)

    async def post(self, message: dict[str, Any] | bytes, **kw: Any) -> Reply:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        rid = None if isinstance(message, bytes) else message.get("id")
        if "method" not in (message if isinstance(message, dict) else {}):
            rid = None
        return await self.request("POST", body, until_id=rid, **kw)

    async def initialize(self) -> Reply:
        reply = await self.post(INIT)
        assert reply.status == 200, reply
        self.sid = reply.headers["mcp-session-id"]
        note = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert note.status == 202
        return reply

    async def call(self, rid: int, tool: str, args: dict[str, Any] | None = None,
                   meta: dict[str, Any] | None = None, **kw: Any) -> Reply:
        params: dict[str, Any] = {"name": tool, "arguments": args or {}}
        if meta:
            params["_meta"] = meta
        return await self.post({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                "params": params}, **kw)


# Every test of this file runs with each HTTP/1.1 parser; serving() reads it here.
PARSER: list[Any] = ["httptools"]


@pytest.fixture(autouse=True)
def _each_parser(http_parser: str) -> None:
    PARSER[0] = http_parser


def child_settings(tmp_path: Path, **kw: Any) -> StdioServer:
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    return StdioServer(command=sys.executable, args=["-u", str(script)], **kw)


@asynccontextmanager
async def serving(config: Config, policy: Any = None) -> AsyncIterator[tuple[str, HttpFront]]:
    config = msgspec.structs.replace(config, http=HttpSettings(parser=PARSER[0]))
    front = HttpFront(config, policy or AllowAll())
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run_front, front)
        try:
            yield binds[0], front
        finally:
            front.begin_shutdown()


def fleet(tmp_path: Path, listen: dict[str, Any] | None = None, tokens: list[str] = (),
          **server: Any) -> Config:
    from firewall.config import AuthSettings

    entries = [TokenEntry(sha256=hash_token(t), principal=f"agent-{i}")
               for i, t in enumerate(tokens)]
    return Config(listen=ListenSettings(port=0, **(listen or {})),
                  auth=AuthSettings(tokens=entries),
                  servers={"kid": child_settings(tmp_path, **server)})


# -- pure parts ---------------------------------------------------------------

def test_origin_allow_list() -> None:
    allowed = ["http://localhost", "http://127.0.0.1", "https://app.example:8443", "null"]
    assert origin_allowed("http://localhost:5173", allowed)
    assert origin_allowed("http://127.0.0.1", allowed)
    assert origin_allowed("null", allowed)
    assert origin_allowed("https://app.example:8443", allowed)
    assert not origin_allowed("https://app.example", allowed)
    assert not origin_allowed("http://evil.example", allowed)
    assert not origin_allowed("http://localhost.evil.example", allowed)
    assert not origin_allowed("https://localhost", allowed)
    assert origin_allowed("http://anything", ["*"])


async def test_session_stream_replay_is_bounded() -> None:
    stream = SessionStream(3, max_events=4)
    for i in range(10):
        stream.publish(b"%d" % i)
    assert [s for s, _ in stream.after(0)] == [7, 8, 9, 10]
    assert stream.after(9) == [(10, b"9")]
    assert stream.event_id(10) == "3-10"
    assert parse_event_id("3-10") == (3, 10)
    assert parse_event_id("x-1") is None and parse_event_id("7") is None
    big = SessionStream(1, max_bytes=10)
    big.publish(b"a" * 8)
    big.publish(b"b" * 8)
    assert big.after(0) == [(2, b"b" * 8)]  # the newest event is always kept


# -- sessions, routing --------------------------------------------------------

@pytest.mark.slow
async def test_session_lifecycle_and_json_rpc_over_sse(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path)) as (base, front):
        client = Client(base, "kid")
        init = await client.initialize()
        assert init.only()["result"]["serverInfo"]["name"] == "child"
        assert client.sid and len(client.sid) >= 20
        listed = await client.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert {t["name"] for t in listed.only()["result"]["tools"]} >= {"echo", "ask"}
        echoed = await client.call(2, "echo", {"text": "hi"})
        assert echoed.status == 200
        assert echoed.headers["content-type"].startswith("text/event-stream")
        assert echoed.only()["result"]["content"][0]["text"] == "hi"
        assert all(parse_event_id(eid or "") for eid, _ in echoed.events)
        # JSON-only clients get application/json.
        plain = await client.call(3, "echo", {"text": "json"},
                                  headers={"accept": "application/json"})
        assert plain.headers["content-type"] == "application/json"
        assert plain.only()["result"]["content"][0]["text"] == "json"
        # A malformed body: 400 with -32700, and the session lives on.
        bad = await client.post(b"{not json")
        assert bad.status == 400 and bad.only()["error"]["code"] == -32700
        assert (await client.call(4, "echo", {"text": "still"})).only()["result"]
        deleted = await client.request("DELETE")
        assert deleted.status == 204
        gone = await client.call(5, "echo")
        assert gone.status == 404 and gone.only()["error"]["code"] == -32600
        assert len(front.context.table) == 0


@pytest.mark.slow
async def test_progress_and_elicitation_travel_on_the_request_stream(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path)) as (base, _front):
        client = Client(base, "kid")
        await client.initialize()
        prog = await client.call(1, "progress", meta={"progressToken": "tok"})
        kinds = [m.get("method", "response") for m in prog.messages]
        assert kinds == ["notifications/progress"] * 3 + ["response"]
        assert all(m["params"]["progressToken"] == "tok" for m in prog.messages[:3])

        answers: list[int] = []

        async def answer(msg: dict[str, Any]) -> None:
            if msg.get("method") == "elicitation/create":
                responder = Client(base, "kid")
                responder.sid = client.sid
                reply = await responder.post({"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "action": "accept", "content": {"name": "Ada"}}})
                answers.append(reply.status)

        asked = await client.call(2, "ask", on_event=answer)
        assert answers == [202]
        assert json.loads(asked.messages[-1]["result"]["content"][0]["text"])["content"] == {
            "name": "Ada"}


@pytest.mark.slow
async def test_unrelated_messages_go_to_the_get_stream_and_resume(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, listen={"keepalive_seconds": 0.2})) as (base, _front):
        client = Client(base, "kid")
        await client.initialize()
        await client.call(1, "notify")  # the notification comes after the answer
        got: list[dict[str, Any]] = []
        received = trio.Event()
        done = trio.Event()

        async def listen() -> None:
            async with client.http.request("GET", client._headers({})) as resp:
                assert resp.status == 200
                async for event in resp.events():
                    got.append(json.loads(event.data or b"null"))
                    received.set()
                    await done.wait()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            with trio.fail_after(10):
                await received.wait()
            second = await client.request("GET")  # the first one is still open
            done.set()
        assert got[0]["method"] == "notifications/message"
        assert second.status == 409
        # Resumption: the events of a POST stream after a given event id.
        prog = await client.call(2, "progress", meta={"progressToken": 9})
        first_id = prog.events[0][0]
        assert first_id is not None
        replay = await client.request("GET", headers={"last-event-id": first_id}, until_id=2)
        assert [m.get("method", "response") for m in replay.messages] == [
            "notifications/progress"] * 2 + ["response"]


@pytest.mark.slow
async def test_child_crash_answers_pending_and_restarts(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path)) as (base, _front):
        client = Client(base, "kid")
        await client.initialize()
        pid1 = (await client.call(1, "pid")).only()["result"]["content"][0]["text"]
        crashed = await client.call(2, "crash")
        assert crashed.only()["error"]["code"] == -32010
        # The restarted child got the handshake again: the session goes on.
        with trio.fail_after(30):
            pid2 = (await client.call(3, "pid")).only()["result"]["content"][0]["text"]
        assert pid1 != pid2


@pytest.mark.slow
async def test_upstream_timeout_answers_with_an_error(tmp_path: Path) -> None:
    # The timeout covers every request, initialize too: 3 s leaves a loaded machine time
    # to start the child and answer that, while the slow call never answers in time.
    # A short grace: stopping the front does not wait for the sleeping child.
    config = fleet(tmp_path, listen={"upstream_timeout_seconds": 3},
                   terminate_grace_seconds=0.2)
    async with serving(config) as (base, _front):
        client = Client(base, "kid")
        await client.initialize()
        late = await client.call(1, "slow", {"seconds": 120})
        assert late.messages[-1]["error"]["code"] == -32011
        assert "did not answer within 3 s" in late.messages[-1]["error"]["message"]


# -- refusals -----------------------------------------------------------------

@pytest.mark.slow
async def test_http_refusals(tmp_path: Path) -> None:
    config = fleet(tmp_path, listen={"max_body_bytes": 2048}, tokens=["tok-a", "tok-b"])
    async with serving(config) as (base, _front):
        anon = Client(base, "kid")
        unauth = await anon.post(INIT)
        assert unauth.status == 401 and unauth.headers["www-authenticate"].startswith("Bearer")
        assert unauth.only()["error"]["code"] == -32600
        wrong = Client(base, "kid", token="nope")
        assert (await wrong.post(INIT)).status == 401

        alice = Client(base, "kid", token="tok-a")
        await alice.initialize()
        evil = await alice.call(1, "echo", headers={"origin": "http://evil.example"})
        assert evil.status == 403 and "error" in evil.only()
        ok = await alice.call(2, "echo", {"text": "x"}, headers={"origin": "http://localhost:3000"})
        assert ok.status == 200
        version = await alice.call(3, "echo", headers={"mcp-protocol-version": "1999-01-01"})
        assert version.status == 400 and version.only()["error"]["code"] == -32022
        assert "2025-06-18" in version.only()["error"]["data"]["supported"]
        big = await alice.call(4, "echo", {"text": "x" * 5000})
        assert big.status == 413 and big.only()["error"]["code"] == -32012
        put = await alice.request("PUT", b"{}")
        assert put.status == 405 and put.headers["allow"] == "GET, POST, DELETE"
        assert (await alice.request("POST", b"{}", headers={"accept": "text/html"})).status == 406
        assert (await alice.request("POST", b"{}", headers={"content-type": "text/plain"})
                ).status == 415
        # Another principal presenting alice's session id: not found.
        bob = Client(base, "kid", token="tok-b")
        bob.sid = alice.sid
        assert (await bob.call(5, "echo")).status == 404
        assert (await Client(base, "nowhere", token="tok-a").post(INIT)).status == 404
        # No session and not initialize.
        assert (await Client(base, "kid", token="tok-a").call(6, "echo")).status == 400
        assert (await alice.call(7, "echo", {"text": "alive"})).only()["result"]


@pytest.mark.slow
async def test_max_children_caps_the_sessions_of_a_server(tmp_path: Path) -> None:
    # The default idle limit: the first session cannot expire before the second asks.
    async with serving(fleet(tmp_path, max_children=1)) as (base, _front):
        first = Client(base, "kid")
        await first.initialize()
        full = await Client(base, "kid").post(INIT)
        assert full.status == 503 and full.only()["error"]["code"] == -32010
        assert (await first.call(1, "echo", {"text": "still here"})).only()["result"]


@pytest.mark.slow
async def test_idle_sessions_expire_and_free_their_child(tmp_path: Path) -> None:
    config = fleet(tmp_path, listen={"session_idle_seconds": 0.3}, max_children=1)
    async with serving(config) as (base, front):
        # initialize only: a second request (notifications/initialized) could come after
        # the 0.3 s on a loaded machine and find the session gone already.
        first = Client(base, "kid")
        opened = await first.post(INIT)
        assert opened.status == 200
        first.sid = opened.headers["mcp-session-id"]
        with trio.fail_after(30):
            while len(front.context.table):  # noqa: ASYNC110 (the reaper has no event)
                await trio.sleep(0.1)
        expired = await first.call(1, "echo")
        assert expired.status == 404
        second = await Client(base, "kid").post(INIT)
        assert second.status == 200  # the reaped child freed its slot


@pytest.mark.slow
async def test_policy_refusal_is_answered_by_the_front(tmp_path: Path) -> None:
    class NoSecrets(AllowAll):
        def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
            if call.tool == "secret":
                return Decision("deny", rule="no-secrets", reason="not here")
            return super().decide(call, caller, server, session)

    async with serving(fleet(tmp_path), NoSecrets()) as (base, _front):
        client = Client(base, "kid")
        await client.initialize()
        refused = await client.call(1, "secret")
        assert refused.status == 200
        result = refused.only()["result"]
        assert result["isError"] and "no-secrets" in result["content"][0]["text"]


@pytest.mark.slow
async def test_healthz_and_draining(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path)) as (base, front):
        http = HttpUpstream(base + "/healthz")
        async with http.request("GET") as resp:
            assert resp.status == 200
            report = json.loads(await resp.read())
        assert report["status"] == "ok" and report["servers"]["kid"]["transport"] == "stdio"
        client = Client(base, "kid")
        await client.initialize()
        front.begin_shutdown()
        try:
            refused = await client.call(1, "echo")
        except UpstreamError:
            return  # the listener is closed: refused as well
        assert refused.status == 503


@pytest.mark.parametrize("origin", ["http://evil.example:8765", "https://127.0.0.1.nip.io"])
async def test_dns_rebinding_origins_are_refused(tmp_path: Path, origin: str) -> None:
    async with serving(fleet(tmp_path)) as (base, _front):
        reply = await Client(base, "kid").post(INIT, headers={"origin": origin})
        assert reply.status == 403
