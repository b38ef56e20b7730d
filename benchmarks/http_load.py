"""HTTP load generators for the comparison benchmark, each checking every answer.

* ``wrk_run``: closed loop, ``wrk`` (C) with a Lua script. Every request has
  a distinct JSON-RPC id and carries that id again as the ``n`` argument of
  the echo tool; the script checks that each response names an id this thread
  sent and has not seen answered, and that the echoed text holds the same
  ``n`` (or, for tools/list, the expected number of tools). Requests rotate
  over a file of session ids, so N connections can drive N real sessions.
* ``paced``: open loop at a constant rate (wrk2-style; this module run
  as ``http_load.py pace ...`` in its own process, trio + h11), latency
  measured from each request's scheduled send time so a stall is charged
  to every request it delays (no coordinated omission).

Both accept JSON and SSE (``text/event-stream``) responses: the checks look
for the JSON-RPC message in the body either way. Both speak either era of
MCP: the 2025 one (sessions from a file, ``MCP-Protocol-Version:
2025-06-18``), or with ``kind="modern"`` the stateless 2026-07-28 revision
(no session: each tools/call carries the version, client capabilities and
clientInfo in ``params._meta``, and the ``MCP-Protocol-Version``,
``Mcp-Method`` and ``Mcp-Name`` headers, :data:`MODERN_HEADERS`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "bench", "version": "1"}}}

# The headers of a 2026-07-28 tools/call of the echo tool (constant for every call).
MODERN_HEADERS = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                  "mcp-name": "echo"}
# What a 2026-07-28 client says of itself in every request.
MODERN_META = (b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
               b'"io.modelcontextprotocol/clientCapabilities":{},'
               b'"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"}}')

_ID = re.compile(rb'"id"\s*:\s*(\d+)')
_N = re.compile(rb'\\"n\\"\s*:\s*(\d+)')
_TOOL = re.compile(rb'"inputSchema"')

# Lua twin of body_answers(): keep the two in step.
WRK_LUA = r'''
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
-- good, bad and first_bad are thread globals: done() reads them with thread:get.
good, bad, first_bad = 0, 0, ""
local counter = 0
local sessions, k, seen = {}, 0, {}
local path, kind, expect, modern_meta
function init(args)
  counter = tid * 1000000000
  for line in io.lines(args[1]) do table.insert(sessions, line) end
  path, kind, expect, modern_meta = args[2], args[3], tonumber(args[4]), args[5]
end
function request()
  counter = counter + 1
  k = k % #sessions + 1
  local body
  if kind == "list" then
    body = '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"tools/list"}'
  elseif kind == "modern" then
    body = '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"tools/call","params":' ..
      '{"name":"echo","arguments":{"n":' .. counter .. ',"text":"hello"},' .. modern_meta .. '}}'
  else
    body = '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"tools/call","params":' ..
      '{"name":"echo","arguments":{"n":' .. counter .. ',"text":"hello"}}}'
  end
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  if sessions[k] ~= "-" then headers["mcp-session-id"] = sessions[k] end
  return wrk.format("POST", path, headers, body)
end
function response(status, headers, body)
  local id = tonumber(string.match(body, '"id"%s*:%s*(%d+)'))
  local ok = status == 200 and id ~= nil and id > tid * 1000000000 and id <= counter
    and not seen[id]
  if ok and kind == "list" then
    local _, count = string.gsub(body, '"inputSchema"', "")
    ok = count == expect
  elseif ok then
    ok = tonumber(string.match(body, '\\"n\\"%s*:%s*(%d+)')) == id
  end
  if ok then
    seen[id] = true
    good = good + 1
  else
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 200) end
  end
end
function done(summary, latency, requests)
  local g, b, f = 0, 0, ""
  for _, t in ipairs(threads) do
    g = g + t:get("good")
    b = b + t:get("bad")
    if f == "" then f = t:get("first_bad") end
  end
  io.write(string.format("VERIFIED good=%d bad=%d first_bad=%s\n", g, b, f))
end
'''


def body_answers(body: bytes, kind: str = "call", expect: int = 0) -> int | None:
    """The request id a response body correctly answers, or None if it is wrong.

    ``call`` and ``modern``: the echoed text must hold ``n`` equal to the id; ``list``: the
    body must list exactly ``expect`` tools. JSON or SSE bodies alike.
    """
    found = _ID.search(body)
    if found is None:
        return None
    rid = int(found.group(1))
    if kind == "list":
        return rid if len(_TOOL.findall(body)) == expect else None
    n = _N.search(body)
    return rid if n is not None and int(n.group(1)) == rid else None


def sse_or_json(content_type: str, body: bytes) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether JSON or an SSE stream."""
    if content_type.startswith("text/event-stream"):
        for line in body.splitlines():
            if line.startswith(b"data:") and line[5:].strip():
                message: dict[str, Any] = json.loads(line[5:])
                if "id" in message:
                    return message
        raise ValueError(f"no JSON-RPC answer in the event stream: {body[:200]!r}")
    answer: dict[str, Any] = json.loads(body)
    return answer


def open_session(url: str, headers: dict[str, str] | None = None, timeout: float = 30,
                 client: Any = None) -> str:
    """initialize + notifications/initialized; the session id ("" if stateless)."""
    import httpx

    http = client or httpx.Client(timeout=timeout)
    base = {**HEADERS, **(headers or {})}
    reply = http.post(url, json=INIT, headers=base)
    reply.raise_for_status()
    message = sse_or_json(reply.headers.get("content-type", ""), reply.content)
    if "result" not in message:
        raise ValueError(f"initialize failed: {message}")
    sid = reply.headers.get("mcp-session-id", "")
    http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
              headers={**base, "mcp-session-id": sid} if sid else base)
    if client is None:
        http.close()
    return str(sid)


def open_sessions(url: str, count: int, headers: dict[str, str] | None = None) -> list[str]:
    """``count`` sessions, opened one after another over one keep-alive connection."""
    import httpx

    with httpx.Client(timeout=30) as http:
        return [open_session(url, headers, client=http) for _ in range(count)]


def wrk_run(wrk: list[str], url: str, sessions: Path, seconds: float, connections: int,
            kind: str = "call", expect: int = 0, headers: dict[str, str] | None = None,
            timeout: float = 60) -> dict[str, Any]:
    """One verified wrk run: requests/s, answers checked, and wrk's own CPU seconds.

    ``kind``: ``call`` (2025 tools/call), ``modern`` (2026-07-28 tools/call:
    give ``MODERN_HEADERS`` in ``headers``) or ``list`` (tools/list)."""
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    script = sessions.with_name("verify.lua")
    script.write_text(WRK_LUA)
    path = urlsplit(url).path
    sent = {**HEADERS, **(headers or {})}  # one value a header: ours unless overridden
    extra = [arg for k, v in sent.items() for arg in ("-H", f"{k}: {v}")]
    argv = [*wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(script), *extra, url,
            "--", str(sessions), path, kind, str(expect), MODERN_META.decode()]
    before = os.times()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout)
    after = os.times()
    text = out.stdout + out.stderr
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    verified = re.search(r"VERIFIED good=(\d+) bad=(\d+) first_bad=(.*)", text)
    if out.returncode != 0 or rps is None or verified is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {text[-600:]}")
    good, bad = int(verified.group(1)), int(verified.group(2))
    errors = re.search(r"Socket errors: (.*)", text)
    return {"rps": good / seconds, "wrk_rps": float(rps.group(1)), "good": good, "bad": bad,
            "first_bad": verified.group(3).strip(), "socket_errors": errors.group(1)
            if errors else "",
            "loadgen_cpu": (after.children_user - before.children_user
                            + after.children_system - before.children_system)}


def paced(url: str, sessions: Path, rate: float, seconds: float, connections: int,
          headers: dict[str, str] | None = None, timeout: float = 60,
          kind: str = "call") -> dict[str, Any]:
    """Open-loop run at ``rate`` requests/s (in its own process): latencies (s)
    from scheduled send times, and the wrong answers. ``kind``: ``call`` or
    ``modern``, as for :func:`wrk_run`."""
    parts = urlsplit(url)
    out = subprocess.run([sys.executable, __file__, "pace", parts.hostname or "127.0.0.1",
                          str(parts.port), parts.path, str(rate), str(seconds),
                          str(connections), str(sessions), json.dumps(headers or {}), kind],
                         capture_output=True, text=True, timeout=seconds + timeout)
    if out.returncode != 0:
        raise RuntimeError(f"pacer failed: {out.stderr[-600:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def _exchange(stream: Any, conn: Any, wire: bytes) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection; its status and whole body."""
    import h11

    await stream.send_all(wire)
    status, data = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.EndOfMessage):
            conn.start_next_cycle()
            return status, bytes(data)
        status = getattr(event, "status_code", status)
        data += getattr(event, "data", b"")


def _pace(host: str, port: int, path: str, rate: float, seconds: float, conns: int,
          sessions: list[str], extra: dict[str, str], kind: str = "call") -> dict[str, Any]:
    """Each connection sends on its own fixed schedule (every conns / rate s)."""
    import h11
    import trio

    latencies: list[float] = []
    bad: list[str] = []

    async def connection(k: int, start: float) -> None:
        stream = await trio.open_tcp_stream(host, port)
        conn = h11.Connection(h11.CLIENT)
        base = [("host", f"{host}:{port}"), *{**HEADERS, **extra}.items()]
        template = _MODERN_CALL if kind == "modern" else _CALL
        sid = sessions[k % len(sessions)]
        if sid != "-":
            base.append(("mcp-session-id", sid))
        for i in itertools.count():
            due = start + (k + i * conns) / rate
            if due - start > seconds:
                return
            await trio.sleep_until(due)
            rid = 1 + k + i * conns
            body = template % (rid, rid)
            request = h11.Request(method="POST", target=path,
                                  headers=[*base, ("content-length", str(len(body)))])
            status, answer = await _exchange(
                stream, conn, conn.send(request) + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage()))
            latencies.append(trio.current_time() - due)
            if status != 200 or body_answers(answer) != rid:
                bad.append(f"{status} {answer[:200]!r}")

    async def main() -> None:
        start = trio.current_time() + 0.2
        async with trio.open_nursery() as nursery:
            for k in range(conns):
                nursery.start_soon(connection, k, start)

    trio.run(main)
    return {"latencies": latencies, "bad": len(bad), "first_bad": bad[:1]}


_CALL = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
         b'"params":{"name":"echo","arguments":{"n":%d,"text":"hello"}}}')
_MODERN_CALL = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
                b'"params":{"name":"echo","arguments":{"n":%d,"text":"hello"},'
                + MODERN_META.replace(b"%", b"%%") + b'}}')


def ensure_wrk() -> str:
    """The wrk binary (installed with apt when missing)."""
    from bench_http_proxy import ensure_wrk as install

    return install()


def write_sessions(path: Path, sids: list[str]) -> Path:
    """A session file for wrk_run and paced ("-" stands for no session header)."""
    path.write_text("".join(f"{sid or '-'}\n" for sid in sids))
    return path


def wait_http(url: str, alive: Any, timeout: float = 30) -> None:
    """Wait until ``url`` accepts TCP connections; ``alive()`` False aborts."""
    import socket

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited before it listened")
        try:
            socket.create_connection((parts.hostname, parts.port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens at {url} after {timeout:g} s")


if __name__ == "__main__" and sys.argv[1:2] == ["pace"]:
    _host, _port, _path, _rate, _seconds, _conns, _sessions, _extra, _kind = sys.argv[2:11]
    print(json.dumps(_pace(_host, int(_port), _path, float(_rate), float(_seconds), int(_conns),
                           Path(_sessions).read_text().split(), json.loads(_extra), _kind)))
