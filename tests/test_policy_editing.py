"""The policy page's pure part: a tool's state under a compiled table, and the edit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from firewall.policy.compiler import compile_policy
from firewall.policy.editing import EditError, set_state, tool_state
from firewall.policy.schema import parse_policy

POLICY: dict[str, Any] = {
    "version": "1", "default": "deny",
    "tools": {
        "read_file": {"action": "allow"},
        "drop_db": {"action": "deny", "reason": "never"},
        "deploy": {"action": "require_approval"},
        "vm_management": {"rules": [{"name": "hold-deletes",
                                     "when": {"action": {"const": "delete"}},
                                     "action": "require_approval"}]},
        "search": {"limits": [{"counter": "s", "window": "minute", "max": 5}]},
        "net_*": {"action": "allow"},
    },
}


def table(data: dict[str, Any]) -> Any:
    policy = parse_policy(json.dumps(data), "p.json")
    return compile_policy(policy, source="p.json").table("vm")


@pytest.mark.parametrize(("tool", "state", "effective"), [
    ("read_file", "allow", "allow"),
    ("drop_db", "deny", "deny"),
    ("deploy", "require_approval", "require_approval"),
    ("vm_management", "custom", "deny"),     # no rule matches: the default
    ("search", "custom", "allow"),
    ("net_scan", "allow", "allow"),          # a glob entry that says only allow
    ("unknown_tool", "default", "deny"),
])
def test_state_is_what_the_table_in_force_does(tool: str, state: str, effective: str) -> None:
    got = tool_state(table(POLICY), "vm", tool, hidden=False)
    assert (got.state, got.effective) == (state, effective)


def test_custom_entries_are_described_not_flattened() -> None:
    got = tool_state(table(POLICY), "vm", "vm_management", hidden=False)
    assert got.rule == "tools.vm_management"
    assert any("hold-deletes" in d and "require_approval" in d for d in got.details)
    search = tool_state(table(POLICY), "vm", "search", hidden=False)
    assert search.details == ["rate limit: s (5 per minute, per grant)"]


def test_a_hidden_tool_is_shown_as_hidden() -> None:
    assert tool_state(table(POLICY), "vm", "read_file", hidden=True).state == "hide"


@pytest.mark.parametrize(("state", "entry"), [
    ("allow", {"action": "allow"}),
    ("deny", {"action": "deny", "reason": "denied in the console by alice"}),
    ("require_approval", {"action": "require_approval"}),
])
def test_setting_a_state_writes_a_plain_entry(state: str, entry: dict[str, Any]) -> None:
    new = set_state(POLICY, "read_file", state, by="alice")
    assert new["tools"]["read_file"] == entry
    assert tool_state(table(new), "vm", "read_file", hidden=False).state == state
    # Nothing else changed, in the same order.
    assert list(new["tools"]) == list(POLICY["tools"])
    assert {k: v for k, v in new["tools"].items() if k != "read_file"} == \
        {k: v for k, v in POLICY["tools"].items() if k != "read_file"}
    assert POLICY["tools"]["read_file"] == {"action": "allow"}  # the input is not touched


def test_default_removes_the_entry_and_hide_lists_the_name() -> None:
    new = set_state(POLICY, "read_file", "default", by="alice")
    assert "read_file" not in new["tools"]
    assert tool_state(table(new), "vm", "read_file", hidden=False).state == "default"
    hidden = set_state(POLICY, "drop_db", "hide", by="alice")
    assert hidden["hide"] == ["drop_db"] and "drop_db" not in hidden["tools"]
    back = set_state(hidden, "drop_db", "deny", by="bob")
    assert "hide" not in back and back["tools"]["drop_db"]["action"] == "deny"


def test_custom_entries_are_replaced_only_when_asked() -> None:
    with pytest.raises(EditError, match="replace_custom"):
        set_state(POLICY, "vm_management", "allow", by="alice")
    new = set_state(POLICY, "vm_management", "deny", by="alice", replace_custom=True)
    assert new["tools"]["vm_management"]["action"] == "deny"


@pytest.mark.parametrize(("tool", "state", "message"), [
    ("read_file", "open", "state: expected one of"),
    ("", "allow", "name one tool"),
    ("*", "deny", "name one tool"),
])
def test_bad_edits_are_refused(tool: str, state: str, message: str) -> None:
    with pytest.raises(EditError, match=message):
        set_state(POLICY, tool, state, by="alice")


