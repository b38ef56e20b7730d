"""MRTR through ``mcpwall wrap`` with real processes: the mcp SDK 2.3 client
(2026-07-28, found by ``server/discover``) and an SDK server of that revision
(tests/fixtures/mrtr_server.py). The audit trail is read back with sqlite3.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import mcpwall_argv
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "mrtr_server.py"
POLICY = {"version": "1", "default": "deny",
          "tools": {"deploy": {"rate_limit": {"max": 1, "window": 3600}},
                    "stop_vm": {"action": "require_approval", "approval": "client",
                                "reason": "stopping a VM interrupts its users"}},
          "methods": {"elicitation/create": {},
                      "sampling/createMessage": {"action": "deny",
                                                 "reason": "no use of the client's model"}},
          "other_methods": "allow"}


def run_client(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    asked: list[str] = []
    texts: list[str] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        if params.message.startswith("mcpwall holds a call"):
            return types.ElicitResult(action="accept", content={"approve": True})
        return types.ElicitResult(action="accept", content={"region": "eu"})

    async def sample(ctx: Any, params: Any) -> types.CreateMessageResult:
        raise AssertionError("mcpwall removes the sampling request")

    async def session() -> str | None:
        with anyio.fail_after(60):
            async with Client(StdioServerParameters(command=argv[0], args=argv[1:]),
                              mode="auto", elicitation_callback=elicit,  # type: ignore[arg-type]
                              sampling_callback=sample,  # type: ignore[arg-type]
                              read_timeout_seconds=30) as client:
                for name, args in (("deploy", {"app_name": "web"}), ("stop_vm", {"vm": "db"})):
                    result = await client.call_tool(name, args)
                    texts.append(getattr(result.content[0], "text", ""))
                return client.protocol_version

    version = anyio.run(session, backend="asyncio")
    return version, asked, texts


def test_mrtr_elicitation_and_approval_through_wrap(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    config = tmp_path / "gw.toml"
    config.write_text(f'[audit]\npath = "{tmp_path / "audit.db"}"\n')
    argv = [*mcpwall_argv(), "wrap", "--config", str(config), "--policy", str(policy), "--",
            sys.executable, str(FIXTURE)]
    version, asked, texts = run_client(argv)
    assert version == "2026-07-28"
    # The retry reached the server with the region and its state; the refused
    # sampling request never reached the client (nor its answer the server).
    assert texts == ["deployed web to eu (state round-1, sampled False)", "stopped db"]
    assert asked[0] == "Which region?" and asked[1].startswith("mcpwall holds a call")
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        rows = conn.execute(
            "SELECT call_id, method, direction, tool, decision FROM events "
            "WHERE kind = 'decision' AND method != 'server/discover' ORDER BY seq").fetchall()
        outcomes = dict(conn.execute(
            "SELECT call_id, status FROM events WHERE kind = 'outcome'").fetchall())
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY seq")]
    deploy = [r for r in rows if r[3] == "deploy" or r[2] == "server"]
    # Round 1, its two input requests, round 2: one call_id, the rate limit paid once.
    assert [(m, d, dec) for _, m, d, _, dec in deploy] == [
        ("tools/call", "client", "allow"), ("elicitation/create", "server", "allow"),
        ("sampling/createMessage", "server", "deny"), ("tools/call", "client", "allow")]
    assert len({r[0] for r in deploy}) == 1 and outcomes[deploy[0][0]] == "ok"
    stop = [r for r in rows if r[3] == "stop_vm"]
    assert [dec for *_, dec in stop] == ["pending", "approved"]
    assert len({r[0] for r in stop}) == 1 and outcomes[stop[0][0]] == "ok"
    assert "input_required" in kinds and "approval" in kinds
