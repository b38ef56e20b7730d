"""The audit group-commit run of ``bench_audit.py`` for this tree and a git ref, interleaved.

    .venv/bin/python benchmarks/audit_ab.py --ref main [--events 100000] [--rounds 3]
        [--prefill 1000000] [--producers 2048]

The ref's ``firewall`` and ``benchmarks`` are exported (``git archive``) to a
temporary directory; each tree generates its own prefilled file (so each
writes its own schema) and runs ``bench_group_commit`` in a fresh interpreter
with that tree first on ``PYTHONPATH`` (the writer process it starts imports
the same tree). Rounds alternate the trees, since the machine's load drifts;
each line names the load average, and the end gives medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Runs inside the tree under test (argv: tree, work dir, events, producers, prefill).
_ONE = r'''
import json, shutil, sys
from pathlib import Path
tree, work, n, producers, prefill = sys.argv[1:6]
sys.path.insert(0, tree + "/benchmarks")
import bench_audit as b
import firewall
assert firewall.__file__.startswith(tree), firewall.__file__
work = Path(work)
if not Path(prefill).exists():
    b.generate(Path(prefill), int(sys.argv[6]))
shutil.rmtree(work, ignore_errors=True)
work.mkdir()
run = b.bench_group_commit(work, "g", int(n), int(producers), prefill=Path(prefill))
print(json.dumps({"rate": run.rate, "writer": run.writer_cpu_us,
                  "rest": run.cpu_us - run.writer_cpu_us, "batch": run.batch}))
shutil.rmtree(work, ignore_errors=True)
'''


def _run(tree: Path, tmp: Path, name: str, args: argparse.Namespace) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _ONE, str(tree), str(tmp / f"work-{name}"), str(args.events),
         str(args.producers), str(tmp / f"prefill-{name}.db"), str(args.prefill)],
        cwd=tmp, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
        check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"rate"')]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{name}: the run failed\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(lines[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="main", help="the git ref to compare with")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--producers", type=int, default=2048)
    ap.add_argument("--prefill", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        other = tmp / "ref"
        other.mkdir()
        archive = subprocess.run(["git", "archive", args.ref, "firewall", "benchmarks"],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive, check=True)
        trees = {args.ref: other, "this tree": ROOT}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, tree in trees.items():
                res = _run(tree, tmp, "ref" if tree == other else "this", args)
                results[name].append(res)
                print(f"round {r + 1} {name:>10}: {res['rate']:>9,.0f} events/s, CPU per "
                      f"event: writer {res['writer']:.1f} us, rest {res['rest']:.1f} us "
                      f"({res['batch']:,.0f} events/commit; load {os.getloadavg()[0]:.2f})",
                      flush=True)
        medians = {name: statistics.median(x["rate"] for x in rs) for name, rs in results.items()}
        for name, rs in results.items():
            print(f"{name:>10}: median {medians[name]:,.0f} events/s, writer "
                  f"{statistics.median(x['writer'] for x in rs):.1f} us/event")
        print(f"this tree / {args.ref}: {medians['this tree'] / medians[args.ref]:.2f}x")


if __name__ == "__main__":
    main()
