"""Policy decision cost per call, envelope decode included, as tables grow.

Run:  .venv/bin/python benchmarks/bench_policy.py [--sizes 10,1000,100000] [--repeat 15]

For each table size N the policy holds N tool entries: a third exact names, a
third globs with a literal prefix (``grp123_*``), a third globs with a literal
suffix (``*_sfx123``), every fourth one with argument rules, plus the rules the
measured calls hit (an argument-rule entry like the virtualization pack's).

Measured per call, in the same run:

- ``baseline``: ``jsonrpc.decode`` + ``mcp.view`` of a tools/call (no policy);
- ``exact+args``: + ``engine.decide`` on an exact name with argument rules;
- ``glob``: + decide on a name that only globs match;
- ``limited``: + decide on a rule with a token bucket (never empty here);
- ``miss``: + decide on a name never seen before (the memo cache misses:
  the glob index is probed).

Figures are medians of --repeat batches; the decision cost is the figure
minus the baseline. The machine is noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.limits import MemoryLimiter
from firewall.policy.schema import Policy, parse_policy
from firewall.protocol import jsonrpc, mcp

CALLER = Caller("agent", "grant-1", ("ops",))


def build_policy(n: int) -> Policy:
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
    import json

    return parse_policy(json.dumps({"version": "1", "default": "deny", "tools": tools}))


def request(tool: str, args: dict[str, Any]) -> bytes:
    return jsonrpc.request("tools/call", {"name": tool, "arguments": args}, 7)


def per_call_ns(fn: Callable[[], object], inner: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter_ns() - t0) / inner)
    return statistics.median(samples)


def measure(n: int, inner: int, repeat: int) -> dict[str, float]:
    t0 = time.perf_counter()
    engine = Engine(compile_policy(build_policy(n)), MemoryLimiter())
    compile_s = time.perf_counter() - t0
    decode, view, decide = jsonrpc.decode, mcp.view, engine.decide

    def full(data: bytes) -> Callable[[], object]:
        def run() -> object:
            return decide(view(decode(data)), CALLER, "vm", "session-1")
        return run

    exact = request("vm_management", {"action": "list", "vm_name": "ci-7"})
    glob = request("bench_ab", {"mode": "read"})
    limited = request("vm_management", {"action": "start", "vm_name": "ci-7"})
    # Sanity: the calls decide what the policy says, not a default.
    assert full(exact)().rule == "tools.vm_management.rules[read]"  # type: ignore[attr-defined]
    assert full(glob)().rule == "tools.bench_*.rules[0]"  # type: ignore[attr-defined]
    assert full(limited)().action == "allow"  # type: ignore[attr-defined]

    def bare() -> object:
        return view(decode(exact))

    misses = [request(f"grp{i * 3 + 1}_x{i}", {"mode": "read"}) for i in range(inner * repeat)]
    it = iter(misses)

    def miss() -> object:
        return decide(view(decode(next(it))), CALLER, "vm", "session-1")

    return {
        "compile_s": compile_s,
        "baseline": per_call_ns(bare, inner, repeat),
        "exact+args": per_call_ns(full(exact), inner, repeat),
        "glob": per_call_ns(full(glob), inner, repeat),
        "limited": per_call_ns(full(limited), inner, repeat),
        "miss": per_call_ns(miss, inner, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20000)
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    results = {n: measure(n, opts.inner, opts.repeat) for n in sizes}
    cols = ["baseline", "exact+args", "glob", "limited", "miss"]
    print(f"{'rules':>8} {'compile':>9} " + " ".join(f"{c:>11}" for c in cols)
          + "   decide-only (minus baseline)")
    for n, r in results.items():
        only = " ".join(f"{r[c] - r['baseline']:6.0f}" for c in cols[1:])
        print(f"{n:>8} {r['compile_s']:8.2f}s " + " ".join(f"{r[c]:9.0f}ns" for c in cols)
              + f"   {only}")
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(f"\nratio {sizes[-1]} vs {sizes[0]} rules (full per-call cost, decode included):")
    for c in cols[1:]:
        print(f"  {c:>11}: {hi[c] / lo[c]:.2f}x   (median {hi[c] / 1000:.2f} us at {sizes[-1]})")


if __name__ == "__main__":
    main()
