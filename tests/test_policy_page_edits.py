"""The policy page's file work in process (no server started): a real
PolicySet, config and reload; what one edit may write, back up and delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from firewall.config import load_config
from firewall.gateway.operator.policy_page import EditBody, PageError, PolicyPage
from firewall.gateway.runtime import reload_policy
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.editing import set_state
from firewall.policy.engine import Engine, PolicySet
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp

CALLER = Caller("agent", "grant-1")
POLICY: dict[str, Any] = {"version": "1", "default": "deny",
                          "tools": {"read_file": {"action": "allow"}}}


def page(tmp: Path, policy: dict[str, Any] | str = POLICY, name: str = "policy.json"
         ) -> tuple[PolicyPage, PolicySet, Path]:
    path = tmp / name
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
    config = tmp / "gw.toml"
    config.write_text(f'[policy]\nfiles = ["{path}"]\n[servers.vm]\ntransport = "stdio"\n'
                      'command = "true"\n')
    policy_set = PolicySet([path])
    return PolicyPage(load_config(config), policy_set, None, reload_policy), policy_set, path


def decide(engine: Engine, tool: str) -> str:
    return engine.decide(mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments={}), CALLER, "vm",
                         "s").action


def action(policy: PolicySet, tool: str) -> str:
    return policy.decide(mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments={}), CALLER, "vm",
                         "s").action


@pytest.mark.parametrize("tool", ["net_*", "?", "[a-z]*", "get_[*]"])
def test_allowing_a_tool_named_like_a_glob_allows_that_one_name(tool: str) -> None:
    new = set_state(POLICY, tool, "allow", by="alice")
    engine = Engine(compile_policy(parse_policy(json.dumps(new), "p.json"), source="p.json"))
    assert decide(engine, tool) == "allow"
    for other in ("net_scan", "x", "get_secrets", "a", "get_x"):
        assert decide(engine, other) == "deny", other
    # The same name set back to default removes that entry, and only it.
    assert set_state(new, tool, "default", by="alice")["tools"] == POLICY["tools"]


async def test_an_edit_of_a_glob_named_tool_through_the_page(tmp_path: Path) -> None:
    p, policy, _ = page(tmp_path)
    change = await p.edit(EditBody("vm", "delete_*", "allow"), "alice")
    assert change["reload"]["ok"]
    assert action(policy, "delete_*") == "allow"
    assert action(policy, "delete_everything") == "deny"
    view = await p.view()
    shown = {t["tool"]: t["state"] for t in view["servers"][0]["tools"]}
    assert shown == {"delete_*": "allow", "read_file": "allow"}


async def test_old_backups_are_pruned_but_other_files_are_left_alone(tmp_path: Path) -> None:
    p, _, _ = page(tmp_path)
    folder = trio.Path(tmp_path)
    mine = [folder / "policy.json.mine.bak", folder / "policy.json.0-old.bak",
            folder / ".20250101T120000Z-0123abcd.bak"]
    for f in mine:
        await f.write_text("keep me")
    for i in range(22):
        await p.edit(EditBody("vm", f"tool_{i}", "allow"), "alice")
    assert [await f.read_text() for f in mine] == ["keep me"] * 3
    made = [f for f in await folder.iterdir() if f.name.startswith("policy.json.2")]
    assert 1 <= len(made) <= 20


async def test_a_file_with_duplicate_keys_is_not_silently_collapsed(tmp_path: Path) -> None:
    # The file in force was loaded before someone added a duplicate key by
    # hand; an edit must not write "the last one wins" as the new policy.
    p, policy, path = page(tmp_path)
    await trio.Path(path).write_text('{"version": "1", "default": "deny", "tools": {'
                    '"rm": {"action": "deny"}, "rm": {"action": "allow"}}}')
    with pytest.raises(PageError) as err:
        await p.edit(EditBody("vm", "read_file", "deny"), "alice")
    assert err.value.status == 422 and "duplicate" in str(err.value)
    assert action(policy, "rm") == "deny"
    assert '"rm": {"action": "deny"}, "rm"' in await trio.Path(path).read_text()
