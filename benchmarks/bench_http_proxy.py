"""mcpwall's HTTP front in front of an HTTP upstream vs the same upstream directly.

Same upstream, same load generators, same run, allow-all policy:

1. Throughput: ``wrk`` (C, one thread; installed with apt when missing)
   drives tools/call POSTs with distinct JSON-RPC ids over keep-alive
   connections, first directly at the upstream, then through mcpwall. Runs
   alternate (direct, through, direct, ...) and medians are reported; the
   ratio is through / direct (goal >= 0.75).
2. CPU per request of each server process (from /proc, during the wrk runs):
   a figure the load of a shared machine disturbs far less than requests/s.
   The upstream is a bare hypercorn (trio worker) ASGI app that decodes the
   body with msgspec and answers: the ceiling of the HTTP server mcpwall is
   built on, so "direct" is also the bare-hypercorn reference, and mcpwall's
   CPU per request is reported as a multiple of it.
3. Latency at half load: an open-loop, paced generator (trio + h11, its own
   process) sends at half of mcpwall's maximum throughput, to both targets;
   p50/p99 of each and the added latency (goal: p50 added <= 0.5 ms).

Before the load, a correctness pass checks that every answer carries the id
that was sent and the upstream's result.

``--audit off`` (default) runs the HTTP front with no audit trail, so the
proxy path is what is measured; ``fast`` and ``durable`` run ``mcpwall
serve`` with that audit mode (durable waits for the fsync'd commit of every
decision before forwarding). ``--loadgen-cpu N`` pins wrk and the pacer to
CPU N (``taskset``) and the servers to the other CPUs.

    .venv/bin/python benchmarks/bench_http_proxy.py [--duration 8] [--rounds 3]
        [--connections 32] [--audit off|fast|durable] [--loadgen-cpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}

UPSTREAM = r'''
import sys, msgspec, trio
from hypercorn.config import Config
from hypercorn.trio import serve

class Env(msgspec.Struct):
    id: int | str | None = None
    method: str | None = None

dec = msgspec.json.Decoder(Env)
enc = msgspec.json.Encoder()
RESULT = {"content": [{"type": "text", "text": "ok"}], "isError": False}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"}); return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    env = dec.decode(body)
    headers = [(b"content-type", b"application/json")]
    if env.method is None or env.id is None:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""}); return
    if env.method == "initialize":
        headers.append((b"mcp-session-id", b"upstream-session"))
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "bench-upstream", "version": "1"}}
    else:
        result = RESULT
    out = enc.encode({"jsonrpc": "2.0", "id": env.id, "result": result})
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})

config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.accesslog = None
config.keep_alive_timeout = 75
trio.run(serve, app, config)
'''

# The HTTP front with no audit trail: the proxy path alone (``--audit off``).
GATEWAY_NO_AUDIT = r'''
import sys, trio
from pathlib import Path
from firewall.config import load_config
from firewall.gateway.http_front import HttpFront, run_front
from firewall.log import configure
from firewall.policy.decision import AllowAll

config = load_config(Path(sys.argv[1]))
configure(config.log.level, config.log.format)

async def main():
    front = HttpFront(config, AllowAll(), None)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_front, front)

trio.run(main)
'''

WRK_LUA = r'''
local counter = 0
local thread_id = 0
local bad = 0
function setup(thread) thread_id = thread_id + 1; thread:set("tid", thread_id) end
function init(args) counter = tid * 100000000 end
function request()
  counter = counter + 1
  return wrk.format("POST", nil, nil,
    '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"tools/call",' ..
    '"params":{"name":"echo","arguments":{"text":"hello"}}}')
end
'''

PACER = r'''
import sys, time, json, trio, h11
host, port, path, sid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rate, seconds, conns = float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
CALL = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
        b'"params":{"name":"echo","arguments":{"text":"hello"}}}')
lat, errors = [], [0]
async def conn_task(k, start):
    stream = await trio.open_tcp_stream(host, port)
    c = h11.Connection(h11.CLIENT)
    interval = conns / rate
    i = 0
    while True:
        due = start + (k / rate) + i * interval
        if due - start > seconds:
            return
        await trio.sleep_until(due)
        rid = k * 10_000_000 + i
        body = CALL % rid
        hdrs = [("host", f"{host}:{port}"), ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2025-06-18"),
                ("mcp-session-id", sid), ("content-length", str(len(body)))]
        t0 = time.perf_counter()
        wire = c.send(h11.Request(method="POST", target=path, headers=hdrs))
        wire += c.send(h11.Data(data=body)) + c.send(h11.EndOfMessage())
        await stream.send_all(wire)
        data, status = b"", 0
        while True:
            ev = c.next_event()
            if ev is h11.NEED_DATA:
                c.receive_data(await stream.receive_some(65536)); continue
            if type(ev) is h11.Response: status = ev.status_code
            elif type(ev) is h11.Data: data += ev.data
            elif type(ev) is h11.EndOfMessage: break
        lat.append(time.perf_counter() - t0)
        if status != 200 or (b'"id":%d' % rid) not in data:
            errors[0] += 1
        c.start_next_cycle()
        i += 1
async def main():
    start = trio.current_time() + 0.2
    async with trio.open_nursery() as n:
        for k in range(conns):
            n.start_soon(conn_task, k, start)
trio.run(main)
print(json.dumps({"latencies": lat, "errors": errors[0]}))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get install wrk)", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not available")
    return found


def initialize(url: str) -> str:
    import httpx

    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}
    reply = httpx.post(url, json=init, headers=HEADERS, timeout=10)
    reply.raise_for_status()
    sid = reply.headers["mcp-session-id"]
    httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
               headers={**HEADERS, "mcp-session-id": sid}, timeout=10)
    return sid


def check_correct(url: str, sid: str, n: int = 200) -> None:
    import httpx

    with httpx.Client(headers={**HEADERS, "mcp-session-id": sid}, timeout=10) as http:
        for i in range(1, n + 1):
            reply = http.post(url, json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                         "params": {"name": "echo", "arguments": {}}})
            body = reply.json()
            if reply.status_code != 200 or body.get("id") != i or "result" not in body:
                raise SystemExit(f"wrong answer from {url}: {reply.status_code} {body}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_rps(wrk: list[str], url: str, sid: str, script: Path, seconds: float,
            conns: int) -> float:
    out = subprocess.run(
        [*wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "-s", str(script),
         "-H", "content-type: application/json",
         "-H", "accept: application/json, text/event-stream",
         "-H", "mcp-protocol-version: 2025-06-18", "-H", f"mcp-session-id: {sid}", url],
        capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1))


def paced(url: str, sid: str, rate: float, seconds: float, conns: int,
          pacer: Path, pin: list[str]) -> tuple[float, float, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    out = subprocess.run([*pin, sys.executable, str(pacer), parts.hostname or "", str(parts.port),
                          parts.path, sid, str(rate), str(seconds), str(conns)],
                         capture_output=True, text=True, check=True).stdout
    data: dict[str, Any] = json.loads(out)
    lat = sorted(data["latencies"])
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    return p50, p99, int(data["errors"])


class Run:
    """One wrk run: requests/s and CPU microseconds per request of each server."""

    def __init__(self, rps: float, seconds: float, cpu: dict[str, float]) -> None:
        self.rps = rps
        self.us_per_request = {name: used / (rps * seconds) * 1e6 for name, used in cpu.items()}


def measured(wrk: list[str], url: str, sid: str, script: Path, seconds: float, conns: int,
             pids: dict[str, int]) -> Run:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    rps = wrk_rps(wrk, url, sid, script, seconds, conns)
    return Run(rps, seconds, {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--audit", choices=("off", "fast", "durable"), default="off",
                        help="audit trail of mcpwall (off: the proxy path alone)")
    parser.add_argument("--loadgen-cpu", type=int, default=None, metavar="N",
                        help="pin wrk and the pacer to CPU N, the servers to the others")
    args = parser.parse_args()
    wrk = [ensure_wrk()]
    pin_load: list[str] = []
    pin_servers: list[str] = []
    if args.loadgen_cpu is not None:
        cpus = sorted(os.sched_getaffinity(0))
        others = [c for c in cpus if c != args.loadgen_cpu]
        if args.loadgen_cpu not in cpus or not others:
            raise SystemExit(f"cannot pin to CPU {args.loadgen_cpu} of {cpus}")
        pin_load = ["taskset", "-c", str(args.loadgen_cpu)]
        pin_servers = ["taskset", "-c", ",".join(map(str, others))]
        wrk = [*pin_load, *wrk]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        (work / "upstream.py").write_text(UPSTREAM)
        (work / "gateway.py").write_text(GATEWAY_NO_AUDIT)
        (work / "req.lua").write_text(WRK_LUA)
        (work / "pacer.py").write_text(PACER)
        up_port, gw_port = free_port(), free_port()
        up = stack.enter_context(subprocess.Popen(
            [*pin_servers, sys.executable, str(work / "upstream.py"), str(up_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        stack.callback(up.terminate)
        audit = (f'[audit]\npath = "{work / "audit.db"}"\nmode = "{args.audit}"\n'
                 if args.audit != "off" else "")
        (work / "gw.toml").write_text(
            f'[listen]\nport = {gw_port}\n[log]\nlevel = "warning"\n{audit}'
            f'[servers.bench]\ntransport = "http"\nurl = "http://127.0.0.1:{up_port}/mcp"\n')
        command = ([str(work / "gateway.py"), str(work / "gw.toml")] if args.audit == "off"
                   else ["-m", "firewall", "serve", str(work / "gw.toml")])
        gw = stack.enter_context(subprocess.Popen(
            [*pin_servers, sys.executable, *command], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        stack.callback(gw.terminate)
        wait_port(up_port, up)
        wait_port(gw_port, gw)
        direct_url = f"http://127.0.0.1:{up_port}/mcp"
        through_url = f"http://127.0.0.1:{gw_port}/servers/bench/mcp"
        direct_sid, through_sid = initialize(direct_url), initialize(through_url)
        check_correct(direct_url, direct_sid)
        check_correct(through_url, through_sid)
        pinning = (f"; wrk and pacer on CPU {args.loadgen_cpu}, servers on the others"
                   if pin_load else "; no CPU pinning")
        print(f"correctness: 200 calls each, ids and results match; "
              f"wrk {args.connections} connections, {args.duration:g} s x {args.rounds} rounds; "
              f"audit {args.audit}{pinning}")

        pids = {"upstream": up.pid, "mcpwall": gw.pid}
        direct: list[Run] = []
        through: list[Run] = []
        for _ in range(args.rounds):
            direct.append(measured(wrk, direct_url, direct_sid, work / "req.lua",
                                   args.duration, args.connections, pids))
            through.append(measured(wrk, through_url, through_sid, work / "req.lua",
                                    args.duration, args.connections, pids))
        d_rps = statistics.median(r.rps for r in direct)
        t_rps = statistics.median(r.rps for r in through)
        print(f"throughput direct  : median {d_rps:8.0f} req/s  runs "
              f"{[round(r.rps) for r in direct]}  (bare hypercorn app)")
        print(f"throughput mcpwall : median {t_rps:8.0f} req/s  runs "
              f"{[round(r.rps) for r in through]}")
        print(f"throughput ratio   : {t_rps / d_rps:.2f}x direct = bare hypercorn (goal >= 0.75)")
        import httpx

        pool = httpx.get(f"http://127.0.0.1:{gw_port}/healthz", timeout=10).json()
        conns = pool["servers"]["bench"]["connections"]
        served = sum(r.rps for r in through) * args.duration
        print(f"upstream pool      : {conns['opened']} connections opened for about "
              f"{served:.0f} calls in {args.rounds} runs of {args.connections} connections "
              "(idle ones expire between runs)")
        bare_cpu = statistics.median(r.us_per_request["upstream"] for r in direct)
        gw_cpu = statistics.median(r.us_per_request["mcpwall"] for r in through)
        up_cpu = statistics.median(r.us_per_request["upstream"] for r in through)
        print(f"CPU per request    : bare hypercorn app {bare_cpu:6.0f} us (direct runs); "
              f"mcpwall {gw_cpu:6.0f} us = {gw_cpu / bare_cpu:.2f}x bare "
              f"(upstream behind it {up_cpu:.0f} us)")

        rate = t_rps / 2
        seconds = max(4.0, args.duration / 2)
        rows = []
        for name, url, sid in (("direct", direct_url, direct_sid),
                               ("mcpwall", through_url, through_sid),
                               ("direct", direct_url, direct_sid),
                               ("mcpwall", through_url, through_sid)):
            rows.append((name, *paced(url, sid, rate, seconds, 8, work / "pacer.py", pin_load)))
        med: dict[str, tuple[float, float]] = {}
        for name in ("direct", "mcpwall"):
            mine = [r for r in rows if r[0] == name]
            if any(r[3] for r in mine):
                raise SystemExit(f"{name}: wrong answers under paced load")
            med[name] = (statistics.median(r[1] for r in mine),
                         statistics.median(r[2] for r in mine))
            print(f"latency {name:<8} at {rate:5.0f} req/s: p50 {med[name][0]:.3f} ms  "
                  f"p99 {med[name][1]:.3f} ms")
        print(f"added latency      : p50 {med['mcpwall'][0] - med['direct'][0]:+.3f} ms "
              f"(goal <= 0.5)  p99 {med['mcpwall'][1] - med['direct'][1]:+.3f} ms")
        with open("/proc/loadavg") as f:
            print(f"load average after : {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
