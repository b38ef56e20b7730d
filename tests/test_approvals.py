"""Hold for human approval, end to end: the SDK client calls through `mcpwall wrap`,
a person answers with `mcpwall approvals`, the audit trail records both verdicts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from conftest import ROOT, mcpwall_argv
from mcp.client.session import ClientSession
from sdk_scenarios import stdio_session

from firewall.cli import main
from firewall.gateway.approvals.desk import ApprovalError, ApprovalRequest, open_store

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "firewall.demo"]
PACK = ROOT / "rules" / "virtualization.json"


def wrap(tmp: Path, *extra: str) -> list[str]:
    return [*mcpwall_argv(), "wrap", "--policy", str(PACK), "--audit-db", str(tmp / "audit.db"),
            "--approvals-db", str(tmp / "approvals.db"), *extra, "--", *DEMO]


async def held_request(db: Path) -> dict[str, object]:
    """Wait until the gateway has filed a request; return it as `approvals list` shows it."""
    with trio.fail_after(60):  # each look starts a process: slow on a loaded machine
        while True:
            if await trio.Path(db).exists():
                out = await trio.run_process(
                    [*mcpwall_argv(), "approvals", "list", "--db", str(db), "--nl"],
                    capture_stdout=True)
                lines = out.stdout.decode().splitlines()
                if lines:
                    return json.loads(lines[0])  # type: ignore[no-any-return]
            await trio.sleep(0.1)


async def decide(db: Path, verb: str, ident: str, *options: str) -> None:
    """`mcpwall approvals VERB ID` as oncall-alice, with ``options`` (``--note``, ``--scope``)."""
    await trio.run_process([*mcpwall_argv(), "approvals", verb, str(ident), "--db", str(db),
                            "--by", "oncall-alice", *options], capture_stdout=True)


DELETE_DB01 = {"action": "delete", "vm_name": "db-01"}


async def held_then(session: ClientSession, db: Path, verb: str, *options: str,
                    meanwhile: Callable[[], Awaitable[None]] | None = None
                    ) -> tuple[Any, dict[str, object]]:
    """Call delete (held), run ``meanwhile``, give the verdict (with ``options``);
    return (result, request)."""
    result: list[Any] = []

    async def call() -> None:
        result.append(await session.call_tool("vm_management", DELETE_DB01))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        request = await held_request(db)
        if meanwhile is not None:
            await meanwhile()
        await decide(db, verb, str(request["id"]), *options)
    return result[0], request


async def test_approved_call_goes_through_and_both_verdicts_are_audited(tmp_path: Path) -> None:
    async with stdio_session(wrap(tmp_path)) as session:

        async def not_blocked() -> None:
            # The session is not blocked while the call waits for a person.
            listing = await session.call_tool("vm_management", {"action": "list"})
            assert "db-01" in json.dumps(listing.model_dump(mode="json"))

        deleted, request = await held_then(session, tmp_path / "approvals.db", "approve",
                                           "--note", "ticket OPS-1", meanwhile=not_blocked)
    assert request["target"] == "vm_management" and request["status"] == "pending"
    assert request["arguments"] == DELETE_DB01
    assert not deleted.is_error, deleted
    assert "db-01" in json.dumps(deleted.model_dump(mode="json"))
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        rows = conn.execute("SELECT call_id, decision, reason FROM events WHERE kind = 'decision'"
                            " AND tool = 'vm_management' AND arguments LIKE '%delete%'"
                            " ORDER BY seq").fetchall()
        assert [r[1] for r in rows] == ["pending", "approved"]
        assert rows[0][0] == rows[1][0] and "oncall-alice" in rows[1][2]
        status = conn.execute("SELECT status FROM events WHERE kind = 'outcome' AND call_id = ?",
                              (rows[0][0],)).fetchone()
        assert status == ("ok",)
        detail = json.loads(conn.execute(
            "SELECT detail FROM events WHERE kind = 'approval'").fetchone()[0])
        assert detail["verdict"] == "approved" and detail["note"] == "ticket OPS-1"


async def test_rejected_call_is_refused_with_the_reason(tmp_path: Path) -> None:
    async with stdio_session(wrap(tmp_path)) as session:
        refused, _ = await held_then(session, tmp_path / "approvals.db", "reject",
                                     "--note", "use a snapshot")
    assert refused.is_error
    assert "rejected by oncall-alice: use a snapshot" in refused.content[0].text


async def test_nobody_decides_the_call_expires(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[approvals]\npath = "{tmp_path / "approvals.db"}"\n'
                      'timeout_seconds = 1\npoll_seconds = 0.1\n'
                      f'[audit]\npath = "{tmp_path / "audit.db"}"\n')
    argv = [*mcpwall_argv(), "wrap", "--config", str(config), "--policy", str(PACK), "--",
            *DEMO]
    async with stdio_session(argv) as session:
        with trio.fail_after(15):
            expired = await session.call_tool("vm_management",
                                              {"action": "delete", "vm_name": "db-01"})
    assert expired.is_error and "within 1 s" in expired.content[0].text  # type: ignore[union-attr]
    with open_store(tmp_path / "approvals.db") as store:
        (request,) = store.list(None)
        assert request.status == "expired"
        with pytest.raises(ApprovalError, match="already expired"):
            store.decide(request.id, "approved", "late-bob")


def test_cli_refuses_unknown_and_decided_requests(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with open_store(db) as store:
        store.add(ApprovalRequest(id="abc", created_ns=1, expires_ns=2**62, instance="i",
                                  session="s", principal="p", grant="g", server="vm",
                                  method="tools/call", target="t", arguments={"x": 1}))
    runner = CliRunner()
    ok = runner.invoke(main, ["approvals", "approve", "abc", "--db", str(db), "--by", "me"])
    assert ok.exit_code == 0 and "approved by me" in ok.output
    again = runner.invoke(main, ["approvals", "reject", "abc", "--db", str(db)])
    assert again.exit_code == 1 and "already approved" in again.output
    missing = runner.invoke(main, ["approvals", "approve", "nope", "--db", str(db)])
    assert missing.exit_code == 1 and "no approval request 'nope'" in missing.output
    listed = runner.invoke(main, ["approvals", "list", "--all", "--db", str(db)])
    assert listed.exit_code == 0 and "abc" in listed.output
    absent = runner.invoke(main, ["approvals", "list", "--db", str(tmp_path / "none.db")])
    assert absent.exit_code == 2


def test_wrap_without_a_desk_refuses_held_calls_at_once(tmp_path: Path) -> None:
    line = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"vm_management",'
            b'"arguments":{"action":"delete","vm_name":"db-01"}}}\n')
    proc = subprocess.run([*mcpwall_argv(), "wrap", "--policy", str(PACK), "--", *DEMO],
                          input=line, capture_output=True, timeout=30)
    reply = json.loads(proc.stdout.splitlines()[0])
    assert reply["result"]["isError"] is True
    assert "approval" in reply["result"]["content"][0]["text"].lower()


def test_documented_policy_compiles_and_holds_delete() -> None:
    import re

    from firewall.policy.compiler import compile_policy
    from firewall.policy.decision import Caller
    from firewall.policy.engine import Engine
    from firewall.policy.schema import parse_policy
    from firewall.protocol.mcp import Call

    doc = (ROOT / "docs" / "approvals.md").read_text()
    desk_block, client_block = re.findall(r"```json\n(.*?)```", doc, re.S)
    engine = Engine(compile_policy(parse_policy(desk_block, "approvals.md")))
    held = engine.decide(Call("tools/call", tool="vm_management",
                              arguments={"action": "delete"}), Caller(), "vm", "s")
    assert held.action == "pending" and held.reason == "deleting a VM destroys its disks"
    assert held.approval == "desk"
    engine = Engine(compile_policy(parse_policy(client_block, "approvals.md")))
    asked = engine.decide(Call("tools/call", tool="vm_management",
                               arguments={"action": "stop"}), Caller(), "vm", "s")
    assert asked.action == "pending" and asked.approval == "client"
    # The scopes the doc shows are the ones the CLI takes.
    from firewall.gateway.approvals.desk import parse_scope

    scopes = re.findall(r"--scope (\S+)", doc)
    assert scopes and all(parse_scope(s) for s in scopes)


async def test_held_call_over_http_waits_for_the_verdict(tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client
    from serve_process import start_serve, stop_serve

    config = tmp_path / "gw.toml"
    config.write_text(
        f'[policy]\nfiles = ["{PACK}"]\n'
        f'[audit]\npath = "{tmp_path / "audit.db"}"\n'
        f'[approvals]\npath = "{tmp_path / "approvals.db"}"\npoll_seconds = 0.1\n'
        f'[servers.vm]\ntransport = "stdio"\ncommand = "{sys.executable}"\n'
        'args = ["-m", "firewall.demo"]\n')
    proc, base = await start_serve(tmp_path, config, tmp_path / "serve.log")
    try:
        async with (
            streamable_http_client(f"{base}/servers/vm/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            done, request = await held_then(session, tmp_path / "approvals.db", "approve",
                                                  "--note", "ok")
            assert request["server"] == "vm" and request["principal"] == "anonymous"
        assert not done.is_error
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)


def test_cancelled_held_call_is_withdrawn_and_gets_no_answer(tmp_path: Path) -> None:
    import time

    proc = subprocess.Popen(wrap(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b'{"jsonrpc":"2.0","id":"del","method":"tools/call","params":'
                         b'{"name":"vm_management","arguments":' + json.dumps(DELETE_DB01)
                         .encode() + b"}}\n")
        proc.stdin.flush()
        db = tmp_path / "approvals.db"
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the call was never held"
            if db.exists():
                with open_store(db) as store:
                    if store.list():
                        break
            time.sleep(0.1)
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/cancelled",'
                         b'"params":{"requestId":"del","reason":"user gave up"}}\n'
                         b'{"jsonrpc":"2.0","id":"p","method":"ping"}\n')
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        assert answer["id"] == "p"  # the session goes on; "del" is never answered
        # The desk records the withdrawal in its own time (a thread), which the ping's
        # answer may overtake: wait for the request to leave "pending".
        deadline = time.monotonic() + 30
        while True:
            with open_store(db) as store:
                (request,) = store.list(None)
            if request.status != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert request.status == "expired" and request.note == "the call was withdrawn"
    finally:
        proc.stdin.close()
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    assert b'"del"' not in rest
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        decisions = conn.execute("SELECT decision, reason FROM events WHERE kind = 'decision' "
                                 "AND tool = 'vm_management' ORDER BY seq").fetchall()
    assert decisions == [("pending", "deleting a VM destroys its disks"),
                         ("rejected", "cancelled by the client")]
