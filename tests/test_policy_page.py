"""The console's policy page through its public faces: the operator API
(`GET /api/policy`, `POST /api/policy/tools`) of a real `mcpwall serve`, and the
page itself in headless chromium, with the MCP SDK client seeing the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from admin_gateway import ALICE, VIEWER, WAIT_SECONDS, bearer, gateway
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from test_admin_console import BrowserScript, chromium

pytestmark = [pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parent / "fixtures" / "console_policy.cjs"


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def backups(folder: Path) -> list[Path]:
    return list(folder.glob("policy.json.*.bak"))


def tools_of(view: dict[str, Any], server: str = "vm") -> dict[str, dict[str, Any]]:
    entry = next(s for s in view["servers"] if s["name"] == server)
    return {t["tool"]: t for t in entry["tools"]}


async def test_the_api_shows_every_tool_and_sets_one(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path) as gw,
        httpx.AsyncClient(timeout=WAIT_SECONDS) as http,
        streamable_http_client(gw.mcp_url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        offered = {t.name for t in (await session.list_tools()).tools}
        view = (await http.get(f"{gw.admin}/api/policy", headers=bearer())).json()
        server = next(s for s in view["servers"] if s["name"] == "vm")
        assert server["file"] == str(tmp_path / "policy.json")
        assert server["applies_to"] == "fleet" and server["read_only"] is None
        tools = tools_of(view)
        # Every tool the server offered, plus the ones the policy names.
        assert offered <= set(tools) and "vm_management" in tools
        assert tools["vm_management"]["state"] == "custom"
        assert any("hold-deletes" in d for d in tools["vm_management"]["details"])
        assert tools["network_management"]["state"] == "default"
        assert tools["network_management"]["seen"] is True
        assert view["may_change"] is True

        edit = {"server": "vm", "tool": "network_management", "state": "deny",
                "sha256": server["sha256"]}
        # A viewer may look, not change.
        viewer = await http.post(f"{gw.admin}/api/policy/tools", json=edit,
                                 headers=bearer(VIEWER))
        assert viewer.status_code == 403
        assert (await http.get(f"{gw.admin}/api/policy",
                               headers=bearer(VIEWER))).json()["may_change"] is False
        # Bad edits: clear errors, nothing written.
        before = file_bytes(tmp_path / "policy.json")
        for body, status, words in [
            ({**edit, "state": "open"}, 400, "state: expected one of"),
            ({**edit, "server": "nope"}, 404, "no server 'nope'"),
            ({**edit, "sha256": "0" * 64}, 409, "changed since the page was loaded"),
            ({**edit, "tool": "vm_management"}, 400, "replace_custom"),
            ({**edit, "colour": "red"}, 400, "colour"),
        ]:
            answer = await http.post(f"{gw.admin}/api/policy/tools", json=body, headers=bearer())
            assert answer.status_code == status, answer.text
            assert words in answer.json()["error"]
        assert file_bytes(tmp_path / "policy.json") == before
        assert backups(tmp_path) == []

        answer = await http.post(f"{gw.admin}/api/policy/tools", json=edit, headers=bearer())
        assert answer.status_code == 200, answer.text
        change = answer.json()
        assert (change["from"], change["to"], change["by"]) == ("default", "deny", "alice")
        assert change["reload"]["ok"] is True and change["reload"]["changed"] is True
        assert file_bytes(Path(change["backup"])) == before
        saved = json.loads(file_bytes(tmp_path / "policy.json"))
        assert saved["tools"]["network_management"] == {
            "action": "deny", "reason": "denied in the console by alice"}
        assert saved["tools"]["vm_management"] == json.loads(before)["tools"]["vm_management"]

        # In force at once: the agent is refused, with the reason.
        refused = await session.call_tool("network_management", {"action": "list_networks"})
        assert refused.is_error
        assert "denied in the console by alice" in refused.content[0].text  # type: ignore[union-attr]
        view = (await http.get(f"{gw.admin}/api/policy", headers=bearer())).json()
        assert tools_of(view)["network_management"]["state"] == "deny"

        # Back to the default: the entry goes, the call passes again.
        sha = next(s for s in view["servers"] if s["name"] == "vm")["sha256"]
        answer = await http.post(f"{gw.admin}/api/policy/tools", headers=bearer(), json={
            "server": "vm", "tool": "network_management", "state": "default", "sha256": sha})
        assert answer.status_code == 200, answer.text
        allowed = await session.call_tool("network_management", {"action": "list_networks"})
        assert not allowed.is_error

        # Hidden: gone from tools/list, and refused.
        sha = next(s for s in (await http.get(f"{gw.admin}/api/policy", headers=bearer())
                               ).json()["servers"] if s["name"] == "vm")["sha256"]
        answer = await http.post(f"{gw.admin}/api/policy/tools", headers=bearer(), json={
            "server": "vm", "tool": "storage_management", "state": "hide", "sha256": sha})
        assert answer.status_code == 200, answer.text
        assert json.loads(file_bytes(tmp_path / "policy.json"))["hide"] == ["storage_management"]
        listed = {t.name for t in (await session.list_tools()).tools}
        assert "storage_management" not in listed and "network_management" in listed
        hidden = await session.call_tool("storage_management", {"action": "list_disks"})
        assert hidden.is_error and "hidden by policy" in hidden.content[0].text  # type: ignore[union-attr]
        view = (await http.get(f"{gw.admin}/api/policy", headers=bearer())).json()
        assert tools_of(view)["storage_management"]["state"] == "hide"

        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.tool') AS tool, json_extract(detail, '$.to') AS st,"
            " json_extract(detail, '$.by') AS by FROM events WHERE kind = 'policy_edit'"
            " ORDER BY seq", count=3)
        assert [tuple(r) for r in rows] == [("network_management", "deny", "alice"),
                                            ("network_management", "default", "alice"),
                                            ("storage_management", "hide", "alice")]
        reloads = await gw.audit_until(
            "SELECT json_extract(detail, '$.by') AS by FROM events"
            " WHERE kind = 'policy_reload'", count=3)
        assert {r["by"] for r in reloads} == {"alice"}


INTERCEPT = """version: "1"
default: allow
tools:
  info_tools:
    rules:
      - name: no help
        conditions:
          - path: args.action
            op: eq
            value: help
        on_deny: no help here
"""


async def test_toml_and_intercept_policies_are_shown_read_only(tmp_path: Path) -> None:
    policy = tmp_path / "extra.toml"
    policy.write_text('version = "1"\n[tools.info_tools]\naction = "allow"\n')
    intercept = tmp_path / "intercept.yaml"
    intercept.write_text(INTERCEPT)
    servers = ('[servers.vm]\ntransport = "stdio"\ncommand = "python3"\n'
               f'args = ["-m", "firewall.demo"]\npolicy = ["{policy}"]\n'
               '[servers.vm2]\ntransport = "stdio"\ncommand = "python3"\n'
               f'args = ["-m", "firewall.demo"]\npolicy = ["{intercept}"]\n')
    async with gateway(tmp_path, servers=servers) as gw, \
            httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        view = (await http.get(f"{gw.admin}/api/policy", headers=bearer())).json()
        server = next(s for s in view["servers"] if s["name"] == "vm")
        assert server["file"] is None
        assert "only JSON and YAML policy files are edited here" in server["read_only"]
        assert tools_of(view)["info_tools"]["state"] == "allow"
        answer = await http.post(f"{gw.admin}/api/policy/tools", headers=bearer(), json={
            "server": "vm", "tool": "info_tools", "state": "deny"})
        assert answer.status_code == 409 and "edited here" in answer.json()["error"]
        vm2 = next(s for s in view["servers"] if s["name"] == "vm2")
        assert vm2["file"] is None and "is an Intercept policy" in vm2["read_only"]
        assert tools_of(view, "vm2")["info_tools"]["state"] == "custom"
        answer = await http.post(f"{gw.admin}/api/policy/tools", headers=bearer(), json={
            "server": "vm2", "tool": "info_tools", "state": "deny"})
        assert answer.status_code == 409 and "Intercept policy" in answer.json()["error"]


@pytest.mark.node
async def test_the_policy_page_in_chromium(tmp_path: Path) -> None:
    browser = chromium()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with gateway(tmp_path) as gw, streamable_http_client(gw.mcp_url) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        listed = await session.call_tool("snapshot_management",
                                         {"action": "list", "vm_name": "web-01"})
        assert not listed.is_error

        async def run(token: str, state: str | None, profile: str) -> dict[str, Any]:
            config = {"admin": gw.admin, "token": token, "server": "vm",
                      "tool": "snapshot_management", "state": state,
                      "userDataDir": str(tmp_path / profile), "screenshots": str(shots),
                      "chromium": browser}
            script = BrowserScript(SCRIPT, config, tmp_path)
            await script.start()
            try:
                with trio.fail_after(120):  # chromium starts slowly on a loaded machine
                    return await script.result()
            finally:
                await script.stop()

        seen = await run(ALICE, "deny", "alice-profile")
        assert seen["before"] == "state-default" and seen["after"] == "state-deny"
        assert seen["disabled"] is False and seen["error"] == "" and seen["consoleErrors"] == []
        assert "default -> deny (saved; backup" in seen["status"]
        assert "fleet-wide file" in seen["note"]
        assert {"vm_management", "snapshot_management",
                "network_management"} <= set(seen["tools"])
        refused = await session.call_tool("snapshot_management",
                                          {"action": "list", "vm_name": "web-01"})
        assert refused.is_error
        assert "denied in the console by alice" in refused.content[0].text  # type: ignore[union-attr]

        viewer = await run(VIEWER, None, "viewer-profile")
        assert viewer["before"] == "state-deny" and viewer["disabled"] is True
        assert viewer["note"].startswith("Read-only: you are a viewer")
        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.by') AS by FROM events WHERE kind = 'policy_edit'")
        assert [r["by"] for r in rows] == ["alice"]
    for shot in ("policy-deny.png", "policy-view.png"):
        assert (await trio.Path(shots / shot).stat()).st_size > 0
