"""Multi round-trip requests and the tasks extension (2026-07-28) under policy.

The mediator is fed the JSON messages of the new revision (the shapes of
the MRTR page and the tasks extension, as the mcp SDK 2.3 writes them),
decides them with a real compiled policy (its rate limits are real token
buckets), and records into an in-memory audit point. The sans-IO readers
(firewall/protocol/mrtr.py) and the link store (firewall/gateway/mrtr.py)
are tested alone first.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.gateway.mediator import Mediator
from firewall.gateway.mrtr import APPROVAL_KEY, Link, Rounds
from firewall.gateway.operator.killswitch import GuardedPolicy, KillSwitch, Scope
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import ALLOW, Caller, Decision
from firewall.policy.engine import Engine
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp, mrtr
from tests.test_mediator import Recorder

ALICE = Caller("agent-alice", "grant-a")
MALLORY = Caller("agent-mallory", "grant-m")
POLICY = {"version": "1", "default": "deny",
          "tools": {
              "deploy": {"rate_limit": {"max": 1, "window": 3600}},
              "stop_vm": {"action": "require_approval", "approval": "client",
                          "reason": "stops a VM"},
              "batch": {}},
          "methods": {
              "elicitation/create": {},
              "sampling/createMessage": {"action": "deny",
                                         "reason": "no use of the client's model"},
              "tasks/get": {}, "tasks/update": {},
              "tasks/cancel": {"action": "deny", "reason": "tasks run to their end"}},
          "other_methods": "deny"}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {
            "elicitation": {"form": {}}, "extensions": {mrtr.TASKS_EXTENSION: {}}}}
ELICIT = {"method": "elicitation/create", "params": {
    "mode": "form", "message": "Which region?",
    "requestedSchema": {"type": "object", "properties": {"region": {"type": "string"}}}}}
SAMPLE = {"method": "sampling/createMessage", "params": {
    "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
    "maxTokens": 10}}


def dumps(value: Any) -> bytes:
    """Compact JSON, as the SDKs write it (its own canonical form)."""
    return json.dumps(value, separators=(",", ":")).encode()


def mediator(caller: Caller = ALICE, rounds: Rounds | None = None,
             session: str = "s1") -> tuple[Mediator, Recorder]:
    audit = Recorder()
    policy = Engine(compile_policy(parse_policy(json.dumps(POLICY), "t.json")))
    return Mediator(server="vm", session=session, caller=caller, policy=policy, audit=audit,
                    rounds=rounds), audit


def call(rid: int, tool: str, args: dict[str, Any], **extra: Any) -> bytes:
    params: dict[str, Any] = {"name": tool, "arguments": args, "_meta": META, **extra}
    return dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})


def request(rid: int, method: str, params: dict[str, Any]) -> bytes:
    return dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                  "params": {**params, "_meta": META}})


def answer(rid: int, result: dict[str, Any]) -> bytes:
    return dumps({"jsonrpc": "2.0", "id": rid, "result": result})


def input_required(state: str | None = "st-1", **requests: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resultType": "input_required"}
    if requests:
        out["inputRequests"] = requests
    if state is not None:
        out["requestState"] = state
    return out


def decisions(audit: Recorder, direction: str = "client") -> list[DecisionEvent]:
    return [e for e in audit.of(DecisionEvent) if e.direction == direction]


def lifecycle(audit: Recorder, kind: str) -> list[LifecycleEvent]:
    return [e for e in audit.of(LifecycleEvent) if e.kind == kind]


async def forwarded(med: Mediator, data: bytes) -> bytes:
    routed = await med.from_client(data)
    assert routed.upstream is not None, routed.client
    return routed.upstream.data


# -- the sans-IO readers --------------------------------------------------------------
def test_readers_take_the_revisions_shapes_and_refuse_malformed_ones() -> None:
    ir = mrtr.input_required(json.dumps(input_required(q=ELICIT)).encode())
    assert ir is not None and ir.state == "st-1" and ir.requests["q"].method == ELICIT["method"]
    assert mrtr.input_required(b'{"resultType":"complete"}') is None
    assert mrtr.input_required(b'{"resultType":"input_required","inputRequests":[1]}') is None
    assert mrtr.input_required(b'{"resultType":"input_required","requestState":7}') is None
    assert mrtr.result_type(b'{"content":[]}') is None
    back = mrtr.encode_inputs(ir)
    assert back == input_required(q=ELICIT)
    again = mrtr.retry(b'{"name":"x","inputResponses":{"q":{"action":"accept"}},'
                       b'"requestState":"s"}')
    assert again == mrtr.Retry({"q": {"action": "accept"}}, "s")
    assert mrtr.retry(b'{"name":"x","arguments":{}}') is None
    handle = mrtr.task_handle(b'{"resultType":"task","taskId":"t1","status":"working"}')
    assert handle is not None and handle.task_id == "t1"
    done = mrtr.task_state(b'{"taskId":"t1","status":"failed","error":{"code":-32603,'
                           b'"message":"boom"}}')
    assert done == mrtr.TaskState("t1", "failed", False, -32603, "boom")


def test_call_digest_names_method_target_and_arguments_in_any_key_order() -> None:
    a = mcp.Call("tools/call", "client", "deploy", None, None, {"x": 1, "y": [1, 2]})
    b = mcp.Call("tools/call", "client", "deploy", None, None, {"y": [1, 2], "x": 1})
    c = mcp.Call("tools/call", "client", "deploy", None, None, {"x": 2, "y": [1, 2]})
    assert mrtr.call_digest(a) == mrtr.call_digest(b) != mrtr.call_digest(c)


def test_a_sealed_state_opens_only_unaltered_unexpired_and_in_its_process() -> None:
    seal = mrtr.StateSeal()
    token = seal.seal({"c": "s1.1"}, expires_ns=2000)
    assert seal.open(token, 1000) == {"c": "s1.1"}
    assert seal.open(token, 3000) is None  # expired
    assert mrtr.StateSeal().open(token, 1000) is None  # another process's key
    body, _, mac = token.removeprefix(seal.PREFIX).partition(".")
    forged = seal.PREFIX + body.replace(body[5], "A" if body[5] != "A" else "B") + "." + mac
    assert seal.open(forged, 1000) is None
    assert seal.open(seal.PREFIX + "!!!.???", 1000) is None
    assert seal.open("plain", 1000) is None


def test_links_are_keyed_by_caller_server_digest_and_state_used_once_and_bounded() -> None:
    now = [0.0]
    rounds = Rounds(ttl=10, max_links=2, clock=lambda: now[0])
    link = Link("s1.1", Decision(ALLOW), "allow", 1)
    rounds.remember(ALICE, "vm", "d", "st", link)
    assert rounds.take(MALLORY, "vm", "d", "st") is None
    assert rounds.take(ALICE, "vm", "d", "other") is None
    assert rounds.take(ALICE, "vm", "d2", "st") is None
    assert rounds.take(ALICE, "vm", "d", "st") == link
    assert rounds.take(ALICE, "vm", "d", "st") is None  # used once
    for i in range(3):
        rounds.remember(ALICE, "vm", f"d{i}", None, link)
    assert rounds.take(ALICE, "vm", "d0", None) is None  # the oldest made room
    now[0] = 11.0
    assert rounds.take(ALICE, "vm", "d2", None) is None  # expired
    rounds.remember(ALICE, "vm", "d", None, Link("s1.1", Decision(ALLOW), "allow", 10))
    assert rounds.take(ALICE, "vm", "d", None) is None  # past max_rounds: a new call


# -- rounds through the mediator ----------------------------------------------------------
async def test_a_retry_is_the_same_call_paid_once_and_its_input_requests_are_decided() -> None:
    med, audit = mediator()
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    routed = await med.from_server(answer(1, input_required(region=ELICIT, model=SAMPLE)))
    assert routed.client is not None and routed.answers == 1
    sent = json.loads(routed.client)["result"]
    # The sampling request is refused by the policy and removed; the elicitation stays.
    assert set(sent["inputRequests"]) == {"region"} and sent["requestState"] == "st-1"
    inputs = decisions(audit, "server")
    assert [(e.method, e.decision, e.request_id) for e in inputs] == [
        ("elicitation/create", "allow", '"region"'),
        ("sampling/createMessage", "deny", '"model"')]
    first = decisions(audit)[0]
    assert all(e.call_id == first.call_id for e in inputs)
    (event,) = lifecycle(audit, "input_required")
    assert event.detail["call_id"] == first.call_id and "model" in event.detail["refused"]
    assert not audit.of(OutcomeEvent)  # the call goes on
    # The retry: same call_id, not charged again (the rate limit allows 1 an hour).
    retry = call(2, "deploy", {"app": "web"}, requestState="st-1",
                 inputResponses={"region": {"action": "accept", "content": {"region": "eu"}}})
    assert await forwarded(med, retry) == retry
    second = decisions(audit)[1]
    assert second.call_id == first.call_id and second.decision == "allow"
    assert second.reason is not None and "round 2" in second.reason
    routed = await med.from_server(answer(2, {"content": [], "resultType": "complete"}))
    assert routed.client is not None
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.call_id == first.call_id and outcome.status == "ok"
    # A replay of that retry, or any new call, pays: the hour's one call is spent.
    routed = await med.from_client(retry.replace(b'"id":2', b'"id":3'))
    assert routed.upstream is None and decisions(audit)[2].decision == "limited"
    assert decisions(audit)[2].call_id != first.call_id


async def test_a_retry_with_other_arguments_state_or_caller_is_a_new_call() -> None:
    rounds = Rounds()  # shared, as a front of the stateless revision may share it
    med, audit = mediator(rounds=rounds)
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    await med.from_server(answer(1, input_required(region=ELICIT)))
    responses = {"region": {"action": "accept", "content": {"region": "eu"}}}
    # Another caller echoing alice's state, with her arguments: decided in full.
    other, other_audit = mediator(MALLORY, rounds=rounds, session="s2")
    routed = await other.from_client(call(1, "deploy", {"app": "web"}, requestState="st-1",
                                          inputResponses=responses))
    assert routed.upstream is not None  # mallory's own bucket: allowed, as a new call
    (mine,) = decisions(other_audit)
    assert mine.call_id.startswith("s2.") and mine.reason is None
    # Alice with other arguments: a new call, which the spent bucket refuses.
    routed = await med.from_client(call(2, "deploy", {"app": "db"}, requestState="st-1",
                                        inputResponses=responses))
    assert routed.upstream is None and decisions(audit)[-1].decision == "limited"
    # Alice with a state the server never gave: a new call too.
    routed = await med.from_client(call(3, "deploy", {"app": "web"}, requestState="forged",
                                        inputResponses=responses))
    assert routed.upstream is None and decisions(audit)[-1].decision == "limited"
    # The true retry still continues the call.
    assert await forwarded(med, call(4, "deploy", {"app": "web"}, requestState="st-1",
                                     inputResponses=responses))
    assert decisions(audit)[-1].call_id == decisions(audit)[0].call_id


async def test_all_input_requests_refused_ends_the_call_with_the_reason() -> None:
    med, audit = mediator()
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    routed = await med.from_server(answer(1, input_required(model=SAMPLE)))
    assert routed.client is not None
    result = json.loads(routed.client)["result"]
    assert result["isError"] is True and "client's model" in result["content"][0]["text"]
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.status == "jsonrpc_error"
    # No link: the retry is a new call (refused by the spent bucket).
    routed = await med.from_client(call(2, "deploy", {"app": "web"}, requestState="st-1"))
    assert routed.upstream is None


async def test_an_input_required_result_with_escaped_member_names_is_still_decided() -> None:
    # A JSON reader takes "result\u0054ype" for resultType (and so do the
    # clients): the answer is an InputRequiredResult whatever its bytes look like.
    med, audit = mediator()
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    data = answer(1, input_required(model=SAMPLE)).replace(b'"resultType"',
                                                           b'"result\\u0054ype"')
    assert b"resultType" not in data
    routed = await med.from_server(data)
    assert routed.client is not None
    result = json.loads(routed.client)["result"]
    assert result["isError"] is True and "client's model" in result["content"][0]["text"]
    assert decisions(audit, "server")[0].method == "sampling/createMessage"
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.status == "jsonrpc_error"


async def test_an_unreadable_input_required_result_never_reaches_the_client() -> None:
    med, audit = mediator()
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    routed = await med.from_server(answer(1, {"resultType": "input_required",
                                              "inputRequests": {"q": "elicit please"}}))
    assert routed.client is not None
    assert json.loads(routed.client)["error"]["code"] == -32603
    assert audit.of(OutcomeEvent)[0].status == "upstream_failure"


async def test_an_input_request_that_is_no_server_request_is_refused() -> None:
    med, audit = mediator()
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    evil = {"method": "tools/call", "params": {"name": "rm_rf"}}
    routed = await med.from_server(answer(1, input_required(q=ELICIT, x=evil)))
    assert routed.client is not None
    assert set(json.loads(routed.client)["result"]["inputRequests"]) == {"q"}
    assert decisions(audit, "server")[1].rule == "protocol"


# -- approval in the client of the new revision -----------------------------------
async def approval_round(med: Mediator) -> dict[str, Any]:
    routed = await med.from_client(call(1, "stop_vm", {"vm": "db-01"}))
    assert routed.upstream is None and routed.held is None and routed.client is not None
    return dict(json.loads(routed.client)["result"])


async def test_approval_client_asks_through_input_required_and_the_retry_decides() -> None:
    med, audit = mediator()
    result = await approval_round(med)
    assert result["resultType"] == "input_required"
    question = result["inputRequests"][APPROVAL_KEY]
    assert question["method"] == "elicitation/create" and "stop_vm" in question["params"]["message"]
    assert decisions(audit)[0].decision == "pending"
    yes = {APPROVAL_KEY: {"action": "accept", "content": {"approve": True}}}
    retry = call(2, "stop_vm", {"vm": "db-01"}, requestState=result["requestState"],
                 inputResponses=yes)
    out = json.loads(await forwarded(med, retry))
    # The server sees neither mcpwall's question's answer nor its state.
    assert "requestState" not in out["params"] and "inputResponses" not in out["params"]
    assert out["params"]["arguments"] == {"vm": "db-01"} and out["id"] == 2
    approved = decisions(audit)[1]
    assert approved.decision == "approved" and approved.call_id == decisions(audit)[0].call_id
    (event,) = lifecycle(audit, "approval")
    assert event.detail["verdict"] == "approved" and event.detail["via"] == "client"
    # The state is used once: the same retry again is a new call, asked again.
    routed = await med.from_client(retry.replace(b'"id":2', b'"id":3'))
    assert routed.upstream is None
    assert decisions(audit)[-1].decision == "pending"


async def test_a_declined_or_forged_approval_never_forwards_the_call() -> None:
    med, audit = mediator()
    result = await approval_round(med)
    no = {APPROVAL_KEY: {"action": "decline"}}
    routed = await med.from_client(call(2, "stop_vm", {"vm": "db-01"},
                                        requestState=result["requestState"],
                                        inputResponses=no))
    assert routed.upstream is None and routed.client is not None
    assert json.loads(routed.client)["result"]["isError"] is True
    assert decisions(audit)[-1].decision == "rejected"
    # A state sealed for another call (other arguments) is no answer: asked anew.
    result = await approval_round(med)
    yes = {APPROVAL_KEY: {"action": "accept", "content": {"approve": True}}}
    routed = await med.from_client(call(3, "stop_vm", {"vm": "web-01"},
                                        requestState=result["requestState"],
                                        inputResponses=yes))
    assert routed.upstream is None and decisions(audit)[-1].decision == "pending"
    # Another caller presenting alice's state is asked anew too.
    other, other_audit = mediator(MALLORY, rounds=med.rounds)
    routed = await other.from_client(call(4, "stop_vm", {"vm": "db-01"},
                                          requestState=result["requestState"],
                                          inputResponses=yes))
    assert routed.upstream is None and decisions(other_audit)[-1].decision == "pending"
    # An altered state does not open.
    state = result["requestState"]
    tampered = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    routed = await med.from_client(call(5, "stop_vm", {"vm": "db-01"}, requestState=tampered,
                                        inputResponses=yes))
    assert routed.upstream is None and decisions(audit)[-1].decision == "pending"


async def test_a_client_of_an_older_revision_is_not_asked_by_input_required() -> None:
    med, audit = mediator()
    old = dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "stop_vm", "arguments": {"vm": "db-01"}}})
    routed = await med.from_client(old)
    assert routed.client is not None and b"input_required" not in routed.client
    assert decisions(audit)[-1].decision == "rejected"  # nobody can approve it here


# -- tasks ----------------------------------------------------------------------------
async def test_a_task_is_recorded_against_its_call_until_it_ends() -> None:
    med, audit = mediator()
    await forwarded(med, call(1, "batch", {"n": 3}))
    handle = {"resultType": "task", "taskId": "t-1", "status": "working",
              "createdAt": "2026-07-28T10:00:00Z", "lastUpdatedAt": "2026-07-28T10:00:00Z",
              "ttlMs": 60000}
    routed = await med.from_server(answer(1, handle))
    assert routed.client is not None
    call_id = decisions(audit)[0].call_id
    (created,) = lifecycle(audit, "task")
    assert created.detail == {"call_id": call_id, "task_id": "t-1", "status": "working",
                              "method": "tools/call", "round": 1}
    assert not audit.of(OutcomeEvent)
    # Polls are decided by the policy and recorded against the call.
    await forwarded(med, request(2, "tasks/get", {"taskId": "t-1"}))
    await med.from_server(answer(2, {**handle, "resultType": "complete"}))
    assert decisions(audit)[1].call_id == call_id and decisions(audit)[1].method == "tasks/get"
    assert not audit.of(OutcomeEvent)
    # Input the task asks for is decided like a round's: the sampling request goes.
    await forwarded(med, request(3, "tasks/get", {"taskId": "t-1"}))
    routed = await med.from_server(answer(3, {**handle, "resultType": "complete",
                                              "status": "input_required",
                                              "inputRequests": {"r": ELICIT, "m": SAMPLE}}))
    assert routed.client is not None
    assert set(json.loads(routed.client)["result"]["inputRequests"]) == {"r"}
    await forwarded(med, request(4, "tasks/update", {
        "taskId": "t-1", "inputResponses": {"r": {"action": "accept"}}}))
    await med.from_server(answer(4, {"resultType": "complete"}))
    # tasks/cancel is refused by the policy, recorded against the call.
    routed = await med.from_client(request(5, "tasks/cancel", {"taskId": "t-1"}))
    assert routed.upstream is None and decisions(audit)[-1].call_id == call_id
    # The end: the call's one outcome.
    await forwarded(med, request(6, "tasks/get", {"taskId": "t-1"}))
    await med.from_server(answer(6, {**handle, "resultType": "complete", "status": "completed",
                                     "result": {"content": [], "isError": True}}))
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.call_id == call_id and outcome.status == "tool_error"
    # The task is forgotten: a later poll is a call of its own.
    await forwarded(med, request(7, "tasks/get", {"taskId": "t-1"}))
    assert decisions(audit)[-1].call_id != call_id


async def test_another_callers_task_id_is_not_linked_to_the_call() -> None:
    rounds = Rounds()
    med, _audit = mediator(rounds=rounds)
    await forwarded(med, call(1, "batch", {}))
    await med.from_server(answer(1, {"resultType": "task", "taskId": "t-9",
                                     "status": "working"}))
    other, other_audit = mediator(MALLORY, rounds=rounds, session="s2")
    routed = await other.from_client(request(1, "tasks/get", {"taskId": "t-9"}))
    assert routed.upstream is None  # alice's task: refused to mallory
    assert decisions(other_audit)[0].call_id.startswith("s2.")


@pytest.mark.parametrize("status,expected", [("failed", "jsonrpc_error"),
                                             ("cancelled", "cancelled"),
                                             ("completed", "ok")])
async def test_a_tasks_terminal_state_is_its_calls_outcome(status: str, expected: str) -> None:
    med, audit = mediator()
    await forwarded(med, call(1, "batch", {}))
    await med.from_server(answer(1, {"resultType": "task", "taskId": "t", "status": "working"}))
    await forwarded(med, request(2, "tasks/get", {"taskId": "t"}))
    extra: dict[str, Any] = {"failed": {"error": {"code": -32603, "message": "boom"}},
                             "completed": {"result": {"content": []}}}.get(status, {})
    await med.from_server(answer(2, {"resultType": "complete", "taskId": "t", "status": status,
                                     **extra}))
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.status == expected
    assert msgspec.json.encode(outcome)  # a well-formed event


@pytest.mark.parametrize("change", ["kill switch", "reload"])
async def test_a_later_round_is_still_under_the_rules_in_force(change: str) -> None:
    """A retry is not charged again, but a kill switch turned on (or a reload
    that now refuses the call) between its rounds ends the call."""
    audit = Recorder()
    engine = Engine(compile_policy(parse_policy(json.dumps(POLICY), "t.json")))
    switch = KillSwitch()
    med = Mediator(server="vm", session="s1", caller=ALICE, audit=audit,
                   policy=GuardedPolicy(engine, switch))
    await forwarded(med, call(1, "deploy", {"app": "web"}))
    await med.from_server(answer(1, input_required(region=ELICIT)))
    if change == "kill switch":
        switch.turn_on(Scope("server", "vm"), by="alice", comment="INC-9")
    else:
        engine.swap(compile_policy(parse_policy(json.dumps(
            {**POLICY, "tools": {**POLICY["tools"],
                                 "deploy": {"action": "deny", "reason": "frozen"}}}), "t.json")))
    retry = call(2, "deploy", {"app": "web"}, requestState="st-1",
                 inputResponses={"region": {"action": "accept", "content": {"region": "eu"}}})
    routed = await med.from_client(retry)
    assert routed.upstream is None and routed.client is not None
    first, second = decisions(audit)
    assert second.call_id == first.call_id and second.decision == "deny"
    assert second.reason is not None and "round 2 of this call refused" in second.reason
    assert ("INC-9" if change == "kill switch" else "frozen") in second.reason
