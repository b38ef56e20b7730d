"""stdio path: a client pipelining tools/call (16 in flight) to a trivial echo
server, directly and through ``mcpwall wrap``, in the same run.

    python benchmarks/bench_stdio.py [--calls 20000] [--rounds 5] [--peers]
                                     [--baseline SOURCE_TREE]

Prints calls/s medians and the ratio of each mcpwall configuration to the
direct connection. Every response is checked (id and echoed arguments).
Configurations: allow-all without audit; a policy (rules with an argument
check and a rate limit high enough not to trigger) without audit, with the
audit trail in fast mode, and in durable mode (each batch of calls waits for
its fsync'd commit before it is forwarded: with 16 calls in flight the rate is
bounded by 16 / fsync latency). With --peers, the PyPI package mcp-firewall 0.1.0 (its wrap mode,
default action allow, global rate limit raised out of the way) is installed in
benchmarks/.peers/mcp-firewall and measured in the same run. With --baseline,
another source tree of mcpwall (a checkout of an earlier revision, say) runs the
allow-all and policy configurations beside this one, interleaved, and the
ratios of this tree to it are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stdio_load import run_load  # noqa: E402

ECHO = [sys.executable, str(HERE / "echo_server.py")]
WRAP = [sys.executable, "-m", "firewall", "wrap"]

POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        "echo": {
            "rules": [{"name": "echo-small", "when": {"n": {"min": 0}},
                       "limits": [{"counter": "echo_rate", "window": "second",
                                   "max": 10_000_000, "scope": "grant"}]}],
        }
    },
}


def peer_targets(tmp: Path) -> dict[str, list[str]]:
    """Install the peer in its own virtualenv (once) and return its argv."""
    from contenders import install_peers, mcp_firewall_wrap

    install_peers(tmp / "peers-install.log")
    peer = mcp_firewall_wrap(tmp, ECHO)
    return {f"peer: {peer.name}": peer.argv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--peers", action="store_true", help="also measure peer firewalls")
    parser.add_argument("--baseline", type=Path,
                        help="another mcpwall source tree to measure beside this one")
    opts = parser.parse_args()
    if opts.baseline is not None and not (opts.baseline / "firewall" / "cli.py").exists():
        parser.error(f"--baseline {opts.baseline}: not an mcpwall source tree")
    tmp = Path(tempfile.mkdtemp(prefix="mcpwall-bench-"))
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(POLICY))
    durable = tmp / "durable.toml"
    durable.write_text(f'[audit]\npath = "{tmp / "durable.db"}"\nmode = "durable"\n'
                       '[log]\nlevel = "warning"\n')
    fast = tmp / "fast.toml"
    fast.write_text(f'[audit]\npath = "{tmp / "fast.db"}"\nmode = "fast"\n'
                    '[log]\nlevel = "warning"\n')
    # Without --config or --audit-db, wrap keeps no audit trail.
    targets = {
        "direct": ECHO,
        "mcpwall wrap, allow-all": [*WRAP, "--", *ECHO],
        "mcpwall wrap, policy": [*WRAP, "--policy", str(policy), "--", *ECHO],
        "mcpwall wrap, policy + fast audit": [*WRAP, "--config", str(fast), "--policy",
                                              str(policy), "--", *ECHO],
        "mcpwall wrap, policy + durable audit": [*WRAP, "--config", str(durable), "--policy",
                                                 str(policy), "--", *ECHO],
    }
    if opts.baseline is not None:
        old = ["env", f"PYTHONPATH={opts.baseline.resolve()}", *WRAP]
        targets["baseline wrap, allow-all"] = [*old, "--", *ECHO]
        targets["baseline wrap, policy"] = [*old, "--policy", str(policy), "--", *ECHO]
    if opts.peers:
        targets.update(peer_targets(tmp))
    os.chdir(tmp)  # peers write their logs to the working directory
    results: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(opts.rounds):
        for name, argv in targets.items():  # interleaved, so drift hits all alike
            try:
                results[name].append(run_load(argv, opts.calls, opts.inflight))
            except Exception as exc:  # a configuration this checkout cannot run
                print(f"{name}: failed: {exc}", file=sys.stderr)
    base = statistics.median(results["direct"])
    print(f"{'target':40} {'calls/s (median)':>18} {'vs direct':>10}  rounds")
    for name, values in results.items():
        if not values:
            print(f"{name:40} {'failed':>18}")
            continue
        med = statistics.median(values)
        print(f"{name:40} {med:18,.0f} {med / base:9.2f}x  {len(values)}")
    if opts.baseline is not None:
        for kind in ("allow-all", "policy"):
            now, old = results[f"mcpwall wrap, {kind}"], results[f"baseline wrap, {kind}"]
            if now and old:
                ratio = statistics.median(now) / statistics.median(old)
                print(f"this tree / baseline, {kind}: {ratio:.3f}x")


if __name__ == "__main__":
    main()
