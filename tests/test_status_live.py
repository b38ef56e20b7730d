"""`mcpwall status` against a running `serve` and a running `wrap` (real processes)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import trio
from conftest import mcpwall_argv
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from sdk_scenarios import stdio_session
from serve_process import start_serve, stop_gracefully

pytestmark = pytest.mark.slow
ROOT = str(Path(__file__).resolve().parents[1])

POLICY = {"version": "1", "default": "deny", "tools": {
    "vm_management": {"action": "allow"},
    "snapshot_management": {"action": "deny", "reason": "no snapshots here"}}}


async def _calls(session: ClientSession, allowed: int) -> None:
    for _ in range(allowed):
        assert not (await session.call_tool("vm_management", {"action": "list"})).is_error
    assert (await session.call_tool("snapshot_management", {"action": "list"})).is_error


def _denied_rule(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (rule,) = conn.execute("SELECT rule FROM calls WHERE decision = 'deny'").fetchone()
    return str(rule)


async def test_status_shows_serve_and_wrap_with_their_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "registry"
    monkeypatch.setenv("MCPWALL_REGISTRY", str(registry))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    config = tmp_path / "mcpwall.toml"
    config.write_text("\n".join([
        "[audit]", 'path = "serve-audit.db"', "",
        "[policy]", f"files = [{json.dumps(str(policy))}]", "",
        "[servers.demo]", 'transport = "stdio"', f"command = {json.dumps(sys.executable)}",
        'args = ["-m", "firewall.demo"]', ""]))
    wrap_db = tmp_path / "wrap-audit.db"
    log = tmp_path / "serve.log"
    proc, base = await start_serve(tmp_path, config, log)
    try:
        async with (
            streamable_http_client(f"{base}/servers/demo/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await _calls(session, allowed=2)
        wrap = [*mcpwall_argv(), "wrap", "--policy", str(policy), "--audit-db", str(wrap_db),
                "--server-name", "demo-wrapped", "--", sys.executable, "-m", "firewall.demo"]
        env = {**os.environ, "PYTHONPATH": ROOT}
        async with stdio_session(wrap, env=env) as session:
            await _calls(session, allowed=3)
            await trio.sleep(0.5)  # the serve writer's group commit
            done = await trio.run_process([*mcpwall_argv(), "status", "--json"],
                                          capture_stdout=True, capture_stderr=True, check=False)
        after = await trio.run_process([*mcpwall_argv(), "status", "--json"],
                                       capture_stdout=True, capture_stderr=True, check=False)
    finally:
        await stop_gracefully(proc, log)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    by_kind = {i["kind"]: i for i in doc["instances"]}
    assert sorted(by_kind) == ["serve", "wrap"]
    serve, wrapped = by_kind["serve"], by_kind["wrap"]
    assert serve["pid"] == proc.pid and serve["servers"] == ["demo"]
    assert serve["listen"] == [base] and serve["audit"] == str(tmp_path / "serve-audit.db")
    assert wrapped["servers"] == ["demo-wrapped"] and wrapped["audit"] == str(wrap_db)
    for item, allowed, db in ((serve, 2, tmp_path / "serve-audit.db"), (wrapped, 3, wrap_db)):
        act = item["activity"]
        calls = allowed + 1 + 2  # + the denied call, initialize and tools/list (SDK's check)
        assert act["denials"] == 1 and act["rate_limited"] == 0, act
        assert calls - 1 <= act["calls"] <= calls + 1, act  # the SDK may skip tools/list
        assert act["denial_rate"] == round(1 / act["calls"], 4)
        assert act["top_rules"] == [{"rule": _denied_rule(db), "refusals": 1}]
        (recent,) = act["recent_refusals"]
        assert recent["target"] == "snapshot_management" and recent["decision"] == "deny"
    # the wrap has gone: only serve is left
    assert after.returncode == 0
    assert [i["kind"] for i in json.loads(after.stdout)["instances"]] == ["serve"]
    # serve stopped: its entry went with it, and --audit still reads its trail
    gone = await trio.run_process([*mcpwall_argv(), "status", "--json", "--audit",
                                   str(tmp_path / "serve-audit.db")],
                                  capture_stdout=True, check=False)
    assert gone.returncode == 0
    doc = json.loads(gone.stdout)
    assert doc["instances"] == [] and doc["audits"][0]["activity"]["denials"] == 1
    assert list(registry.glob("*.json")) == []
