"""The attacks that once got past mediation, replayed against real servers.

Each test drives a real ``mcpwall`` process (``wrap`` or ``serve``) with raw
bytes, in front of a real MCP server, and then checks two things: what the
server did (its state), and what the audit trail recorded. The invariant:
a server executes exactly the calls mcpwall decided and recorded.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import ROOT, mcpwall_argv
from serve_process import start_serve, stop_serve, tail

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "firewall.demo"]
VIRT = ROOT / "rules" / "virtualization.json"
GIT = ROOT / "rules" / "git.json"
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "attacker", "version": "1"}}}
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def msg(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def tool_call(rid: int | None, name: str, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call",
                           "params": {"name": name, "arguments": args}}
    if rid is not None:
        out["id"] = rid
    return out


def smuggle(outer_method: str, inner: dict[str, Any], sep: bytes, rid: int | None = None) -> bytes:
    """A valid JSON-RPC message whose params hold ``inner`` framed by ``sep``
    (whitespace for JSON, a line break for a reader that splits on it)."""
    head = {"jsonrpc": "2.0", "method": outer_method}
    if rid is not None:
        head["id"] = rid  # type: ignore[assignment]
    return msg(head)[:-1] + b',"params":{"x":' + sep + msg(inner) + sep + b"}}"


def rows(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


class Wrapped:
    """``mcpwall wrap`` as a raw stdio peer: lines in, lines out."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data + b"\n")

    async def answer(self, rid: int, seconds: float = 20) -> dict[str, Any]:
        """Read lines until the response to ``rid``; every line must be JSON."""
        assert self.proc.stdout is not None
        with trio.fail_after(seconds):
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    got = json.loads(line)
                    if got.get("id") == rid and "method" not in got:
                        return dict(got)
                chunk = await self.proc.stdout.receive_some(65536)
                assert chunk, "mcpwall wrap closed its stdout"
                self._buf += chunk


@asynccontextmanager
async def wrapped(argv: list[str], cwd: Path) -> AsyncIterator[Wrapped]:
    proc = await trio.lowlevel.open_process(
        [*mcpwall_argv(), "wrap", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=cwd)
    peer = Wrapped(proc)
    try:
        await peer.send(msg(INIT))
        assert "result" in await peer.answer(0)
        await peer.send(INITIALIZED)
        yield peer
    finally:
        assert proc.stdin is not None
        await proc.stdin.aclose()
        with trio.move_on_after(15):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()
            await proc.wait()


def text_of(answer: dict[str, Any]) -> str:
    return " ".join(c.get("text", "") for c in answer["result"]["content"])


async def test_a_bare_cr_cannot_smuggle_git_reset_into_a_python_sdk_server(
        tmp_path: Path) -> None:
    """The Python SDK reads stdin with universal newlines: a bare CR ends a line
    for it. ``git_reset`` (held for approval, no desk: refused) is framed by CRs
    inside an allowed ``ping``; the staged file must stay staged."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.org"],
                ["config", "user.name", "t"]):
        await trio.run_process(["git", *cmd], cwd=repo)
    (repo / "a.txt").write_text("one\n")
    await trio.run_process(["git", "add", "a.txt"], cwd=repo)
    db = tmp_path / "audit.db"
    server = [sys.executable, "-m", "mcp_server_git", "--repository", str(repo)]
    async with wrapped(["--policy", str(GIT), "--audit-db", str(db), "--", *server],
                       tmp_path) as peer:
        inner = tool_call(77, "git_reset", {"repo_path": str(repo)})
        await peer.send(smuggle("ping", inner, b"\r", rid=5))
        assert "result" in await peer.answer(5)  # the ping, and only the ping
        await peer.send(msg(tool_call(6, "git_status", {"repo_path": str(repo)})))
        status = await peer.answer(6)
        assert "a.txt" in text_of(status)
    staged = (await trio.run_process(["git", "diff", "--cached", "--name-only"], cwd=repo,
                                     capture_stdout=True)).stdout.decode().split()
    assert staged == ["a.txt"], "git_reset reached the server"
    calls = rows(db, "SELECT method, tool, decision FROM calls ORDER BY seq")
    assert ("tools/call", "git_reset") not in {(c["method"], c["tool"]) for c in calls}
    assert {"method": "ping", "tool": None, "decision": "allow"} in calls


async def test_an_lf_framed_call_inside_a_notification_cannot_reach_a_stdio_server(
        tmp_path: Path) -> None:
    """Over HTTP to a stdio child (the demo server): a notification whose params
    hold a LF-framed ``vm_management delete`` (held for approval) once ran on the
    server with no audit row. The VM must still exist."""
    db = tmp_path / "audit.db"
    config = tmp_path / "mcpwall.toml"
    config.write_text(f"""
[listen]
host = "127.0.0.1"
[audit]
path = "{db}"
[approvals]
enabled = false
[policy]
files = ["{VIRT}"]
[servers.vm]
transport = "stdio"
command = "{sys.executable}"
args = ["-m", "firewall.demo"]
""")
    log = tmp_path / "serve.log"
    proc, base = await start_serve(tmp_path, config, log)
    url = f"{base}/servers/vm/mcp"
    headers = {"accept": "application/json, text/event-stream",
               "content-type": "application/json"}
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            first = await http.post(url, content=msg(INIT), headers=headers)
            assert first.status_code == 200, first.text
            headers["mcp-session-id"] = first.headers["mcp-session-id"]
            assert (await http.post(url, content=INITIALIZED, headers=headers)).status_code == 202
            inner = tool_call(9, "vm_management", {"action": "delete", "vm_name": "db-01"})
            for sep in (b"\n", b"\r\n", b"\r"):
                attack = smuggle("notifications/initialized", inner, sep)
                answer = await http.post(url, content=attack, headers=headers)
                assert answer.status_code == 202, answer.text
            info = await http.post(url, content=msg(tool_call(
                10, "vm_management", {"action": "info", "vm_name": "db-01"})),
                headers={**headers, "accept": "application/json"})
            assert info.status_code == 200 and '\\"db-01\\"' in info.text, info.text
            assert "isError\":true" not in info.text, "the smuggled delete reached the server"
            # The same call sent plainly is held; with no desk it is refused.
            plain = await http.post(url, content=msg(inner), headers=headers)
            assert "nobody can approve it here" in plain.text
            # A message nested 100,000 deep is a 400, and serve goes on.
            bomb = b'{"jsonrpc":"2.0","id":11,"method":"ping","params":' + b"[" * 100_000 \
                + b"]" * 100_000 + b"}"
            refused = await http.post(url, content=bomb, headers=headers)
            assert refused.status_code == 400 and "nested deeper" in refused.text
        assert proc.poll() is None, tail(log)
    finally:
        await stop_serve(proc)
    decided = rows(db, "SELECT tool, decision, request_id FROM calls WHERE tool IS NOT NULL")
    assert [(d["tool"], d["decision"]) for d in decided] == [
        ("vm_management", "allow"), ("vm_management", "pending"),
        ("vm_management", "rejected")]


async def test_a_tools_call_without_an_id_is_refused_and_recorded(tmp_path: Path) -> None:
    """A request-shaped message with no id never reaches the server: it is
    recorded as a ``deny`` by rule ``protocol``; the VM is untouched."""
    db = tmp_path / "audit.db"
    async with wrapped(["--policy", str(VIRT), "--audit-db", str(db), "--", *DEMO],
                       tmp_path) as peer:
        await peer.send(msg(tool_call(None, "vm_management",
                                      {"action": "delete", "vm_name": "db-01"})))
        await peer.send(msg(tool_call(3, "vm_management",
                                      {"action": "info", "vm_name": "db-01"})))
        info = await peer.answer(3)
        assert not info["result"].get("isError") and "db-01" in text_of(info)
    calls = rows(db, "SELECT tool, decision, rule, request_id FROM calls ORDER BY seq")
    idless = [c for c in calls if c["request_id"] is None and c["tool"] == "vm_management"]
    assert idless == [{"tool": "vm_management", "decision": "deny", "rule": "protocol",
                       "request_id": None}]
    denials = rows(db, "SELECT tool FROM denials WHERE rule = 'protocol'")
    assert denials == [{"tool": "vm_management"}]


async def test_a_held_call_with_no_desk_is_recorded_as_refused_and_said_so(
        tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    async with wrapped(["--policy", str(VIRT), "--audit-db", str(db), "--", *DEMO],
                       tmp_path) as peer:
        await peer.send(msg(tool_call(4, "vm_management",
                                      {"action": "delete", "vm_name": "db-01"})))
        refused = await peer.answer(4)
        text = text_of(refused)
        assert refused["result"]["isError"] is True
        assert "Held for approval" not in text and "nobody can approve it here" in text
    (denial,) = rows(db, "SELECT decision, reason FROM denials")
    assert denial["decision"] == "rejected" and "no approval desk" in denial["reason"]
    stats = await trio.run_process([*mcpwall_argv(), "audit", "stats", str(db), "--json"],
                                   capture_stdout=True)
    report = json.loads(stats.stdout)
    (tool,) = [t for t in report["tools"] if t["name"] == "vm_management"]
    assert tool["denials"] == 1 and tool["allowed"] == 0  # audit stats sees the refusal


async def test_a_deeply_nested_message_is_refused_and_wrap_goes_on(tmp_path: Path) -> None:
    bomb = b"[" * 100_000 + b"]" * 100_000
    async with wrapped(["--policy", str(VIRT), "--", *DEMO], tmp_path) as peer:
        await peer.send(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
                        b'"vm_management","arguments":{"action":"list","x":' + bomb + b"}}}")
        await peer.send(b'{"jsonrpc":"2.0","method":"notifications/x","params":' + bomb + b"}")
        await peer.send(msg(tool_call(2, "vm_management", {"action": "list"})))
        assert not (await peer.answer(2))["result"].get("isError")
        assert peer.proc.poll() is None
