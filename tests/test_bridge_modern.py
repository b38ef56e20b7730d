"""A 2025 client through `mcpwall serve` to a server that speaks only the 2026-07-28 revision.

The `mcp` SDK 2.3 client in ``legacy`` mode (``initialize``, 2025-11-25) in
front of ``fixtures/modern_server.py --modern-only`` (stateless, refuses
``initialize`` with -32022): mcpwall answers the handshake from the server's
``server/discover``, keeps the session, and carries each request upstream in
the new revision, decided and recorded like any other; refusals never reach
the server and are recorded.
"""

from __future__ import annotations

import json
import sqlite3
import sys
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
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "modern_server.py"
POLICY = {"version": "1", "default": "allow",
          "tools": {"danger": {"action": "deny", "reason": "too dangerous"}}}


class Gateway:
    def __init__(self, base: str, upstream: str, work: Path) -> None:
        self.url = harness.endpoint(base, "modern")
        self.upstream = upstream
        self.work = work

    def reached(self) -> list[dict[str, Any]]:
        path = self.work / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def headers_seen(self) -> list[dict[str, str]]:
        path = self.work / "headers.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def rows(self, query: str, at_least: int = 0) -> list[tuple[Any, ...]]:
        """Rows of the audit trail; waits (10 s at most) for ``at_least`` of them:
        the writer commits in groups, after the answer went out."""
        return wait_rows(self.work / "audit.db", query, at_least=at_least)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("bridge")
    port = harness.free_port()
    env = {"RECORD_FILE": str(work / "calls.jsonl"), "HEADERS_FILE": str(work / "headers.jsonl")}
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port), "--modern-only"],
                            work / "modern.log", env=env) as server:
        harness.wait_for_port(port, server, work / "modern.log")
        policy = work / "policy.json"
        policy.write_text(json.dumps(POLICY))
        front = harness.free_port()
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}", "",
                 "[policy]", f"files = [{json.dumps(str(policy))}]",
                 'deny_tools_call_as = "jsonrpc_error"', "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
                 "[servers.modern]", 'transport = "http"',
                 f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(front, proc, log)
            yield Gateway(f"http://127.0.0.1:{front}", f"http://127.0.0.1:{port}/mcp", work)


def test_the_server_refuses_a_2025_client_on_its_own(gateway: Gateway) -> None:
    """What the bridge is for: without mcpwall, initialize fails at the server."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}}
    answer = httpx.post(gateway.upstream, json=init, timeout=30,
                        headers={"accept": "application/json, text/event-stream"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32022


async def test_a_2025_client_is_bridged_to_a_new_revision_only_server(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None
        assert client.server_info.name == "modern-fixture"
        assert client.server_capabilities.tools is not None
        await client.send_ping()
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["echo", "regional"]  # danger filtered
        echoed = await client.call_tool("echo", {"a": 1})
        assert json.loads(echoed.content[0].text) == {"tool": "echo", "arguments": {"a": 1}}
        regional = await client.call_tool("regional", {"region": "us-west1", "query": "q"})
        assert json.loads(regional.content[0].text)["arguments"]["region"] == "us-west1"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("danger", {})
        assert refused.value.error.data["rule"] == "tools.danger"
        with pytest.raises(MCPError) as removed:
            await client.set_logging_level("info")
        assert removed.value.error.code == -32601
    assert [c["tool"] for c in gateway.reached()] == ["echo", "regional"]
    seen = gateway.headers_seen()
    modern = [h for h in seen if h.get("mcp-protocol-version") == MODERN]
    # What went up is the new revision, without any session id, headers made from the body.
    assert all("mcp-session-id" not in h for h in seen)
    assert {"mcp-method": "tools/call", "mcp-name": "regional", "mcp-param-region": "us-west1",
            "mcp-protocol-version": MODERN} in modern
    assert [h["mcp-method"] for h in modern].count("server/discover") == 1
    denied = gateway.rows("select session, method, tool, rule from denials order by seq", 2)
    assert [(m, t, r) for _, m, t, r in denied] == [
        ("tools/call", "danger", "tools.danger"), ("logging/setLevel", None, "protocol")]
    assert not any(s.startswith("stateless-") for s, *_ in denied)  # the session's own


async def test_later_sessions_do_not_ask_the_server_to_initialize(gateway: Gateway) -> None:
    before = len(gateway.headers_seen())
    async with Client(gateway.url, mode="legacy") as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo", "regional"]
    methods = [h.get("mcp-method") for h in gateway.headers_seen()[before:]]
    assert methods == ["server/discover", "tools/list"]


def test_a_bridged_session_has_no_get_stream_and_deletes_here(gateway: Gateway) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}}
    headers = {"accept": "application/json, text/event-stream"}
    first = httpx.post(gateway.url, json=init, headers=headers, timeout=30)
    assert first.status_code == 200
    assert first.json()["result"]["protocolVersion"] == "2025-06-18"
    sid = first.headers["mcp-session-id"]
    session = {**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
    get = httpx.get(gateway.url, headers={**session, "accept": "text/event-stream"}, timeout=30)
    assert get.status_code == 405
    assert httpx.delete(gateway.url, headers=session, timeout=30).status_code == 204
    gone = httpx.post(gateway.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                      headers=session, timeout=30)
    assert gone.status_code == 404


MRTR = Path(__file__).resolve().with_name("fixtures") / "mrtr_server.py"


async def test_input_required_is_bridged_to_elicitation_and_sampling(tmp_path: Path) -> None:
    """The server's InputRequiredResult becomes elicitation/create and
    sampling/createMessage on the 2025 client's session; its answers go up in
    the retry, and the client sees one answer to its call."""
    port = harness.free_port()
    with harness.background([sys.executable, str(MRTR), "--port", str(port)],
                            tmp_path / "mrtr.log") as server:
        harness.wait_for_port(port, server, tmp_path / "mrtr.log")
        with harness.mcpwall_front(tmp_path / "gw", {
                "mrtr": harness.HttpUpstream(f"http://127.0.0.1:{port}/mcp")}) as base:
            asked: list[str] = []

            async def elicit(context: Any, params: Any) -> Any:
                asked.append(params.message)
                return types.ElicitResult(action="accept", content={"region": "eu-west"})

            async def sample(context: Any, params: Any) -> Any:
                asked.append("sampling")
                return types.CreateMessageResult(
                    role="assistant", content=types.TextContent(type="text", text="ok"),
                    model="m")

            async with Client(harness.endpoint(base, "mrtr"), mode="legacy",
                              elicitation_callback=elicit,
                              sampling_callback=sample) as client:
                result = await client.call_tool("deploy", {"app_name": "shop"})
    assert sorted(asked) == ["Which region?", "sampling"]
    text = result.content[0].text
    assert "deployed shop to eu-west" in text and "state round-1" in text
    assert "sampled True" in text


MRTR_POLICY = {"version": "1", "default": "deny",
               "tools": {"deploy": {"rate_limit": {"max": 1, "window": 3600}},
                         "stop_vm": {"action": "require_approval", "approval": "client",
                                     "reason": "stopping a VM interrupts its users"}},
               "methods": {"elicitation/create": {},
                           "sampling/createMessage": {"action": "deny",
                                                      "reason": "no use of the client's model"}},
               "other_methods": "allow"}


async def test_input_requests_are_decided_and_approval_asks_the_2025_client(
        tmp_path: Path) -> None:
    """The policy decides each input request (a refused one never reaches the
    client), the rounds are one call paid once, and a call held for the
    client's approval is asked as an elicitation on the 2025 session."""
    port = harness.free_port()
    with harness.background([sys.executable, str(MRTR), "--port", str(port)],
                            tmp_path / "mrtr.log") as server:
        harness.wait_for_port(port, server, tmp_path / "mrtr.log")
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(MRTR_POLICY))
        front = harness.free_port()
        config = tmp_path / "mcpwall.toml"
        config.write_text("\n".join([
            "[listen]", 'host = "127.0.0.1"', f"port = {front}", "",
            "[policy]", f"files = [{json.dumps(str(policy))}]", "",
            "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", "",
            "[servers.mrtr]", 'transport = "http"',
            f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", ""]))
        log = tmp_path / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=tmp_path) as proc:
            harness.wait_for_port(front, proc, log)
            asked: list[str] = []

            async def elicit(context: Any, params: Any) -> Any:
                asked.append(params.message)
                if params.message.startswith("mcpwall holds a call"):
                    return types.ElicitResult(action="accept", content={"approve": True})
                return types.ElicitResult(action="accept", content={"region": "eu"})

            async def sample(context: Any, params: Any) -> Any:
                raise AssertionError("mcpwall removes the sampling request")

            async with Client(harness.endpoint(f"http://127.0.0.1:{front}", "mrtr"),
                              mode="legacy", elicitation_callback=elicit,
                              sampling_callback=sample) as client:
                texts = [(await client.call_tool(name, args)).content[0].text
                         for name, args in (("deploy", {"app_name": "web"}),
                                            ("stop_vm", {"vm": "db"}))]
    assert texts == ["deployed web to eu (state round-1, sampled False)", "stopped db"]
    assert asked[0] == "Which region?" and asked[1].startswith("mcpwall holds a call")
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        rows = conn.execute(
            "SELECT call_id, method, direction, tool, decision FROM events "
            "WHERE kind = 'decision' AND method NOT IN ('server/discover', 'initialize') "
            "ORDER BY seq").fetchall()
        outcomes = dict(conn.execute(
            "SELECT call_id, status FROM events WHERE kind = 'outcome'").fetchall())
    deploy = [r for r in rows if r[3] == "deploy" or r[2] == "server"]
    assert [(m, d, dec) for _, m, d, _, dec in deploy] == [
        ("tools/call", "client", "allow"), ("elicitation/create", "server", "allow"),
        ("sampling/createMessage", "server", "deny"), ("tools/call", "client", "allow")]
    assert len({r[0] for r in deploy}) == 1 and outcomes[deploy[0][0]] == "ok"
    stop = [r for r in rows if r[3] == "stop_vm"]
    assert [dec for *_, dec in stop] == ["pending", "approved"]
    assert len({r[0] for r in stop}) == 1 and outcomes[stop[0][0]] == "ok"
