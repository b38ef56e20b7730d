"""A 2025 server's requests carried as input requests (firewall/gateway/front/bridge_input.py),
no process: the sealed requestState (as ``wrap --bridge`` keys its calls, by the
client's own id), which call a server request belongs to, and the refusal and
retry paths through a real mediator and compiled policy (tests/test_mrtr.py's)."""

from __future__ import annotations

import json
from typing import Any

from firewall.audit.events import DecisionEvent
from firewall.gateway.front.bridge_input import (
    STATE_PREFIX,
    InputCall,
    InputDesk,
    abandonment,
    asking,
    carried,
    input_required,
    input_response,
    refusal,
    without_retry,
)
from firewall.policy.decision import Caller
from firewall.protocol.mrtr import StateSeal
from tests.test_mrtr import ALICE, call, dumps, mediator

SEAL = StateSeal()
ELICIT = dumps({"jsonrpc": "2.0", "id": 0, "method": "elicitation/create", "params": {
    "message": "Which region?", "requestedSchema": {"type": "object", "properties": {}}}})
SAMPLE = dumps({"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage", "params": {
    "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
    "maxTokens": 10}})
CAPS = {"elicitation": {"form": {}}, "sampling": {}}


def test_a_state_resumes_its_call_once_for_its_scope_and_caller_only() -> None:
    desk = InputDesk("wrap-1", SEAL, 30)
    first = InputCall("tools/call", CAPS, "wrap-1.1")
    calls: dict[Any, InputCall] = {7: first}
    asked = desk.ask(first, 7, ELICIT, ALICE)
    assert asked is not None
    key, state, srid = asked
    assert srid == 0 and state.startswith(STATE_PREFIX)
    assert not state.startswith(StateSeal.PREFIX)  # never taken for the mediator's own
    assert desk.resume(state, Caller("bob", ALICE.grant), "wrap-1.1", calls) is None
    assert desk.resume(state, Caller(ALICE.principal, "other"), "wrap-1.1", calls) is None
    assert desk.resume(state, ALICE, "wrap-1.2", calls) is None  # not linked so
    assert desk.resume(state[:-3] + "abc", ALICE, "wrap-1.1", calls) is None  # forged
    assert InputDesk("wrap-2", SEAL, 30).resume(state, ALICE, "wrap-1.1", calls) is None
    assert InputDesk("wrap-1", StateSeal(), 30).resume(state, ALICE, "wrap-1.1", calls) is None
    assert desk.resume(state, ALICE, "wrap-1.1", {"7": first}) is None  # the id as sealed
    assert desk.resume(state, ALICE, "wrap-1.1", calls) == (first, 0, key)
    assert desk.resume(state, ALICE, "wrap-1.1", calls) is None  # used once
    # Asked again, the call's earlier state is stale.
    again = desk.ask(first, 7, ELICIT, ALICE)
    assert again is not None and again[0] != key
    assert desk.resume(state, ALICE, "wrap-1.1", calls) is None


def test_an_expired_state_or_an_unreadable_request_resumes_nothing() -> None:
    desk = InputDesk("wrap-1", SEAL, -1)  # sealed already expired
    first = InputCall("tools/call", CAPS, "wrap-1.1")
    asked = desk.ask(first, 7, ELICIT, ALICE)
    assert asked is not None
    assert desk.resume(asked[1], ALICE, "wrap-1.1", {7: first}) is None
    assert first.asked is not None  # still waiting: expiry abandons it
    assert desk.ask(InputCall("tools/call", CAPS, "c"), 1, b"{not json", ALICE) is None
    assert desk.ask(InputCall("tools/call", CAPS, None), 1, ELICIT, ALICE) is None


def test_only_the_one_call_in_flight_that_offered_the_capability_is_asked() -> None:
    one = InputCall("tools/call", {"elicitation": {}}, "c.1")
    assert asking([one], "elicitation/create", {"message": "?"}) is one
    assert asking([one], "elicitation/create", {"mode": "url", "url": "https://x"}) is None
    assert asking([one], "sampling/createMessage", {}) is None  # not offered
    assert asking([one], "ping", None) is None
    assert asking([one, InputCall("tools/call", CAPS, "c.2")], "elicitation/create",
                  {}) is None  # two in flight: whose?
    assert asking([InputCall("tools/list", CAPS, "c.3")], "elicitation/create", {}) is None
    assert asking([], "roots/list", None) is None


async def test_a_refused_input_request_ends_the_call_and_is_refused_to_the_server() -> None:
    med, audit = mediator(session="w")
    routed = await med.from_client(call(4, "deploy", {"vm": 1}))
    assert routed.upstream is not None and routed.upstream.call_id is not None
    desk, pending = InputDesk("w", SEAL, 30), InputCall("tools/call", CAPS, routed.upstream.call_id)
    asked = desk.ask(pending, 4, SAMPLE, ALICE)
    assert asked is not None
    key, state, srid = asked
    reply = (await med.from_server(input_required(4, key, state, SAMPLE))).client
    assert not carried(reply)  # the policy denies sampling: the call ends with it
    assert reply is not None
    answer = json.loads(reply)
    assert answer["id"] == 4 and answer["result"]["isError"] is True
    assert answer["result"]["resultType"] == "complete"  # a result of the revision
    assert "no use of the client's model" in answer["result"]["content"][0]["text"]
    decided = [(e.method, e.direction, e.decision) for e in audit.events
               if isinstance(e, DecisionEvent) and e.call_id == pending.call_id]
    assert decided == [("tools/call", "client", "allow"),
                       ("sampling/createMessage", "server", "deny")]
    # The server's request gets the refusal, then the call is cancelled there.
    told = [json.loads(m.data) for m in abandonment(pending, 4, "refused", refusal(srid))]
    assert told[0]["id"] == srid and told[0]["error"]["message"] == (
        "mcpwall: the policy refused this request")
    assert told[1] == {"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": 4, "reason": "refused"}}
    assert pending.asked is None
    # Abandoned with nobody asked: only the cancellation.
    assert len(abandonment(pending, 4, "timeout")) == 1


async def test_a_carried_input_request_is_answered_by_the_linked_retry() -> None:
    med, audit = mediator(session="w")
    routed = await med.from_client(call(4, "deploy", {"vm": 2}))
    assert routed.upstream is not None
    pending = InputCall("tools/call", CAPS, routed.upstream.call_id)
    desk = InputDesk("w", SEAL, 30)
    asked = desk.ask(pending, 4, ELICIT, ALICE)
    assert asked is not None
    key, state, srid = asked
    reply = (await med.from_server(input_required(4, key, state, ELICIT))).client
    assert carried(reply) and reply is not None
    assert json.loads(reply)["result"]["inputRequests"][key]["method"] == "elicitation/create"
    given = {"action": "accept", "content": {"region": "eu"}}
    # The retry is linked to the call by the mediator (deploy's rate limit of
    # one is not charged again), and its state opens for that call_id only.
    again = await med.from_client(call(5, "deploy", {"vm": 2}, inputResponses={key: given},
                                       requestState=state))
    assert again.upstream is not None and again.upstream.call_id == pending.call_id
    assert desk.resume(state, ALICE, again.upstream.call_id, {4: pending}) == (pending, srid, key)
    assert json.loads(input_response(srid, {key: given}, key)) == {
        "jsonrpc": "2.0", "id": srid, "result": given}
    missing = json.loads(input_response(srid, {}, key))
    assert missing["id"] == srid and missing["error"]["code"] == -32603
    rounds = [e.reason for e in audit.events
              if isinstance(e, DecisionEvent) and e.call_id == pending.call_id]
    assert rounds[-1] is not None and rounds[-1].startswith("round 2")


def test_a_retry_that_is_a_new_call_loses_what_a_2025_server_does_not_read() -> None:
    params: dict[str, Any] = {"name": "t", "inputResponses": {"k": {}}, "requestState": "x"}
    without_retry(params)
    assert params == {"name": "t"}
    without_retry(None)  # nothing to remove
