"""``hide``: hidden tools are refused before any rule and dropped from tools/list."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import mcpwall_argv
from sdk_scenarios import stdio_session

from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.schema import PolicyError, parse_policy
from firewall.protocol import mcp

CALLER = Caller("agent", "g1")


def engine(doc: dict[str, object]) -> Engine:
    return Engine(compile_policy(parse_policy(json.dumps(doc), "p.json")))


def call(e: Engine, tool: str, args: dict[str, object] | None = None) -> tuple[str, str]:
    d = e.decide(mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments=args or {}), CALLER, "s", "x")
    return d.action, d.rule


def test_hidden_tool_is_refused_before_its_own_allow_and_not_listed() -> None:
    e = engine({"version": "1", "default": "allow", "hide": ["delete_account", "a*b"],
                "tools": {"delete_account": {"action": "allow"}, "delete_*": {}}})
    assert call(e, "delete_account") == ("deny", "hide")
    d = e.decide(mcp.Call(mcp.TOOLS_CALL, tool="delete_account"), CALLER, "s", "x")
    assert d.reason == 'Tool "delete_account" is hidden by policy'
    assert not e.tool_visible("delete_account", CALLER, "s")
    # a name in hide is a name, not a glob
    assert call(e, "a*b") == ("deny", "hide")
    assert call(e, "axb") == ("allow", "default")
    assert call(e, "delete_other") == ("allow", "tools.delete_*")
    assert e.tool_visible("delete_other", CALLER, "s")


def test_hide_star_hides_every_tool_but_not_prompts() -> None:
    e = engine({"version": "1", "default": "allow", "hide": ["*"],
                "tools": {"search": {"action": "allow"}}})
    assert call(e, "search") == ("deny", "hide")
    assert call(e, "anything") == ("deny", "hide")
    assert not e.tool_visible("search", CALLER, "s")
    d = e.decide(mcp.Call(mcp.PROMPTS_GET, prompt="p"), CALLER, "s", "x")
    assert d.action == "allow"


def test_hide_across_fleet_and_server_files() -> None:
    from firewall.policy.compiler import compile_policies
    from firewall.policy.schema import LoadedPolicy
    fleet = LoadedPolicy(parse_policy('{"default":"allow","hide":["drop"]}', "f.json"),
                         "f.json", "")
    own = LoadedPolicy(parse_policy('{"default":"allow","tools":{"drop":{}}}', "o.json"),
                       "o.json", "")
    e = Engine(compile_policies([fleet], {"db": [own]}))
    d = e.decide(mcp.Call(mcp.TOOLS_CALL, tool="drop"), CALLER, "db", "x")
    assert (d.action, d.rule) == ("deny", "hide")


def test_empty_hide_entry_is_an_error() -> None:
    with pytest.raises(PolicyError, match=r"hide\[1\]: entry must not be empty"):
        engine({"version": "1", "hide": ["a", " "]})


@pytest.mark.slow
async def test_hide_removes_tools_from_a_real_servers_tools_list(tmp_path: Path) -> None:
    policy = tmp_path / "hide.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow",
                                  "hide": ["snapshot_management", "proxmox_management"]}))
    argv = [*mcpwall_argv(), "wrap", "--policy", str(policy), "--",
            sys.executable, "-m", "firewall.demo"]
    async with stdio_session(argv) as session:
        names = [t.name for t in (await session.list_tools()).tools]
        assert "vm_management" in names
        assert "snapshot_management" not in names and "proxmox_management" not in names
        refused = await session.call_tool("snapshot_management", {"action": "list"})
        assert refused.is_error
        assert "hidden by policy" in refused.content[0].text  # type: ignore[union-attr]
        assert not (await session.call_tool("vm_management", {"action": "list"})).is_error
