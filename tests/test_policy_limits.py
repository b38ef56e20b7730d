"""Token buckets under trio's MockClock: refill timing and concurrent callers."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.limits import BucketSpec, MemoryLimiter
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp

SPEC = BucketSpec("c", "grant", capacity=10, window=60.0)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_refill_timing(mock_clock: trio.testing.MockClock) -> None:
    limiter = MemoryLimiter(clock=trio.current_time)
    req = [(SPEC.key("g"), SPEC)]
    assert all(limiter.acquire(req) is None for _ in range(10))
    wait = limiter.acquire(req)
    assert wait == pytest.approx(6.0)
    await trio.sleep(5.9)
    assert limiter.acquire(req) == pytest.approx(0.1)
    await trio.sleep(0.1)
    assert limiter.acquire(req) is None
    assert limiter.acquire(req) == pytest.approx(6.0)
    # A long idle refills to capacity, not beyond.
    await trio.sleep(3600)
    assert limiter.tokens(SPEC.key("g"), SPEC) == pytest.approx(10.0)
    assert sum(limiter.acquire(req) is None for _ in range(20)) == 10


async def test_peek_does_not_debit(mock_clock: trio.testing.MockClock) -> None:
    limiter = MemoryLimiter(clock=trio.current_time)
    req = [(SPEC.key("g"), SPEC)]
    for _ in range(50):
        assert limiter.acquire(req, debit=False) is None
    assert limiter.tokens(SPEC.key("g"), SPEC) == 10.0


async def test_all_or_nothing_and_retry_after_is_the_longest_wait(
        mock_clock: trio.testing.MockClock) -> None:
    limiter = MemoryLimiter(clock=trio.current_time)
    slow = BucketSpec("slow", "grant", capacity=1, window=100.0)
    fast = BucketSpec("fast", "grant", capacity=5, window=5.0)
    both = [(slow.key("g"), slow), (fast.key("g"), fast)]
    assert limiter.acquire(both) is None
    assert limiter.acquire(both) == pytest.approx(100.0)
    # The refusal took nothing from the fast bucket.
    assert limiter.tokens(fast.key("g"), fast) == pytest.approx(4.0)
    await trio.sleep(100.0)
    assert limiter.acquire(both) is None


async def test_idle_buckets_are_swept(mock_clock: trio.testing.MockClock) -> None:
    limiter = MemoryLimiter(clock=trio.current_time)
    for i in range(5000):
        limiter.acquire([(SPEC.key(f"g{i}"), SPEC)])
    await trio.sleep(61.0)
    limiter.acquire([(SPEC.key("late"), SPEC)])
    for i in range(5000, 9000):
        limiter.acquire([(SPEC.key(f"g{i}"), SPEC)])
    assert len(limiter) < 9001
    # A swept bucket comes back full: the same as it would have been.
    assert limiter.tokens(SPEC.key("g1"), SPEC) == 10.0


@pytest.mark.parametrize("callers", [1, 7, 50])
async def test_concurrent_callers_never_exceed_max_in_a_window(
        mock_clock: trio.testing.MockClock, callers: int) -> None:
    policy = parse_policy(json.dumps({"tools": {"vm": {"limits": [
        {"counter": "vm_rate", "window": "minute", "max": 10, "scope": "grant"}]}}}))
    engine = Engine(compile_policy(policy), MemoryLimiter(clock=trio.current_time))
    call = mcp.Call(mcp.TOOLS_CALL, tool="vm", arguments={})
    granted: list[float] = []

    async def caller(i: int) -> None:
        who = Caller(f"agent-{i}", "shared-grant")
        for _ in range(40):
            d = engine.decide(call, who, "vm", f"s{i}")
            if d.action == "allow":
                granted.append(trio.current_time())
            else:
                assert d.action == "limited" and d.retry_after is not None
            await trio.sleep(1.0 + (i % 3) * 0.25)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(callers):
            nursery.start_soon(caller, i)
    # Token bucket bound: in any interval of length T, at most max + T * rate calls.
    rate = 10 / 60.0
    for t0 in sorted(granted):
        for t1 in sorted(granted):
            if t1 >= t0:
                n = sum(t0 <= t <= t1 for t in granted)
                assert n <= 10 + (t1 - t0) * rate + 1e-9
    # All at one instant: exactly max, whatever the number of callers.
    first = [t for t in granted if t == start]
    assert len(first) == min(10, callers)
    elapsed = trio.current_time() - start
    assert len(granted) <= 10 + elapsed * rate + 1e-9


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(shape=st.tuples(st.integers(1, 5), st.sampled_from([1.0, 7.5, 60.0])),
       steps=st.lists(st.tuples(st.sampled_from(["a", "b"]),
                                st.sampled_from([0.0, 0.0, 0.1, 1.0, 3.0, 100.0])),
                      max_size=40))
def test_one_bucket_fast_step_agrees_with_acquire(shape: tuple[int, float],
                                                  steps: list[tuple[str, float]]) -> None:
    # The engine's one-bucket path (take_one) must be acquire() in every respect.
    capacity, window = shape
    spec = BucketSpec("c", "grant", capacity=capacity, window=window)
    clock = _Clock()
    fast, general = MemoryLimiter(clock), MemoryLimiter(clock)
    for who, step in steps:
        clock.now += step
        key = spec.key(who)
        got = fast.take_one(key, float(capacity), spec.rate, window)
        assert got == general.acquire([(key, spec)])
        assert fast.tokens(key, spec) == general.tokens(key, spec)


class _Elsewhere:
    """A limiter that is not a MemoryLimiter (as a Redis one would be): the
    engine takes its general path, acquire() with a request list."""

    def __init__(self, clock: _Clock) -> None:
        self.inner = MemoryLimiter(clock)

    def acquire(self, requests: list[tuple[str, BucketSpec]], debit: bool = True) -> float | None:
        return self.inner.acquire(requests, debit)


@settings(max_examples=150, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.sampled_from(["second", "minute", 7.5]),
                       st.sampled_from(["grant", "agent", "session", "server", "global"])),
       steps=st.lists(st.tuples(st.sampled_from(["g1", "g2"]), st.sampled_from(["s1", "s2"]),
                                st.sampled_from([0.0, 0.0, 0.05, 0.5, 2.0, 100.0])),
                      max_size=40))
def test_engine_inline_bucket_step_agrees_with_the_general_path(
        shape: tuple[int, str | float, str], steps: list[tuple[str, str, float]]) -> None:
    # decide() steps a single in-memory bucket itself; every decision, refusal
    # and retry_after must be what acquire() gives through the general path.
    capacity, window, scope = shape
    policy = parse_policy(json.dumps({"default": "deny", "tools": {"t": {"limits": [
        {"max": capacity, "window": window, "scope": scope}]}}}))
    clock = _Clock()
    inline = Engine(compile_policy(policy), MemoryLimiter(clock))
    general = Engine(compile_policy(policy), _Elsewhere(clock))
    call = mcp.Call("tools/call", tool="t", arguments={})
    for grant, session, step in steps:
        clock.now += step
        who = Caller(f"agent-{grant}", grant)
        assert (inline.decide(call, who, "vm", session)
                == general.decide(call, who, "vm", session))


def test_a_verdict_remembers_a_bounded_number_of_bucket_keys() -> None:
    from firewall.policy.compiler import KEYS_MAX
    policy = parse_policy(json.dumps({"tools": {"t": {"limits": [{"max": 5}]}}}))
    engine = Engine(compile_policy(policy), MemoryLimiter(lambda: 0.0))
    call = mcp.Call("tools/call", tool="t", arguments={})
    for i in range(KEYS_MAX + 10):
        assert engine.decide(call, Caller("a", f"grant-{i}"), "vm", "s").action == "allow"
    verdict = engine.compiled.fleet.tools.entries[0].fallback
    assert verdict.single is not None and len(verdict.single[0]) == KEYS_MAX
    # Past the bound, keys are still right, only not remembered: each grant
    # has its own bucket of 5.
    who = Caller("a", f"grant-{KEYS_MAX + 5}")
    assert [engine.decide(call, who, "vm", "s").action for _ in range(5)] == [
        "allow"] * 4 + ["limited"]
