"""Bridging in ``mcpwall wrap`` (firewall/gateway/front/wrap_bridge.py), with real
processes: the `mcp` SDK 2.3 stdio client pinned to 2026-07-28 through
``mcpwall wrap --bridge`` to servers that speak only the 2025 revisions
(mcp-server-time, the bundled demo server), and a 2025-pinned client through
``mcpwall wrap`` to a stdio server of the new revision only."""

from __future__ import annotations

import json
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from click.testing import CliRunner
from conftest import mcpwall_argv, venv_tool
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from firewall.cli.audit import audit

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURES = Path(__file__).parent / "fixtures"
POLICY = {"version": "1", "default": "allow",
          "tools": {"get_current_time": {"action": "deny", "reason": "no clocks"},
                    "proxmox_management": {"action": "deny", "reason": "not here"},
                    "wipe": {"action": "deny"}}}


def _params(tmp_path: Path, server: list[str], *extra: str,
            env: dict[str, str] | None = None) -> StdioServerParameters:
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps(POLICY))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(tmp_path / "audit.db"),
            "--policy", str(pol), "--principal", "alice", *extra, "--", *server]
    return StdioServerParameters(command=argv[0], args=argv[1:], env=env)


def _rows(tmp_path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(f"file:{tmp_path / 'audit.db'}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


async def test_pinned_client_through_wrap_bridge_to_mcp_server_time(tmp_path: Path) -> None:
    params = _params(tmp_path, [venv_tool("mcp-server-time")], "--bridge")
    claim = types.Implementation(name="bob", version="6.6")
    async with Client(params, mode=MODERN, client_info=claim) as client:
        assert client.session.protocol_version == MODERN
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["convert_time"]  # get_current_time denied: filtered out
        converted = await client.call_tool("convert_time", {
            "source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"})
        assert not converted.is_error
        assert json.loads(converted.content[0].text)["target"]["timezone"] == "Europe/Paris"
        refused = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert refused.is_error and "Refused by mcpwall" in str(refused.content)
    rows = _rows(tmp_path, "SELECT method, tool, decision, protocol_version, client_info "
                           "FROM calls ORDER BY seq")
    assert [(m, t, d) for m, t, d, *_ in rows] == [
        ("tools/list", None, "allow"), ("tools/call", "convert_time", "allow"),
        ("tools/call", "get_current_time", "deny")]
    assert {v for *_, v, _ in rows} == {MODERN}
    assert {json.loads(i)["name"] for *_, i in rows} == {"bob"}
    assert CliRunner().invoke(audit, ["verify", str(tmp_path / "audit.db")]).exit_code == 0


async def test_auto_client_through_wrap_bridge_gets_discover_from_initialize(
        tmp_path: Path) -> None:
    params = _params(tmp_path, [venv_tool("mcp-server-time")], "--bridge")
    async with Client(params, mode="auto") as client:
        assert client.session.protocol_version == MODERN
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["convert_time"]
    methods = [m for (m,) in _rows(tmp_path, "SELECT method FROM calls ORDER BY seq")]
    assert methods == ["server/discover", "tools/list"]


async def test_without_bridge_the_pinned_client_fails_against_a_2025_server(
        tmp_path: Path) -> None:
    # The demo server speaks only 2025: its tools/list result lacks what the new
    # revision requires (ttlMs), which the SDK refuses, as the spec expects.
    params = _params(tmp_path, [sys.executable, "-m", "firewall.demo"])
    async with Client(params, mode=MODERN) as client:
        with pytest.raises(Exception, match="ttlMs"):
            await client.list_tools()


async def test_pinned_client_through_wrap_bridge_to_the_demo_server(tmp_path: Path) -> None:
    record = tmp_path / "demo-calls.jsonl"
    env = {"MCPWALL_DEMO_RECORD_FILE": str(record), "PATH": "/usr/bin:/bin"}
    params = _params(tmp_path, [sys.executable, "-m", "firewall.demo"], "--bridge",
                     "--server-name", "demo", env=env)
    async with Client(params, mode=MODERN) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "info_tools" in names and "proxmox_management" not in names
        refused = await client.call_tool("proxmox_management", {"action": "list_nodes"})
        assert refused.is_error
        allowed = await client.call_tool("info_tools", {"action": "list_tools", "category": "vm"})
        assert not allowed.is_error and allowed.content
    executed = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["tool"] for c in executed] == ["info_tools"]  # the denied call never ran
    assert isinstance(executed[0]["id"], int)  # the client's own id: no re-id in wrap
    rows = _rows(tmp_path, "SELECT tool, decision, protocol_version FROM calls "
                           "WHERE method = 'tools/call' ORDER BY seq")
    assert rows == [("proxmox_management", "deny", MODERN), ("info_tools", "allow", MODERN)]


async def test_2025_client_through_wrap_to_a_server_of_the_new_revision_only(
        tmp_path: Path) -> None:
    params = _params(tmp_path, [sys.executable, str(FIXTURES / "dual_era_server.py"),
                                "--modern-only"])
    claim = types.Implementation(name="carol", version="1.0")
    async with Client(params, mode="legacy", client_info=claim) as client:
        assert client.session.protocol_version != MODERN  # a 2025 session, kept by mcpwall
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["echo"]  # wipe denied: filtered
        ok = await client.call_tool("echo", {"text": "hi"})
        assert not ok.is_error and "echo: hi" in str(ok.content)
        refused = await client.call_tool("wipe", {"target": "x"})
        assert refused.is_error and "Refused by mcpwall" in str(refused.content)
        with warnings.catch_warnings():  # the SDK warns that ping is gone in 2026-07-28
            warnings.simplefilter("ignore")
            await client.send_ping()  # removed by the revision: answered by mcpwall
    rows = _rows(tmp_path, "SELECT method, tool, decision, protocol_version, client_info "
                           "FROM calls ORDER BY seq")
    assert [(m, t, d) for m, t, d, *_ in rows] == [
        ("initialize", None, "allow"), ("server/discover", None, "allow"),
        ("tools/list", None, "allow"), ("tools/call", "echo", "allow"),
        ("tools/call", "wipe", "deny"), ("ping", None, "allow")]
    # What was decided is what the server got: the revision's _meta, made of the
    # client's initialize (its clientInfo), on each request after it.
    assert {(v, json.loads(i)["name"]) for m, _, _, v, i in rows[2:5]} == {(MODERN, "carol")}
    assert CliRunner().invoke(audit, ["verify", str(tmp_path / "audit.db")]).exit_code == 0


async def test_wrap_bridge_to_a_server_of_the_new_revision_passes_requests_as_decided(
        tmp_path: Path) -> None:
    # The server refuses mcpwall's initialize: it speaks the new revision itself.
    params = _params(tmp_path, [sys.executable, str(FIXTURES / "dual_era_server.py"),
                                "--modern-only"], "--bridge")
    async with Client(params, mode=MODERN) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
        ok = await client.call_tool("echo", {"text": "hi"})
        assert not ok.is_error and "echo: hi" in str(ok.content)
    methods = [m for (m,) in _rows(tmp_path, "SELECT method FROM calls ORDER BY seq")]
    assert methods == ["tools/list", "tools/call"]


BROKEN = ("import json, sys\n"
          "for line in sys.stdin:\n"
          "    if 'initialize' in line:\n"
          "        rid = json.loads(line)['id']\n"
          "        print(json.dumps({'jsonrpc': '2.0', 'id': rid, 'result': {}}), flush=True)\n")


async def test_wrap_bridge_handshake_failure_answers_each_request_with_an_error(
        tmp_path: Path) -> None:
    params = _params(tmp_path, [sys.executable, "-c", BROKEN], "--bridge")
    async with Client(params, mode=MODERN) as client:
        for _ in range(2):  # then and later: the session lives on
            with pytest.raises(MCPError, match="through the bridge"):
                await client.list_tools()
    rows = _rows(tmp_path, "SELECT method, decision FROM calls ORDER BY seq")
    assert rows == [("tools/list", "allow"), ("tools/list", "allow")]


async def test_2025_client_through_serve_to_a_stdio_server_of_the_new_revision_only(
        tmp_path: Path) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from tests.fixtures import conformance_harness as harness

    (tmp_path / "p.json").write_text(json.dumps(POLICY))
    port = harness.free_port()
    fixture = str(FIXTURES / "dual_era_server.py")
    (tmp_path / "mcpwall.toml").write_text("\n".join([
        "[listen]", 'host = "127.0.0.1"', f"port = {port}", "",
        "[policy]", f"files = [{json.dumps(str(tmp_path / 'p.json'))}]", "",
        "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", "",
        "[servers.modern]", 'transport = "stdio"', f"command = {json.dumps(sys.executable)}",
        f"args = [{json.dumps(fixture)}, \"--modern-only\"]", ""]))
    log = tmp_path / "mcpwall.log"
    with harness.background([sys.executable, "-m", "firewall", "serve",
                             str(tmp_path / "mcpwall.toml")], log, cwd=tmp_path) as proc:
        harness.wait_for_port(port, proc, log)
        url = harness.endpoint(f"http://127.0.0.1:{port}", "modern")
        http = httpx2.AsyncClient(timeout=30)
        async with Client(streamable_http_client(url, http_client=http),
                          mode="legacy") as client:
            assert client.session.protocol_version != MODERN
            assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
            ok = await client.call_tool("echo", {"text": "hi"})
            assert not ok.is_error and "echo: hi" in str(ok.content)
            refused = await client.call_tool("wipe", {"target": "x"})
            assert refused.is_error
    rows = _rows(tmp_path, "SELECT method, tool, decision, protocol_version FROM calls "
                           "ORDER BY seq")
    assert [(m, t, d) for m, t, d, _ in rows] == [
        ("initialize", None, "allow"), ("server/discover", None, "allow"),
        ("tools/list", None, "allow"), ("tools/call", "echo", "allow"),
        ("tools/call", "wipe", "deny")]
    assert {v for *_, v in rows[2:]} == {MODERN}


async def test_progress_of_a_bridged_call_reaches_the_pinned_client(tmp_path: Path) -> None:
    """server-everything (2025 only, stdio) reports the progress of a long
    operation under the client's progressToken (which the bridge keeps in the
    translated request's ``_meta``): through ``wrap --bridge`` the client
    pinned to 2026-07-28 gets each notification, through the mediator."""
    from tests.fixtures import conformance_harness as harness

    problem = harness.toolchain_problem()
    if problem:
        pytest.skip(problem)
    params = _params(tmp_path, harness.everything_stdio_argv(), "--bridge")
    got: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        got.append((progress, total))

    async with Client(params, mode=MODERN) as client:
        result = await client.call_tool("trigger-long-running-operation",
                                        {"duration": 1, "steps": 3},
                                        progress_callback=on_progress)
    assert not result.is_error
    assert got == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]
