"""Two revisions of mcpwall's HTTP front side by side, in front of the same upstream.

``bench_http_proxy.py`` compares mcpwall with the direct path in one run; on a
shared machine two runs of it (the code before a change, then after) meet
different loads, and the half-load rate of each is half of its own maximum.
This script puts both revisions in the same run: one upstream, the direct
path and a gateway (allow-all, no audit, httptools) from each source tree,
loaded in turn within every round, so a burst of load from other jobs hits
all three alike. Each round: a ``wrk`` run per target (throughput, CPU per
request of the gateway), then the paced generator of ``bench_http_proxy.py``
at one rate for all three: half of the median maximum of this tree's gateway
so far (``--rate`` fixes it). Prints medians over the rounds, and the latency
each gateway adds to the direct path, round by round (the same moment for
both) and its median.

``--baseline DIR`` is a source tree of the other revision, e.g. made with
``git worktree add ../mcpwall-base main``; its gateway runs with
``PYTHONPATH=DIR`` and this environment's packages.

    .venv/bin/python benchmarks/ab_http_proxy.py --baseline ../mcpwall-base
        [--upstream everything|bare] [--rounds 7] [--seconds 3] [--rate N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http_proxy as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="source tree of the revision to compare with (its firewall/)")
    parser.add_argument("--upstream", choices=("everything", "bare"), default="everything")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk and paced run")
    parser.add_argument("--rate", type=float, default=0.0, help="paced rate (default: half load)")
    args = parser.parse_args()
    baseline = args.baseline.resolve()
    if not (baseline / "firewall" / "__init__.py").exists():
        raise SystemExit(f"{baseline} is not an mcpwall source tree")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        kind = args.upstream
        up_port = bench.free_port()
        up = bench.start_upstream(stack, work, kind, up_port)
        (work / "gateway.py").write_text(bench.GATEWAY_NO_AUDIT)
        (work / "pacer.py").write_text(bench.PACER)
        (work / "req.lua").write_text(bench.WRK_LUA)
        targets: dict[str, tuple[str, int]] = {
            "direct": (f"http://127.0.0.1:{up_port}/mcp", up.pid)}
        for tag, root in (("baseline", baseline), ("this tree", bench.ROOT)):
            port = bench.free_port()
            config = bench.gateway_config(work, "allow", port, {
                kind: f"http://127.0.0.1:{up_port}/mcp"}, "httptools")
            config = config.rename(work / f"gw-{len(targets)}.toml")
            gateway = bench.start(stack, [sys.executable, str(work / "gateway.py"), str(config)],
                                  env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
            bench.wait_port(port, gateway)
            targets[tag] = (f"http://127.0.0.1:{port}/servers/{kind}/mcp", gateway.pid)
        sids = {tag: bench.initialize(url) for tag, (url, _) in targets.items()}
        for tag, (url, _) in targets.items():
            bench.check_correct(url, sids[tag], 50)
        wrk = [bench.ensure_wrk()]
        keys = ("rps", "cpu", "p50", "p99", "late")
        res: dict[str, dict[str, list[float]]] = {t: {k: [] for k in keys} for t in targets}
        print(f"upstream {kind}; {args.rounds} rounds of wrk (32 connections) then the paced "
              f"generator (8 connections), {args.seconds:g} s each, per target")
        for r in range(args.rounds):
            for tag, (url, pid) in targets.items():
                before = bench.cpu_seconds(pid)
                rps, served = bench.wrk_rps(wrk, url, sids[tag], work / "req.lua",
                                            args.seconds, 32)
                res[tag]["rps"].append(rps)
                res[tag]["cpu"].append((bench.cpu_seconds(pid) - before) / served * 1e6)
            rate = args.rate or statistics.median(res["this tree"]["rps"]) / 2
            for tag, (url, _) in targets.items():
                p50, p99, errors, late = bench.paced(url, sids[tag], rate, args.seconds, 8,
                                                     work / "pacer.py", [])
                if errors:
                    raise SystemExit(f"{errors} wrong answers from {url}")
                for key, value in (("p50", p50), ("p99", p99), ("late", late)):
                    res[tag][key].append(value)
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"  round {r + 1} (load average {load}), paced at {rate:.0f} req/s: "
                  + ", ".join(f"{tag} {res[tag]['rps'][-1]:.0f} req/s p50 "
                              f"{res[tag]['p50'][-1]:.3f} ms" for tag in targets), flush=True)

        def med(tag: str, key: str) -> float:
            return statistics.median(res[tag][key])

        print(f"\nmedians of {args.rounds} rounds (CPU: the target's server process, "
              "us per request under wrk: the upstream for direct, the gateway otherwise)")
        for tag in targets:
            print(f"  {tag:10s} {med(tag, 'rps'):7.0f} req/s "
                  f"{med(tag, 'rps') / med('direct', 'rps'):5.2f}x direct  "
                  f"CPU {med(tag, 'cpu'):4.0f} us  paced p50 {med(tag, 'p50'):.3f} ms  "
                  f"p99 {med(tag, 'p99'):.3f} ms  (sent late p99 {med(tag, 'late'):.2f} ms)")
        for tag in ("baseline", "this tree"):
            added = [a - d for a, d in zip(res[tag]["p50"], res["direct"]["p50"], strict=True)]
            added99 = [a - d for a, d in zip(res[tag]["p99"], res["direct"]["p99"], strict=True)]
            print(f"  {tag}: added p50 {statistics.median(added):+.3f} ms (rounds: "
                  + ", ".join(f"{x:+.2f}" for x in added)
                  + f"), added p99 {statistics.median(added99):+.3f} ms")


if __name__ == "__main__":
    main()
