"""wrap mode with the audit trail and policy hot reload, through real processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import mcpwall_argv
from sdk_scenarios import stdio_session

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "firewall.demo"]


def policy(allow: list[str]) -> str:
    return json.dumps({"version": "1", "default": "deny",
                       "tools": {name: {"action": "allow"} for name in allow}})


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql))


async def test_every_call_has_decision_and_outcome_and_secrets_are_redacted(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    pol = tmp_path / "p.json"
    pol.write_text(policy(["vm_management"]))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(db), "--policy", str(pol),
            "--principal", "night-agent", "--grant", "g-7", "--", *DEMO]
    async with stdio_session(argv) as session:
        assert not (await session.call_tool("vm_management", {"action": "list"})).is_error
        refused = await session.call_tool("snapshot_management", {"action": "list"})
        assert refused.is_error
        await session.call_tool("vm_management", {"action": "info", "vm_name": "web-01",
                                                  "api_token": "sk-live-0123456789abcdefghij"})
    decisions = rows(db, "select * from events where kind = 'decision' and method = 'tools/call'"
                         " order by seq")
    assert [(d["tool"], d["decision"]) for d in decisions] == [
        ("vm_management", "allow"), ("snapshot_management", "deny"), ("vm_management", "allow")]
    assert {d["principal"] for d in decisions} == {"night-agent"}
    assert {d["grant"] for d in decisions} == {"g-7"}
    assert "sk-live" not in db.read_bytes().decode("latin-1")
    outcomes = {o["call_id"]: o["status"] for o in rows(db, "select * from events "
                                                            "where kind = 'outcome'")}
    assert outcomes[decisions[0]["call_id"]] == "ok"
    assert outcomes[decisions[2]["call_id"]] == "tool_error"  # unknown argument api_token
    assert decisions[1]["call_id"] not in outcomes  # refused: never forwarded
    kinds = [r["kind"] for r in rows(db, "select kind from events order by seq")]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert "policy_load" in kinds


async def test_policy_hot_reload_on_change_and_sighup_keeps_old_table_on_error(
    tmp_path: Path,
) -> None:
    pol = tmp_path / "p.json"
    pol.write_text(policy(["vm_management"]))
    db = tmp_path / "audit.db"
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(db), "--policy", str(pol), "--", *DEMO]
    async with stdio_session(argv) as session:
        assert (await session.call_tool("system_management", {"action": "host_info"})).is_error
        pol.write_text(policy(["vm_management", "system_management"]))
        ok = False
        with trio.fail_after(30):
            while not ok:
                await trio.sleep(0.2)
                res = await session.call_tool("system_management", {"action": "host_info"})
                ok = not res.is_error
        pol.write_text('{"version": "1", "default": "allow", "tols": {}}')  # a typo
        for pid in _wrap_pids():
            os.kill(pid, signal.SIGHUP)
        # Both the signal and the file watcher try the bad file: wait for their audit
        # events rather than for a fixed time a loaded machine may need more than.
        with trio.fail_after(30):
            while {"SIGHUP", "file_changed"} - reload_failures(db):  # noqa: ASYNC110 (another process)
                await trio.sleep(0.1)
        still = await session.call_tool("system_management", {"action": "host_info"})
        assert not still.is_error  # the old table is kept
        assert (await session.call_tool("storage_management",
                                        {"action": "list_disks"})).is_error
    kinds = [(r["kind"], r["detail"]) for r in rows(
        db, "select kind, detail from events where kind like 'policy%' order by seq")]
    assert [k for k, _ in kinds][:2] == ["policy_load", "policy_reload"]
    failed = [json.loads(d) for k, d in kinds if k == "policy_reload_failed"]
    assert failed and "tols" in failed[0]["error"]
    assert {"SIGHUP", "file_changed"} <= {t for f in failed
                                          for t in (f["trigger"], *f.get("coalesced", ()))}


def reload_failures(db: Path) -> set[str]:
    """The triggers of the failed policy reloads recorded so far (those that
    joined another's reload, as it ran, under ``coalesced``)."""
    details = [json.loads(d) for (d,) in rows(
        db, "select detail from events where kind = 'policy_reload_failed'")]
    return {t for d in details for t in (d["trigger"], *d.get("coalesced", ()))}


def _wrap_pids() -> list[int]:
    """mcpwall wrap processes that are children of this test process."""
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"wrap" in cmdline and b"firewall" in cmdline:
            pids.append(int(entry.name))
    return pids


async def test_a_catastrophic_policy_pattern_refuses_the_hostile_call_and_stalls_no_other(
    tmp_path: Path,
) -> None:
    # `(a+)+$` on vm_name and `(a|a)*$` (exponential for any backtracking
    # engine) on filter: with `re`, either hostile value would hold the event
    # loop for minutes. Here each is refused (audited, logged without the
    # value) while a normal call in flight at the same time is answered.
    db, log = tmp_path / "audit.db", tmp_path / "stderr.log"
    (tmp_path / "p.json").write_text(json.dumps({"version": "1", "default": "deny", "tools": {
        "vm_management": {"require": {
            "vm_name": {"optional": True, "pattern": "(a+)+$|[a-z0-9-]{1,32}"},
            "filter": {"optional": True, "not_pattern": "(a|a)*$"}}}}}))
    (tmp_path / "mcpwall.toml").write_text(
        '[policy]\nfiles = ["p.json"]\nregex_timeout_ms = 5\n')
    hostile = "a" * 30 + "!"
    argv = ["sh", "-c", f'exec "$@" 2>>"{log}"', "sh", *mcpwall_argv(), "wrap",
            "--config", str(tmp_path / "mcpwall.toml"), "--audit-db", str(db), "--", *DEMO]
    answers: dict[str, Any] = {}
    async with stdio_session(argv) as session:
        async def call(key: str, args: dict[str, Any]) -> None:
            answers[key] = await session.call_tool("vm_management", args)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "timeout", {"action": "list", "filter": hostile})
                nursery.start_soon(call, "nested", {"action": "info", "vm_name": hostile})
                nursery.start_soon(call, "normal", {"action": "list"})
    assert not answers["normal"].is_error
    assert answers["timeout"].is_error and answers["nested"].is_error
    assert "argument check timed out" in answers["timeout"].content[0].text
    decisions = rows(db, "select * from events where kind = 'decision'"
                         " and method = 'tools/call'")
    assert sorted(d["decision"] for d in decisions) == ["allow", "deny", "invalid_arguments"]
    [denied] = [d for d in decisions if d["decision"] == "deny"]
    assert "argument check timed out" in denied["reason"]
    text = log.read_text()
    assert "policy_regex_timeout" in text and "tools.vm_management" in text
    assert hostile not in text
