"""The bridge through `mcpwall serve`: 2026-07-28 clients, 2025-only stdio servers.

The `mcp` SDK 2.3 client pinned to 2026-07-28 (and in ``auto`` mode) talks
to mcp-server-time, mcp-server-git and the bundled demo server, which speak
only the handshake revisions, through one mcpwall: discover, tools/list
filtered, an allowed call, a denied call that never reaches the server, the
audit rows keeping the client's own ``_meta``, one bridged child per caller
reused across requests and never shared between principals.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import venv_tool
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.audit_rows import wait_rows
from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
POLICY = {"version": "1", "default": "allow",
          "tools": {"get_current_time": {"action": "deny", "reason": "no clocks"},
                    "git_log": {"action": "deny", "reason": "no history"},
                    "proxmox_management": {"action": "deny", "reason": "not here"}}}
TOKENS = {"alice": "alice-secret-token", "bob": "bob-secret-token"}


def _meta(name: str) -> dict[str, Any]:
    return {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": name, "version": "7"}}


class Gateway:
    def __init__(self, base: str, work: Path) -> None:
        self.base = base
        self.work = work

    def url(self, name: str) -> str:
        return harness.endpoint(self.base, name)

    def rows(self, sql: str, args: tuple[Any, ...] = (), at_least: int = 0) -> list[Any]:
        """Rows of the audit trail; waits (10 s at most) for ``at_least`` of them:
        the writer commits in groups, after the answer went out."""
        return wait_rows(self.work / "audit.db", sql, args, at_least)

    def executed(self) -> list[dict[str, Any]]:
        """The tool calls the demo server executed."""
        path = self.work / "demo-calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("bridge")
    repo = work / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (work / "policy.json").write_text(json.dumps(POLICY))
    port = harness.free_port()
    lines = ["[listen]", 'host = "127.0.0.1"', f"port = {port}", "",
             "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]",
             'deny_tools_call_as = "jsonrpc_error"', "",
             "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", ""]
    for principal, token in TOKENS.items():
        lines += ["[[auth.tokens]]", f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
                  f'principal = "{principal}"', f'grant = "{principal}-grant"', ""]
    lines += ["[servers.time]", 'transport = "stdio"', "bridge = true",
              f"command = {json.dumps(venv_tool('mcp-server-time'))}", "",
              "[servers.git]", 'transport = "stdio"', "bridge = true",
              f"command = {json.dumps(venv_tool('mcp-server-git'))}",
              f"args = [\"--repository\", {json.dumps(str(repo))}]", "",
              "[servers.demo]", 'transport = "stdio"', "bridge = true",
              f"command = {json.dumps(sys.executable)}", 'args = ["-m", "firewall.demo"]',
              "env = { MCPWALL_DEMO_RECORD_FILE = "
              f"{json.dumps(str(work / 'demo-calls.jsonl'))} }}",
              "",
              "[servers.plain]", 'transport = "stdio"',
              f"command = {json.dumps(venv_tool('mcp-server-time'))}", ""]
    config = work / "mcpwall.toml"
    config.write_text("\n".join(lines))
    log = work / "mcpwall.log"
    with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                            log, cwd=work) as proc:
        harness.wait_for_port(port, proc, log)
        yield Gateway(f"http://127.0.0.1:{port}", work)


def _client(gateway: Gateway, server: str, principal: str = "alice",
            mode: str = MODERN) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKENS[principal]}"},
                              timeout=30)
    return Client(streamable_http_client(gateway.url(server), http_client=http), mode=mode)


def _post(gateway: Gateway, server: str, body: dict[str, Any], principal: str = "alice",
          accept: str = "application/json, text/event-stream") -> httpx.Response:
    params = body.get("params", {})
    headers = {"accept": accept, "mcp-protocol-version": MODERN,
               "mcp-method": body["method"],
               "authorization": f"Bearer {TOKENS[principal]}"}
    if "name" in params:
        headers["mcp-name"] = params["name"]
    return httpx.post(gateway.url(server), json=body, headers=headers, timeout=30)


async def test_pinned_client_to_mcp_server_time(gateway: Gateway) -> None:
    async with _client(gateway, "time") as client:
        assert client.protocol_version == MODERN
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["convert_time"]  # get_current_time denied: filtered
        converted = await client.call_tool("convert_time", {
            "source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"})
        assert not converted.is_error
        assert json.loads(converted.content[0].text)["source"]["timezone"] == "UTC"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert refused.value.error.data["rule"] == "tools.get_current_time"


async def test_pinned_client_to_mcp_server_git(gateway: Gateway) -> None:
    async with _client(gateway, "git") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "git_status" in names and "git_log" not in names
        status = await client.call_tool("git_status", {"repo_path": str(gateway.work / "repo")})
        assert "On branch" in status.content[0].text or "No commits" in status.content[0].text
        with pytest.raises(MCPError):
            await client.call_tool("git_log", {"repo_path": str(gateway.work / "repo")})


async def test_pinned_client_to_the_demo_server_denied_call_never_reaches_it(
        gateway: Gateway) -> None:
    async with _client(gateway, "demo") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "info_tools" in names and "proxmox_management" not in names
        with pytest.raises(MCPError) as refused:
            await client.call_tool("proxmox_management", {"action": "list_nodes"})
        assert refused.value.error.data["rule"] == "tools.proxmox_management"
        allowed = await client.call_tool("info_tools", {"action": "get_host_info"})
    assert [c["tool"] for c in gateway.executed()] == ["info_tools"]
    assert allowed.content
    denied = gateway.rows("SELECT session, method, tool, rule FROM denials WHERE tool = ?",
                          ("proxmox_management",), at_least=1)
    assert [(m, r) for _, m, _, r in denied] == [("tools/call", "tools.proxmox_management")]
    assert denied[0][0].startswith("stateless-")


async def test_concurrent_calls_of_one_caller_share_its_child_each_its_own_answer(
        gateway: Gateway) -> None:
    zones = ["Europe/Paris", "Asia/Tokyo", "America/New_York", "Africa/Cairo", "UTC"]
    got: dict[str, str] = {}
    async with _client(gateway, "time") as client:

        async def convert(zone: str) -> None:
            result = await client.call_tool("convert_time", {
                "source_timezone": "UTC", "time": "12:00", "target_timezone": zone})
            got[zone] = json.loads(result.content[0].text)["target"]["timezone"]

        async with trio.open_nursery() as nursery:
            for zone in zones:
                nursery.start_soon(convert, zone)
    assert got == {zone: zone for zone in zones}


def test_discover_is_answered_from_the_servers_initialize(gateway: Gateway) -> None:
    reply = _post(gateway, "time", {"jsonrpc": "2.0", "id": "d-1", "method": "server/discover",
                                    "params": {"_meta": _meta("raw")}})
    assert reply.status_code == 200
    body = _body(reply)
    assert body["id"] == "d-1"
    result = body["result"]
    assert result["supportedVersions"] == [MODERN]
    assert "tools" in result["capabilities"]
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-time"
    assert result["resultType"] == "complete"
    [(decision,)] = gateway.rows(
        "SELECT decision FROM calls WHERE method = 'server/discover' AND client_info LIKE ?",
        ('%"raw"%',), at_least=1)
    assert decision == "allow"


def test_audit_rows_keep_the_clients_own_meta_and_the_server_gets_none(gateway: Gateway) -> None:
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "info_tools", "arguments": {"action": "get_host_info"},
                       "_meta": _meta("meta-probe")}}
    reply = _post(gateway, "demo", body, accept="application/json")
    answer = reply.json()
    assert answer["id"] == 5 and answer["result"]["resultType"] == "complete"
    rows = gateway.rows("SELECT protocol_version, client_info FROM calls WHERE client_info "
                        "LIKE ?", ('%meta-probe%',), at_least=1)
    assert rows == [(MODERN, '{"name":"meta-probe","version":"7"}')]
    # The demo server got mcpwall's own id, not the client's.
    assert gateway.executed()[-1]["id"].startswith("mcpwall-bridge-")


def test_one_child_per_caller_reused_and_not_shared(gateway: Gateway) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": _meta("x")}}
    for _ in range(3):
        assert _post(gateway, "plain", call).status_code == 400  # no bridge there
        assert _post(gateway, "demo", call, principal="bob").status_code == 200
    starts = gateway.rows(
        "SELECT principal, session FROM events WHERE kind = 'upstream_start' "
        "AND server = 'demo' AND detail LIKE '%\"bridge\":true%'", at_least=2)
    by_principal: dict[str, set[str]] = {}
    for principal, session in starts:
        by_principal.setdefault(principal, set()).add(session)
    # alice's calls (the tests before) went to one child, bob's three to another.
    assert len(by_principal["bob"]) == 1 and len(by_principal["alice"]) == 1
    assert by_principal["bob"].isdisjoint(by_principal["alice"])


def test_bridge_false_answers_unsupported_version(gateway: Gateway) -> None:
    reply = _post(gateway, "plain", {"jsonrpc": "2.0", "id": 41, "method": "tools/list",
                                     "params": {"_meta": _meta("raw")}})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == -32022


async def test_auto_client_speaks_the_new_revision_through_the_bridge(gateway: Gateway) -> None:
    async with _client(gateway, "time", mode="auto") as client:
        assert client.protocol_version == MODERN
        assert [t.name for t in (await client.list_tools()).tools] == ["convert_time"]
    async with _client(gateway, "plain", mode="auto") as client:
        assert client.protocol_version == "2025-11-25"
        assert "convert_time" in [t.name for t in (await client.list_tools()).tools]


def _body(reply: httpx.Response) -> dict[str, Any]:
    if reply.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in reply.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])  # type: ignore[no-any-return]
    return reply.json()  # type: ignore[no-any-return]
