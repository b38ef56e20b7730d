"""A pipelining stdio MCP load generator, shared by the stdio benchmarks.

It starts a command, completes the initialize handshake, then keeps
``inflight`` tools/call requests outstanding with distinct ids and checks every
response (its id is one we sent and not yet answered; the result echoes the
arguments we sent). Returns calls per second.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_INIT = (b'{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":'
         b'"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n'
         b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')


def _request(i: int, tool: str, arguments: dict[str, Any]) -> bytes:
    params = {"name": tool, "arguments": {**arguments, "n": i}}
    message = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
    return msgspec.json.encode(message) + b"\n"


def run_load(argv: list[str], calls: int, inflight: int = 16, tool: str = "echo",
             arguments: dict[str, Any] | None = None, check: Any = None) -> float:
    """Drive ``argv`` with ``calls`` tools/call requests; return calls/s.

    ``check(i, response)`` validates a response (default: an echo of params).
    Raises AssertionError on any wrong, missing or duplicated answer.
    """
    args = arguments or {}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    out_fd, in_fd = proc.stdin.fileno(), proc.stdout.fileno()
    try:
        os.write(out_fd, _INIT)
        buf = b""
        while b"\n" not in buf:
            chunk = os.read(in_fd, 65536)
            if not chunk:
                raise AssertionError("server closed before answering initialize")
            buf += chunk
        buf = buf.split(b"\n", 1)[1]
        requests = [_request(i, tool, args) for i in range(calls)]
        outstanding: set[int] = set()
        sent = done = 0
        sel = selectors.DefaultSelector()
        sel.register(in_fd, selectors.EVENT_READ)
        start = time.perf_counter()
        while done < calls:
            if sent < calls and len(outstanding) < inflight:
                batch = min(inflight - len(outstanding), calls - sent)
                os.write(out_fd, b"".join(requests[sent:sent + batch]))
                outstanding.update(range(sent, sent + batch))
                sent += batch
            sel.select(timeout=30)
            chunk = os.read(in_fd, 1 << 20)
            if not chunk:
                raise AssertionError(f"server closed after {done} of {calls} answers")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line:
                    continue
                msg = _decoder.decode(line)
                rid = msg.get("id")
                if rid not in outstanding:
                    raise AssertionError(
                        f"unexpected or duplicate answer id {rid!r}: {line[:200]!r}")
                outstanding.discard(rid)
                if check is not None:
                    check(rid, msg)
                elif msg.get("result", {}).get("echo", {}).get("arguments", {}).get("n") != rid:
                    raise AssertionError(f"wrong answer for id {rid}: {line[:200]!r}")
                done += 1
        return calls / (time.perf_counter() - start)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
