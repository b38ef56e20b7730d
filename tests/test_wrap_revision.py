"""``mcpwall wrap`` and MCP 2026-07-28: the `mcp` SDK's stdio client, pinned to
the revision (no initialize, ``_meta`` on every request) or in auto mode
(``server/discover`` first), through wrap to a dual-era stdio server."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import mcp_types as types
import pytest
from click.testing import CliRunner
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

from firewall.cli.audit import audit

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "dual_era_server.py"
POLICY = {"version": "1", "default": "allow", "tools": {"wipe": {"action": "deny"}}}


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_sdk_client_of_the_new_revision_through_wrap(tmp_path: Path, mode: str) -> None:
    db, pol = tmp_path / "audit.db", tmp_path / "p.json"
    pol.write_text(json.dumps(POLICY))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(db), "--policy", str(pol),
            "--principal", "alice", "--", sys.executable, str(FIXTURE)]
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    # clientInfo names someone else: the trail still says alice.
    claim = types.Implementation(name="bob", version="6.6")
    async with Client(params, mode=mode, client_info=claim) as client:
        assert client.session.protocol_version == "2026-07-28"
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["echo"]  # wipe is never callable: filtered out
        ok = await client.call_tool("echo", {"text": "hi"})
        assert not ok.is_error and "echo: hi" in str(ok.content)
        refused = await client.call_tool("wipe", {"target": "x"})
        assert refused.is_error and "Refused by mcpwall" in str(refused.content)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT method, tool, decision, principal, protocol_version, "
                            "client_info FROM calls ORDER BY seq").fetchall()
    methods = [(m, t, d) for m, t, d, *_ in rows]
    expected = [("tools/list", None, "allow"), ("tools/call", "echo", "allow"),
                ("tools/call", "wipe", "deny")]
    if mode == "auto":
        expected.insert(0, ("server/discover", None, "allow"))
    assert methods == expected
    assert {(p, v) for _, _, _, p, v, _ in rows} == {("alice", "2026-07-28")}
    assert {json.loads(i)["name"] for *_, i in rows} == {"bob"}
    assert CliRunner().invoke(audit, ["verify", str(db)]).exit_code == 0
