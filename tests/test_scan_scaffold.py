"""The starter-policy classifier (firewall/policy/scaffold.py) and the coverage
comparison (firewall/policy/coverage.py), with no process: descriptors in,
policy out, and the policy decides as its comments say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import ROOT

from firewall.policy.compiler import compile_policies
from firewall.policy.coverage import coverage
from firewall.policy.decision import Caller, Decision
from firewall.policy.engine import Engine
from firewall.policy.scaffold import (
    Scaffold,
    classify,
    enum_values,
    from_annotations,
    from_description,
    from_name,
    in_format,
    listed_in_description,
    resource_pattern,
    scaffold,
    to_json,
    to_yaml,
)
from firewall.policy.schema import LoadedPolicy, Policy, parse_policy, parse_policy_format
from firewall.protocol import mcp

DEMO_TOOLS: list[dict[str, Any]] = json.loads(
    (ROOT / "firewall" / "demo" / "tools.json").read_text())["tools"]
CALLER = Caller("agent", "grant-1")


def tool(name: str, description: str = "", annotations: dict[str, Any] | None = None,
         **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "description": description,
                           "inputSchema": {"type": "object", "properties": props}}
    if annotations is not None:
        out["annotations"] = annotations
    return out


@pytest.mark.parametrize(("name", "kind"), [
    ("get_current_time", "read"), ("list_vms", "read"), ("searchIssues", "read"),
    ("describe-instance", "read"), ("create_branch", "change"), ("updateUser", "change"),
    ("set_config", "change"), ("write_file", "change"), ("move_file", "change"),
    ("delete_snapshot", "destroy"), ("remove_network", "destroy"), ("drop_table", "destroy"),
    ("git_reset", "destroy"), ("kill_process", "destroy"), ("terminate_instance", "destroy"),
    ("exec_command", "execute"), ("run_script", "execute"), ("shell", "execute"),
    ("eval", "execute"),
    # The most severe word wins.
    ("list_and_delete", "destroy"), ("read_then_run", "execute"),
    # Words, not substrings: "getaway" has no verb, "deleted" is not "delete".
    ("getaway", None), ("vm_tools", None), ("show_deleted", "read"),
])
def test_names(name: str, kind: str | None) -> None:
    found = from_name(name)
    assert (found.kind if found else None) == kind


@pytest.mark.parametrize(("annotations", "kind"), [
    ({"readOnlyHint": True}, "read"),
    # destructiveHint means something only when the tool is not read-only.
    ({"readOnlyHint": True, "destructiveHint": True}, "read"),
    ({"destructiveHint": True}, "destroy"),
    ({"readOnlyHint": False, "destructiveHint": False}, "change"),
    ({"readOnlyHint": False}, "destroy"),  # the spec's default: destructiveHint true
    ({"idempotentHint": True, "openWorldHint": True}, None),
    ({}, None), (None, None), ("readonly", None),
])
def test_annotations(annotations: Any, kind: str | None) -> None:
    found = from_annotations(annotations)
    assert (found.kind if found else None) == kind


@pytest.mark.parametrize(("text", "kind"), [
    ("Shows the working tree status", "read"),
    ("Deletes a file. Lists nothing.", "destroy"),
    ("Records changes to the repository", "change"),
    ("Executes a shell command", "execute"),
    ("A helpful thing.", None),
    # Only the first sentence speaks.
    ("A helpful thing. It deletes everything.", None),
])
def test_descriptions(text: str, kind: str | None) -> None:
    found = from_description(text)
    assert (found.kind if found else None) == kind


def test_annotations_never_make_a_tool_less_severe_than_its_name() -> None:
    plan = classify(tool("delete_everything", annotations={"readOnlyHint": True}))
    assert plan.kind == "destroy"
    assert "the name says delete" in plan.why and "over: annotated readOnlyHint" in plan.why
    # ...and a read-only annotation decides a name with no verb.
    assert classify(tool("branch", annotations={"readOnlyHint": True})).kind == "read"
    # Annotations come before the description, which is read only when nothing else speaks.
    assert classify(tool("thing", "Deletes a thing",
                         annotations={"readOnlyHint": True})).kind == "read"
    assert classify(tool("thing", "Deletes a thing")).kind == "destroy"


def test_unknown_and_free_form_code() -> None:
    plan = classify(tool("frobnicate", "Frobnicates."))
    assert (plan.kind, plan.why) == ("unknown", "could not classify")
    plan = classify(tool("get_stuff", command={"type": "string"}))
    assert plan.kind == "execute" and "free-form command" in plan.why
    # An enumerated command is a choice, not a command line: the tool is split instead.
    plan = classify(tool("get_stuff", command={"enum": ["list", "delete"]}))
    assert plan.argument == "command" and plan.values == {"read": ["list"],
                                                          "destroy": ["delete"]}


def test_enum_values() -> None:
    assert enum_values({"enum": ["a", "b", None]}) == ["a", "b"]
    assert enum_values({"anyOf": [{"enum": ["a"]}, {"const": "b"}, {"type": "null"}]}) == [
        "a", "b"]
    assert enum_values({"anyOf": [{"enum": ["a"]}, {"type": "string"}]}) is None
    assert enum_values({"type": "string"}) is None


def test_values_listed_in_a_description() -> None:
    text = "Does things.\n\nOperations:\n  - list_vms   List\n  - start_vm   Start\n\nMore."
    assert listed_in_description("operation", text) == ["list_vms", "start_vm"]
    assert listed_in_description("action", "Tool.\nActions: list, create, delete.\n") == [
        "list", "create", "delete"]
    assert listed_in_description("action", "Tool.\n- list\n- delete\n") == []


def test_the_demo_vm_tool_splits_like_the_virtualization_pack() -> None:
    vm = next(t for t in DEMO_TOOLS if t["name"] == "vm_management")
    plan = classify(vm)
    assert plan.argument == "action" and plan.values_from == "schema"
    assert plan.values == {
        "read": ["list", "info"],
        "change": ["create", "start", "stop", "clone", "pause", "resume"],
        "destroy": ["delete", "reset"],
    }
    pack = json.loads((ROOT / "rules" / "virtualization.json").read_text())
    rules = {r["name"]: r["when"]["action"] for r in pack["tools"]["vm_management"]["rules"]}
    assert plan.values["read"] == rules["read"]
    assert set(rules["lifecycle"]) <= {*plan.values["change"], *plan.values["destroy"]}
    assert set(plan.values["destroy"]) >= {rules["destroy"]["const"]}


def test_a_portmanteau_without_an_enum_is_split_on_the_values_its_description_lists() -> None:
    proxmox = next(t for t in DEMO_TOOLS if t["name"] == "proxmox_management")
    plan = classify(proxmox)
    assert plan.argument == "operation" and plan.values_from == "description"
    assert plan.values["read"] == ["list_vms", "status", "list_snapshots", "node_status"]
    assert plan.values["destroy"] == ["delete_snapshot"]
    assert plan.values["unknown"] == ["cluster_resources"]


def test_a_value_with_no_verb_takes_the_tools_annotation() -> None:
    plan = classify(tool("widgets", annotations={"readOnlyHint": True},
                         action={"enum": ["summary", "purge"]}))
    assert plan.values == {"read": ["summary"], "destroy": ["purge"]}
    assert "though the tool is annotated readOnlyHint" in plan.value_why["destroy"]


def engine(result: Scaffold, text: str, source: str) -> Engine:
    policy = parse_policy(text, source)
    return Engine(compile_policies([LoadedPolicy(policy, source, "")]))


def decide(e: Engine, name: str, **args: Any) -> Decision:
    return e.decide(mcp.Call(mcp.TOOLS_CALL, tool=name, arguments=args), CALLER, "s", "x")


EXPECTED = {"read": "allow", "change": "allow", "destroy": "pending", "execute": "pending",
            "unknown": "pending"}


@pytest.mark.parametrize("writer", [to_yaml, to_json], ids=["yaml", "json"])
def test_the_starter_policy_decides_as_its_comments_say(writer: Any) -> None:
    tools = [*DEMO_TOOLS, tool("get_time", annotations={"readOnlyHint": True}),
             tool("git_commit"), tool("rm_rf"), tool("run"), tool("frob")]
    result = scaffold(tools, server="demo", change_limit=3)
    source = "scan.yaml" if writer is to_yaml else "scan.json"
    text = writer(result)
    checked = 0
    for plan in result.tools:
        cases = ([(kind, {plan.argument: v}) for kind, vs in plan.values.items() for v in vs]
                 if plan.argument else [(plan.kind, {})])
        for kind, args in cases:
            e = engine(result, text, source)  # fresh buckets for each case
            d = decide(e, plan.name, **args)
            assert d.action == EXPECTED[kind], (plan.name, args, kind, d)
            if kind == "change":
                for _ in range(2):
                    assert decide(e, plan.name, **args).action == "allow"
                assert decide(e, plan.name, **args).action == "limited"
            if kind in ("destroy", "execute", "unknown"):
                assert "approval" in (d.reason or "")
            checked += 1
        if plan.argument:
            assert decide(engine(result, text, source), plan.name,
                          **{plan.argument: "not-a-value"}).action == "deny"
    assert checked >= 60
    assert decide(engine(result, text, source), "added_later").action == "deny"


def test_yaml_comments_carry_the_reasons_and_both_writers_agree() -> None:
    result = scaffold(DEMO_TOOLS, server="demo")
    text = to_yaml(result)
    assert "# vm_management: split on 'action'" in text
    assert "# delete, reset: the names say delete, reset: held for approval" in text
    as_yaml = msgspec.to_builtins(parse_policy(text, "x.yaml"))
    as_json = msgspec.to_builtins(parse_policy(to_json(result), "x.json"))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "description"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    assert strip(as_yaml) == strip(as_json)
    assert as_json["tools"]["vm_management"]["rules"][2]["description"].startswith("delete")


def test_awkward_names_survive_the_yaml_writer() -> None:
    names = ["true", "null", "a b", "x: y", "#hash", "-dash", "日本", "'q'", "yes"]
    result = scaffold([tool(n) for n in names],
                      prompts=[{"name": "no"}],
                      resources=[{"uri": "file:///a b"}],
                      templates=[{"uriTemplate": "db://{table}/rows"}])
    policy = parse_policy(to_yaml(result), "x.yaml")
    assert set(policy.tools) == set(names)
    assert set(policy.prompts) == {"no"}
    assert set(policy.resources) == {"db://*/rows", "file:///a b"}


def test_resources_and_prompts_are_allowed_and_templates_become_globs() -> None:
    assert resource_pattern("file:///{path}") == "file:///*"
    result = scaffold([], prompts=[{"name": "p"}],
                      resources=[{"uri": "test://static/1"}, {"uri": "other://x"}],
                      templates=[{"uriTemplate": "test://static/{id}"}])
    assert set(result.policy["resources"]) == {"test://static/*", "other://x"}
    assert result.policy["prompts"] == {"p": {"description": "a prompt only returns messages: "
                                                             "allowed"}}


def loaded(doc: dict[str, Any], source: str = "p.json") -> LoadedPolicy:
    return LoadedPolicy(msgspec.convert(doc, Policy), source, "")


def test_coverage_names_both_sides() -> None:
    policy = loaded({"version": "1", "default": "deny", "tools": {
        "git_status": {}, "git_push": {}, "git_diff*": {}, "svn_*": {}},
        "prompts": {"summary": {}}})
    tools = [tool("git_status"), tool("git_diff"), tool("git_diff_staged"), tool("git_reset")]
    report = coverage([policy], tools, [{"name": "commit_message"}])
    assert not report.fits
    assert [(g.table, g.name) for g in report.uncovered] == [
        ("tools", "git_reset"), ("prompts", "commit_message")]
    assert [(g.name, g.where) for g in report.missing] == [
        ("git_push", "p.json: tools.git_push"), ("svn_*", "p.json: tools[\"svn_*\"]"),
        ("summary", "p.json: prompts.summary")]
    assert report.default == "deny"


def test_coverage_of_a_scaffold_is_complete_and_lint_findings_come_along() -> None:
    result = scaffold(DEMO_TOOLS)
    report = coverage([loaded(result.policy)], DEMO_TOOLS)
    assert report.fits and report.findings == []
    stale = loaded({"version": "1", "tools": {"vm_management": {
        "rules": [{"when": {"action": ["list", "explode"]}}]}}})
    report = coverage([stale], [t for t in DEMO_TOOLS if t["name"] == "vm_management"])
    assert report.fits
    assert [f.message for f in report.findings] == ["values ['explode'] are not in the "
                                                    "tool's enum"]


def test_rules_pack_fits_the_demo_tools() -> None:
    pack = Path(ROOT / "rules" / "virtualization.json")
    report = coverage([LoadedPolicy(parse_policy(pack.read_bytes(), str(pack)), str(pack), "")],
                      DEMO_TOOLS)
    assert report.fits, report


@pytest.mark.parametrize(("fmt", "source"), [("policylayer", "scan.json"),
                                             ("intercept", "scan.yaml")])
def test_other_formats_deny_what_mcpwall_would_hold(fmt: str, source: str) -> None:
    tools = [*DEMO_TOOLS, tool("get_time", annotations={"readOnlyHint": True}),
             tool("git_commit"), tool("rm_rf")]
    result = scaffold(tools, change_limit=2)
    text, notes = in_format(result, fmt)
    policy, written = parse_policy_format(text, source)
    assert written == fmt
    e = Engine(compile_policies([LoadedPolicy(policy, source, "")]))
    assert decide(e, "get_time").action == "allow"
    assert decide(e, "vm_management", action="list").action == "allow"
    for held in (decide(e, "rm_rf"), decide(e, "vm_management", action="delete"),
                 decide(e, "vm_management", action="explode")):
        assert held.action == "deny" and "approval" in (held.reason or ""), held
    changes = [decide(e, "git_commit").action for _ in range(3)]
    if fmt == "policylayer":
        assert changes == ["allow", "allow", "limited"]
        assert notes == []
    else:  # mcpwall does not write Intercept's rate_limit yet: the notes say so
        assert changes == ["allow"] * 3
        assert "tools.git_commit.limits: cannot be expressed (dropped)" in notes
        assert "# Dropped: tools.git_commit.limits" in text
    assert decide(e, "added_later").action == "deny"


def test_items_without_a_name_are_skipped() -> None:
    result = scaffold([{"name": 3}, {"description": "x"}, {"name": ""}, tool("get_a"),
                       tool("get_a")], prompts=[{"name": None}, {"name": "p"}])
    assert [p.name for p in result.tools] == ["get_a"]
    assert set(result.policy["prompts"]) == {"p"}
    parse_policy(to_yaml(result), "x.yaml")


@pytest.mark.parametrize("writer", [to_yaml, to_json], ids=["yaml", "json"])
def test_a_hostile_tool_name_is_one_tool_not_a_glob(writer: Any) -> None:
    # A server that names a tool "*" (or "get_*") and claims it read-only must
    # not get a policy that lets every other tool through.
    hostile = [tool("*", annotations={"readOnlyHint": True}),
               tool("get_*", annotations={"readOnlyHint": True}),
               tool("?"), tool("rm_rf")]
    result = scaffold(hostile, prompts=[{"name": "*"}],
                      resources=[{"uri": "file:///*"}],
                      templates=[{"uriTemplate": "db://[a]{t}?"}])
    source = "scan.yaml" if writer is to_yaml else "scan.json"
    e = engine(result, writer(result), source)
    assert decide(e, "*").action == "allow"
    assert decide(e, "get_*").action == "allow"
    for other in ("delete_everything", "get_secrets", "x"):
        assert decide(e, other).action == "deny", other
    assert decide(e, "rm_rf").action == "pending"
    prompt = e.decide(mcp.Call(mcp.PROMPTS_GET, prompt="other"), CALLER, "s", "x")
    assert prompt.action == "deny"
    for uri, action in (("file:///etc/shadow", "deny"), ("file:///*", "allow"),
                        ("db://[a]rows?", "allow"), ("db://arows?", "deny"),
                        ("db://[a]rowsX", "deny")):
        got = e.decide(mcp.Call(mcp.RESOURCES_READ, uri=uri), CALLER, "s", "x")
        assert got.action == action, uri


@pytest.mark.parametrize(("fmt", "source"), [("policylayer", "scan.json"),
                                             ("intercept", "scan.yaml")])
def test_a_hostile_tool_name_is_not_a_glob_in_other_formats(fmt: str, source: str) -> None:
    result = scaffold([tool("*", annotations={"readOnlyHint": True}),
                       tool("get_*", annotations={"readOnlyHint": True})])
    text, _ = in_format(result, fmt)
    policy, _ = parse_policy_format(text, source)
    e = Engine(compile_policies([LoadedPolicy(policy, source, "")]))
    for other in ("delete_everything", "get_secrets"):
        assert decide(e, other).action == "deny", (fmt, other)


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\r", "\n"])
def test_a_line_break_in_a_name_cannot_write_policy_through_a_comment(brk: str) -> None:
    # YAML breaks lines at U+2028, U+2029 and NEL too: a name carrying one
    # ended the comment written above its entry, and the rest became policy
    # ("rm_rf: {}": a tool the server never listed, allowed).
    inject = f"x{brk}  rm_rf: {{}}{brk}  #"
    result = scaffold([tool(inject), tool("widgets", action={"enum": ["list", inject]})],
                      server=f"s{brk}default: allow{brk}#")
    for fmt in ("mcpwall", "intercept"):
        text, _ = in_format(result, fmt)
        policy = parse_policy(text, "x.yaml")
        assert "rm_rf" not in policy.tools, fmt
        e = Engine(compile_policies([LoadedPolicy(policy, "x.yaml", "")]))
        assert decide(e, "rm_rf").action == "deny"
