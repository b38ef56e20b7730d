"""A misbehaving stdio upstream does not hurt the others: `mcpwall serve`, end to end.

`mcpwall serve` runs as a subprocess with two stdio servers: ``hostile``
(``tests/fixtures/hostile_server.py MODE``: it answers ``initialize``, then
sends 100,000-deep JSON, garbage bytes, a line that never ends, or an endless
flood of valid notifications) and ``virtualization`` (the bundled demo
server). While the hostile child misbehaves, a client of the demo server
keeps calling it and must get every answer; the serve process must stay alive
and its resident memory (sampled from ``/proc`` between calls) below a
generous bound; the hostile session itself lives on where its server goes
back to normal, and can be ended; finally serve stops gracefully (exit 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import trio
from conftest import ROOT
from serve_process import start_serve, stop_gracefully, stop_serve, tail

pytestmark = pytest.mark.slow

HOSTILE = ROOT / "tests" / "fixtures" / "hostile_server.py"
POLICY = {"version": "1", "default": "deny", "tools": {"vm_management": {}, "poke": {}}}
HEALTHY_CALLS = 25
# Generous: serve itself idles near 100 MiB; the bounds that matter are a
# stdio line (max_line_bytes, 16 MiB) and a stream's replay buffer (8 MiB).
RSS_BOUND_BYTES = 400 * 1024 * 1024
# Modes after which the hostile server answers requests again.
RECOVERS = ("deep", "garbage", "flood")
# What serve logs when it drops the hostile output: proof the bound was reached.
EVIDENCE = {"garbage": "upstream_message_rejected", "noeol": "upstream_line_too_long"}
JSON_HEADERS = {"accept": "application/json", "content-type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "fault-test", "version": "1"}}}


def write_config(tmp_path: Path, mode: str) -> Path:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    python = json.dumps(sys.executable)
    config = tmp_path / "mcpwall.toml"
    config.write_text("\n".join([
        "[log]", 'format = "json"', "",
        "[listen]", "upstream_timeout_seconds = 20", "",
        "[policy]", f"files = [{json.dumps(str(policy))}]", "",
        "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", "",
        "[servers.hostile]", 'transport = "stdio"', f"command = {python}",
        f"args = {json.dumps([str(HOSTILE), mode])}", "terminate_grace_seconds = 1", "",
        "[servers.virtualization]", 'transport = "stdio"', f"command = {python}",
        'args = ["-m", "firewall.demo"]', "",
    ]), encoding="utf-8")
    return config


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def session_headers(sid: str) -> dict[str, str]:
    return {**JSON_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}


async def initialize(http: httpx.AsyncClient, url: str) -> str:
    reply = await http.post(url, json=INIT, headers=JSON_HEADERS)
    assert reply.status_code == 200, reply.text
    sid = reply.headers["mcp-session-id"]
    note = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers=session_headers(sid))
    assert note.status_code == 202, note.text
    return sid


async def call(http: httpx.AsyncClient, url: str, sid: str, rid: int, tool: str,
               arguments: dict[str, str]) -> str:
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}
    reply = await http.post(url, json=body, headers=session_headers(sid))
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["id"] == rid and "result" in answer, answer
    return str(answer["result"]["content"][0]["text"])


@pytest.mark.parametrize("mode", ["deep", "garbage", "noeol", "flood"])
async def test_a_hostile_stdio_server_does_not_hurt_its_neighbour(tmp_path: Path,
                                                                  mode: str) -> None:
    log = tmp_path / "serve.log"
    proc, base = await start_serve(tmp_path, write_config(tmp_path, mode), log)
    healthy, hostile = f"{base}/servers/virtualization/mcp", f"{base}/servers/hostile/mcp"
    peak = 0
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            demo = await initialize(http, healthy)
            bad = await initialize(http, hostile)  # it misbehaves from here on
            for i in range(HEALTHY_CALLS):
                try:
                    text = await call(http, healthy, demo, i + 1, "vm_management",
                                      {"action": "list"})
                except httpx.TransportError as exc:
                    pytest.fail(f"call {i + 1}: {exc!r}; serve exited {proc.poll()}:\n"
                                f"{tail(log)}")
                assert "web-01" in text
                peak = max(peak, rss(proc.pid))
                await trio.sleep(0.1)  # let the hostile child go on meanwhile
            if mode in RECOVERS:  # the bad lines were dropped; the session lives on
                assert await call(http, hostile, bad, 99, "poke", {}) == "poked"
            ended = await http.delete(hostile, headers=session_headers(bad))
            assert ended.status_code == 204, ended.text
            assert "web-01" in await call(http, healthy, demo, 100, "vm_management",
                                          {"action": "list"})
        assert proc.poll() is None, tail(log)
        assert EVIDENCE.get(mode, "") in log.read_text()
        await stop_gracefully(proc, log)  # flushes the audit trail
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)
    print(f"{mode}: peak RSS of serve {peak / 2**20:.0f} MiB")
    assert peak < RSS_BOUND_BYTES, f"serve grew to {peak / 2**20:.0f} MiB"
