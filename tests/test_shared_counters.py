"""Counters in Redis (firewall.gateway.shared_counters) against a real redis-server.

Two engines (two mcpwall instances) share totals; the Lua reservation checks
``max`` atomically; a rollback gives back to its own window; keys expire at
their window's end; a reload keeps totals; a Redis that is down refuses
(``on_error = "deny"``) or passes uncounted (``"allow"``), as the buckets do.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from redis_process import RedisProcess, redis_server

from firewall.gateway.shared_counters import RedisCounters
from firewall.gateway.shared_limits import RedisLimiter
from firewall.policy.compiler import compile_policy
from firewall.policy.counters import Counted, MemoryCounters, Reservation
from firewall.policy.decision import ALLOW, DENY, LIMITED, Caller, Decision
from firewall.policy.engine import Engine, PolicySet
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp
from firewall.settings.limits import parse_url

pytestmark = pytest.mark.slow  # every test here talks to a redis-server process

CALLER = Caller("agent", "grant-1")
SPEND = {"default": "deny", "tools": {"charge": {"counters": [
    {"counter": "spend", "window": "day", "max": 1000, "increment_from": "args.amount",
     "scope": "global"}]}}}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def store(url: str, prefix: str, clock: Clock, **kw: Any) -> RedisCounters:
    kw.setdefault("timeout", 10.0)
    return RedisCounters(RedisLimiter(parse_url(url), key_prefix=prefix, **kw), clock=clock)


def charge(amount: int) -> mcp.Call:
    return mcp.Call(mcp.TOOLS_CALL, "client", tool="charge", arguments={"amount": amount})


async def settle(decision: Decision) -> tuple[Decision, Reservation | None]:
    assert type(decision) is Counted, decision
    return await decision.settle()


async def test_two_engines_share_one_total_and_the_max_holds(redis: RedisProcess) -> None:
    clock = Clock(ts("2025-03-09 23:59:30"))
    prefix = f"t{secrets.token_hex(6)}:"
    one, two = store(redis.url, prefix, clock), store(redis.url, prefix, clock)
    compiled = compile_policy(parse_policy(json.dumps(SPEND)))
    a, b = Engine(compiled, counters=one), Engine(compiled, counters=two)
    assert (await settle(a.decide(charge(600), CALLER, "pay", "s")))[0].action == ALLOW
    refused, none = await settle(b.decide(charge(401), CALLER, "pay", "s"))
    assert refused.action == LIMITED and none is None and refused.retry_after == 30.0
    # Many calls at once from both instances: exactly the 400 left is taken.
    granted: list[int] = []

    async def one_call(engine: Engine) -> None:
        decision, _ = await settle(engine.decide(charge(10), CALLER, "pay", "s"))
        if decision.action == ALLOW:
            granted.append(10)

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(one_call, a if i % 2 else b)
    assert sum(granted) == 400
    clock.now = ts("2025-03-10 00:00:00")  # midnight UTC: a new key, a new total
    assert (await settle(b.decide(charge(1000), CALLER, "pay", "s")))[0].action == ALLOW
    await one.limiter.aclose()
    await two.limiter.aclose()


async def test_rollback_gives_back_to_its_own_window_and_keys_expire(
        redis: RedisProcess) -> None:
    clock = Clock(ts("2025-03-09 10:59:59"))
    prefix = f"t{secrets.token_hex(6)}:"
    shared = store(redis.url, prefix, clock)
    engine = Engine(compile_policy(parse_policy(json.dumps({"tools": {"t": {"counters": [
        {"counter": "n", "window": "hour", "max": 3, "scope": "global"}]}}}))),
        counters=shared)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={})
    _, first = await settle(engine.decide(call, CALLER, "s", "x"))
    _, second = await settle(engine.decide(call, CALLER, "s", "x"))
    assert first is not None and second is not None
    await first.rollback()
    assert await shared.read([("n\x1fglobal\x1f", "hour")]) == [1]
    keys = redis.command("KEYS", f"{prefix}*").splitlines()
    assert len(keys) == 1
    ttl_ms = int(redis.command("PTTL", keys[0]))
    assert 60_000 < ttl_ms <= 61_000  # to 11:00, plus a minute of grace
    clock.now = ts("2025-03-09 11:00:00")
    assert await shared.read([("n\x1fglobal\x1f", "hour")]) == [0]
    for _ in range(3):
        assert (await settle(engine.decide(call, CALLER, "s", "x")))[0].action == ALLOW
    await second.rollback()  # 10:00's window: 11:00's total stays 3
    assert await shared.read([("n\x1fglobal\x1f", "hour")]) == [3]
    await shared.limiter.aclose()


async def test_a_reload_keeps_totals_in_redis(redis: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(SPEND))
    clock = Clock(ts("2025-03-09 12:00:00"))
    shared = store(redis.url, f"t{secrets.token_hex(6)}:", clock)
    policies = PolicySet([path], counters=shared)
    await settle(policies.decide(charge(900), CALLER, "pay", "s"))
    path.write_text(json.dumps(SPEND).replace('"max": 1000', '"max": 950'))
    assert policies.reload().changed
    assert (await settle(policies.decide(charge(100), CALLER, "pay", "s")))[0].action == LIMITED
    assert (await settle(policies.decide(charge(50), CALLER, "pay", "s")))[0].action == ALLOW
    await shared.limiter.aclose()


async def test_require_state_reads_redis_totals(redis: RedisProcess) -> None:
    clock = Clock(ts("2025-03-09 12:00:00"))
    prefix = f"t{secrets.token_hex(6)}:"
    shared = store(redis.url, prefix, clock)
    engine = Engine(compile_policy(parse_policy(json.dumps({"tools": {"t": {
        "counters": [{"counter": "n", "window": "day", "scope": "global"}],
        "require_state": {"n": {"max": 1}}}}}))), counters=shared)
    call = mcp.Call(mcp.TOOLS_CALL, "client", tool="t", arguments={})
    actions = [(await settle(engine.decide(call, CALLER, "s", "x")))[0].action
               for _ in range(3)]
    assert actions == [ALLOW, ALLOW, DENY]
    await shared.limiter.aclose()


@pytest.mark.parametrize(("on_error", "action"), [("deny", DENY), ("allow", ALLOW)])
async def test_a_redis_that_is_down_fails_as_the_buckets_do(tmp_path: Path, on_error: str,
                                                            action: str) -> None:
    with redis_server(tmp_path) as gone:
        url = gone.url
    shared = store(url, "t:", Clock(ts("2025-03-09 12:00:00")), timeout=2.0,
                   on_error=on_error)
    engine = Engine(compile_policy(parse_policy(json.dumps(SPEND))), counters=shared)
    decision, reservation = await settle(engine.decide(charge(1), CALLER, "pay", "s"))
    assert decision.action == action and reservation is None
    assert "counter store unavailable" in (decision.reason or "")
    await shared.limiter.aclose()


def test_memory_and_redis_agree_on_a_sequence(redis: RedisProcess) -> None:
    clock = Clock(ts("2025-03-09 23:58:00"))
    shared = store(redis.url, f"t{secrets.token_hex(6)}:", clock)
    compiled = compile_policy(parse_policy(json.dumps(SPEND)))
    memory, remote = Engine(compiled, counters=MemoryCounters(clock=clock)), Engine(
        compiled, counters=shared)
    steps = [(300, 0), (500, 30), (300, 10), (200, 50), (1000, 1), (999, 0), (5, 0)]

    async def run() -> None:
        for amount, dt in steps:
            clock.now += dt
            want, w_res = await settle(memory.decide(charge(amount), CALLER, "pay", "s"))
            got, g_res = await settle(remote.decide(charge(amount), CALLER, "pay", "s"))
            assert (got.action, got.retry_after) == (want.action, want.retry_after)
            if amount == 200 and w_res is not None and g_res is not None:
                await w_res.rollback()
                await g_res.rollback()
        await shared.limiter.aclose()

    trio.run(run)
