"""How long a policy reload stalls the event loop, compiling on it or in a thread.

Run:  .venv/bin/python benchmarks/bench_reload.py [--sizes 1000,10000,100000] [--repeats 3]

For each table size N (the policy of ``bench_policy.py``: N tool entries,
exact names, globs and argument rules), in the same run:

- ``compile``: reading and compiling the file on this thread
  (``PolicySet.compile``), the wall time a reload costs whoever runs it;
- ``on loop``: the longest gap between the ticks of a trio task that ticks
  every 10 ms, while the loop reloads by itself (``PolicySet.reload``, how
  the gateway reloaded before: the baseline);
- ``in thread``: the same gap while the gateway's reloader
  (:class:`firewall.gateway.policy_reload.PolicyReloader`) compiles in a
  worker thread, swaps on the loop and frees the old table in the thread;
  ``reload`` is how long that reload took from request to result.

Each reload replaces a table of the same size (a different file each time, so
every reload changes something). A figure is the median over ``--repeats``.
A tick is 10 ms, so a gap near 10 ms is no stall at all; the ratio is the
longest gap on the loop over the longest gap with the thread.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from bench_policy import policy_text

from firewall.gateway.policy_reload import PolicyReloader
from firewall.policy.engine import PolicySet

TICK = 0.01


async def longest_gap(reload: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(longest gap between ticks while ``reload`` runs, how long it ran), seconds."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await trio.sleep(TICK)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(5 * TICK)
        began = time.perf_counter()
        await reload()
        ended = time.perf_counter()
        await trio.sleep(2 * TICK)  # the first tick after the end closes the last gap
        nursery.cancel_scope.cancel()
    times = [t for t in ticks if t < began][-1:] + [t for t in ticks if t >= began]
    closing = [t for t in times if t > ended][:1]
    times = [t for t in times if t <= ended] + closing
    return max(b - a for a, b in itertools.pairwise(times)), ended - began


def measure(n: int, work: Path) -> dict[str, float]:
    path = work / f"policy-{n}.json"
    texts = [policy_text(n), policy_text(n).replace('"tool_0"', '"tool_zero"')]
    path.write_text(texts[0])
    policy = PolicySet([path])
    reloader = PolicyReloader(policy)
    turn = 0

    def next_file() -> None:
        nonlocal turn
        turn += 1
        path.write_text(texts[turn % 2])

    start = time.perf_counter()
    policy.compile()
    compile_s = time.perf_counter() - start

    async def on_loop() -> object:
        return policy.reload()

    async def in_thread() -> object:
        return await reloader.reload(None, "bench")

    async def both() -> tuple[tuple[float, float], tuple[float, float]]:
        next_file()
        loop = await longest_gap(on_loop)
        next_file()
        thread = await longest_gap(in_thread)
        return loop, thread

    (loop_gap, _), (thread_gap, thread_s) = trio.run(both)
    return {"compile": compile_s, "on loop": loop_gap, "in thread": thread_gap,
            "reload": thread_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):
            for n in sizes:  # sizes take turns, so a passing load touches them all
                runs[n].append(measure(n, Path(work)))
    print(f"{'rules':>8} {'compile':>9} {'stall on loop':>14} {'stall in thread':>16} "
          f"{'ratio':>6} {'reload (thread)':>16}")
    for n in sizes:
        med = {k: statistics.median(r[k] for r in runs[n]) for k in runs[n][0]}
        print(f"{n:>8} {med['compile'] * 1000:>7.0f}ms {med['on loop'] * 1000:>12.0f}ms "
              f"{med['in thread'] * 1000:>14.0f}ms {med['on loop'] / med['in thread']:>5.1f}x "
              f"{med['reload'] * 1000:>14.0f}ms")
    print(f"(a tick every {TICK * 1000:.0f} ms: a gap near that is no stall)")


if __name__ == "__main__":
    main()
