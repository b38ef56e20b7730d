"""The rule packs in rules/, checked against the real servers' tools/list.

Each pack must lint clean against the live tool list (every entry names a real
tool, every condition a real argument, every ``in`` value a real enum value),
cover every tool, and decide every action the way its description says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import ROOT, node_tool, venv_tool
from sdk_scenarios import stdio_session

from firewall.policy.compiler import compile_policies
from firewall.policy.decision import Caller, Decision
from firewall.policy.engine import Engine
from firewall.policy.lint import lint
from firewall.policy.schema import LoadedPolicy, load_policy
from firewall.protocol import mcp

RULES = ROOT / "rules"
CALLER = Caller("agent", "grant-1")


async def live_tools(argv: list[str]) -> list[dict[str, Any]]:
    async with stdio_session(argv) as session:
        listed = await session.list_tools()
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]


def engine_for(pack: LoadedPolicy) -> Engine:
    return Engine(compile_policies([pack]))


def decide(engine: Engine, tool: str, **args: Any) -> Decision:
    return engine.decide(mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments=args), CALLER, "s", "x")


def assert_lints_clean(pack: LoadedPolicy, tools: list[dict[str, Any]]) -> None:
    findings = lint([pack], tools)
    problems = [f for f in findings if f.level != "info"]
    assert problems == []
    uncovered = [f for f in findings if f.where.startswith("tools/list")]
    assert uncovered == [], "every tool of the server has an entry"
    names = {t["name"] for t in tools}
    assert set(pack.policy.tools) == names


@pytest.mark.slow
async def test_virtualization_pack_against_demo_server() -> None:
    tools = await live_tools([sys.executable, "-m", "firewall.demo"])
    pack = load_policy(RULES / "virtualization.json")
    assert_lints_clean(pack, tools)
    engine = engine_for(pack)
    destructive = {"delete", "restore", "execute_code", "execute_file", "session_destroy"}
    read_only = {"list", "info", "list_networks", "list_adapters", "list_controllers",
                 "list_disks", "host_info", "vbox_version", "ostypes", "metrics",
                 "session_list", "session_read_file", "list_tools", "tool_info",
                 "tool_schema", "help"}
    checked = 0
    for tool in tools:
        props = tool["inputSchema"].get("properties", {})
        key = "action" if "action" in props else "operation"
        actions = props[key].get("enum")
        if actions is None:  # proxmox_management: a free-form operation
            actions = ["list_vms", "status", "start_vm", "stop_vm", "delete_snapshot"]
        for action in actions:
            d = decide(engine, tool["name"], **{key: action})
            assert d.rule.startswith(f"virtualization:tools.{tool['name']}.rules["), (tool, d)
            compiled_rule = d.rule.rsplit("[", 1)[1].rstrip("]")
            if action in destructive or action.startswith("remove_") or action.startswith(
                    "delete_"):
                assert d.action == "pending", (tool["name"], action, d)
            elif action in read_only or compiled_rule == "read":
                assert (d.action, compiled_rule) == ("allow", "read"), (tool["name"], action)
            else:
                fresh = engine_for(pack)  # counters are shared between actions
                assert decide(fresh, tool["name"], **{key: action}).action == "allow", (
                    tool["name"], action)
                limited = [decide(fresh, tool["name"], **{key: action}) for _ in range(12)]
                assert limited[-1].action == "limited" and limited[-1].retry_after, (
                    tool["name"], action)
            checked += 1
        unknown = decide(engine, tool["name"], **{key: "format_disk"})
        assert unknown.action == "deny"
    assert checked >= 50


async def test_virtualization_pack_seed_counter_and_names() -> None:
    engine = engine_for(load_policy(RULES / "virtualization.json"))
    for _ in range(10):
        assert decide(engine, "vm_management", action="start", vm_name="ci-7").action == "allow"
    refused = decide(engine, "vm_management", action="stop", vm_name="ci-7")
    assert refused.action == "limited" and "vm_management_rate" in (refused.reason or "")
    assert decide(engine, "vm_management", action="list").action == "allow"
    bad = decide(engine, "vm_management", action="info", vm_name="$(reboot)")
    assert bad.action == "invalid_arguments" and "vm_name" in (bad.reason or "")


@pytest.mark.slow
async def test_git_pack_against_mcp_server_git(tmp_path: Path) -> None:
    await trio.run_process(["git", "init", "-q", str(tmp_path)])
    tools = await live_tools([venv_tool("mcp-server-git"), "--repository", str(tmp_path)])
    pack = load_policy(RULES / "git.json")
    assert_lints_clean(pack, tools)
    engine = engine_for(pack)
    repo = str(tmp_path)
    assert decide(engine, "git_status", repo_path=repo).action == "allow"
    assert decide(engine, "git_diff", repo_path=repo, target="main").action == "allow"
    injected = decide(engine, "git_diff", repo_path=repo, target="--output=/etc/passwd")
    assert injected.action == "invalid_arguments" and "target" in (injected.reason or "")
    assert decide(engine, "git_add", repo_path=repo, files=["a", "-A"]).action == (
        "invalid_arguments")
    assert decide(engine, "git_add", repo_path=repo, files=["a", "b"]).action == "allow"
    assert decide(engine, "git_branch", repo_path=repo, branch_type="local",
                  contains=None).action == "allow"
    assert decide(engine, "git_reset", repo_path=repo).action == "pending"
    assert decide(engine, "git_push", repo_path=repo).action == "deny"


@pytest.mark.slow
@pytest.mark.node
async def test_filesystem_pack_against_server_filesystem(tmp_path: Path) -> None:
    tools = await live_tools([node_tool("mcp-server-filesystem"), str(tmp_path)])
    pack = load_policy(RULES / "filesystem.json")
    assert_lints_clean(pack, tools)
    engine = engine_for(pack)
    path = str(tmp_path / "a.txt")
    assert decide(engine, "read_text_file", path=path).action == "allow"
    assert decide(engine, "read_multiple_files", paths=[path, 3]).action == "invalid_arguments"
    assert decide(engine, "edit_file", path=path, edits=[], dryRun=True).rule == (
        "filesystem:tools.edit_file.rules[preview]")
    assert decide(engine, "write_file", path=path, content="x").action == "allow"
    assert decide(engine, "move_file", source=path, destination=path + ".b").action == (
        "pending")
    assert decide(engine, "delete_file", path=path).action == "deny"


def test_packs_are_valid_json_with_names() -> None:
    for path in sorted(RULES.glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc.get("name") == path.stem
        load_policy(path)
