"""``session`` scopes for calls without a session (MCP 2026-07-28 over HTTP):
limits and counters count per grant; standing approvals given for a session
neither cover such a call nor are kept from one (docs/policy.md,
docs/approvals.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from firewall.audit.events import DecisionEvent, Event, Receipt
from firewall.config import ListenSettings
from firewall.gateway.approvals.desk import Standing, open_desk
from firewall.gateway.front.sessions import FrontContext
from firewall.gateway.mediator import Mediator
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import AllowAll, Caller, session_scope
from firewall.policy.engine import Engine
from firewall.policy.schema import parse_policy
from firewall.protocol import meta
from firewall.settings.approvals import ApprovalSettings

POLICY = {"version": "1", "default": "allow", "tools": {
    "search": {"limits": [{"window": "hour", "max": 2, "scope": "session"}]},
    "spend": {"limits": [{"counter": "spent", "window": "day", "max": 2,
                          "scope": "session"}]}}}


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, event: Event) -> Receipt:
        self.events.append(event)
        return _Done()


class _Done:
    async def committed(self) -> None:
        return None


def _call(rid: int, tool: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {
        "name": tool, "arguments": {}, "_meta": {meta.VERSION_KEY: "2026-07-28"}}},
        separators=(",", ":")).encode()


def _decisions(audit: Recorder) -> list[str]:
    return [e.decision for e in audit.events if isinstance(e, DecisionEvent)]


def test_session_scope_is_the_session_or_the_grant() -> None:
    assert session_scope("a1b2", Caller("p", "g")) == "a1b2"
    assert session_scope(None, Caller("p", "g")) == "grant:g"


async def _run(engine: Engine, grant: str, session: str, tool: str, rid: int,
               audit: Recorder, *, sessionless: bool) -> None:
    med = Mediator(server="vm", session=session, caller=Caller("agent", grant), policy=engine,
                   audit=audit, sessionless=sessionless)
    routed = await med.from_client(_call(rid, tool))
    if routed.upstream is not None:  # the server answers: counters are kept
        await med.from_server(json.dumps({"jsonrpc": "2.0", "id": rid, "result": {
            "content": [], "resultType": "complete"}}).encode())


async def test_sessionless_calls_share_one_session_budget_per_grant() -> None:
    """Each stateless request gets a mediator (and an id) of its own: without
    the grant as its session scope, each would start a fresh budget."""
    for tool in ("search", "spend"):  # a token bucket, then a counter
        engine = Engine(compile_policy(parse_policy(json.dumps(POLICY))))
        audit = Recorder()
        for n in range(3):
            await _run(engine, "g-1", f"req-{n}", tool, n, audit, sessionless=True)
        await _run(engine, "g-2", "req-9", tool, 9, audit, sessionless=True)
        assert _decisions(audit) == ["allow", "allow", "limited", "allow"], tool
        # Sessions (2025, or wrap's one process) keep one budget each.
        audit = Recorder()
        for n in range(3):
            await _run(engine, "g-1", f"sess-{n}", tool, n, audit, sessionless=False)
        assert _decisions(audit) == ["allow", "allow", "allow"], tool


async def test_a_session_approval_never_covers_a_sessionless_call(tmp_path: Path) -> None:
    settings = ApprovalSettings(path=str(tmp_path / "approvals.db"))
    async with open_desk(settings, instance="gw-1") as desk:
        given: dict[str, Any] = {"scope": "session", "session": "req-1", "principal": "agent",
                                 "server": "vm", "target": "wipe", "rule": "tools.wipe"}
        desk._standing["a1"] = Standing(id="a1", until_ns=None, **given)
        common = {"principal": "agent", "server": "vm", "target": "wipe", "rule": "tools.wipe"}
        assert desk.standing_for(session="req-1", **common) is not None  # in a session
        assert desk.standing_for(session=None, **common) is None  # without one
        desk._standing["a2"] = Standing(id="a2", until_ns=desk.clock() + 60 * 10**9,
                                        **{**given, "scope": "minutes"})
        found = desk.standing_for(session=None, **common)
        assert found is not None and found.id == "a2"  # N minutes cover it


async def test_stateless_mediators_share_their_servers_rounds_and_nothing_in_flight() -> None:
    """FrontContext.mediator: a stateless request's mediator shares its server's
    Rounds (a retry finds the round before it) and keeps its own state: one
    request id in flight on two of them at once, each answer settling its own."""
    front = FrontContext(ListenSettings(), AllowAll(), None)
    caller = Caller("agent", "g-1")
    a, b = (front.mediator("vm", f"stateless-{n}", caller, sessionless=True) for n in "ab")
    other = front.mediator("db", "stateless-c", caller, sessionless=True)
    session = front.mediator("vm", "sess", caller)
    assert a.rounds is b.rounds and other.rounds is not a.rounds
    assert session.rounds is not a.rounds  # a session's own
    assert a.scope == b.scope == "grant:g-1" and session.scope == "sess"
    for med in (a, b):  # never "already in flight": the ids are each mediator's
        assert (await med.from_client(_call(1, "search"))).upstream is not None
    assert a.awaits(1) and b.awaits(1)
    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {
        "content": [], "resultType": "complete"}}).encode()
    assert (await a.from_server(answer)).client is not None
    assert not a.awaits(1) and b.awaits(1)
    assert a.holds is not b.holds and a.log is not b.log
