"""A listen's lifetime under ``mcpwall wrap`` with a stdio child (listen.py rule 6).

A listen open for ``listen.listen_stream_max_seconds`` is ended by mcpwall: the
child is sent ``notifications/cancelled`` for the listen's id (a message of
mcpwall's own), the client gets the revision's graceful end (a
``SubscriptionsListenResult`` under the listen's id, ``_meta`` naming the
subscription), the request's outcome is ``cancelled``, ``listen_end`` says
``lifetime``, and what the child still sends tagged with that id, or as its
answer, never reaches the client. In memory, under trio's autojump clock:
the process tests are in test_wrap_listen_ends.py.
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from firewall.audit.events import LifecycleEvent, OutcomeEvent
from firewall.gateway.mediator import Mediator
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.schema import parse_policy
from tests.memory_fronts import MemoryChild, memory_wrap
from tests.test_mediator import Recorder

MODERN = "2026-07-28"
SUB = "io.modelcontextprotocol/subscriptionId"
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}
LIFETIME = 30.0


def _mediator() -> tuple[Mediator, Recorder]:
    audit = Recorder()
    engine = Engine(compile_policy(parse_policy(
        json.dumps({"version": "1", "default": "allow"}), "t.json")))
    return Mediator(server="events", session="s1", caller=Caller("local", "wrap:local"),
                    policy=engine, audit=audit), audit


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _tagged(method: str, rid: object) -> bytes:
    return _line({"jsonrpc": "2.0", "method": method, "params": {"_meta": {SUB: rid}}})


async def test_a_listen_past_its_lifetime_is_ended_by_mcpwall(
        autojump_clock: trio.testing.MockClock) -> None:
    med, audit = _mediator()
    child = MemoryChild()
    async with memory_wrap(med, child, echo=False, seconds=10 * LIFETIME,
                           listen_seconds=LIFETIME) as wrap:
        await wrap.client.send(_line({
            "jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": True}, "_meta": META}}))
        assert json.loads(await child.next_line())["method"] == "subscriptions/listen"
        await child.say(_tagged("notifications/subscriptions/acknowledged", 7))
        assert (await wrap.client.message())["method"] == \
            "notifications/subscriptions/acknowledged"
        opened = trio.current_time()
        # Its lifetime over: the child is told, in mcpwall's own words...
        assert json.loads(await child.next_line()) == {
            "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "mcpwall: listen lifetime"}}
        assert trio.current_time() - opened >= LIFETIME
        # ...and the client gets the graceful end, under the listen's id.
        assert await wrap.client.message() == {
            "jsonrpc": "2.0", "id": 7, "result": {"_meta": {SUB: 7}, "resultType": "complete"}}
        # What the child still says of that listen goes nowhere: the next thing
        # the client reads is the answer to its next request.
        await child.say(_tagged("notifications/tools/list_changed", 7),
                        _line({"jsonrpc": "2.0", "id": 7, "result": {"resultType": "complete"}}))
        await wrap.client.send(_line({"jsonrpc": "2.0", "id": 8, "method": "tools/list",
                                      "params": {"_meta": META}}))
        asked = json.loads(await child.next_line())
        assert asked["id"] == 8
        await child.say(_line({"jsonrpc": "2.0", "id": 8,
                               "result": {"tools": [], "resultType": "complete"}}))
        assert (await wrap.client.message())["id"] == 8
    ends = [e.detail for e in audit.of(LifecycleEvent) if e.kind == "listen_end"]
    assert [(e["request_id"], e["reason"]) for e in ends] == [(7, "lifetime")]
    outcomes = [o.status for o in audit.of(OutcomeEvent)]
    assert outcomes == ["cancelled", "ok"]  # the listen, then tools/list
