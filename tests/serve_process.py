"""`mcpwall serve` as a real process for tests: start on a free port, stop cleanly."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import trio
from conftest import mcpwall_argv

from tests.fixtures import conformance_harness as harness


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log file, for failure messages."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def ready(proc: trio.Process, base: str) -> bool:
    """Poll /healthz until it answers 200 (True) or the process exits (False)."""
    async with httpx.AsyncClient(timeout=2) as http:
        while proc.poll() is None:
            try:
                if (await http.get(f"{base}/healthz")).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)
    return False


async def start_serve(workdir: Path, config: Path, log: Path,
                      start_seconds: float = 30) -> tuple[trio.Process, str]:
    """`mcpwall serve CONFIG --port FREE` in ``workdir``; returns it and its base URL
    once /healthz answers 200. Output goes to ``log``."""
    for _attempt in range(3):  # another process may take the free port first
        port = harness.free_port()
        with log.open("ab") as sink:
            proc = await trio.lowlevel.open_process(
                [*mcpwall_argv(), "serve", str(config), "--port", str(port)],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
        base = f"http://127.0.0.1:{port}"
        with trio.fail_after(start_seconds):
            if await ready(proc, base):
                return proc, base
        if "cannot listen" not in tail(log):
            pytest.fail(f"mcpwall serve exited {proc.returncode} before it was ready:\n"
                        f"{tail(log)}")
    pytest.fail(f"mcpwall serve could not bind a free port:\n{tail(log)}")


async def stop_serve(proc: trio.Process, grace: float = 20) -> None:
    """SIGTERM (serve stops its children), then SIGKILL if it is still there."""
    if proc.poll() is None:
        proc.terminate()
        with trio.move_on_after(grace):
            await proc.wait()
    if proc.poll() is None:
        proc.kill()
    await proc.wait()


async def stop_gracefully(proc: trio.Process, log: Path) -> None:
    """SIGTERM and wait: a graceful stop flushes the audit trail and exits 0."""
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        await proc.wait()
    assert proc.returncode == 0, tail(log)


def require_front() -> None:
    """Skip the test when this checkout has no HTTP front to run through."""
    problem = harness.mcpwall_front_problem()
    if problem is not None:
        pytest.skip(problem)


@contextlib.contextmanager
def mcpwall_or_skip(work_dir: Path, servers: Mapping[str, harness.Upstream]) -> Iterator[str]:
    """The conformance harness's mcpwall in front of servers; yields its base URL,
    or skips the test while mcpwall has no HTTP front."""
    require_front()
    try:
        with harness.mcpwall_front(work_dir, servers) as base:
            yield base
    except harness.FrontUnavailable as exc:
        pytest.skip(str(exc))
