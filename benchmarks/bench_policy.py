"""Policy decision cost per call, envelope decode included, as tables grow.

Run:  .venv/bin/python benchmarks/bench_policy.py [--sizes 10,1000,100000]
      [--rounds 150] [--batch 1000] [--repeats 3]

For each table size N the policy holds N tool entries: a third exact names, a
third globs with a literal prefix (``grp123_*``), a third globs with a literal
suffix (``*_sfx123``), every fourth one with argument rules, plus the rules the
measured calls hit (an argument-rule entry like the virtualization pack's).

Measured per call, in the same run:

- ``msgspec``: the peer figure, a bare ``msgspec`` decode of the same
  tools/call envelope into a four-field struct (no validation, no policy);
- ``baseline``: ``mcp.decode`` of a tools/call: the envelope and the policy
  view, what the gateway does before it decides (no policy);
- ``exact+args``: + ``engine.decide`` on an exact name with argument rules
  (a ``pattern`` require and an ``in`` rule);
- ``glob``: + decide on a name that only globs match;
- ``limited``: + decide on a rule with a token bucket (never empty here);
- ``miss``: + decide on a name never seen before (``grp{3i+1}_x{i}``), so the
  per-name caches miss and the glob index is searched. While the table has
  them (the first N/3 names), each such name reaches a glob entry no call
  reached before; later ones reach none and get the policy default. With the
  default rounds, most names at every size are of the second kind;
- ``new name``: + decide on a name never seen before that reaches an entry
  other calls reach all the time (``bench_{i}``, the ``glob`` case's entry):
  the index search alone, with argument rules evaluated.

The cases run interleaved, a batch of each in turn, so load on a shared
machine hits all of them alike. Each table size runs in a process of its own
(the heap of a 100,000-rule table is part of what is measured), and the sizes
take turns, ``--repeats`` times, so that a load that comes and goes touches
them all; a figure is the median over the rounds, then over the repeats. The
clock is the thread's CPU time, which leaves out the time the OS gives other
processes; calls per second come from the wall clock over the same batches.
``load`` is parsing the policy text and ``compile`` building its table: a
reload costs their sum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.limits import MemoryLimiter
from firewall.policy.schema import parse_policy
from firewall.protocol import jsonrpc, mcp

CALLER = Caller("agent", "grant-1", ("ops",))
GOAL_NS = 2000.0
FLAT = 1.5
CASES = ("msgspec", "baseline", "exact+args", "glob", "limited", "miss", "new name")


class _Peer(msgspec.Struct):
    jsonrpc: str
    method: str
    id: int
    params: msgspec.Raw


def policy_text(n: int) -> str:
    tools: dict[str, Any] = {}
    for i in range(n):
        kind = i % 3
        name = (f"tool_{i}", f"grp{i}_*", f"*_sfx{i}")[kind]
        if i % 4 == 0:
            tools[name] = {"rules": [
                {"when": {"mode": ["read", "list"]}},
                {"when": {"mode": {"const": "write"}, "path": {"path_under": "/srv"}},
                 "action": "require_approval"},
            ]}
        else:
            tools[name] = {"action": "deny" if i % 5 == 0 else "allow"}
    tools["vm_management"] = {
        "require": {"vm_name": {"pattern": "[a-z0-9-]{1,32}", "optional": True}},
        "rules": [
            {"name": "read", "when": {"action": ["list", "info"]}},
            {"name": "lifecycle", "when": {"action": ["start", "stop"]},
             "limits": [{"counter": "vm", "window": "second", "max": 10**9}]},
            {"name": "destroy", "when": {"action": "delete"}, "action": "require_approval"},
        ],
    }
    tools["bench_*"] = {"rules": [{"when": {"mode": ["read"]}}]}
    return json.dumps({"version": "1", "default": "deny", "tools": tools})


def request(tool: str, args: dict[str, Any]) -> bytes:
    return jsonrpc.request("tools/call", {"name": tool, "arguments": args}, 7)


def interleaved(cases: dict[str, Callable[[], object]], rounds: int,
                batch: int) -> dict[str, tuple[float, float]]:
    """(median CPU ns per call, median wall ns per call) of each case, a batch of each in turn."""
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    thread, perf = time.thread_time_ns, time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in cases.items():
            w0, t0 = perf(), thread()
            for _ in range(batch):
                fn()
            t1, w1 = thread(), perf()
            cpu[name].append((t1 - t0) / batch)
            wall[name].append((w1 - w0) / batch)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name]))
            for name in cases}


def measure(n: int, rounds: int, batch: int) -> dict[str, float]:
    text = policy_text(n)
    t0 = time.perf_counter()
    policy = parse_policy(text)
    t1 = time.perf_counter()
    engine = Engine(compile_policy(policy), MemoryLimiter())
    t2 = time.perf_counter()
    decode, decide = mcp.decode, engine.decide
    peer = msgspec.json.Decoder(_Peer).decode

    def full(data: bytes) -> Callable[[], object]:
        def run() -> object:
            call = decode(data)[1]
            assert call is not None
            return decide(call, CALLER, "vm", "session-1")
        return run

    exact = request("vm_management", {"action": "list", "vm_name": "ci-7"})
    glob = request("bench_ab", {"mode": "read"})
    limited = request("vm_management", {"action": "start", "vm_name": "ci-7"})
    # Sanity: the calls decide what the policy says, not a default, and the
    # one-pass decode answers what the two-step one does.
    assert full(exact)().rule == "tools.vm_management.rules[read]"  # type: ignore[attr-defined]
    assert full(glob)().rule == "tools.bench_*.rules[0]"  # type: ignore[attr-defined]
    assert full(limited)().action == "allow"  # type: ignore[attr-defined]
    assert decode(exact)[1] == mcp.view(jsonrpc.decode(exact))

    def fresh() -> Iterator[bytes]:
        i = 0
        while True:
            yield request(f"grp{i * 3 + 1}_x{i}", {"mode": "read"})
            i += 1

    # Built ahead so that the timed loop only decodes and decides.
    misses = iter([m for m, _ in zip(fresh(), range(rounds * batch), strict=False)])

    def miss() -> object:
        call = decode(next(misses))[1]
        assert call is not None
        return decide(call, CALLER, "vm", "session-1")

    news = iter([request(f"bench_{i}", {"mode": "read"}) for i in range(rounds * batch)])
    assert full(request("bench_new", {"mode": "read"}))().rule == "tools.bench_*.rules[0]"  # type: ignore[attr-defined]

    def new_name() -> object:
        call = decode(next(news))[1]
        assert call is not None
        return decide(call, CALLER, "vm", "session-1")

    cases: dict[str, Callable[[], object]] = {
        "msgspec": lambda: peer(exact),
        "baseline": lambda: decode(exact),
        "exact+args": full(exact),
        "glob": full(glob),
        "limited": full(limited),
        "miss": miss,
        "new name": new_name,
    }
    timed = interleaved(cases, rounds, batch)
    result = {c: cpu for c, (cpu, _) in timed.items()}
    result.update({f"{c}/s": 1e9 / wall for c, (_, wall) in timed.items()})
    result["load_s"] = t1 - t0
    result["compile_s"] = t2 - t1
    return result


def _child(n: int, rounds: int, batch: int) -> dict[str, float]:
    """One size measured in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n), "--rounds", str(rounds),
         "--batch", str(batch)], check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child is not None:
        print(json.dumps(measure(opts.child, opts.rounds, opts.batch)))
        return
    sizes = [int(s) for s in opts.sizes.split(",")]
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for _ in range(opts.repeats):
        for n in sizes:
            runs[n].append(_child(n, opts.rounds, opts.batch))
    results = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for n, rs in runs.items()}
    print(f"median ns per call (thread CPU clock; {opts.rounds} rounds of {opts.batch}, "
          f"{opts.repeats} processes per size)")
    print(f"{'rules':>8} {'load':>7} {'compile':>8} " + " ".join(f"{c:>10}" for c in CASES))
    for n, r in results.items():
        print(f"{n:>8} {r['load_s']:6.2f}s {r['compile_s']:7.2f}s "
              + " ".join(f"{r[c]:10.0f}" for c in CASES))
    print("\ncalls per second, one thread (wall clock over the same batches):")
    print(f"{'rules':>8} " + " ".join(f"{c:>10}" for c in CASES))
    for n, r in results.items():
        print(f"{n:>8} " + " ".join(f"{r[c + '/s']:10.0f}" for c in CASES))
    print("\ndecide alone (case minus baseline, ns):")
    for n, r in results.items():
        print(f"{n:>8} " + " ".join(f"{c}={r[c] - r['baseline']:.0f}" for c in CASES[2:]))
    print("\nbaseline / msgspec peer: "
          + ", ".join(f"{n}: {r['baseline'] / r['msgspec']:.2f}x" for n, r in results.items()))
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(f"\ngoal: full per-call cost (decode included) <= {GOAL_NS:,.0f} ns at every size, "
          f"and {sizes[-1]} rules within {FLAT}x of {sizes[0]}:")
    for c in CASES[2:]:
        worst = max(r[c] for r in results.values())
        ratio = hi[c] / lo[c]
        ok = worst <= GOAL_NS and ratio <= FLAT
        print(f"  {c:>11}: worst median {worst:6,.0f} ns, ratio {ratio:.2f}x   "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
