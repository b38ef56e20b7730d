"""A stdio MCP load generator, shared by the stdio benchmarks.

It starts a command, completes the initialize handshake, then either keeps
``inflight`` requests outstanding (closed loop: throughput) or sends them on a
fixed schedule (open loop: latency at an offered rate, measured from each
request's scheduled send time so a stall is not hidden by coordinated
omission). Requests have distinct ids and every response is checked: its id is
one we sent and not yet answered, and its result is the one the echo server
gives for that request (the call's arguments echoed back).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_INIT = (b'{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":'
         b'"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n'
         b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')

Check = Callable[[int, dict[str, Any]], None]


class WrongAnswer(AssertionError):
    """A response that is missing, duplicated, or not what was asked for."""


def call_request(i: int, tool: str = "echo", arguments: dict[str, Any] | None = None) -> bytes:
    """tools/call number ``i``: its id and its ``n`` argument are both ``i``."""
    params = {"name": tool, "arguments": {**(arguments or {}), "n": i}}
    return msgspec.json.encode({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                "params": params}) + b"\n"


def list_request(i: int) -> bytes:
    """tools/list number ``i``."""
    return msgspec.json.encode({"jsonrpc": "2.0", "id": i, "method": "tools/list"}) + b"\n"


def check_echo(rid: int, msg: dict[str, Any]) -> None:
    """The answer to ``call_request(rid)``: a text content holding the arguments."""
    try:
        echoed = _decoder.decode(msg["result"]["content"][0]["text"])
        ok = echoed["n"] == rid
    except (KeyError, IndexError, TypeError, msgspec.DecodeError):
        ok = False
    if not ok:
        raise WrongAnswer(f"wrong answer for id {rid}: {str(msg)[:200]}")


def check_tool_count(expected: int) -> Check:
    """A check that a tools/list answer lists exactly ``expected`` tools."""

    def check(rid: int, msg: dict[str, Any]) -> None:
        tools = msg.get("result", {}).get("tools")
        if not isinstance(tools, list) or len(tools) != expected:
            got = len(tools) if isinstance(tools, list) else str(msg)[:200]
            raise WrongAnswer(f"id {rid}: expected {expected} tools, got {got}")

    return check


class StdioTarget:
    """A stdio MCP server (or a proxy in front of one) started and initialized."""

    def __init__(self, argv: list[str], cwd: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 30.0,
                 stderr: Path | None = None) -> None:
        self.timeout = timeout
        # Its own process group, so whoever started it can stop its children too.
        with open(stderr or os.devnull, "ab") as sink:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=sink, bufsize=0, cwd=cwd, env=env,
                                         start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out, self._in = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._in, selectors.EVENT_READ)
        self._buf = b""
        self._next_id = 1
        try:
            os.write(self._out, _INIT)
            while not any(_decoder.decode(raw).get("id") == "init" for raw in self._lines()):
                pass
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the process group at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _lines(self, wait: bool = True) -> list[bytes]:
        """Complete lines read so far; waits for input first unless ``wait`` is False."""
        if wait and not self._sel.select(timeout=self.timeout):
            raise WrongAnswer(f"no answer within {self.timeout:g} s")
        chunk = os.read(self._in, 1 << 20)
        if not chunk:
            raise WrongAnswer("server closed its stdout")
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [line for line in lines if line.strip()]

    def _ids(self, count: int) -> range:
        first = self._next_id
        self._next_id += count
        return range(first, first + count)

    def _settle(self, raw: bytes, outstanding: set[int] | dict[int, float], check: Check) -> int:
        msg = _decoder.decode(raw)
        rid = msg.get("id")
        if rid not in outstanding:
            raise WrongAnswer(f"unexpected or duplicate answer id {rid!r}: {raw[:200]!r}")
        check(rid, msg)
        return int(rid)

    def pipeline(self, calls: int, inflight: int = 16,
                 request: Callable[[int], bytes] = call_request,
                 check: Check = check_echo, max_seconds: float | None = None) -> float:
        """Keep ``inflight`` requests outstanding until ``calls`` are answered, or
        until ``max_seconds`` have passed and the outstanding ones are; calls/s."""
        ids = self._ids(calls)
        outstanding: set[int] = set()
        sent = done = 0
        start = time.perf_counter()
        deadline = start + max_seconds if max_seconds else float("inf")
        while done < sent or (sent < calls and time.perf_counter() < deadline):
            if sent < calls and len(outstanding) < inflight and time.perf_counter() < deadline:
                batch = min(inflight - len(outstanding), calls - sent)
                os.write(self._out, b"".join(request(i) for i in ids[sent:sent + batch]))
                outstanding.update(ids[sent:sent + batch])
                sent += batch
            for raw in self._lines():
                outstanding.discard(self._settle(raw, outstanding, check))
                done += 1
        return done / (time.perf_counter() - start)

    def paced(self, rate: float, seconds: float,
              request: Callable[[int], bytes] = call_request,
              check: Check = check_echo) -> list[float]:
        """Send at ``rate`` requests/s for ``seconds`` (open loop); return latencies (s)
        measured from each request's scheduled send time."""
        count = max(1, int(rate * seconds))
        ids = self._ids(count)
        start = time.perf_counter() + 0.05
        due = {i: start + k / rate for k, i in enumerate(ids)}
        outstanding: dict[int, float] = {}
        latencies: list[float] = []
        sent = 0
        while len(latencies) < count:
            now = time.perf_counter()
            batch = []
            while sent < count and due[ids[sent]] <= now:
                batch.append(request(ids[sent]))
                outstanding[ids[sent]] = due[ids[sent]]
                sent += 1
            if batch:
                os.write(self._out, b"".join(batch))
            idle = due[ids[sent]] - time.perf_counter() if sent < count else self.timeout
            if not self._sel.select(timeout=max(0.0, idle)):
                if sent < count:
                    continue
                raise WrongAnswer(f"{len(outstanding)} answers missing after {self.timeout:g} s")
            for raw in self._lines(wait=False):
                rid = self._settle(raw, outstanding, check)
                latencies.append(time.perf_counter() - outstanding.pop(rid))
        return latencies

    def close(self) -> None:
        """Close stdin and wait; kill if the process does not stop."""
        self._sel.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.kill()  # and whatever it left behind

    def __enter__(self) -> StdioTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_load(argv: list[str], calls: int, inflight: int = 16) -> float:
    """Drive ``argv`` with ``calls`` echo tools/call requests; return calls/s.

    Raises WrongAnswer (an AssertionError) on any wrong, missing or duplicated answer.
    """
    with StdioTarget(argv) as target:
        return target.pipeline(calls, inflight)
