"""``mcpwall wrap --bridge`` carries a 2025 stdio server's own requests to a
2026-07-28 client (firewall/gateway/front/wrap_bridge.py rule 5), with real
processes: the `mcp` SDK 2.3 stdio client pinned to 2026-07-28 (and a raw
JSON-RPC client on the same pipes) through ``mcpwall wrap --bridge`` to
tests/fixtures/asking_server.py, whose tools ask for input the 2025 way during
the call (elicitation, sampling, roots/list). The call is answered with an
InputRequiredResult carrying the server's request and a sealed requestState;
the client's retry delivers its answer to the server's waiting request. The
policy decides each input request; a forged, replayed or expired state is a
new call; the audit links the rounds."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).parent / "fixtures" / "asking_server.py"
POLICY = {"version": "1", "default": "allow",
          "methods": {"sampling/createMessage": {"action": "deny",
                                                 "reason": "no use of the client's model"}}}
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}}


def _argv(work: Path, timeout: float | None = None) -> list[str]:
    (work / "p.json").write_text(json.dumps(POLICY))
    extra: list[str] = []
    if timeout is not None:
        (work / "mcpwall.toml").write_text(f"[listen]\nupstream_timeout_seconds = {timeout}\n")
        extra = ["--config", str(work / "mcpwall.toml")]
    return [*mcpwall_argv(), "wrap", "--audit-db", str(work / "audit.db"), "--policy",
            str(work / "p.json"), "--principal", "alice", "--server-name", "asking",
            *extra, "--bridge", "--", sys.executable, str(FIXTURE)]


def _params(work: Path) -> StdioServerParameters:
    argv = _argv(work)
    return StdioServerParameters(command=argv[0], args=argv[1:],
                                 env={"ASKING_RECORD_FILE": str(work / "asked.jsonl")})


def _rows(work: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(f"file:{work / 'audit.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql, args))


def _executed(work: Path) -> list[dict[str, Any]]:
    path = work / "asked.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_elicitation_during_a_call_reaches_the_client_and_its_answer_the_server(
        tmp_path: Path) -> None:
    asked: list[str] = []
    progress: list[float] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"date": "2026-12-24"})

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(_params(tmp_path), mode=MODERN, elicitation_callback=elicit) as client:
        assert client.protocol_version == MODERN
        result = await client.call_tool("book", {"city": "Lyon"},
                                        progress_callback=on_progress)
        # The session goes on: a second question, in a second call.
        again = await client.call_tool("book", {"city": "Oslo"})
    assert result.content[0].text == "booked Lyon on 2026-12-24"  # type: ignore[union-attr]
    assert again.content[0].text == "booked Oslo on 2026-12-24"  # type: ignore[union-attr]
    assert asked == ["Which date?", "Which date?"]
    assert progress == [1]
    assert [c["city"] for c in _executed(tmp_path)] == ["Lyon", "Oslo"]
    # One call over two rounds: round 1, the server's question, round 2; one outcome.
    [(call_id,)] = _rows(tmp_path, "SELECT call_id FROM events WHERE kind = 'decision' AND "
                                   "tool = 'book' AND arguments LIKE '%Lyon%' AND "
                                   "reason NOT LIKE 'round%'")
    rows = _rows(tmp_path, "SELECT method, direction, decision FROM events WHERE kind = "
                           "'decision' AND call_id = ? ORDER BY seq", (call_id,))
    assert rows == [("tools/call", "client", "allow"), ("elicitation/create", "server", "allow"),
                    ("tools/call", "client", "allow")]
    assert _rows(tmp_path, "SELECT status FROM events WHERE kind = 'outcome' AND call_id = ?",
                 (call_id,)) == [("ok",)]
    assert _rows(tmp_path, "SELECT kind FROM events WHERE kind = 'input_required' AND detail "
                           "LIKE ?", (f'%"{call_id}"%',)) == [("input_required",)]


async def test_sampling_refused_by_policy_never_reaches_the_client(tmp_path: Path) -> None:
    async def sample(ctx: Any, params: Any) -> types.CreateMessageResult:
        raise AssertionError("the policy refuses sampling")

    async with Client(_params(tmp_path), mode=MODERN, sampling_callback=sample) as client:
        refused = await client.call_tool("summarize", {"text": "a long text"})
        # The call was cancelled at the server, the session lives on.
        assert [t.name for t in (await client.list_tools()).tools]
    # The refusal as a tool result of the revision (deny_tools_call_as: tool_result).
    assert refused.is_error
    assert "no use of the client's model" in refused.content[0].text  # type: ignore[union-attr]
    assert not [c for c in _executed(tmp_path) if c["tool"] == "summarize"]
    [(call_id,)] = _rows(tmp_path, "SELECT call_id FROM events WHERE kind = 'decision' AND "
                                   "tool = 'summarize'")
    rows = _rows(tmp_path, "SELECT method, direction, decision FROM events WHERE kind = "
                           "'decision' AND call_id = ? ORDER BY seq", (call_id,))
    assert rows == [("tools/call", "client", "allow"),
                    ("sampling/createMessage", "server", "deny")]


async def test_roots_list_is_carried(tmp_path: Path) -> None:
    async def roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/app")])

    async with Client(_params(tmp_path), mode=MODERN, list_roots_callback=roots) as client:
        result = await client.call_tool("count_roots", {})
    assert result.content[0].text == "1 roots"  # type: ignore[union-attr]
    assert _executed(tmp_path) == [{"tool": "count_roots", "roots": ["file:///srv/app"]}]


class _Raw:
    """A raw JSON-RPC client of the 2026-07-28 revision on ``mcpwall wrap``'s pipes."""

    def __init__(self, work: Path, timeout: float | None = None) -> None:
        self.proc = subprocess.Popen(
            _argv(work, timeout), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={"ASKING_RECORD_FILE": str(work / "asked.jsonl"),
                                         "PATH": "/usr/bin:/bin"})
        self.err: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def ping(self) -> dict[str, Any]:
        """A plain ping (no revision in it: it goes to the child as it is), once
        the child is up; what it answered."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b'{"jsonrpc":"2.0","id":"up","method":"ping"}\n')
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, b"".join(self.err)[-2000:]
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, rid: int, arguments: dict[str, Any], caps: dict[str, Any] | None = None,
             **more: Any) -> dict[str, Any]:
        """A tools/call of ``book``; its answer (what comes before it is skipped)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        meta = {**META, "io.modelcontextprotocol/clientCapabilities": (
            {"elicitation": {"form": {}}} if caps is None else caps)}
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                          "params": {"name": "book", "arguments": arguments,
                                                     **more, "_meta": meta}}).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            assert line, b"".join(self.err)[-2000:]
            value: dict[str, Any] = json.loads(line)
            if value.get("id") == rid:
                return value

    def close(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        return b"".join(self.err).decode()


def _state_of(answer: dict[str, Any]) -> tuple[str, str]:
    result = answer["result"]
    assert result["resultType"] == "input_required", answer
    [key] = result["inputRequests"]
    assert result["inputRequests"][key]["method"] == "elicitation/create"
    return key, result["requestState"]


def test_forged_and_replayed_states_are_new_calls(tmp_path: Path) -> None:
    raw = _Raw(tmp_path)
    try:
        call = {"city": "Oslo"}
        key, state = _state_of(raw.call(1, call))
        assert state.startswith("mcpwall-bridge.")
        answer = {"action": "accept", "content": {"date": "2027-01-02"}}

        def retry(echoed: str, rid: int) -> dict[str, Any]:
            return raw.call(rid, call, inputResponses={key: answer}, requestState=echoed)

        # A forged state: a new call, decided in full; its own question is
        # refused (-32601: the first call still waits, so the server's request
        # cannot be told apart). Nothing reaches the waiting request.
        forged = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
        again = retry(forged, 2)
        assert "error" in again or again["result"].get("isError") is True, again
        assert not [c for c in _executed(tmp_path) if c.get("city") == "Oslo"]
        # A request reusing the id the waiting call has at the server never reaches it.
        reused = raw.call(1, {"city": "Bern"})
        assert reused["error"]["code"] == -32010, reused  # Lost: never forwarded
        assert "still that of an earlier call" in reused["error"]["message"]
        # The real retry completes the call, under the retry's id; replayed, it
        # is a new call again, asked afresh.
        done = retry(state, 3)
        assert done["result"]["content"][0]["text"] == "booked Oslo on 2027-01-02"
        replay = retry(state, 4)
        assert _state_of(replay)[1] != state
    finally:
        raw.close()
    assert [c["date"] for c in _executed(tmp_path) if c.get("city") == "Oslo"] == [
        "2027-01-02"]
    assert not [c for c in _executed(tmp_path) if c.get("city") == "Bern"]
    reasons = _rows(tmp_path, "SELECT request_id, reason FROM events WHERE kind = 'decision' "
                              "AND tool = 'book' ORDER BY seq")
    assert [rid for rid, reason in reasons if reason and reason.startswith("round 2")] == ["3"]


def test_a_client_that_offers_no_elicitation_gets_no_question(tmp_path: Path) -> None:
    raw = _Raw(tmp_path)
    try:
        answer = raw.call(9, {"city": "Rome"}, caps={})
    finally:
        raw.close()
    # The server's request was answered -32601 at once: the tool failed.
    assert "result" not in answer or answer["result"].get("isError") is True, answer
    assert "input_required" not in json.dumps(answer)
    assert not [c for c in _executed(tmp_path) if c.get("city") == "Rome"]


def test_a_question_left_unanswered_is_abandoned(tmp_path: Path) -> None:
    raw = _Raw(tmp_path, timeout=3)
    try:
        # The timeout bounds mcpwall's own handshake too: let the child start first.
        assert raw.ping()["id"] == "up"
        call = {"city": "Nice"}
        key, state = _state_of(raw.call(1, call))
        # While the call waits for its retry, the next call cannot be told apart
        # from it: its server request is refused. Once the wait is over (the
        # upstream timeout), the first call is gone: the server's request was
        # answered with an error, the call cancelled, and the next call is
        # asked again.
        deadline, rid = time.monotonic() + 30, 1
        while True:
            rid += 1
            answer = raw.call(rid, call)
            if answer.get("result", {}).get("resultType") == "input_required" \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert _state_of(answer)[1] != state
        # The expired state resumes nothing; the mediator linked the retry to
        # the first round (not charged again), so it is no new call either: an
        # error, and nothing reaches the server.
        late = raw.call(rid + 1, call, inputResponses={key: {
            "action": "accept", "content": {"date": "2027-05-05"}}}, requestState=state)
        assert late["error"]["code"] == -32010, late
        assert "no longer waits for this retry" in late["error"]["message"]
    finally:
        log = raw.close()
    assert "bridge_input_unanswered" in log
    assert not [c for c in _executed(tmp_path) if c.get("date") == "2027-05-05"]


@pytest.mark.parametrize("asked", ["warning", None])
async def test_log_messages_reach_the_client_only_at_the_level_its_call_asked(
        tmp_path: Path, asked: str | None) -> None:
    """wrap_bridge rule 10: a 2025 server logs whatever it likes; the client of
    the new revision hears only what its call asked for in ``_meta``."""
    logged: list[tuple[str, Any]] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append((params.level, params.data))

    options: dict[str, Any] = {"log_level": asked} if asked is not None else {}
    async with Client(_params(tmp_path), mode=MODERN, logging_callback=on_log,
                      **options) as client:
        result = await client.call_tool("chatty", {})
    assert result.content[0].text == "done"  # type: ignore[union-attr]
    assert logged == ([("warning", "warning line")] if asked is not None else [])
