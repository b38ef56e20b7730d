"""`mcpwall wrap --upstream URL`: a stdio front to a Streamable HTTP server.

Real processes: the `mcp` SDK's stdio client launches `mcpwall wrap --upstream`,
in front of server-everything (streamableHttp mode) or the recording server
(the SDK's Streamable HTTP app, which writes down every call it executes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import mcpwall_argv, node_tool
from fixtures import conformance_harness as harness
from sdk_scenarios import SAMPLING_REPLY, everything_scenario, stdio_session

pytestmark = pytest.mark.slow

RECORDING = Path(__file__).parent / "fixtures" / "recording_server.py"
POLICY = {"version": "1", "default": "deny",
          "tools": {"echo": {"action": "allow"}, "danger": {"action": "deny",
                                                            "reason": "never here"}}}
TOKEN = "Bearer s3cret-for-the-test"


def wrapped(url: str, *extra: str) -> list[str]:
    return [*mcpwall_argv(), "wrap", "--upstream", url, *extra]


@contextlib.contextmanager
def recording_http(work: Path, *, token: str | None = None) -> Iterator[tuple[str, Path]]:
    """The recording server over Streamable HTTP; yields its URL and its record file."""
    port = harness.free_port()
    record = work / "calls.jsonl"
    env = {"RECORD_FILE": str(record)}
    if token is not None:
        env["REQUIRE_AUTHORIZATION"] = token
    log = work / "recording.log"
    with harness.background([sys.executable, str(RECORDING), "--port", str(port)], log,
                            env=env) as proc:
        harness.wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp", record


def _records(record: Path) -> list[dict[str, object]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


async def test_server_everything_over_http_same_as_direct(tmp_path: Path) -> None:
    node_tool("mcp-server-everything")
    async with stdio_session(harness.everything_stdio_argv()) as session:
        direct = await everything_scenario(session)
    with harness.everything_http(tmp_path) as url:
        async with stdio_session(wrapped(url)) as session:
            through = await everything_scenario(session)
    assert through == direct
    assert "echo" in through["tools"] and "Echo: hello through" in json.dumps(through["echo"])
    assert len(through["progress"]) >= 3  # notifications on the answer's event stream
    # sampling: a server->client request on the stream, answered by the client, POSTed back
    assert SAMPLING_REPLY in json.dumps(through["sampling"])


async def test_policy_header_and_audit_through_http_upstream(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    audit = tmp_path / "audit.db"
    with recording_http(tmp_path, token=TOKEN) as (url, record):
        argv = wrapped(url, "--header", f"Authorization: {TOKEN}", "--policy", str(policy),
                       "--audit-db", str(audit), "--server-name", "rec")
        async with stdio_session(argv) as session:
            tools = await session.list_tools()
            assert sorted(t.name for t in tools.tools) == ["echo"]  # filtered
            ok = await session.call_tool("echo", {"tag": "allowed"})
            assert not ok.is_error and "allowed" in json.dumps(ok.model_dump(mode="json"))
            denied = await session.call_tool("danger", {"tag": "refused"})
            assert denied.is_error and "never here" in json.dumps(denied.model_dump(mode="json"))
    # the server executed the allowed call and never saw the denied one
    assert [(r["tool"], r["arguments"]) for r in _records(record)] == [
        ("echo", {"tag": "allowed"})]
    with sqlite3.connect(audit) as db:
        rows = db.execute("SELECT tool, decision, status FROM calls WHERE method = 'tools/call' "
                          "ORDER BY ts_ns").fetchall()
    assert rows == [("echo", "allow", "ok"), ("danger", "deny", None)]


def test_without_the_header_the_upstream_refuses_and_the_call_is_answered(
        tmp_path: Path) -> None:
    with recording_http(tmp_path, token=TOKEN) as (url, record):
        proc = subprocess.run(wrapped(url), input=b"".join(line + b"\n" for line in [
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
            b'"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}',
        ]), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["id"] == 1 and reply["error"]["code"] == -32010
    assert "HTTP 401" in reply["error"]["message"]
    assert _records(record) == []


def test_unreachable_upstream_answers_each_call_and_lives_on(tmp_path: Path) -> None:
    port = harness.free_port()  # nothing listens there
    lines = [
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
        b'"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}',
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}',
        b'{"jsonrpc":"2.0","id":3,"method":"ping"}',
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(wrapped(f"http://127.0.0.1:{port}/mcp"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"".join(line + b"\n" for line in lines))
        proc.stdin.flush()
        replies = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert proc.poll() is None  # still there, waiting for the client
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(r["id"] for r in replies) == [1, 2, 3]
    for reply in replies:
        assert reply["error"]["code"] == -32010
        assert "connect_refused" in reply["error"]["message"]
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert "upstream_unreachable" in stderr and f"127.0.0.1:{port}" in stderr


@pytest.mark.parametrize("args, message", [
    (["--upstream", "ftp://x/mcp"], "http:// or https://"),
    (["--upstream", "http://127.0.0.1:1/mcp", "--header", "no colon"], "Name: value"),
    (["--upstream", "http://127.0.0.1:1/mcp", "--", "cat"], "not both"),
    (["--header", "A: b", "--", "cat"], "go with --upstream"),
    ([], "--upstream URL"),
])
def test_bad_upstream_options_are_usage_errors(args: list[str], message: str) -> None:
    proc = subprocess.run([*mcpwall_argv(), "wrap", *args], input=b"", capture_output=True,
                          timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.decode()
