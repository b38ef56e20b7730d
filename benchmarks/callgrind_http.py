"""Instructions per request of ``mcpwall serve`` (allow-all) in front of an HTTP upstream.

The steady figure on a shared machine: the gateway runs under valgrind's
callgrind with collection off; one connection sends 50 tools/call of warm-up,
then collection is switched on and the counters zeroed, ``--requests`` more go
one at a time (every answer checked), and the counters are dumped. Prints the
gateway's instructions per request. The upstream is the bare hypercorn app of
``bench_http_proxy.py`` (JSON answers) or server-everything (SSE answers).

    .venv/bin/python benchmarks/callgrind_http.py [--upstream bare|everything]
        [--parser httptools|h11] [--requests 200]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http_proxy as bench

CALL = {"jsonrpc": "2.0", "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hello"}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", choices=("bare", "everything"), default="bare")
    parser.add_argument("--parser", choices=bench.PARSERS, default="httptools")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        up_port, gw_port = bench.free_port(), bench.free_port()
        bench.start_upstream(stack, work, args.upstream, up_port)
        (work / "gateway.py").write_text(bench.GATEWAY_NO_AUDIT)
        config = bench.gateway_config(work, "allow", gw_port, {
            args.upstream: f"http://127.0.0.1:{up_port}/mcp"}, args.parser)
        out = work / "callgrind.out"
        gateway = bench.start(stack, [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", sys.executable, str(work / "gateway.py"), str(config)],
            env={**os.environ, "PYTHONPATH": str(bench.ROOT)}, cwd=bench.ROOT)
        bench.wait_port(gw_port, gateway, timeout=300)
        url = f"http://127.0.0.1:{gw_port}/servers/{args.upstream}/mcp"
        sid = bench.initialize(url)

        def calls(first: int, count: int, http: httpx.Client) -> None:
            for rid in range(first, first + count):
                reply = http.post(url, json={**CALL, "id": rid})
                body = bench.answer_of(reply)
                if reply.status_code != 200 or body.get("id") != rid:
                    raise SystemExit(f"wrong answer: {reply.status_code} {body}")

        def control(*flags: str) -> None:
            subprocess.run(["callgrind_control", *flags, str(gateway.pid)], check=True,
                           capture_output=True)

        with httpx.Client(headers={**bench.HEADERS, "mcp-session-id": sid}, timeout=60) as http:
            calls(1, 50, http)
            control("-i", "on")
            control("-z")
            calls(51, args.requests, http)
            control("-d")
            control("-i", "off")
        time.sleep(0.5)
        dumps = sorted(glob.glob(f"{out}*"), key=os.path.getmtime)
        total = next(int(line.split()[1]) for line in Path(dumps[-1]).read_text().splitlines()
                     if line.startswith(("summary:", "totals:")))
        print(f"{args.upstream} upstream, {args.parser}: {total / args.requests / 1e6:.3f}M "
              f"instructions a request ({args.requests} requests one at a time)")


if __name__ == "__main__":
    main()
