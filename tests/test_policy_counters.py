"""Counters (firewall.policy.counters): calendar windows in UTC, increment_from,
reserve / commit / rollback, require_state, the engine's Counted, a reload that
keeps totals, and the mediator settling a reservation by the call's fate.

Time is an explicit wall clock (:class:`Clock`): windows are calendar-aligned,
so the tests put it just before a UTC boundary and step over it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from firewall.gateway.mediator import Lost, Mediator
from firewall.policy.compiler import compile_policy
from firewall.policy.counters import (
    Counted,
    CounterRequest,
    MemoryCounters,
    Refused,
    Reservation,
    window_bounds,
)
from firewall.policy.decision import (
    ALLOW,
    DENY,
    INVALID_ARGUMENTS,
    LIMITED,
    PENDING,
    Caller,
    Decision,
)
from firewall.policy.engine import Engine, PolicySet
from firewall.policy.limits import MemoryLimiter
from firewall.policy.schema import PolicyError, parse_policy
from firewall.protocol import mcp


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CALLER = Caller("agent", "grant-1")


def engine(policy: dict[str, Any], clock: Clock, **kw: Any) -> Engine:
    return Engine(compile_policy(parse_policy(json.dumps(policy))),
                  counters=MemoryCounters(clock=clock), **kw)


def charge(amount: object, tool: str = "charge") -> mcp.Call:
    return mcp.Call(mcp.TOOLS_CALL, "client", tool=tool, arguments={"amount": amount})


async def settle(decision: Decision) -> tuple[Decision, Reservation | None]:
    assert type(decision) is Counted, decision
    return await decision.settle()


SPEND = {"default": "deny", "tools": {"charge": {"counters": [
    {"counter": "spend", "window": "day", "max": 1000, "increment_from": "args.amount",
     "scope": "global", "reason": "daily spend cap reached"}]}}}


# -- windows --------------------------------------------------------------------------

@pytest.mark.parametrize(("window", "now", "start", "end"), [
    ("minute", "2025-03-09 10:30:59.999", "2025-03-09 10:30:00", "2025-03-09 10:31:00"),
    ("minute", "2025-03-09 10:31:00", "2025-03-09 10:31:00", "2025-03-09 10:32:00"),
    ("hour", "2025-03-09 10:59:59", "2025-03-09 10:00:00", "2025-03-09 11:00:00"),
    ("day", "2025-12-31 23:59:59", "2025-12-31 00:00:00", "2026-01-01 00:00:00"),
    ("week", "2025-03-09 12:00:00", "2025-03-03 00:00:00", "2025-03-10 00:00:00"),  # a Sunday
    ("week", "2025-03-10 00:00:00", "2025-03-10 00:00:00", "2025-03-17 00:00:00"),  # a Monday
    ("month", "2024-02-29 23:00:00", "2024-02-01 00:00:00", "2024-03-01 00:00:00"),
    ("month", "2025-12-15 00:00:00", "2025-12-01 00:00:00", "2026-01-01 00:00:00"),
])
def test_windows_are_calendar_aligned_in_utc(window: str, now: str, start: str,
                                             end: str) -> None:
    assert window_bounds(window, ts(now)) == (ts(start), ts(end))


# -- increment_from over a window boundary --------------------------------------------

async def test_increment_from_sums_arguments_and_the_total_resets_at_utc_midnight() -> None:
    clock = Clock(ts("2025-03-09 23:59:00"))
    eng = engine(SPEND, clock)
    decision, held = await settle(eng.decide(charge(600), CALLER, "pay", "s"))
    assert decision.action == ALLOW and held is not None
    await held.commit()
    refused, none = await settle(eng.decide(charge(401), CALLER, "pay", "s"))
    assert refused.action == LIMITED and none is None
    assert refused.reason == "daily spend cap reached"
    assert refused.retry_after == 60.0  # seconds to midnight UTC
    decision, _ = await settle(eng.decide(charge(400), CALLER, "pay", "s"))  # exactly 1000
    assert decision.action == ALLOW
    clock.now = ts("2025-03-10 00:00:00")  # a new day: the total reads 0
    decision, _ = await settle(eng.decide(charge(1000), CALLER, "pay", "s"))
    assert decision.action == ALLOW
    refused, _ = await settle(eng.decide(charge(1), CALLER, "pay", "s"))
    assert refused.action == LIMITED


async def test_a_minute_counter_resets_at_the_top_of_the_minute_not_sixty_seconds_later(
        ) -> None:
    clock = Clock(ts("2025-03-09 10:30:59"))
    eng = engine({"tools": {"t": {"counters": [
        {"counter": "c", "window": "minute", "max": 2}]}}}, clock)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={})
    for _ in range(2):
        assert (await settle(eng.decide(call, CALLER, "s", "x")))[0].action == ALLOW
    assert (await settle(eng.decide(call, CALLER, "s", "x")))[0].action == LIMITED
    clock.now += 1.0  # 10:31:00: one second later, a new window (not a sliding one)
    assert (await settle(eng.decide(call, CALLER, "s", "x")))[0].action == ALLOW


@pytest.mark.parametrize(("amount", "why"), [
    (None, "is not a number"), ("100", "is not a number"), (True, "is not a number"),
    (-5, "must not be negative"), (2**60, "is beyond"),
    # A negative fraction is negative: rounded up it would read 0 and pass.
    (-0.5, "must not be negative"), (-1e-300, "must not be negative"),
    (1e300, "is beyond"), (10**400, "is beyond"),
])
async def test_an_increment_from_that_cannot_be_counted_is_refused(amount: object,
                                                                   why: str) -> None:
    eng = engine(SPEND, Clock(ts("2025-03-09 12:00:00")))
    decision = eng.decide(charge(amount), CALLER, "pay", "s")
    assert decision.action == INVALID_ARGUMENTS and why in (decision.reason or "")
    missing = eng.decide(mcp.Call(mcp.TOOLS_CALL, "client", tool="charge", arguments={}),
                         CALLER, "pay", "s")
    assert missing.action == INVALID_ARGUMENTS and "args.amount is missing" in (
        missing.reason or "")


async def test_increment_from_reads_nested_paths_and_rounds_fractions_up() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    store = MemoryCounters(clock=clock)
    eng = Engine(compile_policy(parse_policy(json.dumps({"tools": {"pay": {"counters": [
        {"counter": "cents", "window": "day", "increment_from": "args.order.total"}]}}}))),
        counters=store)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="pay",
                    arguments={"order": {"total": 2.1}})
    decision, _ = await settle(eng.decide(call, CALLER, "s", "x"))
    assert decision.action == ALLOW
    assert store.value("cents\x1fgrant\x1fgrant-1", "day") == 3


# -- reserve, commit, rollback ---------------------------------------------------------

def test_reserve_is_all_or_nothing_and_rollback_gives_back_once() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    store = MemoryCounters(clock=clock)
    a = CounterRequest("a", "hour", 3, 5, "a full")
    b = CounterRequest("b", "day", 1, 1, "b full")
    first = store.reserve([a, b])
    assert isinstance(first, Reservation)
    refused = store.reserve([a, b])  # neither can pay: 3 + 3 > 5 and 1 + 1 > 1
    assert isinstance(refused, Refused) and refused.index == 0
    assert store.value("a", "hour") == 3 and store.value("b", "day") == 1
    trio.run(first.rollback)
    assert store.value("a", "hour") == 0 and store.value("b", "day") == 0
    trio.run(first.rollback)  # once only
    assert store.value("a", "hour") == 0


def test_commit_keeps_and_a_rollback_after_the_window_leaves_the_new_one_alone() -> None:
    clock = Clock(ts("2025-03-09 10:59:59"))
    store = MemoryCounters(clock=clock)
    req = CounterRequest("k", "hour", 2, None, "")
    kept = store.reserve([req])
    late = store.reserve([req])
    assert isinstance(kept, Reservation) and isinstance(late, Reservation)
    trio.run(kept.commit)
    trio.run(kept.rollback)  # committed: nothing to give back
    assert store.value("k", "hour") == 4
    clock.now = ts("2025-03-09 11:00:00")
    fresh = store.reserve([req])
    assert isinstance(fresh, Reservation) and store.value("k", "hour") == 2
    trio.run(late.rollback)  # its window (10:00) is over: 11:00's total is untouched
    assert store.value("k", "hour") == 2


# -- require_state, scopes, buckets -----------------------------------------------------

async def test_require_state_reads_the_total_before_this_call() -> None:
    # Intercept's `state.<tool>.<counter> lte 2` reads the total before the call.
    clock = Clock(ts("2025-03-09 12:00:00"))
    eng = engine({"tools": {"t": {"counters": [{"counter": "n", "window": "hour"}],
                                  "require_state": {"n": {"max": 2}}}}}, clock)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={})
    verdicts = [(await settle(eng.decide(call, CALLER, "s", "x")))[0] for _ in range(4)]
    assert [d.action for d in verdicts] == [ALLOW, ALLOW, ALLOW, DENY]
    assert "counter 'n'" in (verdicts[3].reason or "")


async def test_counters_are_kept_per_scope_value() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    eng = engine({"tools": {"t": {"counters": [
        {"counter": "n", "window": "day", "max": 1, "scope": "agent"}]}}}, clock)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={})
    assert (await settle(eng.decide(call, Caller("a", "g"), "s", "x")))[0].action == ALLOW
    assert (await settle(eng.decide(call, Caller("a", "h"), "s", "y")))[0].action == LIMITED
    assert (await settle(eng.decide(call, Caller("b", "g"), "s", "x")))[0].action == ALLOW


async def test_a_bucket_refusal_reserves_no_counter_and_no_settle_means_refused() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    store = MemoryCounters(clock=clock)
    eng = Engine(compile_policy(parse_policy(json.dumps({"tools": {"t": {
        "limits": [{"max": 1, "window": "hour"}],
        "counters": [{"counter": "n", "window": "day"}]}}}))),
        MemoryLimiter(clock=lambda: 0.0), counters=store)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={})
    first = eng.decide(call, CALLER, "s", "x")
    assert not first.enforced_allow  # unsettled: refuses (fails closed)
    await settle(first)
    second = eng.decide(call, CALLER, "s", "x")
    assert second.action == LIMITED and type(second) is Decision
    assert store.value("n\x1fgrant\x1fgrant-1", "day") == 1


async def test_require_approval_verdicts_reserve_too_deny_verdicts_do_not() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    eng = engine({"tools": {"t": {"counters": [{"counter": "n", "window": "day", "max": 1}],
                                  "rules": [{"when": {"x": "no"}, "action": "deny"},
                                            {"action": "require_approval"}]}}}, clock)
    denied = eng.decide(mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={"x": "no"}),
                        CALLER, "s", "x")
    assert denied.action == DENY and type(denied) is Decision
    held = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={"x": "yes"})
    assert (await settle(eng.decide(held, CALLER, "s", "x")))[0].action == PENDING
    assert (await settle(eng.decide(held, CALLER, "s", "x")))[0].action == LIMITED


def test_explain_reserves_nothing_and_says_what_it_would_add() -> None:
    eng = engine(SPEND, Clock(ts("2025-03-09 12:00:00")))
    explained = eng.explain(charge(5), CALLER, "pay")
    assert explained.decision.action == ALLOW
    assert any("would add 5 to 0 (max 1000)" in line for line in explained.trace)


@pytest.mark.parametrize(("policy", "error"), [
    ({"tools": {"t": {"require_state": {"nope": {"max": 1}}}}}, "no rule declares counter"),
    ({"tools": {"t": {"counters": [{"counter": "c", "window": "day"}]},
                "u": {"counters": [{"counter": "c", "window": "hour"}]}}}, "must agree"),
    ({"tools": {"t": {"counters": [{"counter": "c", "window": "day",
                                    "increment_from": "amount"}]}}}, "args.<name>"),
    ({"tools": {"t": {"counters": [{"counter": "c", "window": "second"}]}}}, "window"),
    ({"tools": {"t": {"counters": [{"counter": "c", "window": "day", "increment": -1}]}}},
     "increment"),
])
def test_bad_counters_are_policy_errors_naming_the_key(policy: dict[str, Any],
                                                       error: str) -> None:
    with pytest.raises(PolicyError, match="tools") as info:
        compile_policy(parse_policy(json.dumps(policy), "p.json"))
    assert error in str(info.value)


# -- reload -------------------------------------------------------------------------

async def test_a_reload_keeps_the_totals(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(SPEND))
    clock = Clock(ts("2025-03-09 12:00:00"))
    policies = PolicySet([path], counters=MemoryCounters(clock=clock))
    await settle(policies.decide(charge(900), CALLER, "pay", "s"))
    raised = json.loads(json.dumps(SPEND))
    raised["tools"]["charge"]["counters"][0]["max"] = 950
    path.write_text(json.dumps(raised))
    assert policies.reload().changed
    decision, _ = await settle(policies.decide(charge(100), CALLER, "pay", "s"))
    assert decision.action == LIMITED  # 900 + 100 > 950: the 900 survived the reload
    decision, _ = await settle(policies.decide(charge(50), CALLER, "pay", "s"))
    assert decision.action == ALLOW


# -- the mediator settles by the call's fate ----------------------------------------

def _call(rid: int, tool: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                       "params": {"name": tool, "arguments": args}}).encode()


async def test_the_mediator_commits_on_a_result_and_rolls_back_on_an_error() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    store = MemoryCounters(clock=clock)
    eng = Engine(compile_policy(parse_policy(json.dumps(SPEND))), counters=store)
    med = Mediator(server="pay", session="s1", caller=CALLER, policy=eng, audit=None)
    key = "spend\x1fglobal\x1f"
    assert (await med.from_client(_call(1, "charge", {"amount": 300}))).upstream is not None
    assert store.value(key, "day") == 300  # reserved while in flight
    await med.from_server(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}')
    assert store.value(key, "day") == 0  # a JSON-RPC error gives it back
    await med.from_client(_call(2, "charge", {"amount": 300}))
    await med.from_server(b'{"jsonrpc":"2.0","id":2,"result":{"content":[],"isError":true}}')
    assert store.value(key, "day") == 300  # a tool error is an answer: the tool ran
    await med.from_client(_call(3, "charge", {"amount": 700}))
    await med.from_server(b'{"jsonrpc":"2.0","id":3,"result":{"content":[]}}')
    assert store.value(key, "day") == 1000
    refused = await med.from_client(_call(4, "charge", {"amount": 1}))
    assert refused.upstream is None and b"daily spend cap" in (refused.client or b"")
    await med.from_client(_call(5, "charge", {"amount": 0}))
    await med.unanswered(Lost("exited"))  # fate unknown: it may have run, it stays counted
    assert store.value(key, "day") == 1000


async def test_a_held_call_keeps_its_reservation_until_refused() -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    store = MemoryCounters(clock=clock)
    eng = Engine(compile_policy(parse_policy(json.dumps({"tools": {"t": {
        "action": "require_approval",
        "counters": [{"counter": "n", "window": "day", "scope": "global"}]}}}))),
        counters=store)
    # No desk and no client to ask: refused at once, and the reservation given back.
    med = Mediator(server="s", session="s1", caller=CALLER, policy=eng, audit=None)
    routed = await med.from_client(_call(1, "t", {}))
    assert routed.upstream is None and routed.client is not None
    assert store.value("n\x1fglobal\x1f", "day") == 0
