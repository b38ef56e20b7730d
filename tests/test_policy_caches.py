"""The hot path's memories: per-name caches, the pattern memo, shapes of
generated evaluators. Each must be bounded, belong to one compiled table (so a
swap or reload forgets it), and never change a decision."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.policy.compiler import Verdict, compile_policy
from firewall.policy.decision import Caller, Decision
from firewall.policy.engine import Engine, PolicySet
from firewall.policy.limits import MemoryLimiter
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp

WHO = Caller("agent", "grant-1")


def engine(policy: dict[str, Any]) -> Engine:
    return Engine(compile_policy(parse_policy(json.dumps(policy))), MemoryLimiter(lambda: 0.0))


def tool(name: str, **args: Any) -> mcp.Call:
    return mcp.Call(mcp.TOOLS_CALL, tool=name, arguments=args)


GLOBS = {"tools": {"read_*": {}, "*_admin": {"action": "deny"}, "read_admin": {},
                   "re?d_x": {"action": "require_approval"}}, "default": "deny"}


def test_name_caches_stay_within_their_bound_and_keep_deciding_right() -> None:
    e = engine(GLOBS)
    index = e.compiled.fleet.tools
    index.cache_max = 8
    names = [f"read_{i}" for i in range(50)] + [f"x{i}_admin" for i in range(50)]
    for name in names * 2:
        want = "allow" if name.startswith("read_") else "deny"
        assert e.decide(tool(name), WHO, "srv", "s").action == want
        assert index.candidates(name) == index.candidates(name)
        assert len(index.resolved) <= 8 and len(index.cache) <= 8
    # A full cache empties and refills with the names in use, so they stay fast.
    e.decide(tool("read_again"), WHO, "srv", "s")
    assert "read_again" in index.resolved


def test_a_swapped_table_forgets_what_the_old_one_cached() -> None:
    e = engine(GLOBS)
    assert e.decide(tool("read_y"), WHO, "srv", "s").action == "allow"
    assert "read_y" in e.compiled.fleet.tools.resolved
    e.swap(compile_policy(parse_policy(json.dumps({"tools": {"read_*": {"action": "deny"}}}))))
    assert e.decide(tool("read_y"), WHO, "srv", "s").action == "deny"


def test_reload_forgets_cached_names_and_pattern_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "p.json"

    def write(pattern: str) -> None:
        path.write_text(json.dumps({"default": "deny", "tools": {"vm_*": {
            "require": {"vm": {"pattern": pattern}}}}}))

    write("[a-z]+")
    ps = PolicySet([path])
    assert ps.decide(tool("vm_x", vm="web"), WHO, "srv", "s").action == "allow"
    write("[0-9]+")
    assert ps.reload().ok
    # Same name, same value: neither the name cache nor the memo of the old table answers.
    assert ps.decide(tool("vm_x", vm="web"), WHO, "srv", "s").action == "invalid_arguments"
    assert ps.decide(tool("vm_x", vm="42"), WHO, "srv", "s").action == "allow"


def test_pattern_memo_spends_its_budget_then_judges_afresh() -> None:
    e = engine({"default": "deny", "tools": {"t": {"require": {"v": {"pattern": "a+"}}}}})
    memo = e.compiled.memo
    memo.remaining = 3
    values = ["a", "b", "aa", "ab", "aaa", "ba"]
    for _ in range(3):
        for v in values:
            want = "allow" if re.fullmatch("a+", v) else "invalid_arguments"
            assert e.decide(tool("t", v=v), WHO, "srv", "s").action == want
    assert memo.remaining == 0


def test_pattern_memo_ignores_long_values() -> None:
    e = engine({"default": "deny", "tools": {"t": {"require": {"v": {"pattern": "a+"}}}}})
    before = e.compiled.memo.remaining
    assert e.decide(tool("t", v="a" * 500), WHO, "srv", "s").action == "allow"
    assert e.compiled.memo.remaining == before
    assert e.decide(tool("t", v="a"), WHO, "srv", "s").action == "allow"
    assert e.compiled.memo.remaining == before - 1


@settings(max_examples=150, deadline=None)
@given(pattern=st.sampled_from(["a+", "[ab]*c?", "(ab|ba)+", ".*b", "x"]),
       values=st.lists(st.one_of(st.text(alphabet="abcx", max_size=6), st.none(), st.integers(),
                                 st.builds(lambda s: s * 30, st.text(alphabet="ab", max_size=4))),
                       max_size=12),
       optional=st.booleans(), nullable=st.booleans())
def test_fused_and_memoised_checks_agree_with_the_plain_regex(
        pattern: str, values: list[Any], optional: bool, nullable: bool) -> None:
    cond = {"pattern": pattern, "optional": optional, "nullable": nullable}
    e = engine({"default": "deny", "tools": {"t": {"require": {"v": cond}}}})
    for v in values + values:  # twice: the second pass answers from the memo
        if v is None:
            want = nullable
        else:
            want = isinstance(v, str) and re.fullmatch(pattern, v) is not None
        got = e.decide(tool("t", v=v), WHO, "srv", "s").action
        assert got == ("allow" if want else "invalid_arguments"), (v, got)
    missing = e.decide(tool("t"), WHO, "srv", "s").action
    assert missing == ("allow" if optional else "invalid_arguments")


def test_nested_literal_prefixes_are_all_found() -> None:
    # "abe" sorts after "abd": the search must walk from "abd" back to "ab" and "a".
    patterns = ["a*", "ab*", "abc*", "abd*", "ab*x", "*e", "b*"]
    e = engine({"tools": {p: {} for p in patterns}})
    index = e.compiled.fleet.tools
    for name in ["abe", "abcz", "abdx", "a", "ab", "abx", "b", "ae", "zzz", "abce", ""]:
        got = {c.pattern for c in index.candidates(name)}
        assert got == {p for p in patterns if fnmatch.fnmatchcase(name, p)}, name


def test_entries_sharing_one_shape_share_generated_code_not_their_checks() -> None:
    rules = [{"when": {"mode": ["read"]}}, {"when": {"mode": ["write"]}, "action": "deny"}]
    e = engine({"default": "deny", "tools": {
        "a": {"rules": rules},
        "b": {"rules": [{"when": {"mode": ["list"]}}, {"when": {"mode": ["drop"]},
                                                       "action": "deny"}]}}})
    fa = e.compiled.fleet.tools.candidates("a")[0].evaluate
    fb = e.compiled.fleet.tools.candidates("b")[0].evaluate
    assert fa.__code__ is fb.__code__  # type: ignore[attr-defined]
    assert e.decide(tool("a", mode="read"), WHO, "srv", "s").action == "allow"
    assert e.decide(tool("b", mode="read"), WHO, "srv", "s").action == "deny"
    assert e.decide(tool("b", mode="list"), WHO, "srv", "s").action == "allow"
    assert e.decide(tool("a", mode="drop"), WHO, "srv", "s").rule == "tools.a"


def dispatch_tables(evaluate: Any) -> list[dict[str, Any]]:
    """The value -> result tables an evaluator was built with (not a pattern memo)."""
    return [d for d in evaluate.__defaults__ or () if isinstance(d, dict) and d
            and all(isinstance(r, (Decision, Verdict)) for r in d.values())]


def test_rules_told_apart_by_one_argument_dispatch_on_a_table() -> None:
    pack = json.loads((Path(__file__).parent.parent / "rules" / "virtualization.json").read_text())
    e = engine({**pack, "default": "deny"})
    evaluate = e.compiled.fleet.tools.resolve("vm_management")
    tables = dispatch_tables(evaluate)
    assert len(tables) == 1 and {"list", "start", "delete"} <= tables[0].keys()
    # The table answers what the rules in turn answer, value by value.
    explained = {v: e.explain(tool("vm_management", action=v, vm_name="web-1"), WHO, "srv").decision
                 for v in [*tables[0], "no-such-action"]}
    for value, want in explained.items():
        got = e.decide(tool("vm_management", action=value, vm_name="web-1"), WHO, "srv", "s")
        assert (got.action, got.rule) == (want.action, want.rule), value


def test_a_value_that_does_not_decide_alone_is_left_to_the_rules() -> None:
    e = engine({"default": "deny", "tools": {"t": {"rules": [
        {"when": {"mode": ["read"], "path": {"prefix": "/srv"}}},
        {"when": {"mode": ["read", "list"]}, "action": "deny"}]}}})
    evaluate = e.compiled.fleet.tools.resolve("t")
    (table,) = dispatch_tables(evaluate)
    assert "read" not in table and "list" in table  # "read" also needs the path
    assert e.decide(tool("t", mode="read", path="/srv/a"), WHO, "srv", "s").action == "allow"
    assert e.decide(tool("t", mode="read", path="/etc"), WHO, "srv", "s").action == "deny"
    assert e.decide(tool("t", mode="list"), WHO, "srv", "s").rule == "tools.t.rules[1]"
