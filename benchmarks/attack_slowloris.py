"""A normal MCP client's latency before and during a slowloris attack and a connection flood.

Run:  .venv/bin/python benchmarks/attack_slowloris.py [--parser httptools|h11]
          [--calls 300] [--slow 500] [--flood 50] [--seconds 60]

Loopback only, and bounded: ``mcpwall serve`` (the bundled demo server behind
an allow-all policy, default ``[http]`` and ``[listen]`` limits) is started on
a free port of 127.0.0.1; the attack stops after ``--seconds`` at the latest.

1. Baseline: one client (httpx, one keep-alive connection) makes ``--calls``
   JSON-RPC ``ping`` calls through an initialized session, one after the other.
2. Attack: ``--slow`` slowloris connections (a request head that never ends:
   one more header line every 5 s; reconnecting when mcpwall cuts them) and a
   flood of ``--flood`` tasks opening connections and closing them at once.
3. The same client makes ``--calls`` more calls during the attack.

Prints p50 and p99 of each phase, their ratio (during / before), how many
calls failed, and the front's ``/healthz`` connection counters at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ALLOW_ALL = {"version": "1", "name": "bench", "default": "allow", "tools": {}}
SLOW_LINE_SECONDS = 5.0
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, parser: str) -> Path:
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(ALLOW_ALL))
    config = tmp / "gw.toml"
    config.write_text(
        f'[http]\nparser = "{parser}"\n[policy]\nfiles = ["{policy}"]\n'
        f'[audit]\npath = "{tmp / "audit.db"}"\n[approvals]\npath = "{tmp / "approvals.db"}"\n'
        f'[kill_switch]\npath = "{tmp / "switches.db"}"\n'
        f'[servers.vm]\ntransport = "stdio"\ncommand = "{sys.executable}"\n'
        'args = ["-m", "firewall.demo"]\n')
    return config


async def start(tmp: Path, parser: str) -> tuple[trio.Process, int]:
    port = free_port()
    with (tmp / "serve.log").open("ab") as log:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "firewall", "serve", str(write_config(tmp, parser)),
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=tmp)
    async with httpx.AsyncClient(timeout=2) as http:
        with trio.fail_after(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return proc, port
                if proc.poll() is not None:
                    raise SystemExit(f"mcpwall serve exited: see {tmp / 'serve.log'}")
                await trio.sleep(0.1)


async def calls(http: httpx.AsyncClient, url: str, sid: str, count: int,
                first: int) -> tuple[list[float], int]:
    """Latencies (ms) of ``count`` pings, and how many failed."""
    latencies: list[float] = []
    failed = 0
    for n in range(first, first + count):
        body = json.dumps({"jsonrpc": "2.0", "id": n, "method": "ping"})
        began = time.perf_counter()
        try:
            resp = await http.post(url, content=body, headers={
                **HEADERS, "accept": "application/json", "mcp-session-id": sid})
            ok = resp.status_code == 200 and json.loads(resp.content).get("id") == n
        except (httpx.HTTPError, ValueError):
            ok = False
        latencies.append((time.perf_counter() - began) * 1000)
        failed += not ok
    return latencies, failed


async def slowloris(port: int, stop: trio.Event, counts: dict[str, int]) -> None:
    """One slow client: a head that never ends; a new connection when cut."""
    while not stop.is_set():
        try:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                counts["slow_opened"] += 1
                await stream.send_all(b"POST /servers/vm/mcp HTTP/1.1\r\nHost: x\r\n")
                line = 0
                while not stop.is_set():
                    with trio.move_on_after(SLOW_LINE_SECONDS):
                        await stop.wait()
                    line += 1
                    await stream.send_all(b"X-%d: y\r\n" % line)
        except OSError:
            counts["slow_cut"] += 1
            await trio.sleep(0.1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            counts["slow_cut"] += 1


async def flood(port: int, stop: trio.Event, counts: dict[str, int]) -> None:
    """Open a connection and close it at once, as fast as it goes."""
    while not stop.is_set():
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
            counts["flood"] += 1
        except OSError:
            counts["flood_failed"] += 1
            await trio.sleep(0.01)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def main(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmpdir:
        proc, port = await start(Path(tmpdir), args.parser)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/servers/vm/mcp"
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"}}}
                resp = await http.post(url, json=init, headers=HEADERS)
                sid = resp.headers["mcp-session-id"]
                await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                headers={**HEADERS, "mcp-session-id": sid})
                await calls(http, url, sid, 30, 1)  # warm up
                before, failed_before = await calls(http, url, sid, args.calls, 100)
                counts = dict.fromkeys(("slow_opened", "slow_cut", "flood", "flood_failed"), 0)
                stop = trio.Event()
                with trio.move_on_after(args.seconds):
                    async with trio.open_nursery() as nursery:
                        for _ in range(args.slow):
                            nursery.start_soon(slowloris, port, stop, counts)
                        for _ in range(args.flood):
                            nursery.start_soon(flood, port, stop, counts)
                        await trio.sleep(2)  # let the attack build up
                        during, failed_during = await calls(http, url, sid, args.calls,
                                                            100 + args.calls)
                        health = (await http.get(f"{base}/healthz")).json()
                        stop.set()
                        nursery.cancel_scope.cancel()
        finally:
            proc.terminate()
            with trio.move_on_after(20):
                await proc.wait()
            if proc.poll() is None:
                proc.kill()
    p50b, p99b, p50d, p99d = (pct(before, 50), pct(before, 99), pct(during, 50), pct(during, 99))
    print(f"parser={args.parser} calls={args.calls} slowloris={args.slow} flood_tasks={args.flood}")
    print(f"{'phase':<8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    print(f"{'before':<8} {p50b:8.2f} {p99b:8.2f} {failed_before:7d}")
    print(f"{'during':<8} {p50d:8.2f} {p99d:8.2f} {failed_during:7d}")
    print(f"ratio    {p50d / p50b:8.2f} {p99d / p99b:8.2f}")
    print("attack:", json.dumps(counts))
    print("front /healthz connections during the attack:", json.dumps(health.get("connections")))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parser", choices=("httptools", "h11"), default="httptools")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--flood", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    trio.run(main, args)


if __name__ == "__main__":
    cli()
