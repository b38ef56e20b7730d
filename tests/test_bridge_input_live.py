"""The bridge carries a 2025 stdio server's own requests to a 2026-07-28 client.

Through `mcpwall serve` (``bridge = true``), the `mcp` SDK 2.3 client pinned
to 2026-07-28 calls tools of tests/fixtures/asking_server.py, which ask for
input during the call the 2025 way (elicitation, sampling, roots/list). The
bridge answers the call with an InputRequiredResult carrying the server's
request and a sealed requestState; the client's retry delivers its answer to
the server's waiting request. Policy decides each input request; a forged,
replayed or borrowed state is a new call; the audit links the rounds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.audit_rows import wait_rows
from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).parent / "fixtures" / "asking_server.py"
POLICY = {"version": "1", "default": "allow",
          "methods": {"sampling/createMessage": {"action": "deny",
                                                 "reason": "no use of the client's model"}}}
TOKENS = {"alice": "alice-secret-token", "bob": "bob-secret-token",
          "carol": "carol-secret-token"}


class Gateway:
    def __init__(self, base: str, work: Path) -> None:
        self.url = harness.endpoint(base, "asking")
        self.work = work

    def rows(self, sql: str, args: tuple[Any, ...] = (), at_least: int = 0) -> list[Any]:
        """Audit rows; waits (10 s at most) for ``at_least`` of them (group commits)."""
        return wait_rows(self.work / "audit.db", sql, args, at_least)

    def executed(self) -> list[dict[str, Any]]:
        path = self.work / "asked.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@contextlib.contextmanager
def _serve(work: Path, timeout: float) -> Iterator[Gateway]:
    (work / "policy.json").write_text(json.dumps(POLICY))
    port = harness.free_port()
    lines = ["[listen]", 'host = "127.0.0.1"', f"port = {port}",
             f"upstream_timeout_seconds = {timeout}",
             "", "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]",
             'deny_tools_call_as = "jsonrpc_error"', "",
             "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", ""]
    for principal, token in TOKENS.items():
        lines += ["[[auth.tokens]]", f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
                  f'principal = "{principal}"', f'grant = "{principal}-grant"', ""]
    lines += ["[servers.asking]", 'transport = "stdio"', "bridge = true",
              f"command = {json.dumps(sys.executable)}", f"args = [{json.dumps(str(FIXTURE))}]",
              f"env = {{ ASKING_RECORD_FILE = {json.dumps(str(work / 'asked.jsonl'))} }}", ""]
    config = work / "mcpwall.toml"
    config.write_text("\n".join(lines))
    log = work / "mcpwall.log"
    with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                            log, cwd=work) as proc:
        harness.wait_for_port(port, proc, log)
        yield Gateway(f"http://127.0.0.1:{port}", work)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with _serve(tmp_path_factory.mktemp("bridge-input"), 20) as served:
        yield served


def _client(gateway: Gateway, principal: str = "alice", **callbacks: Any) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKENS[principal]}"},
                              timeout=30)
    return Client(streamable_http_client(gateway.url, http_client=http), mode=MODERN,
                  **callbacks)


def _post(gateway: Gateway, params: dict[str, Any], rid: int | str,
          principal: str = "alice", caps: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw tools/call of the revision (JSON answer)."""
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {
        **params, "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": (
                {"elicitation": {"form": {}}} if caps is None else caps),
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}}}}
    reply = httpx.post(gateway.url, json=body, timeout=30, headers={
        "accept": "application/json", "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call", "mcp-name": params["name"],
        "authorization": f"Bearer {TOKENS[principal]}"})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_elicitation_during_a_call_reaches_the_client_and_its_answer_the_server(
        gateway: Gateway) -> None:
    asked: list[str] = []
    progress: list[float] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"date": "2026-12-24"})

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with _client(gateway, elicitation_callback=elicit) as client:
        assert client.protocol_version == MODERN
        result = await client.call_tool("book", {"city": "Lyon"},
                                        progress_callback=on_progress)
    assert result.content[0].text == "booked Lyon on 2026-12-24"  # type: ignore[union-attr]
    assert asked == ["Which date?"]
    assert progress == [1]  # relayed on the stream of the request waiting for the call
    assert {"tool": "book", "city": "Lyon", "action": "accept",
            "date": "2026-12-24"} in gateway.executed()
    # One call over two rounds: round 1, the server's question, round 2; one outcome.
    [(call_id,)] = gateway.rows("SELECT call_id FROM events WHERE kind = 'decision' AND "
                                "tool = 'book' AND reason NOT LIKE 'round%'", at_least=1)
    rows = gateway.rows("SELECT method, direction, decision FROM events WHERE kind = "
                        "'decision' AND call_id = ? ORDER BY seq", (call_id,), at_least=3)
    assert rows == [("tools/call", "client", "allow"), ("elicitation/create", "server", "allow"),
                    ("tools/call", "client", "allow")]
    outcomes = gateway.rows("SELECT status FROM events WHERE kind = 'outcome' AND call_id = ?",
                            (call_id,), at_least=1)
    assert outcomes == [("ok",)]
    assert gateway.rows("SELECT kind FROM events WHERE kind = 'input_required' AND detail "
                        "LIKE ?", (f'%"{call_id}"%',), at_least=1) == [("input_required",)]


async def test_sampling_refused_by_policy_never_reaches_the_client(gateway: Gateway) -> None:
    async def sample(ctx: Any, params: Any) -> types.CreateMessageResult:
        raise AssertionError("the policy refuses sampling")

    async with _client(gateway, sampling_callback=sample) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("summarize", {"text": "a long text"})
    assert refused.value.error.data["rule"] == "methods.sampling/createMessage"
    assert not [c for c in gateway.executed() if c["tool"] == "summarize"]
    [(call_id,)] = gateway.rows("SELECT call_id FROM events WHERE kind = 'decision' AND "
                                "tool = 'summarize'", at_least=1)
    rows = gateway.rows("SELECT method, direction, decision FROM events WHERE kind = "
                        "'decision' AND call_id = ? ORDER BY seq", (call_id,), at_least=2)
    assert rows == [("tools/call", "client", "allow"),
                    ("sampling/createMessage", "server", "deny")]


async def test_roots_list_is_carried(gateway: Gateway) -> None:
    async def roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/app")])

    async with _client(gateway, list_roots_callback=roots) as client:
        result = await client.call_tool("count_roots", {})
    assert result.content[0].text == "1 roots"  # type: ignore[union-attr]


def _state_of(answer: dict[str, Any]) -> tuple[str, str]:
    result = answer["result"]
    assert result["resultType"] == "input_required"
    [key] = result["inputRequests"]
    assert result["inputRequests"][key]["method"] == "elicitation/create"
    return key, result["requestState"]


def test_forged_replayed_and_borrowed_states_are_new_calls(gateway: Gateway) -> None:
    call = {"name": "book", "arguments": {"city": "Oslo"}}
    key, state = _state_of(_post(gateway, call, "oslo-1"))
    assert state.startswith("mcpwall-bridge.")
    answer = {"action": "accept", "content": {"date": "2027-01-02"}}

    def retry(echoed: str, rid: str, principal: str = "alice") -> dict[str, Any]:
        return _post(gateway, {**call, "inputResponses": {key: answer},
                               "requestState": echoed}, rid, principal=principal)

    forged = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
    # A forged state: a new call, decided in full; its own question is refused
    # (-32601: alice's first call still waits, so the server's request cannot be
    # told apart); the real state from another caller: a new call of bob's,
    # asked the date afresh. Nothing reaches the server's waiting request.
    again = retry(forged, "oslo-2")
    assert again["error"]["code"] == -32601
    borrowed = retry(state, "oslo-2", principal="bob")
    assert _state_of(borrowed)[1] != state
    assert not [c for c in gateway.executed() if c.get("city") == "Oslo"]
    # The real retry completes the call; replayed, it is a new call again.
    done = retry(state, "oslo-3")
    assert done["result"]["content"][0]["text"] == "booked Oslo on 2027-01-02"
    replay = retry(state, "oslo-4")
    assert _state_of(replay)[1] != state
    assert [c["date"] for c in gateway.executed() if c.get("city") == "Oslo"] == ["2027-01-02"]
    reasons = gateway.rows("SELECT request_id, reason FROM events WHERE kind = 'decision' AND "
                           "tool = 'book' AND request_id LIKE '%oslo-%' ORDER BY seq",
                           at_least=5)
    linked = [rid for rid, reason in reasons if reason and reason.startswith("round 2")]
    assert linked == ['"oslo-3"']


def test_a_client_that_offers_no_elicitation_gets_no_question(gateway: Gateway) -> None:
    answer = _post(gateway, {"name": "book", "arguments": {"city": "Rome"}}, 9, caps={})
    # The server's request was answered -32601 at once: the tool failed.
    assert "result" not in answer or answer["result"].get("isError") is True
    assert not [c for c in gateway.executed() if c.get("city") == "Rome"]


def test_a_question_left_unanswered_is_abandoned(tmp_path: Path) -> None:
    with _serve(tmp_path, 5) as gateway:
        call = {"name": "book", "arguments": {"city": "Nice"}}
        key, state = _state_of(_post(gateway, call, "nice-1"))
        # While the call waits for its retry, the caller's next call cannot be
        # told apart from it: its server request is refused. Once the wait is
        # over (the upstream timeout), the first call is gone: the server's
        # request was answered with an error, the call cancelled, and the next
        # call is asked again.
        deadline = time.monotonic() + 30
        while True:
            answer = _post(gateway, call, "nice-2")
            if "result" in answer or time.monotonic() > deadline:
                break
            assert answer["error"]["code"] == -32601
            time.sleep(0.3)
        assert _state_of(answer)[1] != state
        assert "bridge_input_unanswered" in (gateway.work / "mcpwall.log").read_text()
        # The expired state resumes nothing: a new call.
        late = _post(gateway, {**call, "inputResponses": {key: {"action": "accept", "content": {
            "date": "2027-05-05"}}}, "requestState": state}, "nice-3")
        assert "result" not in late or late["result"].get("resultType") == "input_required"
        assert not [c for c in gateway.executed() if c.get("date") == "2027-05-05"]


async def test_a_stdio_servers_log_messages_reach_the_one_call_at_its_level(
        gateway: Gateway) -> None:
    """A stdio server does not say which call it logs for: the one in flight
    (carol's bridged session has no other; alice's may still hold a call an
    earlier test left waiting for its retry)."""
    logged: list[tuple[str, Any]] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append((params.level, params.data))

    async with _client(gateway, "carol", logging_callback=on_log,
                       log_level="warning") as client:
        result = await client.call_tool("chatty", {})
    assert result.content[0].text == "done"  # type: ignore[union-attr]
    assert logged == [("warning", "warning line")]
