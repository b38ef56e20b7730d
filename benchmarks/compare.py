"""mcpwall against the direct path and the proxies users would pick instead.

One run, one machine, the same load generators and the same upstream for
every contender (``benchmarks/run`` installs what is missing, then runs this):

* stdio front: a pipelining stdio client (``stdio_load.py``) drives the echo
  server directly, through ``mcpwall wrap`` and through the peers' stdio modes;
* HTTP front, stdio upstream: ``wrk`` with a verifying Lua script drives the
  echo server served over HTTP by a bare hypercorn app (direct), ``mcpwall
  serve`` and the peers that put a stdio server behind HTTP;
* HTTP front, HTTP upstream: the same, with the HTTP echo server as upstream,
  in both eras of MCP: 2025 sessions, and stateless requests of the
  2026-07-28 revision (no session; ``MCP-Protocol-Version: 2026-07-28``, the
  version and client capabilities in each request's ``_meta``, the
  ``Mcp-Method`` and ``Mcp-Name`` headers), to the same upstream, which
  speaks both. The 2026-07-28 rows have their own direct row, the baseline
  of their ratios.

For each contender: throughput at a fixed concurrency and at saturation (the
best of a concurrency sweep), latency p50/p99/p99.9 at a fixed offered rate
(open loop, measured from scheduled send times), CPU seconds per 1,000 calls
and peak RSS of the server side (the contender's process tree, plus the HTTP
upstream where there is one), each as a ratio to direct and to mcpwall.
A second scenario grows the work: 1 to 1,000 concurrent sessions, and
tools/list answers of 10 to 5,000 tools. Every answer is checked (id, echoed
arguments, tool count), not only counted; a contender that fails to start,
answers wrongly or hangs is recorded as failed and the run goes on.

    python benchmarks/compare.py [--quick] [--rounds N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contenders as cs  # noqa: E402
import http_load  # noqa: E402
import metrics  # noqa: E402
import proctree  # noqa: E402
import pyspy_profile  # noqa: E402
from stdio_load import StdioTarget, check_tool_count, list_request  # noqa: E402

Result = dict[str, Any]


class ContenderTimeout(Exception):
    """A contender took longer than its budget."""


# ---------------------------------------------------------------- processes

_STARTED: list[subprocess.Popen[bytes]] = []


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group (a proxy's children too), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_all() -> None:
    """Stop every process group this run started and has not stopped."""
    while _STARTED:
        stop(_STARTED.pop(), grace=2.0)


@contextlib.contextmanager
def server(argv: list[str], url: str, env: dict[str, str], log: Path,
           cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An HTTP server in its own process group, up once ``url`` takes connections."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                env={**cs.environment(), **env}, cwd=cwd,
                                start_new_session=True)
    _STARTED.append(proc)
    try:
        http_load.wait_http(url, lambda: proc.poll() is None)
        yield proc
    finally:
        stop(proc)
        if proc in _STARTED:
            _STARTED.remove(proc)


@contextlib.contextmanager
def stdio_target(c: cs.Contender, cwd: Path) -> Iterator[StdioTarget]:
    """A stdio contender started, in its own process group, and initialized."""
    target = StdioTarget(c.argv, cwd=str(cwd), env={**cs.environment(), **c.env},
                         stderr=cwd / "contender.log")
    _STARTED.append(target.proc)
    try:
        yield target
    finally:
        target.close()
        stop(target.proc, grace=1.0)
        if target.proc in _STARTED:
            _STARTED.remove(target.proc)


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Raise ContenderTimeout in the main thread once ``seconds`` have passed."""

    def expire(signum: int, frame: Any) -> None:
        raise ContenderTimeout(f"no result within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- measuring


class Meter:
    """CPU seconds and peak RSS of the server side: a process tree plus extras."""

    def __init__(self, root: int, extra: list[int]) -> None:
        self.root, self.extra = root, extra

    def pids(self) -> list[int]:
        found = proctree.tree(self.root)
        for pid in self.extra:
            found += proctree.tree(pid)
        return found

    def cpu(self) -> float:
        return proctree.cpu_seconds(self.pids())

    def rss(self) -> int:
        return proctree.peak_rss_bytes(self.pids())


@contextlib.contextmanager
def profiled(pid: int | None, seconds: float, work: Path, into: Result) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs; the summary goes in ``into``."""
    out = work / "profile.raw"
    out.unlink(missing_ok=True)
    sampler = pyspy_profile.record(pid, seconds, out) if pid else None
    yield
    if sampler is not None:
        try:
            sampler.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()
        if out.exists():
            into["profile"] = pyspy_profile.summarize(out.read_text())


def measure_stdio(target: StdioTarget, opts: argparse.Namespace, work: Path,
                  profile: bool) -> Result:
    """Throughput sweep, CPU per call and peak RSS of a started stdio target."""
    meter = Meter(target.pid, [])
    extra: Result = {}
    target.pipeline(200, 16)  # warm-up, and a first check of the answers
    sweep: dict[str, float] = {}
    fixed: Result = {}
    for inflight in opts.concurrency:
        cpu0, thread0, wall0 = meter.cpu(), time.thread_time(), time.perf_counter()
        pid = target.pid if profile and inflight == opts.fixed else None
        with profiled(pid, opts.seconds, work, extra):
            rate = target.pipeline(10_000_000, inflight, max_seconds=opts.seconds)
        wall = time.perf_counter() - wall0
        sweep[str(inflight)] = rate
        if inflight == opts.fixed:
            fixed = {"rps": rate, "cpu_per_1k": (meter.cpu() - cpu0) / (rate * wall) * 1000,
                     "loadgen_cpu_share": (time.thread_time() - thread0) / wall}
    return {**fixed, **extra, "saturation_rps": max(sweep.values()), "sweep": sweep,
            "peak_rss_mb": meter.rss() / 2**20}


def latency_stdio(target: StdioTarget, rate: float, opts: argparse.Namespace) -> Result:
    """p50/p99/p99.9 of a started stdio target at ``rate`` calls/s, open loop."""
    target.pipeline(200, 16)  # warm-up
    latencies = target.paced(rate, opts.seconds)
    return {"latency_ms": metrics.latency_summary(latencies), "offered_rate": rate}


def measure_http(c: cs.Contender, meter: Meter, work: Path, wrk: list[str],
                 opts: argparse.Namespace) -> Result:
    """The same metrics for an HTTP front: wrk sweep, CPU per call, peak RSS."""
    extra: Result = {}
    sessions, headers, kind = session_of(c, work)
    http_load.wrk_run(wrk, c.url, sessions, 1, 4, kind, headers=headers)  # warm-up
    sweep: dict[str, float] = {}
    fixed: Result = {}
    for conns in opts.concurrency:
        cpu0 = meter.cpu()
        pid = meter.root if opts.profile and c.family == "mcpwall" and conns == opts.fixed \
            else None
        with profiled(pid, opts.seconds, work, extra):
            run = http_load.wrk_run(wrk, c.url, sessions, opts.seconds, conns, kind,
                                    headers=headers)
        if run["bad"]:
            raise AssertionError(f"{run['bad']} wrong answers at {conns} connections: "
                                 f"{run['first_bad']}")
        sweep[str(conns)] = run["rps"]
        if conns == opts.fixed:
            fixed = {"rps": run["rps"],
                     "cpu_per_1k": (meter.cpu() - cpu0) / max(run["good"], 1) * 1000,
                     "loadgen_cpu_share": run["loadgen_cpu"] / opts.seconds,
                     "socket_errors": run["socket_errors"]}
    return {**fixed, **extra, "saturation_rps": max(sweep.values()), "sweep": sweep,
            "peak_rss_mb": meter.rss() / 2**20}


def latency_http(c: cs.Contender, work: Path, wrk: list[str], rate: float,
                 opts: argparse.Namespace) -> Result:
    """p50/p99/p99.9 of an HTTP front at ``rate`` calls/s, open loop, 16 connections."""
    sessions, headers, kind = session_of(c, work)
    http_load.wrk_run(wrk, c.url, sessions, 1, 4, kind, headers=headers)  # warm-up
    paced = http_load.paced(c.url, sessions, rate, opts.seconds, 16, headers=headers,
                            kind=kind)
    if paced["bad"]:
        raise AssertionError(f"{paced['bad']} wrong answers under paced load: "
                             f"{paced['first_bad']}")
    return {"latency_ms": metrics.latency_summary(paced["latencies"]), "offered_rate": rate}


def session_of(c: cs.Contender, work: Path) -> tuple[Path, dict[str, str], str]:
    """The session file, headers and request kind the load generators use for
    ``c``: a 2025 session opened now, or none for the stateless revision."""
    if c.era == "modern":
        return (http_load.write_sessions(work / "sessions.txt", [""]),
                {**c.headers, **http_load.MODERN_HEADERS}, "modern")
    sid = http_load.open_session(c.url, headers=c.headers)
    return http_load.write_sessions(work / "sessions.txt", [sid]), c.headers, "call"


def offered_rate(results: dict[str, Result], opts: argparse.Namespace) -> float:
    """The latency runs' rate: ``--rate``, else half the saturation of the slowest
    of direct and mcpwall, so that it is below saturation for both (a slower
    peer is marked saturated in the table)."""
    if opts.rate:
        return float(opts.rate)
    ours = [r["saturation_rps"] for n, r in results.items()
            if (n == "direct" or n.startswith("mcpwall")) and "saturation_rps" in r]
    return max(10.0, round(min(ours) / 2, -1)) if ours else 100.0


def merge_latency(result: Result, latency: Result) -> None:
    """Add a latency pass to a throughput result (its failure, if it failed)."""
    if "failed" in latency:
        result["latency_failed"] = latency["failed"]
    else:
        result.update(latency_ms=latency["latency_ms"], offered_rate=latency["offered_rate"])


def attempt(name: str, seconds: float, run: Callable[[], Result], log: Path) -> Result:
    """Run one contender's measurement; a failure or hang becomes a result, with
    the last lines the contender wrote to its log."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    log.write_bytes(b"")
    try:
        with budget(seconds):
            result = run()
    except Exception as exc:  # recorded, and the run goes on
        stop_all()
        said = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        detail = "".join(traceback.format_exception_only(exc)).strip()
        if said:
            detail += " | log: " + " / ".join(said[-3:])
        print(f"  {name}: FAILED: {detail[:300]}", file=sys.stderr, flush=True)
        return {"failed": detail[:800]}
    finally:
        stop_all()
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


# ---------------------------------------------------------------- scenarios


def two_passes(contenders: list[cs.Contender], throughput: Callable[[cs.Contender], Result],
               latency: Callable[[cs.Contender, float], Result], work: Path,
               opts: argparse.Namespace) -> dict[str, Result]:
    """Each contender's throughput, then each one's latency at one offered rate
    chosen from the first pass (each pass starts the contender afresh). With
    ``--rounds N``, each pass runs N times, contenders interleaved round by
    round (load on the machine hits them alike), and each figure is the
    median over the rounds."""
    log = work / "contender.log"
    runs: dict[str, list[Result]] = {c.name: [] for c in contenders}
    for k in range(opts.rounds):
        for c in contenders:
            label = c.name if opts.rounds == 1 else f"{c.name} (round {k + 1})"
            runs[c.name].append(attempt(label, opts.budget, lambda c=c: throughput(c), log))
    results = {name: median_result(rs) for name, rs in runs.items()}
    rate = offered_rate(results, opts)
    paced: dict[str, list[Result]] = {c.name: [] for c in contenders}
    for _ in range(opts.rounds):
        for c in contenders:
            result = results[c.name]
            if "failed" in result or result["saturation_rps"] < rate:
                continue
            paced[c.name].append(attempt(f"{c.name}, {rate:g} calls/s", opts.budget,
                                         lambda c=c: latency(c, rate), log))
    for c in contenders:
        result = results[c.name]
        if "failed" in result:
            continue
        if result["saturation_rps"] < rate:  # the queue would only grow
            result["latency_failed"] = (f"not measured: {rate:g} calls/s is above its "
                                        f"saturation ({result['saturation_rps']:,.0f}/s)")
            continue
        merge_latency(result, median_latency(paced[c.name]))
    return results


def median_result(runs: list[Result]) -> Result:
    """One contender's throughput rounds as one result: the median of each
    figure over the rounds that did not fail (failed only if all did)."""
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[-1]
    out = dict(ok[-1])
    for key in ("rps", "saturation_rps", "cpu_per_1k", "peak_rss_mb", "loadgen_cpu_share"):
        values = [r[key] for r in ok if key in r]
        if values:
            out[key] = statistics.median(values)
    out["sweep"] = {conns: statistics.median(r["sweep"][conns] for r in ok)
                    for conns in ok[0]["sweep"]}
    out["rounds"] = len(ok)
    if len(ok) < len(runs):
        out["failed_rounds"] = [r["failed"] for r in runs if "failed" in r]
    return out


def median_latency(runs: list[Result]) -> Result:
    """Latency rounds as one: each percentile's median over the rounds measured."""
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[-1] if runs else {"failed": "no latency round ran"}
    return {"latency_ms": {q: statistics.median(r["latency_ms"][q] for r in ok)
                           for q in ok[0]["latency_ms"]},
            "offered_rate": ok[0]["offered_rate"]}


def stdio_scenario(work: Path, policy: Path, opts: argparse.Namespace) -> dict[str, Result]:
    """Stdio front, stdio upstream: a throughput pass, then a latency pass."""
    contenders = [cs.Contender("direct", "direct", cs.ECHO),
                  cs.mcpwall_wrap(work, cs.ECHO, None),
                  cs.mcpwall_wrap(work, cs.ECHO, policy)]
    if opts.baseline:
        contenders += [cs.mcpwall_wrap(work, cs.ECHO, None, opts.baseline),
                       cs.mcpwall_wrap(work, cs.ECHO, policy, opts.baseline)]
    if not opts.skip_peers:
        contenders += [cs.mcp_firewall_wrap(work, cs.ECHO), cs.policy_gateway(work, cs.ECHO, None)]

    def throughput(c: cs.Contender) -> Result:
        with stdio_target(c, work) as target:
            return measure_stdio(target, opts, work, opts.profile and c.family == "mcpwall")

    def latency(c: cs.Contender, rate: float) -> Result:
        with stdio_target(c, work) as target:
            return latency_stdio(target, rate, opts)

    return two_passes(contenders, throughput, latency, work, opts)


def http_scenario(work: Path, policy: Path, wrk: list[str], opts: argparse.Namespace,
                  http_upstream: bool) -> dict[str, Result]:
    """HTTP front; the upstream is the echo server on stdio or over HTTP.
    A throughput pass, then a latency pass."""
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}/mcp"
    up_argv = [cs.PY, str(HERE / "http_echo_server.py"), str(up_port)]
    upstream: list[str] | str = up_url if http_upstream else cs.ECHO
    builders: list[Callable[[int], cs.Contender]] = [
        lambda p: cs.Contender("direct", "direct", up_argv, up_url),
        lambda p: cs.mcpwall_serve(work, p, upstream, None),
        lambda p: cs.mcpwall_serve(work, p, upstream, policy),
    ]
    if opts.baseline:
        builders += [lambda p: cs.mcpwall_serve(work, p, upstream, None, opts.baseline),
                     lambda p: cs.mcpwall_serve(work, p, upstream, policy, opts.baseline)]
    if http_upstream:  # the same again, driven in the stateless 2026-07-28 revision
        builders += [lambda p, b=b: cs.modern(b(p)) for b in list(builders)]
    if not opts.skip_peers:
        builders.append(lambda p: cs.policy_gateway(work, upstream, p))
        if not http_upstream:
            builders += [lambda p: cs.mcp_proxy(cs.ECHO, p),
                         lambda p: cs.supergateway(cs.ECHO, p)]
    contenders = [build(free_port()) for build in builders]

    @contextlib.contextmanager
    def started(c: cs.Contender) -> Iterator[Meter]:
        with contextlib.ExitStack() as stack:
            extra = []
            if http_upstream and c.family != "direct":
                up = stack.enter_context(server(up_argv, up_url, {}, work / "upstream.log",
                                                work))
                extra.append(up.pid)
            proc = stack.enter_context(server(c.argv, c.url, c.env, work / "contender.log",
                                              work))
            yield Meter(proc.pid, extra)

    def throughput(c: cs.Contender) -> Result:
        with started(c) as meter:
            return measure_http(c, meter, work, wrk, opts)

    def latency(c: cs.Contender, rate: float) -> Result:
        with started(c):
            return latency_http(c, work, wrk, rate, opts)

    return two_passes(contenders, throughput, latency, work, opts)


def sessions_scenario(work: Path, policy: Path, wrk: list[str],
                      opts: argparse.Namespace) -> dict[str, dict[str, Result]]:
    """1 to 1,000 concurrent sessions, one connection each, over an HTTP upstream
    (a stdio upstream would mean one child process per session)."""
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}/mcp"
    up_argv = [cs.PY, str(HERE / "http_echo_server.py"), str(up_port)]
    out: dict[str, dict[str, Result]] = {}
    builders: list[Callable[[int], cs.Contender]] = [
        lambda p: cs.Contender("direct", "direct", up_argv, up_url),
        lambda p: cs.mcpwall_serve(work, p, up_url, None),
        lambda p: cs.mcpwall_serve(work, p, up_url, policy),
    ]
    if opts.baseline:
        builders += [lambda p: cs.mcpwall_serve(work, p, up_url, None, opts.baseline),
                     lambda p: cs.mcpwall_serve(work, p, up_url, policy, opts.baseline)]
    for build in builders:
        c = build(free_port())
        rows: dict[str, Result] = {}
        for count in opts.sessions:
            def run(c: cs.Contender = c, count: int = count) -> Result:
                with contextlib.ExitStack() as stack:
                    up = stack.enter_context(server(up_argv, up_url, {},
                                                    work / "upstream.log", work))
                    proc = up if c.family == "direct" else stack.enter_context(
                        server(c.argv, c.url, c.env, work / "contender.log", work))
                    meter = Meter(proc.pid, [] if c.family == "direct" else [up.pid])
                    sids = http_load.open_sessions(c.url, count, headers=c.headers)
                    sessions = http_load.write_sessions(work / "sessions.txt", sids)
                    cpu0 = meter.cpu()
                    run = http_load.wrk_run(wrk, c.url, sessions, opts.seconds, count,
                                            headers=c.headers)
                    if run["bad"]:
                        raise AssertionError(f"{run['bad']} wrong answers: {run['first_bad']}")
                    return {"rps": run["rps"], "loadgen_cpu_share":
                            run["loadgen_cpu"] / opts.seconds,
                            "cpu_per_1k": (meter.cpu() - cpu0) / max(run["good"], 1) * 1000,
                            "peak_rss_mb": meter.rss() / 2**20,
                            "socket_errors": run["socket_errors"]}
            rows[str(count)] = attempt(f"{c.name}, {count} sessions", opts.budget, run,
                                       work / "contender.log")
        out[c.name] = rows
    return out


def tools_scenario(work: Path, policy: Path,
                   opts: argparse.Namespace) -> dict[str, dict[str, Result]]:
    """tools/list answers of 10 to 5,000 tools through the stdio front (mcpwall
    filters the list through the policy: that is the cost to show)."""
    out: dict[str, dict[str, Result]] = {}
    for size in opts.tools:
        upstream = [*cs.ECHO, "--tools", str(size)]
        contenders = [cs.Contender("direct", "direct", upstream),
                      cs.mcpwall_wrap(work, upstream, None),
                      cs.mcpwall_wrap(work, upstream, policy)]
        if opts.baseline:
            contenders += [cs.mcpwall_wrap(work, upstream, None, opts.baseline),
                           cs.mcpwall_wrap(work, upstream, policy, opts.baseline)]
        for c in contenders:
            expected = size + 1 if c.tools_expected is None else c.tools_expected

            def run(c: cs.Contender = c, expected: int = expected, size: int = size) -> Result:
                with stdio_target(c, work) as target:
                    meter = Meter(target.pid, [])
                    check = check_tool_count(expected)
                    target.pipeline(20, 4, list_request, check)
                    cpu0, wall0 = meter.cpu(), time.perf_counter()
                    rate = target.pipeline(10_000_000, opts.fixed, list_request, check,
                                           max_seconds=opts.seconds)
                    calls = rate * (time.perf_counter() - wall0)
                    return {"rps": rate, "tools_answered": expected,
                            "cpu_per_1k": (meter.cpu() - cpu0) / calls * 1000,
                            "peak_rss_mb": meter.rss() / 2**20}
            out.setdefault(c.name, {})[str(size)] = attempt(
                f"{c.name}, tools/list of {size}", opts.budget, run, work / "contender.log")
    return out


# ---------------------------------------------------------------- report


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _commit(tree: Path) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "firewall"], cwd=tree,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def machine(peers: dict[str, str], wrk: list[str], baseline: Path | None) -> dict[str, Any]:
    """Where and with what the figures were measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wrk_version = subprocess.run([*wrk, "-v"], capture_output=True, text=True)
    node = subprocess.run(["node", "--version"], capture_output=True, text=True)
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version(),
            "mcpwall": _commit(cs.ROOT),
            "baseline": _commit(baseline) if baseline else None,
            "wrk": (wrk_version.stdout + wrk_version.stderr).split("\n")[0].strip(),
            "node": node.stdout.strip(), "peers": peers,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def ratios(results: dict[str, Result]) -> None:
    """Add each metric's ratio to direct and to mcpwall's first configuration,
    of the same era (a 2026-07-28 row: to the 2026-07-28 direct row and the
    first 2026-07-28 mcpwall row)."""
    firsts: dict[bool, Result] = {}
    for n, r in results.items():
        if n.startswith("mcpwall") and "failed" not in r:
            firsts.setdefault(cs.MODERN_MARK in n, r)
    for name, result in results.items():
        if "failed" in result:
            continue
        era = cs.MODERN_MARK in name
        base = results.get(cs.modern_name("direct") if era else "direct", {})
        ours = firsts.get(era, {})
        for key in ("rps", "saturation_rps", "cpu_per_1k", "peak_rss_mb"):
            result.setdefault("vs_direct", {})[key] = metrics.ratio(result.get(key),
                                                                    base.get(key))
            result.setdefault("vs_mcpwall", {})[key] = metrics.ratio(result.get(key),
                                                                     ours.get(key))
        if "latency_ms" in result and "latency_ms" in base:
            result["added_p50_ms"] = result["latency_ms"]["p50"] - base["latency_ms"]["p50"]
        result["era"] = "2026-07-28" if era else "2025"


def render(title: str, results: dict[str, Result], fixed: int) -> str:
    """One scenario as a Markdown table."""
    rows = []
    for name, r in results.items():
        if "failed" in r:
            rows.append([name, "failed: " + r["failed"].splitlines()[-1][:80]] + [""] * 8)
            continue
        lat = r.get("latency_ms")
        # Offered load near or past saturation: the latency is mostly queueing.
        over = (" (saturated)" if lat and r["saturation_rps"] < 1.25 * r["offered_rate"]
                else "")
        rows.append([name, metrics.fmt(r.get("rps")), metrics.fmt(r["saturation_rps"]),
                     metrics.fmt(r["vs_direct"]["rps"], ".2f", "x"),
                     metrics.fmt(r["vs_mcpwall"]["rps"], ".2f", "x"),
                     f"{lat['p50']:.2f} / {lat['p99']:.2f} / {lat['p99.9']:.2f}{over}"
                     if lat else "above saturation" if "not measured" in
                     r.get("latency_failed", "") else "failed",
                     metrics.fmt(r.get("added_p50_ms"), "+.2f"),
                     metrics.fmt(r.get("cpu_per_1k"), ".2f"),
                     metrics.fmt(r["vs_direct"]["cpu_per_1k"], ".1f", "x"),
                     metrics.fmt(r["peak_rss_mb"], ".0f")])
    rate = next((r["offered_rate"] for r in results.values() if "offered_rate" in r), 0)
    header = ["contender", f"calls/s at {fixed}", "saturation", "vs direct", "vs mcpwall",
              f"p50 / p99 / p99.9 ms at {rate:g}/s", "added p50 ms", "CPU s / 1k calls",
              "CPU vs direct", "peak RSS MB"]
    text = f"### {title}\n\n" + metrics.table(header, rows)
    direct = results.get("direct", {})
    if "loadgen_cpu_share" in direct:
        text += (f"\n\nLoad generator: {direct['loadgen_cpu_share']:.0%} of one CPU while "
                 f"direct served {direct['rps']:,.0f} calls/s at {fixed} in flight "
                 "(well below 100%: it is not the bottleneck).")
    for name, r in results.items():
        if r.get("profile", {}).get("self"):
            top = "; ".join(f"{share:.0%} {frame}" for share, frame in r["profile"]["self"][:8])
            wait = r["profile"].get("waiting", 0)
            text += (f"\n\nWhere {name} spends its CPU (py-spy, self time of the busy "
                     f"samples; {wait:.0%} of samples were waiting): {top}.")
    return text


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, each with the figure that meets or misses it."""
    lines = []
    for key, ours_name in (("stdio", "mcpwall wrap, allow-all"),
                           ("http_stdio", "mcpwall serve, allow-all (stdio upstream)")):
        results = report.get(key, {})
        ours = results.get(ours_name, {})
        for name, r in results.items():
            if r is ours or name == "direct" or name.startswith("mcpwall"):
                continue
            if "failed" in r or "failed" in ours or not ours:
                lines.append(f"- >= 5x {name} ({key}): not measurable (a contender failed)")
                continue
            x = ours["saturation_rps"] / r["saturation_rps"]
            lines.append(f"- >= 5x {name} ({key}, saturation): {x:.1f}x, "
                         + ("met" if x >= 5 else "not met"))
    http = report.get("http_http", {})
    ours = http.get("mcpwall serve, policy + durable audit (http upstream)", {})
    if "saturation_rps" in ours and "saturation_rps" in http.get("direct", {}):
        x = ours["saturation_rps"] / http["direct"]["saturation_rps"]
        lines.append(f"- >= 0.75x direct, HTTP upstream, policy + durable audit (saturation): "
                     f"{x:.2f}x, " + ("met" if x >= 0.75 else "not met"))
    for key in ("stdio", "http_stdio", "http_http"):
        for name, r in report.get(key, {}).items():
            if name.startswith("mcpwall") and "added_p50_ms" in r:
                lines.append(f"- p50 added <= 0.5 ms, {name} ({key}): "
                             f"{r['added_p50_ms']:+.2f} ms, "
                             + ("met" if r["added_p50_ms"] <= 0.5 else "not met"))
    return lines


def render_scaling(title: str, unit: str, data: dict[str, dict[str, Result]]) -> str:
    """A scaling scenario as a Markdown table: calls/s (ratio to direct) per size."""
    sizes = list(next(iter(data.values())).keys()) if data else []
    direct = data.get("direct", {})
    rows = []
    for name, by_size in data.items():
        cells = [name]
        for size in sizes:
            r = by_size.get(size, {})
            if "failed" in r or "rps" not in r:
                cells.append("failed")
                continue
            rel = metrics.ratio(r["rps"], direct.get(size, {}).get("rps"))
            cells.append(f"{r['rps']:,.0f} ({metrics.fmt(rel, '.2f', 'x')})")
        rows.append(cells)
    return f"### {title}\n\n" + metrics.table([unit, *sizes], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute run")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="where compare.json, compare.md and the plots go")
    parser.add_argument("--only", default="stdio,http-stdio,http-http,sessions,tools",
                        help="comma-separated scenarios, of: stdio, http-stdio, http-http, "
                             "sessions, tools (default: all)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered calls/s for the latency runs (default: half the "
                             "saturation of the slowest of direct and mcpwall)")
    parser.add_argument("--fixed", type=int, default=16, help="the fixed concurrency")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each contender's passes this many times, interleaved, and "
                             "report the medians (stdio and HTTP scenarios)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only write the table and plots of an earlier compare.json")
    parser.add_argument("--profile", action="store_true",
                        help="sample mcpwall with py-spy during its fixed-concurrency runs")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run every mcpwall configuration from the source tree DIR "
                             "(e.g. a git worktree of an earlier commit), in the same run, and "
                             "print this tree's ratios to it")
    parser.add_argument("--skip-peers", action="store_true",
                        help="measure only the direct path and mcpwall (with --baseline: "
                             "a before/after run)")
    opts = parser.parse_args()
    if opts.baseline is not None:
        opts.baseline = opts.baseline.resolve()
        if not (opts.baseline / "firewall" / "__init__.py").exists():
            parser.error(f"--baseline {opts.baseline}: no firewall package there")
    opts.seconds = 2.0 if opts.quick else 5.0
    opts.concurrency = [16, 64] if opts.quick else [1, 4, 16, 64, 256]
    opts.sessions = [1, 10, 100] if opts.quick else [1, 10, 100, 1000]
    opts.tools = [10, 1000] if opts.quick else [10, 100, 1000, 5000]
    opts.budget = 60.0 if opts.quick else 120.0
    scenarios = set(opts.only.split(","))
    if opts.render:
        write_report(json.loads(opts.render.read_text()), opts.out, opts.fixed)
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    opts.out.mkdir(parents=True, exist_ok=True)
    wrk = [http_load.ensure_wrk()]
    peers = {} if opts.skip_peers else cs.install_peers(cs.PEERS / "install.log")
    report: dict[str, Any] = {"machine": machine(peers, wrk, opts.baseline),
                              "quick": opts.quick,
                              "settings": {"seconds": opts.seconds, "fixed": opts.fixed,
                                           "concurrency": opts.concurrency,
                                           "rounds": opts.rounds,
                                           "offered_rate": opts.rate or "auto"},
                              "http_upstream_support": cs.HTTP_UPSTREAM_SUPPORT}
    try:
        with tempfile.TemporaryDirectory(prefix="mcpwall-compare-") as tmp:
            work = Path(tmp)
            policy = cs.write_policy(work)
            if "stdio" in scenarios:
                print("stdio front, stdio upstream", file=sys.stderr)
                report["stdio"] = stdio_scenario(work, policy, opts)
            if "http-stdio" in scenarios:
                print("HTTP front, stdio upstream", file=sys.stderr)
                report["http_stdio"] = http_scenario(work, policy, wrk, opts, False)
            if "http-http" in scenarios:
                print("HTTP front, HTTP upstream", file=sys.stderr)
                report["http_http"] = http_scenario(work, policy, wrk, opts, True)
            if "sessions" in scenarios:
                print("concurrent sessions", file=sys.stderr)
                report["sessions"] = sessions_scenario(work, policy, wrk, opts)
            if "tools" in scenarios:
                print("tools/list size", file=sys.stderr)
                report["tools"] = tools_scenario(work, policy, opts)
    finally:
        stop_all()
    report["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    for key in ("stdio", "http_stdio", "http_http"):
        if key in report:
            ratios(report[key])
    (opts.out / "compare.json").write_text(json.dumps(report, indent=1))
    write_report(report, opts.out, opts.fixed)


def write_report(report: dict[str, Any], out: Path, fixed: int) -> None:
    """compare.md and the PNG plots of a report, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    text = summary(report, fixed)
    (out / "compare.md").write_text(text + "\n")
    print(text)
    import plots

    for path in plots.draw(report, out):
        print(f"wrote {path.relative_to(cs.ROOT) if path.is_relative_to(cs.ROOT) else path}")


def summary(report: dict[str, Any], fixed: int) -> str:
    """The whole report as Markdown."""
    m = report["machine"]
    parts = [f"Machine: {m['nproc']} CPUs, {m['cpu']}, load average {' '.join(m['loadavg'])} "
             f"before and {' '.join(m['loadavg_after'])} after; Python {m['python']}, "
             f"mcpwall {m['mcpwall']}, {m['wrk']}, node {m['node']}; peers "
             + ", ".join(f"{k} {v}" for k, v in m["peers"].items()) + "."
             + (f" Each figure: the median over {rounds} rounds, contenders interleaved."
                if (rounds := report.get("settings", {}).get("rounds", 1)) > 1 else "")]
    titles = {"stdio": "stdio front, stdio upstream (pipelining stdio client)",
              "http_stdio": "HTTP front, stdio upstream (wrk; direct = the echo server over "
                            "a bare hypercorn app)",
              "http_http": "HTTP front, HTTP upstream (wrk)"}
    for key, title in titles.items():
        if key in report:
            parts.append(render(title, report[key], fixed))
    if "http_http" in report:
        parts.append("Peers and HTTP upstreams:\n\n" + "\n".join(
            f"- {name}: {what}" for name, what in report["http_upstream_support"].items()))
    if "sessions" in report:
        parts.append(render_scaling("Concurrent sessions, HTTP upstream (calls/s, ratio to "
                                    "direct)", "sessions", report["sessions"]))
    if "tools" in report:
        parts.append(render_scaling("tools/list size, stdio (lists/s, ratio to direct)",
                                    "tools", report["tools"]))
    if any(k in report for k in ("stdio", "http_stdio", "http_http")):
        parts.append("### Goals\n\n" + "\n".join(goals(report)))
    if m.get("baseline"):
        parts.append(render_before_after(report, m["baseline"]))
    return "\n\n".join(parts)


def before_after(report: dict[str, Any]) -> list[list[str]]:
    """Rows of this tree's figures over the baseline tree's, configuration by
    configuration (calls/s and saturation: above 1 is faster; CPU per call and
    added p50: below 1 is cheaper)."""
    rows = []
    for key in ("stdio", "http_stdio", "http_http"):
        results = report.get(key, {})
        for name, r in results.items():
            base = results.get(name + cs.BASELINE_MARK)
            if base is None or name.endswith(cs.BASELINE_MARK):
                continue
            if "failed" in r or "failed" in base:
                rows.append([key, name, "failed", "", "", ""])
                continue
            lat = r.get("latency_ms", {}).get("p50")
            base_lat = base.get("latency_ms", {}).get("p50")
            rows.append([key, name, metrics.fmt(metrics.ratio(r.get("rps"), base.get("rps")),
                                                ".2f", "x"),
                         metrics.fmt(metrics.ratio(r.get("saturation_rps"),
                                                   base.get("saturation_rps")), ".2f", "x"),
                         metrics.fmt(metrics.ratio(r.get("cpu_per_1k"), base.get("cpu_per_1k")),
                                     ".2f", "x"),
                         metrics.fmt(metrics.ratio(lat, base_lat), ".2f", "x")])
    for key in ("sessions", "tools"):
        for name, by_size in report.get(key, {}).items():
            base_sizes = report[key].get(name + cs.BASELINE_MARK)
            if base_sizes is None:
                continue
            for size, r in by_size.items():
                base = base_sizes.get(size, {})
                rows.append([f"{key} {size}", name,
                             metrics.fmt(metrics.ratio(r.get("rps"), base.get("rps")),
                                         ".2f", "x"), "", metrics.fmt(metrics.ratio(
                                             r.get("cpu_per_1k"), base.get("cpu_per_1k")),
                                             ".2f", "x"), ""])
    return rows


def render_before_after(report: dict[str, Any], baseline: str) -> str:
    header = ["scenario", "configuration", "calls/s", "saturation", "CPU per call", "p50"]
    return (f"### This tree over the baseline ({baseline}), same run\n\n"
            + metrics.table(header, before_after(report)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
