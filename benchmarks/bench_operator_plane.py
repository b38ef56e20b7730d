"""What the operator plane adds to the hot path: the kill switch and the metrics observer.

Run:  .venv/bin/python benchmarks/bench_operator_plane.py [--rounds 200] [--batch 2000]

With an ``[admin]`` table, ``mcpwall serve`` puts a :class:`GuardedPolicy`
(the kill switch) in front of the policy engine and an :class:`ObservedAudit`
(metrics, live feed) behind the audit point. Measured per call, in the same
run, in thread CPU time (other processes' load is left out), cases
interleaved batch by batch, medians over the rounds:

- ``decide``: the compiled virtualization pack deciding one tools/call;
- ``decide+switch``: the same through GuardedPolicy, every switch off;
- ``decide+switch on``: a switch on for another server (dict lookups, then
  the engine);
- ``append``: appending a decision event to a no-op audit point;
- ``append+metrics``: through ObservedAudit (counters, nobody on the feed);
- ``append+metrics+feed``: with one live-feed reader connected (its queue is
  drained every batch);
- ``prometheus_client``: for comparison, ``Counter.labels(...).inc()`` of the
  same four labels (the library this module chose not to use on the hot path).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from firewall.audit.events import DecisionEvent
from firewall.gateway.operator.feed import Feed
from firewall.gateway.operator.killswitch import GuardedPolicy, KillSwitch, Scope
from firewall.gateway.operator.metrics import Metrics, ObservedAudit
from firewall.policy.decision import Caller
from firewall.policy.engine import PolicySet
from firewall.protocol.mcp import Call

PACK = Path(__file__).resolve().parent.parent / "rules" / "virtualization.json"
CALLER = Caller("agent", "grant-1")
CALL = Call("tools/call", tool="vm_management", arguments={"action": "list"})
EVENT = DecisionEvent(ts_ns=1, call_id="s.1", session="s", principal="agent", grant="g",
                      server="vm", method="tools/call", tool="vm_management", decision="allow")


class _NoTrail:
    async def append(self, event: Any) -> None:
        return None


def _sync_cases() -> dict[str, Callable[[int], None]]:
    engine = PolicySet([PACK])
    off = GuardedPolicy(engine, KillSwitch())
    on_switch = KillSwitch()
    on_switch.turn_on(Scope("server", "other"), by="ops")
    on = GuardedPolicy(engine, on_switch)

    def loop(point: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            decide = point.decide
            for _ in range(n):
                decide(CALL, CALLER, "vm", "s")
        return run

    cases = {"decide": loop(engine), "decide+switch": loop(off), "decide+switch on": loop(on)}
    try:
        from prometheus_client import CollectorRegistry, Counter

        counter = Counter("calls", "calls", ["server", "method", "tool", "decision"],
                          registry=CollectorRegistry())

        def prom(n: int) -> None:
            for _ in range(n):
                counter.labels("vm", "tools/call", "vm_management", "allow").inc()

        cases["prometheus_client"] = prom
    except ImportError:
        pass
    return cases


def _async_cases() -> dict[str, Callable[[int], Any]]:
    plain = _NoTrail()
    observed = ObservedAudit(_NoTrail(), Metrics(), Feed())
    feed = Feed()
    reader = feed.subscribe()
    fed = ObservedAudit(_NoTrail(), Metrics(), feed)

    def loop(point: Any, drain: bool = False) -> Callable[[int], Any]:
        async def run(n: int) -> None:
            append = point.append
            for _ in range(n):
                await append(EVENT)
            if drain:
                reader.queue.clear()
        return run

    return {"append": loop(plain), "append+metrics": loop(observed),
            "append+metrics+feed": loop(fed, drain=True)}


def measure(rounds: int, batch: int) -> dict[str, float]:
    """ns per call of each case, median over ``rounds`` interleaved batches."""
    sync_cases, async_cases = _sync_cases(), _async_cases()
    samples: dict[str, list[float]] = {k: [] for k in [*sync_cases, *async_cases]}

    async def main() -> None:
        for _ in range(rounds):
            for name, fn in sync_cases.items():
                start = time.thread_time_ns()
                fn(batch)
                samples[name].append((time.thread_time_ns() - start) / batch)
            for name, afn in async_cases.items():
                start = time.thread_time_ns()
                await afn(batch)
                samples[name].append((time.thread_time_ns() - start) / batch)

    trio.run(main)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    result = measure(args.rounds, args.batch)
    print(f"{'case':<22} {'ns/call':>9}  {'vs base':>8}")
    for name, ns in result.items():
        base = result["append"] if name.startswith("append") else result["decide"]
        print(f"{name:<22} {ns:9.1f}  {ns / base:7.2f}x")
    added = (result["decide+switch"] - result["decide"]
             + result["append+metrics"] - result["append"] * 1)
    print(f"\nadded per call (switch off, one decision event, nobody on the feed): "
          f"{added:.0f} ns")


if __name__ == "__main__":
    main()
