"""PolicyLayer's formats: detection, loading, each operator, and Intercept's
evaluation order against a reference interpreter written from its engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.cli.policy import convert as convert_command
from firewall.policy.compiler import compile_policy
from firewall.policy.convert import convert
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.foreign import format_of_document
from firewall.policy.operators import go_text
from firewall.policy.schema import PolicyError, parse_policy, parse_policy_format, read_document
from firewall.protocol import mcp

CALLER = Caller("agent", "g1")


def engine_of(text: str, source: str = "p.yaml") -> Engine:
    return Engine(compile_policy(parse_policy(text, source)))


def decide(e: Engine, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    d = e.decide(mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments=args), CALLER, "s", "x")
    return d.action == "allow", d.rule


# -- detection ----------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "rules").glob("*.json")), ids=lambda p: p.name)
def test_existing_packs_are_read_as_mcpwall(path: Path) -> None:
    assert parse_policy_format(path.read_bytes(), str(path))[1] == "mcpwall"


def test_seed_is_mcpwall_and_the_issue_example_is_policylayer() -> None:
    seed = ('{"version":"1","default":"deny","tools":{"vm_management":{"limits":[{"counter":'
            '"c","window":"minute","max":10,"scope":"grant"}]}}}')
    assert parse_policy_format(seed, "s.json")[1] == "policylayer"  # hosted keys only...
    assert parse_policy(seed).tools["vm_management"].limits[0].max == 10  # ...read as today
    issue = ('{"version":"1","default":"deny","hide":["delete_account"],"all_tools":{"limits":[]},'
             '"tools":{"create_charge":{"require":[],"deny_if":[],"limits":[]}}}')
    policy, fmt = parse_policy_format(issue, "i.json")
    assert fmt == "policylayer" and policy.hide == ["delete_account"]
    e = Engine(compile_policy(policy))
    assert decide(e, "create_charge", {}) == (True, "tools.create_charge")
    assert decide(e, "delete_account", {}) == (False, "hide")
    assert decide(e, "other", {}) == (False, "default")


def test_hosted_lists_and_rate_limit_block_decide() -> None:
    e = engine_of(json.dumps({
        "version": "1", "default": "deny",
        "tools": {
            "refund": {"require": [{"path": "args.reason", "op": "exists", "value": True}],
                       "deny_if": [{"path": "args.amount", "op": "gt", "value": 10000,
                                    "reason": "too large"}],
                       "rate_limit": {"max": 2, "window": 60}},
            "drop": {"action": "deny", "reason": "never"}}}), "h.json")
    assert decide(e, "refund", {"amount": 5}) == (False, "tools.refund.require[0]")
    assert decide(e, "refund", {"amount": 50000, "reason": "x"}) == (False,
                                                                      "tools.refund.deny_if[0]")
    assert decide(e, "refund", {"amount": 5, "reason": "x"}) == (True, "tools.refund")
    assert decide(e, "refund", {"amount": 5, "reason": "x"}) == (True, "tools.refund")
    d = e.decide(mcp.Call(mcp.TOOLS_CALL, tool="refund", arguments={"amount": 5, "reason": "x"}),
                 CALLER, "s", "x")
    assert d.action == "limited"  # two a minute, per session
    d = e.decide(mcp.Call(mcp.TOOLS_CALL, tool="refund", arguments={"amount": 5, "reason": "x"}),
                 CALLER, "s", "another-session")
    assert d.action == "allow"
    assert decide(e, "drop", {}) == (False, "tools.drop")


GITHUB_LIKE = """
version: "1"
description: "GitHub MCP server policies (counters left out)"
hide: [transfer_repository, list_webhooks]
tools:
  create_issue:
    rules:
      - name: "feature titles"
        conditions:
          - {path: "args.title", op: "regex", value: "^feat"}
        on_deny: "Titles start with feat"
  delete_repository:
    rules:
      - name: "block repo deletion"
        action: "deny"
        on_deny: "Repository deletion is not permitted via AI agents"
  "*":
    rules:
      - name: "no prod"
        conditions:
          - {path: "args.repo", op: "neq", value: "prod"}
"""

STRIPE_LIKE = """
version: "1"
description: "Stripe MCP server policies (counters left out)"
default: deny
tools:
  create_charge:
    rules:
      - name: "max single charge"
        conditions: [{path: "args.amount", op: "lte", value: 50000}]
        on_deny: "Single charge cannot exceed $500.00"
      - name: "allowed currencies"
        conditions: [{path: "args.currency", op: "in", value: ["usd", "eur"]}]
        on_deny: "Only USD and EUR charges are permitted"
  create_refund:
    rules:
      - name: "refund limit"
        conditions: [{path: "args.amount", op: "lte", value: 10000}]
  delete_customer:
    rules:
      - name: "block destructive action"
        action: "deny"
  list_customers:
    rules: []
"""


def test_github_like_intercept_policy() -> None:
    assert parse_policy_format(GITHUB_LIKE, "g.yaml")[1] == "intercept"
    e = engine_of(GITHUB_LIKE, "g.yaml")
    assert decide(e, "create_issue", {"title": "feat: x", "repo": "a"}) == (True,
                                                                           "tools.create_issue")
    assert decide(e, "create_issue", {"title": "fix", "repo": "a"}) == (
        False, "tools.create_issue.checks[feature titles]")
    # tool rules first, then the "*" rules
    assert decide(e, "create_issue", {"title": "feat", "repo": "prod"}) == (
        False, "all_tools.checks[no prod]")
    # default allow: an unlisted tool still passes the "*" rules
    assert decide(e, "search", {"repo": "a"}) == (True, "default")
    assert decide(e, "search", {"repo": "prod"}) == (False, "all_tools.checks[no prod]")
    assert decide(e, "transfer_repository", {}) == (False, "hide")
    assert decide(e, "delete_repository", {"repo": "a"})[0] is False
    assert e.tool_visible("delete_repository", CALLER, "s")  # Intercept lists it
    assert not e.tool_visible("list_webhooks", CALLER, "s")


def test_stripe_like_intercept_policy() -> None:
    e = engine_of(STRIPE_LIKE, "s.yaml")
    ok = {"amount": 5000, "currency": "usd"}
    assert decide(e, "create_charge", ok) == (True, "tools.create_charge")
    assert decide(e, "create_charge", {**ok, "amount": 60000}) == (
        False, "tools.create_charge.checks[max single charge]")
    assert decide(e, "create_charge", {**ok, "currency": "gbp"}) == (
        False, "tools.create_charge.checks[allowed currencies]")
    assert decide(e, "create_charge", {"currency": "usd"})[0] is False  # absent amount
    assert decide(e, "list_customers", {}) == (True, "tools.list_customers")
    assert decide(e, "delete_customer", {})[0] is False
    assert decide(e, "unlisted", {}) == (False, "default")


@pytest.mark.parametrize(("doc", "message"), [
    ('{"version":"1","tools":{"t":{"rules":[{"name":"a","on_deny":"x","conditon":[]}]}}}',
     r"tools\.t\.rules\[0\]: Object contains unknown field `conditon`"),
    ('{"version":"1","tools":{"t":{"rules":[{"on_deny":"x","conditions":[{"path":"args.a",'
     '"op":"eq","value":1}]}]}}}', r"tools\.t\.rules\[0\]: rule must have a name"),
    ('{"version":"1","tools":{"t":{"rules":[{"name":"a","conditions":[{"path":"a",'
     '"op":"eq","value":1}]}]}}}', r"conditions\[0\]\.path: must start with"),
    ('{"version":"1","tools":{"t":{"rules":[{"name":"a","conditions":[{"path":"args.a",'
     '"op":"lt","value":"x"}]}]}}}', r"requires a numeric value"),
    ('{"version":"1","tools":{"t":{"rules":[{"name":"a","action":"deny","on_deny":"x",'
     '"conditions":[{"path":"args.a","op":"eq","value":1}]}]}}}',
     r"deny rules must not have conditions"),
    ('{"version":"1","tools":{"t":{"rules":[{"name":"a","rate_limit":"5/week"}]}}}',
     r"rules\[0\]\.rate_limit: must be \"N/window\""),
    ('{"version":"1","hide":["a","a"],"tools":{"t":{"rules":[{"name":"a","action":"evaluate",'
     '"conditions":[{"path":"args.a","op":"exists","value":true}]}]}}}',
     r'hide: duplicate entry'),
])
def test_intercept_errors_name_the_path(doc: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        compile_policy(parse_policy(doc, "i.json"))


# -- operators, one table each ---------------------------------------------------------

OPERATOR_CASES: list[tuple[str, Any, dict[str, Any], bool]] = [
    # op, value, arguments, holds
    ("eq", "main", {"a": "main"}, True),
    ("eq", "main", {"a": "dev"}, False),
    ("eq", 5, {"a": 5.0}, True),
    ("eq", 5, {"a": "5"}, True),          # Go %v text: "5" == "5"
    ("eq", True, {"a": "true"}, True),    # "true" == "true"
    ("eq", 1000000, {"a": "1000000"}, True),  # a policy int prints as an int...
    ("eq", "1000000", {"a": 1000000}, False),  # ...a call's number as float64: "1e+06"
    ("eq", "x", {}, False),               # absent fails
    ("eq", None, {"a": None}, True),      # "<nil>" == "<nil>"
    ("neq", "draft", {"a": "final"}, True),
    ("neq", "draft", {"a": "draft"}, False),
    ("neq", "draft", {}, False),          # absent fails neq too
    ("in", ["usd", "eur"], {"a": "eur"}, True),
    ("in", ["usd", "eur"], {"a": "gbp"}, False),
    ("in", [1, 2], {"a": 2.0}, True),
    ("not_in", ["admin"], {"a": "user"}, True),
    ("not_in", ["admin"], {"a": "admin"}, False),
    ("not_in", ["admin"], {}, False),
    ("lt", 100, {"a": 99.5}, True),
    ("lt", 100, {"a": 100}, False),
    ("lt", 100, {"a": "5"}, False),       # a string is not a number
    ("lte", 50000, {"a": 50000}, True),
    ("lte", 50000, {"a": 50001}, False),
    ("lte", 1, {"a": True}, False),       # nor is a boolean
    ("gt", 0, {"a": 1}, True),
    ("gt", 0, {"a": 0}, False),
    ("gte", 1, {"a": 1}, True),
    ("gte", 1, {"a": 0.5}, False),
    ("regex", "^feat/", {"a": "feat/x"}, True),
    ("regex", "feat", {"a": "a-feat-b"}, True),   # searched, not anchored
    ("regex", "^feat/", {"a": "fix/x"}, False),
    ("regex", "1", {"a": 1}, False),      # only strings
    ("contains", "test", {"a": "a test run"}, True),
    ("contains", "test", {"a": "prod"}, False),
    ("contains", "b", {"a": ["a", "b"]}, True),
    ("contains", 2, {"a": [1, 2.0]}, True),
    ("contains", "b", {"a": {"b": 1}}, False),
    ("exists", True, {"a": 0}, True),
    ("exists", True, {"a": None}, False),  # null is absent
    ("exists", True, {}, False),
    ("exists", False, {}, True),
    ("exists", False, {"a": None}, True),
    ("exists", False, {"a": ""}, False),
    # Numbers beyond float64 (the JSON decoder gives Python ints of any size):
    # they compare as infinities, as Go's float64 reading would, never raise.
    ("gt", 1000, {"a": 10**400}, True),
    ("lte", 1000, {"a": 10**400}, False),
    ("lt", 0, {"a": -(10**400)}, True),
    ("eq", 5, {"a": 10**400}, False),
    ("in", [1, 2], {"a": 10**400}, False),
    ("contains", 3, {"a": [10**400, 3]}, True),
    ("neq", "x", {"a": 10**400}, True),
]


@pytest.mark.parametrize(("op", "value", "args", "holds"), OPERATOR_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OPERATOR_CASES)])
def test_operator(op: str, value: Any, args: dict[str, Any], holds: bool) -> None:
    doc = {"version": "1", "tools": {"t": {"rules": [
        {"name": "r", "conditions": [{"path": "args.a", "op": op, "value": value}]}]}}}
    e = engine_of(json.dumps(doc), "o.json")
    assert decide(e, "t", args)[0] is holds
    # the same test in the hosted format's require (holds) and deny_if (denies)
    hosted = {"version": "1", "default": "deny", "tools": {"t": {
        "require": [{"path": "args.a", "op": op, "value": value}]}}}
    assert decide(engine_of(json.dumps(hosted), "h.json"), "t", args)[0] is holds
    hosted["tools"] = {"t": {"deny_if": [{"path": "args.a", "op": op, "value": value}]}}
    assert decide(engine_of(json.dumps(hosted), "h.json"), "t", args)[0] is not holds


def test_nested_paths_walk_objects_only() -> None:
    doc = {"version": "1", "tools": {"t": {"rules": [
        {"name": "r", "conditions": [{"path": "args.meta.key", "op": "eq", "value": "v"}]}]}}}
    e = engine_of(json.dumps(doc), "n.json")
    assert decide(e, "t", {"meta": {"key": "v"}})[0]
    assert not decide(e, "t", {"meta": [{"key": "v"}]})[0]
    assert not decide(e, "t", {"meta": "v"})[0]


def test_go_text_of_floats() -> None:
    assert [go_text(v, True) for v in (5, 0.5, 1e6, 123456, 1234567, 1e-5, -2.5)] == [
        "5", "0.5", "1e+06", "123456", "1.234567e+06", "1e-05", "-2.5"]


# -- the reference: Intercept's Engine.Evaluate, transcribed -------------------------

def _ref_value(args: dict[str, Any], path: str) -> tuple[Any, bool]:
    current: Any = args
    for part in path[len("args."):].split("."):
        if not isinstance(current, dict) or part not in current:
            return None, False
        current = current[part]
    return current, True


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _ref_eq(a: Any, e: Any) -> bool:
    fa, fe = _num(a), _num(e)
    if fa is not None and fe is not None:
        return fa == fe
    return go_text(a, True) == go_text(e, False)


def _ref_op(op: str, a: Any, e: Any) -> bool:
    if op == "eq":
        return _ref_eq(a, e)
    if op == "neq":
        return not _ref_eq(a, e)
    if op in ("in", "not_in"):
        found = isinstance(e, list) and any(_ref_eq(a, x) for x in e)
        return found if op == "in" else not found
    if op in ("lt", "lte", "gt", "gte"):
        fa, fe = _num(a), _num(e)
        if fa is None or fe is None:
            return False
        return {"lt": fa < fe, "lte": fa <= fe, "gt": fa > fe, "gte": fa >= fe}[op]
    if op == "regex":
        return isinstance(a, str) and re.search(e, a) is not None
    if op == "contains":
        if isinstance(a, str):
            return isinstance(e, str) and e in a
        return isinstance(a, list) and any(_ref_eq(x, e) for x in a)
    return False


def reference(policy: dict[str, Any], tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    """Intercept's engine.Evaluate: hide, default deny, tool rules then "*" rules."""
    for name in policy.get("hide", []):
        if name in (tool, "*"):
            return False, "(hidden)"
    tools = policy.get("tools", {})
    if policy.get("default", "allow") == "deny" and tool not in tools:
        return False, "(default deny)"
    rules = list(tools.get(tool, {}).get("rules", []))
    if tool != "*":
        rules += tools.get("*", {}).get("rules", [])
    for r in rules:
        if r.get("action") == "deny":
            return False, r["name"]
        for c in r["conditions"]:
            value, exists = _ref_value(args, c["path"])
            if c["op"] == "exists":
                holds = (exists and value is not None) == c["value"]
            else:
                holds = exists and _ref_op(c["op"], value, c["value"])
            if not holds:
                return False, r["name"]
    return True, ""


NAMES = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, 1e6]),
                    st.sampled_from(["x", "y", "1", "true", ""]), st.booleans(), st.none())
ARG_VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                       st.dictionaries(st.sampled_from(["k"]), SCALARS, max_size=1))


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte",
                               "regex", "contains", "exists"]))
    path = draw(st.sampled_from(["args.p", "args.q", "args.p.k"]))
    if op in ("in", "not_in"):
        value: Any = draw(st.lists(SCALARS, min_size=1, max_size=3))
    elif op in ("lt", "lte", "gt", "gte"):
        value = draw(st.one_of(st.integers(-3, 3), st.just(0.5)))
    elif op == "regex":
        value = draw(st.sampled_from(["^x", "1", "y$", "."]))
    elif op == "exists":
        value = draw(st.booleans())
    else:
        value = draw(SCALARS)
    return {"path": path, "op": op, "value": value}


@st.composite
def intercept_policies(draw: st.DrawFn) -> dict[str, Any]:
    tools: dict[str, Any] = {}
    for i, name in enumerate(draw(st.lists(st.sampled_from(["a", "b", "c", "*"]),
                                           unique=True, min_size=1, max_size=4))):
        rules = []
        for j in range(draw(st.integers(0, 3))):
            if draw(st.integers(0, 5)) == 0:
                rules.append({"name": f"r{i}{j}", "action": "deny", "on_deny": "no"})
            else:
                rules.append({"name": f"r{i}{j}",
                              "conditions": draw(st.lists(conditions(), min_size=1,
                                                          max_size=2))})
        tools[name] = {"rules": rules}
    # one rule with on_deny so that the document is surely Intercept's
    tools.setdefault("zz", {"rules": []})["rules"].append(
        {"name": "marker", "on_deny": "m",
         "conditions": [{"path": "args.p", "op": "neq", "value": "never-sent"}]})
    doc: dict[str, Any] = {"version": "1", "tools": tools}
    if draw(st.booleans()):
        doc["default"] = draw(st.sampled_from(["allow", "deny"]))
    hide = draw(st.lists(st.sampled_from(["a", "d", "*"]), unique=True, max_size=1))
    if hide:
        doc["hide"] = hide
    return doc


@settings(max_examples=150, deadline=None)
@given(intercept_policies(), st.lists(st.tuples(NAMES, st.dictionaries(
    st.sampled_from(["p", "q"]), ARG_VALUES, max_size=2)), min_size=1, max_size=6))
def test_intercept_policy_and_its_conversion_decide_as_intercept(
        doc: dict[str, Any], calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert format_of_document(doc) == "intercept"
    native = Engine(compile_policy(parse_policy(yaml.safe_dump(doc), "i.yaml")))
    converted, notes = convert(doc, "mcpwall")
    assert notes == []
    again = Engine(compile_policy(parse_policy(json.dumps(converted), "c.json")))
    back, back_notes = convert(converted, "intercept")
    assert back_notes == []
    round_trip = Engine(compile_policy(parse_policy(yaml.safe_dump(back), "r.yaml")))
    for tool, args in calls:
        expected = reference(doc, tool, args)[0]
        assert decide(native, tool, args)[0] is expected, (tool, args)
        assert decide(again, tool, args)[0] is expected, (tool, args)
        assert decide(round_trip, tool, args)[0] is expected, (tool, args)


# -- convert ---------------------------------------------------------------------------

def test_convert_command_writes_each_format_and_refuses_lossy(tmp_path: Path) -> None:
    source = tmp_path / "stripe.yaml"
    source.write_text(STRIPE_LIKE)
    runner = CliRunner()
    out = tmp_path / "stripe.json"
    result = runner.invoke(convert_command, [str(source), "--to", "mcpwall", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert format_of_document(read_document(out.read_bytes(), str(out))) == "mcpwall"
    hosted = tmp_path / "hosted.json"
    result = runner.invoke(convert_command, [str(out), "--to", "policylayer", "-o", str(hosted)])
    assert result.exit_code == 0, result.output
    for path in (source, out, hosted):
        e = engine_of(path.read_text(), str(path))
        assert decide(e, "create_charge", {"amount": 5, "currency": "eur"})[0]
        assert not decide(e, "create_charge", {"amount": 60000, "currency": "eur"})[0]
        assert not decide(e, "delete_customer", {})[0]
        assert not decide(e, "other", {})[0]
    lossy = runner.invoke(convert_command, [str(ROOT / "rules" / "git.json"), "--to",
                                            "intercept"])
    assert lossy.exit_code == 1
    assert "tools.git_reset.action: 'require_approval' cannot be expressed" in lossy.output
    assert "nothing written" in lossy.output


def test_values_beyond_float64_in_a_policy_load_or_are_policy_errors() -> None:
    # Python's JSON and YAML readers give integers of any size; float() of one
    # beyond float64 raises OverflowError, which a reload does not expect.
    huge = 10**400
    hosted = {"version": "1", "default": "deny", "tools": {"t": {
        "require": [{"path": "args.a", "op": "lte", "value": huge}],
        "deny_if": [{"path": "args.a", "op": "gt", "value": 10**6}]}}}
    e = engine_of(json.dumps(hosted), "h.json")
    assert decide(e, "t", {"a": 5})[0] is True
    assert decide(e, "t", {"a": 10**401})[0] is False  # +inf > 10**6: denied
    limit = {"version": "1", "tools": {"t": {"rules": [{
        "name": "cap", "conditions": [{"path": "state.t.n", "op": "lte", "value": huge}],
        "state": {"counter": "n", "window": "day"}}]}}}
    with pytest.raises(PolicyError, match=r"rules\[0\]\.conditions\[0\]\.value: "):
        compile_policy(parse_policy(json.dumps(limit), "i.json"))
