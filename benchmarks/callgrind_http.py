"""Instructions per request of ``mcpwall serve`` (allow-all) in front of an HTTP upstream.

The steady figure on a shared machine: the gateway runs under valgrind's
callgrind with collection off; one connection sends 50 tools/call of warm-up,
then collection is switched on and the counters zeroed, ``--requests`` more go
one at a time (every answer checked), and the counters are dumped. Prints the
gateway's instructions per request. The upstream is the bare hypercorn app of
``bench_http_proxy.py`` (JSON answers), server-everything (SSE answers) or
the dual-era echo server of ``http_echo_server.py`` (``echo``). ``--era
2026``: stateless requests of the 2026-07-28 revision (no session; the
version, client capabilities and clientInfo in each ``_meta``; the
``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` headers), to the
echo upstream.

    .venv/bin/python benchmarks/callgrind_http.py [--upstream bare|everything|echo]
        [--era 2025|2026] [--parser httptools|h11] [--requests 200] [--tree DIR]
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
MODERN_HEADERS = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                  "mcp-name": "echo"}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", choices=("bare", "everything", "echo"), default="bare")
    parser.add_argument("--era", choices=("2025", "2026"), default="2025",
                        help="2026: stateless 2026-07-28 requests (to the echo upstream)")
    parser.add_argument("--parser", choices=bench.PARSERS, default="httptools")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tree", type=Path, default=bench.ROOT,
                        help="the source tree whose firewall package the gateway runs "
                             "(e.g. a git worktree of an earlier commit)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        up_port, gw_port = bench.free_port(), bench.free_port()
        if args.era == "2026" and args.upstream != "echo":
            parser.error("--era 2026 needs --upstream echo (an upstream of that revision)")
        if args.upstream == "echo":
            bench.wait_port(up_port, bench.start(stack, [
                sys.executable, str(Path(__file__).resolve().parent / "http_echo_server.py"),
                str(up_port)]))
        else:
            bench.start_upstream(stack, work, args.upstream, up_port)
        (work / "gateway.py").write_text(bench.GATEWAY_NO_AUDIT)
        config = bench.gateway_config(work, "allow", gw_port, {
            args.upstream: f"http://127.0.0.1:{up_port}/mcp"}, args.parser)
        out = work / "callgrind.out"
        gateway = bench.start(stack, [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", sys.executable, str(work / "gateway.py"), str(config)],
            env={**os.environ, "PYTHONPATH": str(args.tree.resolve())}, cwd=bench.ROOT)
        bench.wait_port(gw_port, gateway, timeout=300)
        url = f"http://127.0.0.1:{gw_port}/servers/{args.upstream}/mcp"
        call = dict(CALL)
        if args.era == "2026":
            headers = {**bench.HEADERS, **MODERN_HEADERS}
            call["params"] = {**CALL["params"], "_meta": MODERN_META}  # type: ignore[dict-item]
        else:
            headers = {**bench.HEADERS, "mcp-session-id": bench.initialize(url)}

        def calls(first: int, count: int, http: httpx.Client) -> None:
            for rid in range(first, first + count):
                reply = http.post(url, json={**call, "id": rid})
                body = bench.answer_of(reply)
                if reply.status_code != 200 or body.get("id") != rid:
                    raise SystemExit(f"wrong answer: {reply.status_code} {body}")

        def control(*flags: str) -> None:
            subprocess.run(["callgrind_control", *flags, str(gateway.pid)], check=True,
                           capture_output=True)

        with httpx.Client(headers=headers, timeout=60) as http:
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
        print(f"{args.upstream} upstream, {args.era}, {args.parser}: "
              f"{total / args.requests / 1e6:.3f}M "
              f"instructions a request ({args.requests} requests one at a time)")


if __name__ == "__main__":
    main()
