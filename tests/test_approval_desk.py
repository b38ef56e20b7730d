"""Approval semantics without processes: scopes and standing approvals, the
restart rule (abandoned requests), progress keep-alives and elicitation, on the
real store, desk, policy engine and mediator (the audit point is in memory)."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_mediator import Recorder

from firewall.audit.events import DecisionEvent, LifecycleEvent
from firewall.gateway.approvals.desk import (
    RESTARTED,
    STOPPED,
    ApprovalDesk,
    ApprovalError,
    ApprovalRequest,
    open_desk,
    open_store,
    owner_alive,
    parse_scope,
    process_owner,
)
from firewall.gateway.mediator import Mediator, Routed
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.schema import PolicyError, parse_policy
from firewall.protocol import jsonrpc
from firewall.settings.approvals import ApprovalSettings

MINUTE = 60 * 10**9
POLICY = {"version": "1", "default": "deny", "tools": {"vm_management": {"rules": [
    {"name": "read", "when": {"action": ["list", "info"]}},
    {"name": "destroy", "when": {"action": {"const": "delete"}},
     "action": "require_approval", "reason": "deleting a VM destroys its disks"},
    {"name": "stop", "when": {"action": {"const": "stop"}},
     "action": "require_approval", "approval": "client", "reason": "stops a VM"}]}}}
DELETE = {"action": "delete", "vm_name": "db-01"}
ALICE = Caller("agent-alice", "grant-a")


def engine() -> Engine:
    return Engine(compile_policy(parse_policy(json.dumps(POLICY), "test.json")))


def request(ident: str, **kw: Any) -> ApprovalRequest:
    fields: dict[str, Any] = dict(
        id=ident, created_ns=1, expires_ns=2**62, instance="gw-1", session="s1",
        principal="agent-alice", grant="grant-a", server="vm", method="tools/call",
        target="vm_management", arguments=DELETE, rule="tools.vm_management.rules[destroy]")
    fields.update(kw)
    return ApprovalRequest(**fields)


def call(rid: object, args: dict[str, Any], token: object = None) -> bytes:
    params: dict[str, Any] = {"name": "vm_management", "arguments": args}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                       "params": params}).encode()


# -- scopes in the store ------------------------------------------------------
def test_parse_scope_accepts_the_three_forms_and_names_the_bad_ones() -> None:
    assert parse_scope("call") == ("call", None)
    assert parse_scope("session") == ("session", None)
    assert parse_scope("minutes:30") == ("minutes", 30.0)
    for bad in ("minutes", "minutes:0", "minutes:x", "hours:1", "session:2", "minutes:99999"):
        with pytest.raises(ApprovalError, match="expected call, session or minutes:N"):
            parse_scope(bad)


def test_scoped_approvals_become_standing_and_expire(tmp_path: Path) -> None:
    with open_store(tmp_path / "a.db") as store:
        for ident in ("once", "sess", "mins", "nope"):
            store.add(request(ident))
        store.decide("once", "approved", "alice", now_ns=10)
        store.decide("sess", "approved", "alice", now_ns=10, scope="session")
        decided = store.decide("mins", "approved", "bob", now_ns=10, scope="minutes:5")
        assert decided.scope == "minutes" and decided.scope_until_ns == 10 + 5 * MINUTE
        with pytest.raises(ApprovalError, match="only an approval can have a scope"):
            store.decide("nope", "rejected", "bob", scope="session")
        assert store.get("nope").status == "pending"  # type: ignore[union-attr]
        ids = {s.id: s for s in store.standing("gw-1", now_ns=20)}
        assert sorted(ids) == ["mins", "sess"]
        # Session scopes belong to the instance whose session it was.
        assert [s.id for s in store.standing("gw-2", now_ns=20)] == ["mins"]
        assert [s.id for s in store.standing("gw-1", now_ns=10 + 5 * MINUTE)] == ["sess"]


def test_standing_approval_covers_same_tool_and_rule_only() -> None:
    from firewall.gateway.approvals.desk import Standing

    sess = Standing(id="a", scope="session", session="s1", principal="p", server="vm",
                    target="t", rule="r", until_ns=None)
    mins = Standing(id="b", scope="minutes", session="s1", principal="p", server="vm",
                    target="t", rule="r", until_ns=100)
    same = dict(principal="p", server="vm", target="t", rule="r", now_ns=50)
    assert sess.covers(session="s1", **same) and not sess.covers(session="s2", **same)
    assert mins.covers(session="s2", **same)
    assert not mins.covers(session="s2", **{**same, "now_ns": 100})
    assert not mins.covers(session="s1", **{**same, "principal": "q"})
    assert not sess.covers(session="s1", **{**same, "rule": "other"})
    assert not sess.covers(session="s1", **{**same, "target": "u"})


def test_an_old_database_gets_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE approvals (id TEXT PRIMARY KEY, created_ns INTEGER NOT NULL,"
                     " expires_ns INTEGER NOT NULL, instance TEXT NOT NULL, session TEXT NOT "
                     "NULL, principal TEXT NOT NULL, \"grant\" TEXT NOT NULL, server TEXT NOT "
                     "NULL, method TEXT NOT NULL, target TEXT, arguments TEXT, rule TEXT, "
                     "reason TEXT, status TEXT NOT NULL DEFAULT 'pending', decided_ns INTEGER,"
                     " decided_by TEXT, note TEXT)")
        conn.execute("INSERT INTO approvals (id, created_ns, expires_ns, instance, session, "
                     "principal, \"grant\", server, method) VALUES ('x', 1, 4611686018427387904,"
                     " 'i', 's', 'p', 'g', 'vm', 'tools/call')")
    with open_store(db) as store:
        assert store.decide("x", "approved", "me", scope="session").scope == "session"


# -- the restart rule ---------------------------------------------------------
def dead_pid_owner() -> str:
    """The owner string of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    owner = process_owner(proc.pid)
    proc.kill()
    proc.wait()
    return owner


@pytest.mark.slow
def test_owner_alive_tells_gone_processes_from_live_ones() -> None:
    assert owner_alive(process_owner())
    assert not owner_alive(dead_pid_owner())
    host, boot, pid, start = process_owner().split("|")
    assert not owner_alive(f"{host}|{boot}|{pid}|{int(start or 0) + 1}")  # pid reused
    if boot:
        assert not owner_alive(f"{host}|not-this-boot|{pid}|{start}")
    assert owner_alive(f"another-host.example|{boot}|1|1")  # cannot tell: alive


@pytest.mark.slow
async def test_opening_a_desk_abandons_only_requests_of_dead_owners(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with open_store(db) as store:
        store.add(request("dead", owner=dead_pid_owner(), call_id="s1.4"))
        store.add(request("live", owner=process_owner()))  # another live gateway
        store.add(request("done", owner=dead_pid_owner()))
        store.decide("done", "approved", "alice")
    audit = Recorder()
    settings = ApprovalSettings(path=str(db))
    async with open_desk(settings, instance="gw-2", audit=audit) as desk:
        assert desk is not None
    with open_store(db) as store:
        assert store.get("dead").status == "abandoned"  # type: ignore[union-attr]
        assert store.get("dead").note == RESTARTED  # type: ignore[union-attr]
        assert store.get("live").status == "pending"  # type: ignore[union-attr]
        assert store.get("done").status == "approved"  # type: ignore[union-attr]
        with pytest.raises(ApprovalError, match=r"already abandoned \(mcpwall restarted"):
            store.decide("dead", "approved", "late-bob")
    (decision,) = audit.of(DecisionEvent)
    assert (decision.call_id, decision.decision, decision.reason) == ("s1.4", "rejected",
                                                                       RESTARTED)
    (event,) = audit.of(LifecycleEvent)
    assert event.detail["verdict"] == "abandoned" and event.detail["approval"] == "dead"


# -- the desk's standing approvals ----------------------------------------------
async def test_minutes_scope_spans_sessions_and_ends_on_the_clock(tmp_path: Path) -> None:
    now = [10**18]
    settings = ApprovalSettings(path=str(tmp_path / "a.db"))
    desk = ApprovalDesk(settings, tmp_path / "a.db", "gw-1", clock=lambda: now[0])
    await desk.open()
    try:
        with open_store(tmp_path / "a.db") as store:
            store.add(request("m1", session="s9"))
            store.decide("m1", "approved", "oncall", now_ns=now[0], scope="minutes:10")
        await desk.poll()
        ask = dict(principal="agent-alice", server="vm", target="vm_management",
                   rule="tools.vm_management.rules[destroy]")
        found = desk.standing_for(session="another-session", **ask)
        assert found is not None and found.id == "m1" and found.by == "oncall"
        assert desk.standing_for(session="s9", **{**ask, "principal": "agent-bob"}) is None
        now[0] += 10 * MINUTE  # the approval has run out
        assert desk.standing_for(session="another-session", **ask) is None
        await desk.poll()
        assert desk.standing_for(session="s9", **ask) is None
    finally:
        await desk.close()


async def test_a_session_scope_ends_with_its_session(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    desk = ApprovalDesk(ApprovalSettings(path=str(db)), db, "gw-1")
    await desk.open()
    try:
        with open_store(db) as store:
            for ident, session in (("a1", "s1"), ("a2", "s2")):
                store.add(request(ident, session=session))
                store.decide(ident, "approved", "oncall", scope="session")
        await desk.poll()
        ask = dict(principal="agent-alice", server="vm", target="vm_management",
                   rule="tools.vm_management.rules[destroy]")
        assert desk.standing_for(session="s1", **ask) is not None
        await desk.forget_session("s1")
        assert desk.standing_for(session="s1", **ask) is None
        await desk.poll()  # the file no longer offers it
        assert desk.standing_for(session="s1", **ask) is None
        assert desk.standing_for(session="s2", **ask) is not None  # another session keeps its own
        await desk.forget_session("s-without-approvals")  # nothing to forget: no error
    finally:
        await desk.close()
    with open_store(db) as store:
        ended = {r.id: r.scope_until_ns for r in store.list(None)}
        assert ended["a1"] is not None and ended["a2"] is None
    # A restarted desk of the same instance does not take it up again.
    again = ApprovalDesk(ApprovalSettings(path=str(db)), db, "gw-1")
    await again.open()
    try:
        assert again.standing_for(session="s1", **ask) is None
        assert again.standing_for(session="s2", **ask) is not None
    finally:
        await again.close()


# -- the mediator ---------------------------------------------------------------
def pending(db: Path) -> list[ApprovalRequest]:
    with open_store(db) as store:
        return store.list()


async def decide_when_filed(db: Path, verdict: str, scope: str = "call") -> ApprovalRequest:
    """Wait (in threads) until a request is filed, then give the verdict."""
    while True:
        waiting = pending(db)
        if waiting:
            with open_store(db) as store:
                return store.decide(waiting[0].id, verdict, "oncall-alice",  # type: ignore[arg-type]
                                    scope=scope)
        await trio.sleep(0.05)


async def held(med: Mediator, data: bytes, sent: list[bytes] | None = None) -> Routed:
    routed = await med.from_client(data, wait=False)
    assert routed.held is not None, "the call was not held"

    async def to_client(message: bytes) -> None:
        if sent is not None:
            sent.append(message)

    return await routed.held.wait(to_client if sent is not None else None)


async def test_session_scope_lets_later_calls_of_the_session_through(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    settings = ApprovalSettings(path=str(db), poll_seconds=0.05)
    audit = Recorder()
    async with open_desk(settings, instance="gw-1") as desk:
        med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit,
                       approvals=desk)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_when_filed, db, "approved", "session")
            first = await held(med, call(1, DELETE))
        assert first.upstream is not None
        second = await held(med, call(2, {"action": "delete", "vm_name": "web-02"}))
        assert second.upstream is not None
        # Another session of the same agent is asked again.
        other = Mediator(server="vm", session="s2", caller=ALICE, policy=engine(),
                         audit=audit, approvals=desk)
        out: list[Routed] = []

        async def third() -> None:
            out.append(await held(other, call(3, DELETE)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.sleep(0.3)
            assert not out, "a session-scoped approval let another session through"
            assert other.holds.withdraw("the client disconnected") == 1
        assert out[0].upstream is None and out[0].client is None  # withdrawn: no answer
    with open_store(db) as store:
        assert [r.status for r in store.list(None)] == ["expired", "approved"]
    decisions = [(e.request_id, e.decision, e.reason) for e in audit.of(DecisionEvent)]
    first_id = decisions[1][2]
    assert decisions[0] == ("1", "pending", "deleting a VM destroys its disks")
    assert first_id is not None and first_id.startswith("approved by oncall-alice")
    assert "(for the rest of the session)" in first_id
    assert decisions[2][:2] == ("2", "pending") and decisions[3][:2] == ("2", "approved")
    assert decisions[3][2] is not None and "standing approval" in decisions[3][2]
    standing = [e.detail for e in audit.of(LifecycleEvent)]
    assert standing[1]["via"] == "standing" and standing[1]["verdict"] == "approved"
    assert standing[2]["verdict"] == "withdrawn"


async def test_progress_notifications_while_held(tmp_path: Path,
                                                 mock_clock: trio.testing.MockClock) -> None:
    # The clock stands still unless jumped; the desk's SQLite threads run in real time.
    db = tmp_path / "a.db"
    settings = ApprovalSettings(path=str(db), progress_seconds=10, poll_seconds=1)
    async with open_desk(settings, instance="gw-1") as desk:
        med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(),
                       audit=Recorder(), approvals=desk)
        sent: list[bytes] = []
        routed: list[Routed] = []

        async def run() -> None:
            routed.append(await held(med, call(1, DELETE, token="tok-1"), sent))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while not pending(db):
                await trio.to_thread.run_sync(time.sleep, 0.01)
            for _ in range(3):
                mock_clock.jump(10)
                await trio.testing.wait_all_tasks_blocked()
            notes = [json.loads(m) for m in sent]
            assert [n["params"]["progress"] for n in notes] == [1, 2, 3]
            assert {n["method"] for n in notes} == {"notifications/progress"}
            assert {n["params"]["progressToken"] for n in notes} == {"tok-1"}
            assert notes[0]["params"]["message"] == \
                f"waiting for approval (request {pending(db)[0].id})"
            await decide_when_filed(db, "approved")
            while not routed:  # the poller wakes each (virtual) second
                mock_clock.jump(1)
                await trio.to_thread.run_sync(time.sleep, 0.01)
        assert routed[0].upstream is not None
        assert len(sent) == 3  # none after the verdict


async def test_no_progress_without_a_token(tmp_path: Path,
                                           autojump_clock: trio.testing.MockClock) -> None:
    settings = ApprovalSettings(path=str(tmp_path / "a.db"), progress_seconds=10)
    async with open_desk(settings, instance="gw-1") as desk:
        med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(),
                       audit=Recorder(), approvals=desk)
        sent: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(held, med, call(1, DELETE), sent)
            await trio.sleep(60)
            assert sent == []
            assert med.holds.withdraw("the client disconnected") == 1


INITIALIZE_ELICITING = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"form": {}}},
    "clientInfo": {"name": "t", "version": "1"}}}).encode()
STOP = {"action": "stop", "vm_name": "db-01", "password": "hunter2"}


_IDS = itertools.count(7)


async def elicited(med: Mediator, answer: dict[str, Any] | None
                   ) -> tuple[Routed, dict[str, Any]]:
    """Hold a stop call (elicitation rule), answer the question with ``answer``.

    Each call has an id of its own: an approved one is in flight until the
    server answers it, and a second request with its id would be refused."""
    sent: list[bytes] = []
    out: list[Routed] = []
    rid = next(_IDS)

    async def run() -> None:
        out.append(await held(med, call(rid, STOP), sent))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        question = json.loads(sent[0])
        if answer is not None:
            reply = await med.from_client(jsonrpc.result_response(question["id"], answer))
            assert reply.upstream is None and reply.client is None  # consumed by mcpwall
    return out[0], question


async def test_elicitation_accept_approves_and_decline_rejects() -> None:
    audit = Recorder()
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit)
    assert (await med.from_client(INITIALIZE_ELICITING)).upstream is not None
    assert med.holds.client_elicits
    approved, question = await elicited(med, {"action": "accept", "content": {"approve": True}})
    assert approved.upstream is not None
    assert question["method"] == "elicitation/create"
    assert question["id"].startswith("mcpwall-")
    params = question["params"]
    assert "vm_management" in params["message"] and "stops a VM" in params["message"]
    assert "hunter2" not in params["message"]  # arguments are redacted
    assert params["requestedSchema"]["properties"]["approve"]["type"] == "boolean"
    declined, _ = await elicited(med, {"action": "decline"})
    assert declined.upstream is None and declined.client is not None
    assert b"rejected by client:agent-alice in the client (declined)" in declined.client
    unticked, _ = await elicited(med, {"action": "accept", "content": {"approve": False}})
    assert unticked.upstream is None
    decisions = [(e.decision, e.reason) for e in audit.of(DecisionEvent)
                 if e.tool == "vm_management"]
    assert decisions == [
        ("pending", "stops a VM"), ("approved", "approved by client:agent-alice in the client"),
        ("pending", "stops a VM"),
        ("rejected", "rejected by client:agent-alice in the client (declined)"),
        ("pending", "stops a VM"),
        ("rejected", "rejected by client:agent-alice in the client (accepted without approving)"),
    ]
    assert [e.detail["via"] for e in audit.of(LifecycleEvent)] == ["client"] * 3


async def test_elicitation_unanswered_expires_and_the_question_is_cancelled(
        autojump_clock: trio.testing.MockClock) -> None:
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=Recorder())
    await med.from_client(INITIALIZE_ELICITING)
    sent: list[bytes] = []
    routed = await held(med, call(7, STOP), sent)
    assert routed.client is not None and b"no answer in the client within 300 s" in routed.client
    cancel = json.loads(sent[-1])
    assert cancel["method"] == "notifications/cancelled"
    assert cancel["params"]["requestId"] == json.loads(sent[0])["id"]


async def test_elicitation_rule_without_capability_falls_back_to_the_desk(
        tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    async with open_desk(ApprovalSettings(path=str(db), poll_seconds=0.05),
                         instance="gw-1") as desk:
        med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(),
                       audit=Recorder(), approvals=desk)
        sent: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_when_filed, db, "approved")
            routed = await held(med, call(7, STOP), sent)
        assert routed.upstream is not None and sent == []  # no question to the client
    # Without a desk, and without elicitation, the call is refused at once.
    bare = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=None)
    refused = await bare.from_client(call(8, STOP), wait=False)
    assert refused.held is None and refused.client is not None
    assert b"stops a VM" in refused.client and b"nobody can approve it here" in refused.client
    assert b"Held for approval" not in refused.client and b"Refused" in refused.client


async def test_a_server_request_reusing_an_id_of_mcpwall_is_refused() -> None:
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=Recorder())
    await med.from_client(INITIALIZE_ELICITING)
    sent: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(held, med, call(7, STOP), sent)
        await trio.testing.wait_all_tasks_blocked()
        ident = json.loads(sent[0])["id"]
        clash = jsonrpc.request("roots/list", {}, ident)
        routed = await med.from_server(clash)
        assert routed.client is None and routed.upstream is not None
        assert b"in use by mcpwall" in routed.upstream.data
        # The client's answer still reaches mcpwall, not the upstream.
        answer = await med.from_client(jsonrpc.result_response(ident, {"action": "decline"}))
        assert answer.upstream is None


def test_approval_option_only_on_require_approval() -> None:
    bad = {"version": "1", "tools": {"t": {"rules": [
        {"action": "allow", "approval": "client"}]}}}
    with pytest.raises(PolicyError, match=r"rules\[0\]\.approval: applies to"):
        compile_policy(parse_policy(json.dumps(bad), "bad.json"))
    typo = {"version": "1", "tools": {"t": {"action": "require_approval", "approval": "ops"}}}
    with pytest.raises(PolicyError, match="approval"):
        parse_policy(json.dumps(typo), "typo.json")
    inherited = {"version": "1", "default": "deny", "tools": {"t": {
        "approval": "client", "rules": [{"when": {"x": "1"}, "action": "require_approval"}]}}}
    table = Engine(compile_policy(parse_policy(json.dumps(inherited), "ok.json")))
    from firewall.protocol.mcp import Call

    held_call = table.decide(Call("tools/call", tool="t", arguments={"x": "1"}), ALICE, "vm", "s")
    assert held_call.action == "pending" and held_call.approval == "client"


async def test_refuse_held_answers_and_marks_the_request_abandoned(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    audit = Recorder()
    async with open_desk(ApprovalSettings(path=str(db)), instance="gw-1") as desk:
        med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit,
                       approvals=desk)
        out: list[Routed] = []

        async def run() -> None:
            out.append(await held(med, call(1, DELETE)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while not pending(db):
                await trio.to_thread.run_sync(time.sleep, 0.01)
            assert med.holds.refuse("mcpwall is shutting down") == 1
    assert out[0].upstream is None and out[0].client is not None
    assert b"mcpwall is shutting down" in out[0].client
    with open_store(db) as store:
        (request,) = store.list(None)
    assert (request.status, request.note) == ("abandoned", STOPPED)
    assert audit.of(LifecycleEvent)[-1].detail["verdict"] == "abandoned"


@pytest.mark.slow
def test_cli_approve_with_a_scope_and_list_shows_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from firewall.cli import main

    db = tmp_path / "a.db"
    with open_store(db) as store:
        store.add(request("s1"))
        store.add(request("m1"))
        store.add(request("dead", owner=dead_pid_owner()))
        store.abandon_orphans(time.time_ns())
    runner = CliRunner()
    ok = runner.invoke(main, ["approvals", "approve", "s1", "--db", str(db), "--by", "ann",
                              "--scope", "session"])
    assert ok.exit_code == 0 and "approved by ann for the rest of the session" in ok.output
    ok = runner.invoke(main, ["approvals", "approve", "m1", "--db", str(db), "--by", "bo",
                              "--scope", "minutes:30", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["scope"] == "minutes"
    late = runner.invoke(main, ["approvals", "approve", "dead", "--db", str(db)])
    assert late.exit_code == 1 and f"already abandoned ({RESTARTED})" in late.output
    listed = runner.invoke(main, ["approvals", "list", "--all", "--db", str(db)])
    assert listed.exit_code == 0
    assert "ann (session)" in listed.output and "bo (until " in listed.output
    assert "abandoned" in listed.output and RESTARTED in listed.output
