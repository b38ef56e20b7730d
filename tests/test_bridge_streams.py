"""Which call a bridged server's request or log message is for (bridge rules 6 and 9).

A link that says which request's answer carried a message (an HTTP POST's
event stream) lets the bridge carry a server request to that call however many
calls are in flight; a link that cannot say (stdio) keeps the single-call
rule, and so does a stream of no request (an HTTP GET stream). A log message
reaches a call only when its request asked for that level (2026-07-28:
``io.modelcontextprotocol/logLevel``); any other is dropped and counted.
These drive a bridged session's dispatch directly (no process); the live
tests are in tests/test_bridge_streams_live.py.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from firewall.config import StdioServer
from firewall.gateway.front.bridge import APART, BridgedCall, BridgeSession, discover_result
from firewall.gateway.front.http_endpoint import _request_id
from firewall.gateway.mediator import Mediator
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.schema import parse_policy
from firewall.protocol import meta
from tests.test_mediator import Recorder

ALICE = Caller(principal="alice", grant="alice-grant")
ASKS = {"elicitation": {"form": {}}}
INFO = meta.LOG_LEVELS.index("info")


def _session() -> BridgeSession:
    engine = Engine(compile_policy(parse_policy(json.dumps(
        {"version": "1", "default": "allow"}), "t.json")))
    med = Mediator(server="vm", session="b1", caller=ALICE, policy=engine, audit=Recorder())
    from firewall.gateway.front.bridge import stdio_link
    return BridgeSession(sid="b1", server="vm", caller=ALICE, mediator=med, idle_limit=60,
                         connect=stdio_link(StdioServer(command="true")), timeout=30)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **value}).encode()


ELICIT = _line({"id": 5, "method": "elicitation/create",
                "params": {"message": "Which date?", "requestedSchema": {"type": "object"}}})


def _log(level: str) -> bytes:
    return _line({"method": "notifications/message", "params": {"level": level, "data": "x"}})


def _queued(call: BridgedCall) -> list[str]:
    kinds = []
    while True:
        try:
            kinds.append(call.receive.receive_nowait()[0])
        except trio.WouldBlock:
            return kinds


async def test_a_request_on_a_calls_stream_is_that_calls_with_two_in_flight() -> None:
    session = _session()
    first = session.open_call("mcpwall-bridge-1", "tools/call", ASKS, "s.1", None)
    second = session.open_call("mcpwall-bridge-2", "tools/call", ASKS, "s.2", None)
    assert await session._dispatch(ELICIT, "mcpwall-bridge-2")
    assert _queued(second) == ["request"] and _queued(first) == []


async def test_without_a_stream_two_calls_in_flight_still_refuse_the_request() -> None:
    session = _session()
    calls = [session.open_call(f"mcpwall-bridge-{n}", "tools/call", ASKS, f"s.{n}", None)
             for n in (1, 2)]
    # Refused: the answer -32601 cannot even be written (no child), so False.
    for on in (None, APART):
        assert not await session._dispatch(ELICIT, on)
    assert [_queued(c) for c in calls] == [[], []]


async def test_a_stream_of_no_request_keeps_the_single_call_rule() -> None:
    session = _session()
    call = session.open_call("mcpwall-bridge-1", "tools/call", ASKS, "s.1", None)
    assert await session._dispatch(ELICIT, APART)
    assert _queued(call) == ["request"]


async def test_a_request_on_the_stream_of_a_call_gone_or_not_asking_is_refused() -> None:
    session = _session()
    quiet = session.open_call("mcpwall-bridge-1", "tools/call", {}, "s.1", None)  # no caps
    asking = session.open_call("mcpwall-bridge-2", "tools/call", ASKS, "s.2", None)
    # On the stream of a call whose client offered no elicitation: never another's.
    assert not await session._dispatch(ELICIT, "mcpwall-bridge-1")
    # On the stream of a call already answered (or abandoned), or of the handshake.
    assert not await session._dispatch(ELICIT, "mcpwall-bridge-9")
    assert not await session._dispatch(ELICIT, "mcpwall-bridge-initialize")
    assert _queued(quiet) == [] and _queued(asking) == []


async def test_log_messages_reach_the_call_that_asked_for_their_level() -> None:
    session = _session()
    wants = session.open_call("mcpwall-bridge-1", "tools/call", {}, "s.1", None, INFO)
    silent = session.open_call("mcpwall-bridge-2", "tools/call", {}, "s.2", None)
    for level in ("warning", "debug", "info", "emergency"):
        assert await session._dispatch(_log(level), "mcpwall-bridge-1")
    assert await session._dispatch(_log("error"), "mcpwall-bridge-2")  # asked for none
    assert await session._dispatch(_log("error"), APART)  # on a GET stream: no call's
    assert await session._dispatch(_log("error"), None)  # two in flight: whose?
    assert await session._dispatch(_log("loud"), "mcpwall-bridge-1")  # no such level
    assert _queued(wants) == ["log", "log", "log"] and _queued(silent) == []
    assert session.logs_dropped == 5
    assert session.tally.logs_dropped == 5


async def test_over_stdio_a_log_message_is_the_one_calls() -> None:
    session = _session()
    call = session.open_call("mcpwall-bridge-1", "tools/call", {}, "s.1", None, INFO)
    assert await session._dispatch(_log("notice"), None)
    assert _queued(call) == ["log"] and session.logs_dropped == 0


def test_the_log_level_a_request_asks_for() -> None:
    assert meta.log_level({"_meta": {meta.LOG_LEVEL_KEY: "warning"}}) == 3
    assert meta.log_level({"_meta": {meta.LOG_LEVEL_KEY: "verbose"}}) is None
    assert meta.log_level({"_meta": {meta.LOG_LEVEL_KEY: ["info"]}}) is None
    assert meta.log_level({"_meta": {}}) is None and meta.log_level(None) is None
    assert meta.message_level({"level": "emergency", "data": 1}) == 7
    assert meta.message_level({"data": 1}) is None


def test_what_a_post_answers_is_named_by_its_request_id() -> None:
    assert _request_id(_line({"id": "mcpwall-bridge-3", "method": "tools/call"})) \
        == "mcpwall-bridge-3"
    assert _request_id(_line({"id": 5, "result": {}})) == APART  # a response
    assert _request_id(_line({"method": "notifications/initialized"})) == APART
    assert _request_id(b"not json") == APART


def test_discover_of_the_serve_bridge_keeps_logging() -> None:
    init = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "logging": {}}}
    assert discover_result(init, listens=True, logs=True)["capabilities"] == {
        "tools": {}, "logging": {}}
    assert "logging" not in discover_result(init, listens=True)["capabilities"]
