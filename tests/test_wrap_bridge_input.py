"""Input requests of a stdio server of the new revision only, for a 2025 client
(wrap_bridge rule 8), with real processes.

``fixtures/mrtr_server.py --modern-only`` (the `mcp` SDK's MCPServer on
stdio, 2026-07-28 only) answers ``deploy`` with an ``InputRequiredResult``
(an elicitation and a sampling). The `mcp` SDK client pinned to the 2025
revisions, through ``mcpwall wrap`` and through ``mcpwall serve``, is asked
them as server-to-client requests of its session; its answers go up in the
retry (``inputResponses``, the server's ``requestState``), and it sees one
answer to its call. The policy decides each input request: a refused one is
never asked.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
SERVER = [sys.executable, str(FIXTURES / "mrtr_server.py"), "--modern-only"]
ALLOW = {"version": "1", "default": "allow"}
NO_SAMPLING = {"version": "1", "default": "allow",
               "methods": {"sampling/createMessage": {"action": "deny",
                                                      "reason": "no use of the client's model"}}}


def _callbacks(asked: list[str]) -> dict[str, Any]:
    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"region": "eu-west"})

    async def sample(context: Any, params: Any) -> Any:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="ok"), model="m")

    return {"elicitation_callback": elicit, "sampling_callback": sample}


def _decisions(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT method, direction, decision FROM events WHERE kind = 'decision' "
            "AND method IN ('tools/call', 'elicitation/create', 'sampling/createMessage') "
            "ORDER BY seq").fetchall()


@pytest.mark.parametrize("policy", [ALLOW, NO_SAMPLING], ids=["all", "no-sampling"])
async def test_input_requests_of_a_modern_stdio_server_reach_a_2025_client_through_wrap(
        tmp_path: Path, policy: dict[str, Any]) -> None:
    (tmp_path / "p.json").write_text(json.dumps(policy))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(tmp_path / "audit.db"),
            "--policy", str(tmp_path / "p.json"), "--principal", "alice", "--", *SERVER]
    asked: list[str] = []
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with Client(params, mode="legacy", **_callbacks(asked)) as client:
        result = await client.call_tool("deploy", {"app_name": "shop"})
        again = await client.call_tool("stop_vm", {"vm": "db"})
    sampled = policy is ALLOW
    assert sorted(asked) == (["Which region?", "sampling"] if sampled else ["Which region?"])
    text = result.content[0].text  # type: ignore[union-attr]
    assert text == f"deployed shop to eu-west (state round-1, sampled {sampled})"
    assert "stopped db" in again.content[0].text  # type: ignore[union-attr]
    assert _decisions(tmp_path / "audit.db") == [
        ("tools/call", "client", "allow"), ("elicitation/create", "server", "allow"),
        ("sampling/createMessage", "server", "allow" if sampled else "deny"),
        ("tools/call", "client", "allow"), ("tools/call", "client", "allow")]


async def test_input_requests_of_a_modern_stdio_server_reach_a_2025_client_through_serve(
        tmp_path: Path) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from tests.fixtures import conformance_harness as harness

    (tmp_path / "p.json").write_text(json.dumps(NO_SAMPLING))
    port = harness.free_port()
    (tmp_path / "mcpwall.toml").write_text("\n".join([
        "[listen]", 'host = "127.0.0.1"', f"port = {port}", "",
        "[policy]", f"files = [{json.dumps(str(tmp_path / 'p.json'))}]", "",
        "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", "",
        "[servers.mrtr]", 'transport = "stdio"', f"command = {json.dumps(SERVER[0])}",
        f"args = {json.dumps(SERVER[1:])}", ""]))
    log = tmp_path / "mcpwall.log"
    asked: list[str] = []
    with harness.background([sys.executable, "-m", "firewall", "serve",
                             str(tmp_path / "mcpwall.toml")], log, cwd=tmp_path) as proc:
        harness.wait_for_port(port, proc, log)
        url = harness.endpoint(f"http://127.0.0.1:{port}", "mrtr")
        http = httpx2.AsyncClient(timeout=30)
        async with Client(streamable_http_client(url, http_client=http), mode="legacy",
                          **_callbacks(asked)) as client:
            result = await client.call_tool("deploy", {"app_name": "web"})
    assert asked == ["Which region?"]
    assert result.content[0].text == (  # type: ignore[union-attr]
        "deployed web to eu-west (state round-1, sampled False)")
    assert _decisions(tmp_path / "audit.db") == [
        ("tools/call", "client", "allow"), ("elicitation/create", "server", "allow"),
        ("sampling/createMessage", "server", "deny"), ("tools/call", "client", "allow")]


async def test_a_client_that_refuses_an_input_request_gets_an_error_for_the_call(
        tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(NO_SAMPLING))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(tmp_path / "audit.db"),
            "--policy", str(tmp_path / "p.json"), "--principal", "alice", "--", *SERVER]

    async def elicit(context: Any, params: Any) -> Any:
        return types.ErrorData(code=-32600, message="not now")

    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with Client(params, mode="legacy", elicitation_callback=elicit) as client:
        with pytest.raises(MCPError, match="refused the server's input request"):
            await client.call_tool("deploy", {"app_name": "shop"})
        # The session lives on: the next call is carried as usual.
        assert "stopped db" in (await client.call_tool(
            "stop_vm", {"vm": "db"})).content[0].text  # type: ignore[union-attr]
    # No retry reached the server: one decided deploy call.
    assert [d for d in _decisions(tmp_path / "audit.db") if d[0] == "tools/call"] == [
        ("tools/call", "client", "allow"), ("tools/call", "client", "allow")]
