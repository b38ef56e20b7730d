"""One principal cannot take every stdio child: per-principal caps through `mcpwall serve`.

`mcpwall serve` runs as a subprocess in front of the bundled demo server (one
stdio child per session) with ``max_children = 8`` and no
``max_children_per_principal``, so the default applies: a quarter, 2. Two
bearer tokens: ``alice`` and ``bob``. Alice fires a burst of concurrent
``initialize`` POSTs: exactly her cap gets in, the rest get HTTP 429 with
``Retry-After`` (the admission slot is taken before the child is started, so a
burst cannot overshoot). Bob still gets a session and answers from the demo
server; alice's DELETE frees a slot she can use again. After a graceful stop,
``mcpwall audit timeline --principal alice --json`` shows the refusals
(``session_refused``, with reason, cap and the config key), and bob has none.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import ROOT, mcpwall_argv
from serve_process import start_serve, stop_gracefully, stop_serve

from firewall.identity import hash_token

pytestmark = pytest.mark.slow

SEED_POLICY = ROOT / "tests" / "fixtures" / "seed-policy.json"
SERVER = "virtualization"
MAX_CHILDREN = 8
PER_PRINCIPAL = MAX_CHILDREN // 4  # the default share
BURST = 6
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "caps-test", "version": "1"}}}


def write_config(tmp_path: Path, tokens: dict[str, str]) -> Path:
    lines = [
        "[log]", 'format = "json"', "",
        "[policy]", f"files = [{json.dumps(str(SEED_POLICY))}]", "",
        "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", "",
    ]
    for principal, token in tokens.items():
        lines += ["[[auth.tokens]]", f'sha256 = "{hash_token(token)}"',
                  f"principal = {json.dumps(principal)}", ""]
    lines += [f"[servers.{SERVER}]", 'transport = "stdio"',
              f"command = {json.dumps(sys.executable)}", 'args = ["-m", "firewall.demo"]',
              f"max_children = {MAX_CHILDREN}", ""]
    config = tmp_path / "mcpwall.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    return config


def headers(token: str, sid: str | None = None) -> dict[str, str]:
    out = {"accept": "application/json", "content-type": "application/json",
           "authorization": f"Bearer {token}"}
    if sid is not None:
        out |= {"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
    return out


async def list_vms(http: httpx.AsyncClient, url: str, token: str, sid: str) -> str:
    """A tools/call in session ``sid``; the demo server's answer text."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "vm_management", "arguments": {"action": "list"}}}
    reply = await http.post(url, json=call, headers=headers(token, sid))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["result"]["content"][0]["text"])


async def test_one_principal_cannot_take_every_child(tmp_path: Path) -> None:
    tokens = {name: f"tok-{name}-{secrets.token_urlsafe(16)}" for name in ("alice", "bob")}
    log = tmp_path / "serve.log"
    proc, base = await start_serve(tmp_path, write_config(tmp_path, tokens), log)
    url = f"{base}/servers/{SERVER}/mcp"
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            replies: list[httpx.Response] = []

            async def initialize(token: str) -> None:
                replies.append(await http.post(url, json=INIT, headers=headers(token)))

            async with trio.open_nursery() as nursery:  # a burst: all at once
                for _ in range(BURST):
                    nursery.start_soon(initialize, tokens["alice"])
            statuses = sorted(r.status_code for r in replies)
            assert statuses == [200] * PER_PRINCIPAL + [429] * (BURST - PER_PRINCIPAL), \
                [(r.status_code, r.text) for r in replies]
            alice = [r.headers["mcp-session-id"] for r in replies if r.status_code == 200]
            refused = next(r for r in replies if r.status_code == 429)
            assert int(refused.headers["retry-after"]) >= 1
            error = refused.json()["error"]
            assert error["code"] == -32002
            assert error["data"]["limit"] == f"servers.{SERVER}.max_children_per_principal"
            assert error["data"]["cap"] == PER_PRINCIPAL

            # Bob is not affected: he gets a session and the demo server's answers.
            opened = await http.post(url, json=INIT, headers=headers(tokens["bob"]))
            assert opened.status_code == 200, opened.text
            bob = opened.headers["mcp-session-id"]
            assert "web-01" in await list_vms(http, url, tokens["bob"], bob)
            # Alice's own sessions still work; closing one gives her a slot back.
            assert "web-01" in await list_vms(http, url, tokens["alice"], alice[1])
            gone = await http.delete(url, headers=headers(tokens["alice"], alice[0]))
            assert gone.status_code == 204
            again = await http.post(url, json=INIT, headers=headers(tokens["alice"]))
            assert again.status_code == 200, again.text
            assert (await http.post(url, json=INIT, headers=headers(tokens["alice"]))
                    ).status_code == 429
            assert "session_refused" in log.read_text()

        await stop_gracefully(proc, log)  # flushes the audit trail
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)

    def timeline(principal: str) -> list[dict[str, Any]]:
        out = subprocess.run([*mcpwall_argv(), "audit", "timeline", str(tmp_path / "audit.db"),
                              "--principal", principal, "--json"],
                             capture_output=True, text=True, check=True, timeout=60)
        return list(json.loads(out.stdout))

    refusals = [row for row in timeline("alice") if row["kind"] == "session_refused"]
    assert len(refusals) == BURST - PER_PRINCIPAL + 1, refusals
    for row in refusals:
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
        assert row["server"] == SERVER
        assert detail["reason"] == "principal_children" and detail["cap"] == PER_PRINCIPAL
        assert detail["limit"] == f"servers.{SERVER}.max_children_per_principal"
        assert detail["status"] == 429
    assert not [row for row in timeline("bob") if row["kind"] == "session_refused"]
