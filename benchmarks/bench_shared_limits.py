"""The cost of a rate-limited decision with buckets in Redis, against buckets in memory.

Run:  .venv/bin/python benchmarks/bench_shared_limits.py [--rounds 15] [--batch 400]

Starts its own redis-server (the Debian package scripts/setup installs) on a
free 127.0.0.1 port, without persistence, and measures per call, in the same
run, interleaved round by round so that load on a shared machine hits every
case alike:

- ``memory limited``: ``engine.decide`` on a rule with a token bucket in
  memory (the baseline: what a single instance pays);
- ``redis unlimited``: ``engine.decide`` on a rule without limits, the limiter
  being Redis (must cost what it costs in memory: no round trip);
- ``redis limited``: ``engine.decide`` + ``PendingLimit.settle``: one
  ``EVALSHA`` round trip over mcpwall's RESP client on trio streams;
- ``redis limited, TLS``: the same over ``rediss://`` (the same redis-server
  also listens with TLS, on a certificate from a private CA made with
  trustme; TLS 1.3, no client certificate), so the ratio to ``redis limited``
  is what encrypting the round trip costs (skipped without trustme);
- ``coredis evalsha``: the same script and arguments through coredis (6.x,
  anyio, runs under trio), the well-kept library we measured against (skipped
  when coredis is not installed: ``pip install -e '.[bench]'``).

Figures: the thread's CPU time per call (what the gateway process spends,
the kernel's socket send and receive included; Redis's own work is in another
process) and the wall time per call (the round trip included, noisy on a
loaded machine), medians over the rounds, and ratios to ``memory limited``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from firewall.gateway.shared_limits import RedisLimiter, tls_context
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.limits import ACQUIRE_SHA, PendingLimit, script_arguments
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp
from firewall.settings.limits import LimitSettings, parse_url

POLICY = json.dumps({"version": "1", "default": "deny", "tools": {
    "limited": {"limits": [{"counter": "c", "window": "day", "max": 1_000_000_000}]},
    "free": {}}})
CALLER = Caller("agent", "grant-1")
LIMITED = mcp.Call(mcp.TOOLS_CALL, tool="limited", arguments={})
FREE = mcp.Call(mcp.TOOLS_CALL, tool="free", arguments={})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def certificates(workdir: Path) -> Path | None:
    """A private CA and a server certificate for 127.0.0.1 (``ca.pem``,
    ``server.pem``, ``server.key`` in ``workdir``); None without trustme."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
    server.private_key_pem.write_to_path(str(workdir / "server.key"))
    return workdir / "ca.pem"


def start_redis(tls: Path | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
    """redis-server on a free port, and with ``tls`` (a directory from
    :func:`certificates`) also on a TLS port (0 without)."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (scripts/setup installs it)")
    port = free_port()
    tls_port = 0
    extra: list[str] = []
    if tls is not None:
        tls_port = free_port()
        extra = ["--tls-port", str(tls_port), "--tls-cert-file", str(tls / "server.pem"),
                 "--tls-key-file", str(tls / "server.key"), "--tls-auth-clients", "no"]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", *extra], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port, tls_port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


Case = Callable[[], Awaitable[None]]


async def measure(cases: dict[str, Case], rounds: int, batch: int
                  ) -> dict[str, tuple[float, float]]:
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(batch):
                await case()
            cpu[name].append((time.thread_time_ns() - c0) / batch / 1000.0)
            wall[name].append((time.perf_counter_ns() - w0) / batch / 1000.0)
    return {n: (statistics.median(cpu[n]), statistics.median(wall[n])) for n in cases}


async def main(rounds: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        ca = certificates(Path(workdir))
        proc, port, tls_port = start_redis(Path(workdir) if ca is not None else None)
        try:
            await _run(rounds, batch, port, tls_port, ca)
        finally:
            proc.kill()
            proc.wait()


async def _run(rounds: int, batch: int, port: int, tls_port: int, ca: Path | None) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    compiled = compile_policy(parse_policy(POLICY))
    memory = Engine(compiled)
    shared = RedisLimiter(parse_url(url), timeout=2.0)
    redis_engine = Engine(compiled, shared)

    async def memory_limited() -> None:
        decision = memory.decide(LIMITED, CALLER, "vm", "s")
        assert decision.action == "allow"

    async def redis_unlimited() -> None:
        decision = redis_engine.decide(FREE, CALLER, "vm", "s")
        assert type(decision) is not PendingLimit

    async def settle(engine: Engine) -> None:
        pending = engine.decide(LIMITED, CALLER, "vm", "s")
        assert type(pending) is PendingLimit
        assert (await pending.settle()).action == "allow"

    async def redis_limited() -> None:
        await settle(redis_engine)

    cases: dict[str, Case] = {"memory limited": memory_limited,
                              "redis unlimited": redis_unlimited,
                              "redis limited": redis_limited}
    await redis_limited()  # loads the script
    limiters = [shared]
    if ca is None:
        print("trustme is not installed: the TLS case is skipped (pip install -e '.[dev]')")
    else:
        tls_url = f"rediss://127.0.0.1:{tls_port}/0"
        over_tls = RedisLimiter(parse_url(tls_url), timeout=2.0, tls=tls_context(
            LimitSettings(backend="redis", url=tls_url, tls_ca_file=str(ca))))
        limiters.append(over_tls)
        tls_engine = Engine(compiled, over_tls)

        async def redis_limited_tls() -> None:
            await settle(tls_engine)

        cases["redis limited, TLS"] = redis_limited_tls
    client: Any = None
    try:
        import coredis

        client = coredis.Redis.from_url(url)
    except ImportError:
        print("coredis is not installed: its case is skipped (pip install -e '.[bench]')")
    if client is None:
        results = await measure(cases, rounds, batch)
    else:
        async with client:
            pending = redis_engine.decide(LIMITED, CALLER, "vm", "s")
            assert isinstance(pending, PendingLimit)
            keys, argv = script_arguments(pending.requests, shared.key_prefix, True, None)

            async def coredis_evalsha() -> None:
                assert await client.evalsha(ACQUIRE_SHA, keys, argv) is None

            cases["coredis evalsha"] = coredis_evalsha
            results = await measure(cases, rounds, batch)
    for limiter in limiters:
        await limiter.aclose()
    base_cpu, base_wall = results["memory limited"]
    print(f"per call, medians of {rounds} rounds of {batch} (thread CPU; wall incl. round trip)")
    print(f"{'case':<20}{'cpu us':>10}{'x memory':>10}{'wall us':>10}{'x memory':>10}")
    for name, (c, w) in results.items():
        print(f"{name:<20}{c:>10.2f}{c / base_cpu:>10.1f}{w:>10.2f}{w / base_wall:>10.1f}")
    ours_c, ours_w = results["redis limited"]
    if "redis limited, TLS" in results:
        tls_c, tls_w = results["redis limited, TLS"]
        print(f"TLS / plain: cpu {tls_c / ours_c:.2f}x (+{tls_c - ours_c:.1f} us), "
              f"wall {tls_w / ours_w:.2f}x (+{tls_w - ours_w:.1f} us)")
    if "coredis evalsha" in results:
        lib_c, lib_w = results["coredis evalsha"]
        print(f"coredis / mcpwall RESP client: cpu {lib_c / ours_c:.2f}x, "
              f"wall {lib_w / ours_w:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=400)
    args = parser.parse_args()
    trio.run(main, args.rounds, args.batch)
