"""Policy reloads compile off the event loop, one at a time, and swap between decisions.

The gateway's reloader (:mod:`firewall.gateway.policy_reload`) compiles in a
worker thread: a trio task that ticks every 10 ms keeps ticking while a large
policy compiles, and decisions use the old table until the swap, the new one
after. Requests made during a reload are served together by one more reload.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from firewall.gateway.policy_reload import PolicyReloader, reloader_for
from firewall.policy.decision import Caller
from firewall.policy.engine import PolicySet, ReloadResult
from firewall.protocol import mcp

WHO = Caller("agent", "grant-1")
PROBE = mcp.Call(mcp.TOOLS_CALL, tool="probe", arguments={})


def big_policy(n: int, probe: str) -> str:
    """``n`` tool entries (exact names, prefix globs, argument rules), and ``probe``."""
    tools: dict[str, Any] = {}
    for i in range(n):
        if i % 3 == 0:
            tools[f"tool_{i}"] = {"rules": [{"when": {"mode": ["read", "list"]}}]}
        elif i % 3 == 1:
            tools[f"grp{i}_*"] = {"action": "deny"}
        else:
            tools[f"name_{i}"] = {}
    tools["probe"] = {"action": probe}
    return json.dumps({"version": "1", "default": "deny", "tools": tools})


async def test_reload_compiles_in_a_thread_and_swaps_between_decisions(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(big_policy(50_000, "allow"))
    policy = PolicySet([path])
    old = policy.engine.compiled
    # What a reload costs the thread that runs it, measured here, on this
    # machine, now: the event loop would stall this long if it compiled itself.
    start = time.perf_counter()
    policy.compile()
    compile_seconds = time.perf_counter() - start
    path.write_text(big_policy(50_000, "deny"))

    ticks: list[tuple[float, str]] = []

    async def tick() -> None:
        while True:
            ticks.append((time.perf_counter(), policy.decide(PROBE, WHO, "srv", "s").action))
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(0.1)
        began = time.perf_counter()
        result = await PolicyReloader(policy).reload(None, "test")
        ended = time.perf_counter()
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()

    assert result.ok and result.changed
    assert policy.engine.compiled is not old
    # The loop kept ticking: its longest gap during the reload is a small part
    # of what compiling on the loop would have stalled it.
    window = [t for t, _ in ticks if began <= t <= ended]
    times = [began, *window, ended]
    longest = max(b - a for a, b in itertools.pairwise(times))
    assert len(window) >= 5, (len(window), compile_seconds)
    assert longest < compile_seconds / 4, (longest, compile_seconds)
    # Old table until the swap, the new one after; never back.
    actions = [a for _, a in ticks]
    swap = actions.index("deny")
    assert set(actions[:swap]) == {"allow"} and set(actions[swap:]) == {"deny"}
    assert [a for t, a in ticks if began <= t][:5] == ["allow"] * 5  # during the compile
    assert {a for t, a in ticks if t > ended} == {"deny"}


async def test_requests_during_a_reload_share_one_more_reload(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(big_policy(3_000, "allow"))
    policy = PolicySet([path])
    reloader = reloader_for(policy)
    assert reloader_for(policy) is reloader
    results: dict[str, ReloadResult] = {}

    async def ask(trigger: str) -> None:
        results[trigger] = await reloader.reload(None, trigger)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "first")
        await trio.testing.wait_all_tasks_blocked()  # "first" is compiling in its thread
        assert reloader.reloads == 0
        # Written after "first" asked (its thread may or may not have read the
        # file yet): the reload the others share starts after, and sees it.
        path.write_text(big_policy(3_000, "deny"))
        for trigger in ("SIGHUP", "file_changed", "admin"):
            nursery.start_soon(ask, trigger)
    assert reloader.reloads == 2
    assert results["SIGHUP"] is results["file_changed"] is results["admin"]
    assert results["SIGHUP"] is not results["first"]
    assert results["SIGHUP"].ok
    assert results["SIGHUP"].files == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert policy.decide(PROBE, WHO, "srv", "s").action == "deny"
    # Nothing running: the next request reloads on its own.
    assert not (await reloader.reload(None, "again")).changed
    assert reloader.reloads == 3


async def test_a_bad_file_keeps_the_table_in_force(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(big_policy(10, "allow"))
    policy = PolicySet([path])
    table = policy.engine.compiled
    path.write_text('{"version": "1", "default": "allow", "tols": {}}')
    result = await reloader_for(policy).reload(None, "SIGHUP")
    assert not result.ok and result.error is not None and "tols" in result.error
    assert result.files == table.digests
    assert policy.engine.compiled is table
    assert policy.decide(PROBE, WHO, "srv", "s").action == "allow"


class _BrokenCompiler(PolicySet):
    """A policy set whose next compile hits a bug (not a bad file)."""

    broken = False

    def compile(self) -> Any:
        if self.broken:
            raise OverflowError("int too large to convert to float")
        return super().compile()


async def test_a_compile_that_raises_keeps_the_table_in_force(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(big_policy(10, "allow"))
    policy = _BrokenCompiler([path])
    table = policy.engine.compiled
    policy.broken = True
    result = await reloader_for(policy).reload(None, "SIGHUP")
    assert not result.ok and result.error is not None
    assert "internal error while compiling the policy" in result.error
    assert "OverflowError" in result.error
    assert policy.engine.compiled is table
    assert policy.decide(PROBE, WHO, "srv", "s").action == "allow"
