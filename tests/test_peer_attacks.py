"""Attacks by a hostile client or server against the mediation promise, on real processes.

The promise (docs/security.md): a peer executes exactly what mcpwall decided
and recorded, in either direction; one message or session never takes the
process down. Each test here is an attack that once broke it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.fixtures import conformance_harness as harness
from tests.mediation_harness import (
    NODE22,
    NODE_SDK,
    _Lines,
    close_and_wait,
    mcpwall_serve,
    node_available,
)

FIXTURES: Final = Path(__file__).resolve().parent / "fixtures"
HOSTILE_HTTP: Final = FIXTURES / "hostile_http_upstream.py"
TS_CLIENT: Final = FIXTURES / "recording_client.mjs"
FIRST_WINS: Final = FIXTURES / "first_wins_server.py"
PROTOCOL: Final = "2025-06-18"


def decisions(audit: Path, **where: str) -> list[dict[str, Any]]:
    """Decision events of the audit trail matching ``where`` (column = value)."""
    if not audit.exists():
        return []
    db = sqlite3.connect(audit)
    db.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM events WHERE kind = 'decision'"
        for column in where:
            sql += f" AND {column} = ?"
        return [dict(r) for r in db.execute(sql, tuple(where.values()))]
    finally:
        db.close()


def recorded(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def hostile_http_upstream(work: Path, mode: str) -> Iterator[str]:
    port = harness.free_port()
    log = work / f"hostile-{mode}.log"
    with harness.background([sys.executable, str(HOSTILE_HTTP), str(port), mode], log) as proc:
        harness.wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp"


def recorded_wrap(argv: list[str], tmp_path: Path, record: Path) -> subprocess.Popen[bytes]:
    """``argv`` (an ``mcpwall wrap``) with pipes, its log in tmp_path, the record file set."""
    with (tmp_path / "wrap.log").open("ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                env={**os.environ, "RECORD_FILE": str(record)}, cwd=tmp_path)


def gateway_toml(port: int, policy: Path, audit: Path, *server: str) -> str:
    """A gateway config with approvals off and one server ``rec`` (its ``server`` lines)."""
    return "\n".join([
        "[listen]", 'host = "127.0.0.1"', f"port = {port}", "upstream_timeout_seconds = 5", "",
        "[policy]", f"files = [{json.dumps(str(policy))}]", "",
        "[audit]", f"path = {json.dumps(str(audit))}", "",
        "[approvals]", "enabled = false", "",
        "[log]", 'level = "warning"', "",
        "[servers.rec]", *server, ""])


def serve_toml(port: int, policy: Path, audit: Path, url: str) -> str:
    return gateway_toml(port, policy, audit, 'transport = "http"', f"url = {json.dumps(url)}")


# -- 1. GET answered as JSON: raw bytes to the client, undecided -----------------------


@pytest.mark.slow
@pytest.mark.skipif(not node_available(), reason="needs the TypeScript SDK and Node 22")
def test_a_get_answered_as_json_cannot_carry_undecided_requests_to_a_ts_client(
        tmp_path: Path) -> None:
    """An HTTP upstream answers the session's GET stream with ``200
    application/json`` whose body is in event-stream syntax (a
    ``sampling/createMessage`` and a ``roots/list`` request). mcpwall relays
    a JSON GET body as it came, without the mediator; the TypeScript SDK
    client reads every 2xx GET body as an event stream and runs both
    requests, though the policy denies both methods and no decision exists.
    """
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "version": "1", "default": "allow",
        "methods": {"sampling/createMessage": {"action": "deny", "reason": "no sampling"},
                    "roots/list": {"action": "deny", "reason": "no roots"}}}))
    audit, ran = tmp_path / "audit.db", tmp_path / "ran.jsonl"
    with hostile_http_upstream(tmp_path, "get-json") as url:
        port = harness.free_port()
        with mcpwall_serve(tmp_path, serve_toml(port, policy, audit, url), port) as endpoint:
            out = subprocess.run(
                [str(NODE22), str(TS_CLIENT), endpoint, "2"], capture_output=True, timeout=60,
                env={**os.environ, "MCP_SDK_DIR": str(NODE_SDK), "RECORD_FILE": str(ran)})
    assert b"connected" in out.stdout, out.stderr.decode(errors="replace")
    executed = recorded(ran)
    decided = [d["method"] for d in decisions(audit, direction="server")]
    assert executed == [], (
        f"the client ran server requests the policy denies, with decisions {decided}: "
        f"{executed}")


# -- 2. A client response with a duplicate "method": a first-wins server runs a call ----


@pytest.mark.slow
def test_a_client_response_with_a_duplicate_method_cannot_become_a_call(
        tmp_path: Path) -> None:
    """The server asks the client a ``ping`` (id ``srv-ping``). The client
    answers with ``{"jsonrpc":"2.0","id":"srv-ping","method":"tools/call",
    "params":{"name":"danger"},"method":null,"result":{}}``: to mcpwall
    (last member wins) a response to ``srv-ping``, relayed with its bytes
    unchanged; to a server whose parser keeps the first member, a
    ``tools/call`` of ``danger``, which the policy denies and nobody decided.
    """
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow",
                                  "tools": {"danger": {"action": "deny", "reason": "never"}}}))
    audit, record = tmp_path / "audit.db", tmp_path / "record.jsonl"
    argv = [sys.executable, "-m", "firewall", "wrap", "--policy", str(policy),
            "--audit-db", str(audit), "--server-name", "rec", "--",
            sys.executable, str(FIRST_WINS)]
    proc = recorded_wrap(argv, tmp_path, record)
    assert proc.stdin is not None
    try:
        lines = _Lines(proc.stdout)

        def write(data: bytes) -> None:
            assert proc.stdin is not None
            proc.stdin.write(data + b"\n")
            proc.stdin.flush()

        write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "attacker", "version": "1"}}}).encode())
        assert lines.wait_for_id(1, 20) is not None
        write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        assert lines.wait_for_id("srv-ping", 20) is not None, "the server's ping never came"
        write(b'{"jsonrpc":"2.0","id":"srv-ping","method":"tools/call",'
              b'"params":{"name":"danger","arguments":{"rm":"-rf /"}},'
              b'"method":null,"result":{}}')
        write(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}')
        assert lines.wait_for_id(2, 20) is not None, "the barrier call was not answered"
        time.sleep(0.2)
    finally:
        close_and_wait(proc)
    executed = [c["tool"] for c in recorded(record)]
    allowed = [d["tool"] for d in decisions(audit, method="tools/call", decision="allow")]
    assert executed == allowed == ["echo"], (
        f"server executed {executed}; the audit trail allowed {allowed}")


# -- 3. An SSE field the parser cannot convert: the call is never answered -------------


def _post(http: Any, url: str, body: bytes, session: str | None = None,
          timeout: float = 20) -> Any:
    headers = {"content-type": "application/json",
               "accept": "application/json, text/event-stream", "mcp-protocol-version": PROTOCOL}
    if session:
        headers["mcp-session-id"] = session
    return http.post(url, content=body, headers=headers, timeout=timeout)


@pytest.mark.slow
def test_an_sse_retry_of_5000_digits_does_not_leave_a_call_unanswered(tmp_path: Path) -> None:
    """An HTTP upstream answers an allowed ``tools/call`` with one event: its
    answer, and ``retry: 999...`` (5,000 digits). ``SSEParser._field`` calls
    ``int()`` on it, which raises ValueError past 4,300 digits; the relay
    catches only UpstreamError, so the request fails as a whole: the call ran
    upstream, the client gets an empty event stream (neither the answer nor an
    error), and the trail has its decision but no outcome.
    """
    import httpx

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow"}))
    audit = tmp_path / "audit.db"
    with hostile_http_upstream(tmp_path, "sse-retry") as url:
        port = harness.free_port()
        with mcpwall_serve(tmp_path, serve_toml(port, policy, audit, url), port) as endpoint, \
                httpx.Client(timeout=20) as http:
            init = _post(http, endpoint, json.dumps({
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": PROTOCOL, "capabilities": {},
                    "clientInfo": {"name": "attacker", "version": "1"}}}).encode())
            session = init.headers["mcp-session-id"]
            _post(http, endpoint, b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                  session)
            try:
                answer = _post(http, endpoint, b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
                               b'"params":{"name":"echo"}}', session, timeout=8)
                status, text = answer.status_code, answer.text
            except httpx.ReadTimeout:  # a kept-alive connection: the stream never ends
                status, text = 0, "(no end of the response within 8 s)"
    datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    answered = [json.loads(d) for d in datas if d and json.loads(d).get("id") == 2]
    call = decisions(audit, method="tools/call")
    db = sqlite3.connect(audit)
    outcomes = db.execute("SELECT status FROM events WHERE kind = 'outcome' AND call_id = ?",
                          (call[0]["call_id"],)).fetchall()
    db.close()
    assert answered and outcomes, (
        f"HTTP {status} body {text[:200]!r}; outcomes {outcomes}")


# -- 4. The replayed handshake of a restarted child: mcpwall's own bytes break framing --


def stdio_toml(port: int, policy: Path, audit: Path, record: Path) -> str:
    return gateway_toml(port, policy, audit, 'transport = "stdio"',
                        f"command = {json.dumps(sys.executable)}",
                        f"args = [{json.dumps(str(FIRST_WINS))}]",
                        f"env = {{ RECORD_FILE = {json.dumps(str(record))} }}")


@pytest.mark.slow
@pytest.mark.parametrize("name", [b"ab", b"a\\u2028b"], ids=["plain", "u2028"])
def test_a_restarted_child_gets_the_handshake_whatever_the_client_info(
        tmp_path: Path, name: bytes) -> None:
    """The client's ``initialize`` names itself ``"a\\u2028b"`` (escaped, as
    JSON allows). It is forwarded in canonical form, the escape kept. The
    child dies; mcpwall restarts it and replays the handshake, re-encoding the
    initialize with ``jsonrpc.encode``, which writes U+2028 raw:
    ``Outbound.own`` refuses the bytes with ValueError, which nothing catches
    in ``StdioSession._restarted``, so the session fails
    (``session_failed``) instead of going on as docs/operations say. (The
    ``plain`` case shows the restart works otherwise.)
    """
    import httpx

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow"}))
    audit, record = tmp_path / "audit.db", tmp_path / "record.jsonl"
    port = harness.free_port()
    with mcpwall_serve(tmp_path, stdio_toml(port, policy, audit, record), port) as endpoint, \
            httpx.Client(timeout=20) as http:
        init = _post(http, endpoint, b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":'
                     b'{"protocolVersion":"2025-06-18","capabilities":{},'
                     b'"clientInfo":{"name":"' + name + b'","version":"1"}}}')
        assert init.status_code == 200, init.text
        session = init.headers["mcp-session-id"]
        _post(http, endpoint, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', session)
        crashed = _post(http, endpoint, b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
                        b'"params":{"name":"crash"}}', session)
        assert b"-32010" in crashed.content, crashed.text  # the child died: Mediator.unanswered
        time.sleep(1.5)  # the first restart waits 0.5 s
        after = _post(http, endpoint, b'{"jsonrpc":"2.0","id":3,"method":"tools/call",'
                      b'"params":{"name":"echo"}}', session)
        log = (tmp_path / "mcpwall.log").read_text(errors="replace")
    assert after.status_code == 200 and b"executed echo" in after.content, (
        f"HTTP {after.status_code} {after.text[:200]!r}; session_failed logged: "
        f"{'session_failed' in log}")


# -- 5. Two calls with one id in flight: the trail pins one call's answer on the other --


@pytest.mark.slow
def test_two_calls_in_flight_with_one_id_each_get_their_own_outcome(tmp_path: Path) -> None:
    """Through ``wrap``, the client sends ``tools/call echo`` and ``tools/call
    danger`` with the same id 7, both allowed. Both are forwarded; the
    mediator keeps one pending entry per id, so echo's answer is recorded as
    danger's outcome, echo gets no outcome at all, and danger's real answer is
    dropped as unmatched. (The HTTP front refuses an id in flight; ``wrap``
    and the mediator do not.)
    """
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow"}))
    audit, record = tmp_path / "audit.db", tmp_path / "record.jsonl"
    argv = [sys.executable, "-m", "firewall", "wrap", "--policy", str(policy),
            "--audit-db", str(audit), "--server-name", "rec", "--",
            sys.executable, str(FIRST_WINS)]
    lines_in = [
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "attacker", "version": "1"}}}).encode(),
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}',
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"danger"}}',
        b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo"}}']
    proc = recorded_wrap(argv, tmp_path, record)
    assert proc.stdin is not None
    try:
        lines = _Lines(proc.stdout)
        proc.stdin.write(lines_in[0] + b"\n")
        proc.stdin.flush()
        assert lines.wait_for_id(1, 20) is not None
        proc.stdin.write(b"\n".join(lines_in[1:]) + b"\n")
        proc.stdin.flush()
        assert lines.wait_for_id(8, 20) is not None, "the barrier call was not answered"
        time.sleep(0.2)
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.wait(timeout=15)
    db = sqlite3.connect(audit)
    rows = db.execute(
        "SELECT d.tool, COUNT(o.seq) FROM events d LEFT JOIN events o "
        "ON o.kind = 'outcome' AND o.call_id = d.call_id "
        "WHERE d.kind = 'decision' AND d.method = 'tools/call' AND d.decision = 'allow' "
        "GROUP BY d.call_id ORDER BY d.seq").fetchall()
    db.close()
    executed = [c["tool"] for c in recorded(record)]
    # Either fix will do: the second id-7 call refused, or each call its own outcome.
    assert executed == [tool for tool, _ in rows], f"executed {executed}, allowed {rows}"
    assert all(n == 1 for _, n in rows), f"outcomes per allowed call: {rows}"
