"""`mcpwall wrap` end to end: the real SDK client, real servers, real processes.

Each test runs the same scenario directly against a server and through
`mcpwall wrap`, and requires equal results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mcpwall_argv, node_tool, venv_tool
from sdk_scenarios import SAMPLING_REPLY, everything_scenario, stdio_session, time_scenario

pytestmark = pytest.mark.slow


def wrapped(argv: list[str], *extra: str) -> list[str]:
    return [*mcpwall_argv(), "wrap", *extra, "--", *argv]


async def test_server_everything_same_through_wrap() -> None:
    server = [node_tool("mcp-server-everything"), "stdio"]
    async with stdio_session(server) as session:
        direct = await everything_scenario(session)
    async with stdio_session(wrapped(server)) as session:
        through = await everything_scenario(session)
    assert through == direct
    assert "echo" in direct["tools"] and "Echo: hello through" in json.dumps(direct["echo"])
    assert len(direct["progress"]) >= 3  # progress notifications were relayed
    assert SAMPLING_REPLY in json.dumps(through["sampling"])  # sampling went to the client


async def test_mcp_server_time_same_through_wrap() -> None:
    server = [venv_tool("mcp-server-time")]
    async with stdio_session(server) as session:
        direct = await time_scenario(session)
    async with stdio_session(wrapped(server)) as session:
        through = await time_scenario(session)
    assert through == direct
    assert direct["bad_is_error"] is True
    assert "Asia/Tokyo" in json.dumps(direct["converted"])


def _raw_wrap(lines: list[bytes], server: list[str], timeout: float = 30
              ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(wrapped(server), input=b"".join(line + b"\n" for line in lines),
                          capture_output=True, timeout=timeout)


ECHO = Path(__file__).parent / "fixtures" / "echo_server.py"


def _replies(stdout: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_bad_input_answered_and_session_continues() -> None:
    proc = _raw_wrap([
        b"this is not json",
        b'{"jsonrpc":"2.0","id":7}',
        b'{"jsonrpc":"2.0","id":70,"method":"tools/call","params":{"name":"e\xff"}}',
        b'{"jsonrpc":"2.0","id":71,"method":"tools/call","params":{"name":"echo",'
        b'"arguments":{"x":"\x80"}}}',
        b'[{"jsonrpc":"2.0","id":8,"method":"ping"}]',
        b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo",'
        b'"arguments":{"x":1}}}',
    ], [sys.executable, str(ECHO)])
    assert proc.returncode == 0, proc.stderr
    replies = _replies(proc.stdout)
    assert replies[0] == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32700, "message": replies[0]["error"]["message"]}}  # type: ignore[index]
    assert replies[1]["id"] == 7 and replies[1]["error"]["code"] == -32600  # type: ignore[index]
    # invalid UTF-8 inside params: refused with the request's id, the session lives on
    assert replies[2]["id"] == 70 and replies[2]["error"]["code"] == -32602  # type: ignore[index]
    assert replies[3]["id"] == 71 and replies[3]["error"]["code"] == -32602  # type: ignore[index]
    assert replies[4]["error"]["code"] == -32600  # type: ignore[index]
    assert replies[5] == {"jsonrpc": "2.0", "id": 9, "result": {
        "echo": {"name": "echo", "arguments": {"x": 1}}}}


def test_oversized_line_refused_not_buffered() -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 5000 + b'"}}'
    proc = subprocess.run(
        [*mcpwall_argv(), "wrap", "--max-line-bytes", "1000", "--", sys.executable, str(ECHO)],
        input=big + b"\n" + b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n',
        capture_output=True, timeout=30)
    replies = _replies(proc.stdout)
    assert replies[0]["error"]["code"] == -32012  # type: ignore[index]
    assert "1000 bytes" in replies[0]["error"]["message"]  # type: ignore[index]
    assert replies[1]["id"] == 2 and "result" in replies[1]


def test_child_exit_answers_pending_and_exits_non_zero() -> None:
    dying = [sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit(3)"]
    proc = subprocess.Popen(wrapped(dying), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'{"jsonrpc":"2.0","id":"a","method":"tools/list"}\n')
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert proc.wait(timeout=30) == 3
    reply = json.loads(line)
    assert reply["id"] == "a" and reply["error"]["code"] == -32010
    assert "exited with code 3" in reply["error"]["message"]
    logs = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith(b"{")]
    assert any(entry["event"] == "upstream_died" for entry in logs)


def test_client_eof_ends_child_gracefully_then_forcefully() -> None:
    # A child that ignores stdin EOF and SIGTERM must still be gone when wrap exits.
    stubborn = [sys.executable, "-c",
                "import signal,time,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "print('ready', file=sys.stderr, flush=True); time.sleep(60)"]
    proc = subprocess.run(
        [*mcpwall_argv(), "wrap", "--terminate-grace", "0.5", "--", *stubborn], input=b"",
        capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x)["event"] for x in proc.stderr.splitlines() if x.startswith(b"{")]
    assert "upstream_terminate" in events


def test_child_stderr_goes_to_structured_log() -> None:
    noisy = [sys.executable, "-c", "import sys; print('disk almost full', file=sys.stderr)"]
    proc = subprocess.run(wrapped(noisy), input=b"", capture_output=True, timeout=30)
    entries = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith(b"{")]
    stderr_lines = [e for e in entries if e["event"] == "upstream_stderr"]
    assert stderr_lines and stderr_lines[0]["line"] == "disk almost full"
    assert stderr_lines[0]["server"] == Path(sys.executable).name
    assert "session" in stderr_lines[0]
    assert proc.stdout == b""  # nothing of it leaked into the protocol channel
