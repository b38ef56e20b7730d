"""The ``wrap`` front and the mediator contract, in memory: the fast tier's wrap tests.

The same behaviours as tests/test_wrap.py and tests/test_mediation_attacks.py (which
run real ``mcpwall wrap`` processes in front of real servers: the integration tier),
here through a real ``WrapSession`` and ``Mediator`` between a client and a child on
trio memory streams (tests/memory_fronts.py), with the audit trail in memory. Each
checks what the child received (what a server would execute) and what was recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from memory_fronts import MemoryChild, memory_wrap

from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.gateway.approvals.desk import open_desk
from firewall.gateway.mediator import Mediator
from firewall.policy.decision import Decision
from firewall.protocol import framing, jsonrpc
from firewall.settings.approvals import ApprovalSettings
from tests.test_approval_desk import ALICE, DELETE, decide_when_filed, engine, pending
from tests.test_approval_desk import call as vm_call
from tests.test_mediator import Recorder, TablePolicy, call, make


def canon(data: bytes) -> bytes:
    """The one-line form the mediator forwards (what the SDKs send is its own)."""
    return framing.canonical(data)


HELD = Decision("pending", rule="destroy-needs-approval", reason="destructive")


def msg(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def smuggle(outer: dict[str, Any], inner: dict[str, Any], sep: bytes) -> bytes:
    """``outer`` whose params hold ``inner`` framed by ``sep`` (whitespace for JSON, a
    line break for a reader that splits on it), as tests/test_mediation_attacks.py does."""
    return msg(outer)[:-1] + b',"params":{"x":' + sep + msg(inner) + sep + b"}}"


async def test_a_request_is_answered_and_client_eof_ends_the_session_cleanly() -> None:
    mediator, audit = make()
    async with memory_wrap(mediator) as wrap:
        await wrap.client.send(call(1, "echo", {"x": 1}))
        reply = await wrap.client.answer(1)
        assert reply["result"] == {"echo": {"name": "echo", "arguments": {"x": 1}}}
        await wrap.client.close()
        assert await wrap.ended() == 0
        assert await wrap.client.line() == b""  # the front's stdout ends with the session
    assert wrap.child.received == [canon(call(1, "echo", {"x": 1}))]
    assert wrap.child.returncode == 0 and wrap.child.signals == []
    assert [o.status for o in audit.of(OutcomeEvent)] == ["ok"]


async def test_bad_input_is_answered_and_the_session_lives_on() -> None:
    mediator, _ = make()
    async with memory_wrap(mediator) as wrap:
        await wrap.client.send(
            b"this is not json",
            b'{"jsonrpc":"2.0","id":7}',
            b'{"jsonrpc":"2.0","id":70,"method":"tools/call","params":{"name":"e\xff"}}',
            b'[{"jsonrpc":"2.0","id":8,"method":"ping"}]',
            call(9, "echo", {"x": 1}))
        replies = [await wrap.client.message() for _ in range(5)]
    assert replies[0]["id"] is None and replies[0]["error"]["code"] == jsonrpc.PARSE_ERROR
    assert replies[1]["id"] == 7 and replies[1]["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert replies[2]["id"] == 70 and replies[2]["error"]["code"] == jsonrpc.INVALID_PARAMS
    assert replies[3]["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert replies[4] == {"jsonrpc": "2.0", "id": 9,
                          "result": {"echo": {"name": "echo", "arguments": {"x": 1}}}}
    assert wrap.child.received == [canon(call(9, "echo", {"x": 1}))]  # nothing else reached it
    assert wrap.exit_code == 0


async def test_an_oversized_line_is_refused_and_the_next_one_served() -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 5000 + b'"}}'
    mediator, _ = make()
    async with memory_wrap(mediator, max_line=1000) as wrap:
        await wrap.client.send(big, b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
        refused = await wrap.client.message()
        assert refused["error"]["code"] == jsonrpc.MESSAGE_TOO_LARGE
        assert "1000 bytes" in refused["error"]["message"]
        assert "result" in await wrap.client.answer(2)
    assert wrap.child.received == [b'{"jsonrpc":"2.0","id":2,"method":"ping"}']


async def test_child_exit_answers_pending_requests_and_ends_non_zero() -> None:
    mediator, audit = make()
    async with memory_wrap(mediator, echo=False) as wrap:
        await wrap.client.send(b'{"jsonrpc":"2.0","id":"a","method":"tools/list"}')
        assert b'"id":"a"' in await wrap.child.next_line()
        await wrap.child.exit(3)
        reply = await wrap.client.answer("a")
        assert await wrap.ended() == 3
    assert reply["error"]["code"] == jsonrpc.UPSTREAM_UNAVAILABLE
    assert "exited with code 3" in reply["error"]["message"]
    assert [o.status for o in audit.of(OutcomeEvent)] == ["upstream_failure"]
    assert mediator.pending_count == 0


async def test_a_bare_cr_cannot_smuggle_a_held_call_to_the_child() -> None:
    """A Python SDK server reads a bare CR as a line end: the mediator forwards the
    canonical form, so the CR-framed ``git_reset`` inside the ping never is a line."""
    mediator, audit = make(TablePolicy({("tools/call", "git_reset"): HELD}))
    inner = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
             "params": {"name": "git_reset", "arguments": {"repo_path": "/r"}}}
    attack = smuggle({"jsonrpc": "2.0", "id": 5, "method": "ping"}, inner, b"\r")
    async with memory_wrap(mediator) as wrap:
        await wrap.client.send(attack)
        assert "result" in await wrap.client.answer(5)  # the ping, and only the ping
    (line,) = wrap.child.received
    assert b"\r" not in line and line == framing.canonical(attack)
    assert not framing.splittable(line)
    assert [(e.method, e.tool, e.decision) for e in audit.of(DecisionEvent)] == [
        ("ping", None, "allow")]


async def test_a_held_call_with_no_desk_is_refused_recorded_and_said_so() -> None:
    mediator, audit = make(TablePolicy({("tools/call", "vm_delete"): HELD}))
    async with memory_wrap(mediator) as wrap:
        await wrap.client.send(call(4, "vm_delete", {"vm_name": "db-01"}), call(5, "vm_list"))
        refused = await wrap.client.answer(4)
        assert "result" in await wrap.client.answer(5)
    text = refused["result"]["content"][0]["text"]
    assert refused["result"]["isError"] is True
    assert "Held for approval" not in text and "nobody can approve it here" in text
    assert wrap.child.received == [canon(call(5, "vm_list"))]
    decisions = [(e.tool, e.decision) for e in audit.of(DecisionEvent)]
    assert decisions == [("vm_delete", "pending"), ("vm_delete", "rejected"),
                         ("vm_list", "allow")]
    rejected = audit.of(DecisionEvent)[1]
    assert "no approval desk" in (rejected.reason or "")


async def test_a_tools_call_without_an_id_never_reaches_the_child() -> None:
    mediator, audit = make()
    idless = msg({"jsonrpc": "2.0", "method": "tools/call",
                  "params": {"name": "vm_delete", "arguments": {"vm_name": "db-01"}}})
    async with memory_wrap(mediator) as wrap:
        await wrap.client.send(idless, call(3, "vm_info"))
        assert "result" in await wrap.client.answer(3)
    assert [m.get("id") for m in wrap.client.seen] == [3]  # a notification gets no answer
    assert wrap.child.received == [canon(call(3, "vm_info"))]
    (refused, allowed) = audit.of(DecisionEvent)
    assert (refused.tool, refused.decision, refused.rule, refused.request_id) == (
        "vm_delete", "deny", "protocol", None)
    assert allowed.decision == "allow"


async def test_a_response_to_an_id_never_forwarded_is_dropped_and_recorded() -> None:
    mediator, audit = make()
    async with memory_wrap(mediator, echo=False) as wrap:
        await wrap.child.say(b'{"jsonrpc":"2.0","id":41,"result":{"content":[]}}')
        await wrap.client.send(call(1, "t"))
        await wrap.child.next_line()
        await wrap.child.say(b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}',
                             b'{"jsonrpc":"2.0","id":1,"result":{"content":["again"]}}')
        assert (await wrap.client.answer(1))["result"] == {"content": []}
        await wrap.client.send(b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
        await wrap.child.next_line()
        await wrap.child.say(b'{"jsonrpc":"2.0","id":2,"result":{}}')
        await wrap.client.answer(2)
    assert [m.get("id") for m in wrap.client.seen] == [1, 2]  # neither forgery relayed
    drops = [e.detail for e in audit.of(LifecycleEvent) if e.kind == "message_dropped"]
    assert [(d["from"], d["reason"], d["id"]) for d in drops] == [
        ("server", "response_unmatched", 41), ("server", "response_unmatched", 1)]


async def test_a_server_request_the_policy_refuses_is_answered_to_the_child_only() -> None:
    deny = Decision("deny", rule="no-sampling", reason="servers may not use the model")
    mediator, audit = make(TablePolicy({("sampling/createMessage", None): deny}))
    async with memory_wrap(mediator, echo=False) as wrap:
        await wrap.child.say(b'{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage",'
                             b'"params":{}}')
        answer = json.loads(await wrap.child.next_line())
        await wrap.client.send(b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
        await wrap.child.next_line()
        await wrap.child.say(b'{"jsonrpc":"2.0","id":2,"result":{}}')
        await wrap.client.answer(2)
    assert answer["id"] == "s1" and answer["error"]["code"] == jsonrpc.POLICY_DENIED
    assert [m.get("id") for m in wrap.client.seen] == [2]  # the client never saw it
    assert audit.of(DecisionEvent)[0].direction == "server"


async def test_a_deeply_nested_message_is_refused_and_the_session_goes_on() -> None:
    bomb = b"[" * 100_000 + b"]" * 100_000
    mediator, _ = make()
    async with memory_wrap(mediator) as wrap:
        await wrap.client.send(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
            b'"vm_management","arguments":{"action":"list","x":' + bomb + b"}}}",
            b'{"jsonrpc":"2.0","method":"notifications/x","params":' + bomb + b"}",
            call(2, "vm_management", {"action": "list"}))
        refused = await wrap.client.message()  # too deep to read its id: id null
        assert refused["error"]["code"] == jsonrpc.INVALID_REQUEST
        assert "nested deeper" in refused["error"]["message"]
        assert "result" in await wrap.client.answer(2)
    assert wrap.child.received == [canon(call(2, "vm_management", {"action": "list"}))]


async def test_client_eof_kills_a_child_that_will_not_exit(
        autojump_clock: trio.testing.MockClock) -> None:
    child = MemoryChild(exits_on_eof=False, grace=5)
    mediator, _ = make()
    async with memory_wrap(mediator, child, echo=False) as wrap:
        await wrap.client.close()
        assert await wrap.ended() == 0  # the client left: not an error
    assert child.signals == ["SIGKILL"] and child.returncode == -9
    assert trio.current_time() >= 5  # it had its grace first


LIST = {"action": "list"}


async def test_a_held_call_waits_apart_and_reaches_the_child_once_approved(
        tmp_path: Path) -> None:
    db = tmp_path / "approvals.db"
    audit = Recorder()
    async with open_desk(ApprovalSettings(path=str(db), poll_seconds=0.05),
                         instance="gw-1") as desk:
        mediator = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(),
                            audit=audit, approvals=desk)
        async with memory_wrap(mediator) as wrap:
            await wrap.client.send(vm_call(1, DELETE), vm_call(2, LIST))
            assert "result" in await wrap.client.answer(2)  # not stuck behind the held call
            assert wrap.child.received == [canon(vm_call(2, LIST))]
            await decide_when_filed(db, "approved")
            assert "result" in await wrap.client.answer(1)
    assert wrap.child.received == [canon(vm_call(2, LIST)), canon(vm_call(1, DELETE))]
    assert [(e.request_id, e.decision) for e in audit.of(DecisionEvent)] == [
        ("1", "pending"), ("2", "allow"), ("1", "approved")]


async def test_held_calls_are_withdrawn_when_the_client_leaves(tmp_path: Path) -> None:
    db = tmp_path / "approvals.db"
    audit = Recorder()
    async with open_desk(ApprovalSettings(path=str(db), poll_seconds=0.05),
                         instance="gw-1") as desk:
        mediator = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(),
                            audit=audit, approvals=desk)
        async with memory_wrap(mediator) as wrap:
            await wrap.client.send(vm_call(1, DELETE))
            while not pending(db):  # noqa: ASYNC110 (filed in SQLite, seen by polling)
                await trio.sleep(0.01)
            await wrap.client.close()
            assert await wrap.ended() == 0
            assert await wrap.client.line() == b""  # withdrawn calls get no answer
    assert wrap.child.received == []
    assert [(e.decision, e.reason) for e in audit.of(DecisionEvent)] == [
        ("pending", "deleting a VM destroys its disks"),
        ("rejected", "the client disconnected")]
