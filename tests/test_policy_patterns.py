"""Policy patterns in bounded time: the classifier, the two engines' agreement,
and a timeout refusing the call wherever the pattern sits in a policy."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller, Decision
from firewall.policy.engine import Engine
from firewall.policy.lint import lint
from firewall.policy.patterns import (
    UNLIMITED,
    PatternTimeout,
    compile_pattern,
    input_limit,
    is_catastrophic,
)
from firewall.policy.schema import LoadedPolicy, PolicyError, parse_policy
from firewall.protocol import mcp

CALLER = Caller("agent", "grant-1")
# Exponential for a backtracking engine, `regex` included: 2**30 ways to fail.
CATASTROPHIC = "(a|a)*$"
HOSTILE = "a" * 30 + "!"
# The classic ReDoS shapes, each with a value that makes `re` backtrack for ages.
CLASSIC = ["(a+)+", "(a+)+$", "(a|a)*", "(a|aa)+", "(.*a){12}", "([a-zA-Z]+)*",
           r"(\w+\s?)*$", "(a|aa){30}", "(a*)*b", r"^(([a-z])+.)+[A-Z]([a-z])+$",
           r"(x+x+)+y", r"(a?a)+$", r"(a)\1*", r"(a)?(?(1)a|b)+"]


# -- the classifier -----------------------------------------------------------------


@pytest.mark.parametrize("pattern", CLASSIC)
def test_the_classic_redos_shapes_always_take_the_timeout_path(pattern: str) -> None:
    assert input_limit(pattern, search=False) == 0
    assert input_limit(pattern, search=True) == 0
    assert is_catastrophic(pattern)
    assert compile_pattern(pattern, "w", "argument 'x'").catastrophic


@pytest.mark.parametrize(("pattern", "full", "search"), [
    ("[a-z0-9-]{1,32}", UNLIMITED, UNLIMITED),   # a bounded count: a constant factor
    (r"^[A-Z]{2}-\d{4}$", UNLIMITED, UNLIMITED),
    ("password", UNLIMITED, UNLIMITED),
    ("(?:prod|staging)-\\w+", UNLIMITED, 222),    # one quantifier: linear when anchored
    ("/srv/[^/]+/.*", 315, 45),                   # two: (n+1)**2 <= 100,000
    (r"[a-z]+@[a-z]+\.[a-z]{2,}", 45, 16),
    ("(ab){3}", UNLIMITED, UNLIMITED),            # a fixed count has no choice to retry
    ("(a{2})+", UNLIMITED, 315),
])
def test_shapes_without_nested_choices_use_re_up_to_a_length(pattern: str, full: int,
                                                             search: int) -> None:
    assert (input_limit(pattern, False), input_limit(pattern, True)) == (full, search)
    assert not is_catastrophic(pattern)


def test_many_optional_parts_are_catastrophic_whatever_the_length() -> None:
    # a?a?...a?aa...a: 2**20 ways of sharing a short value, without any loop.
    assert input_limit("a?" * 20 + "a" * 20, False) == 0


def test_an_invalid_pattern_is_a_policy_error_naming_the_key() -> None:
    with pytest.raises(PolicyError, match=r"tools\.x\.pattern: not a valid regular expression"):
        compile_pattern("(a", "tools.x.pattern", "argument 'x'")


# -- both engines give the same verdicts ---------------------------------------------

AGREE = ["/srv/[^/]+/.*", "[ab]+c?", "a.*b.*c", "(?:ab|ba)+", "(a|b)*c", "(a+)+b",
         "x?y?z?", "[a-c]{2,5}b"]


@settings(max_examples=150, deadline=None)
@given(pattern=st.sampled_from(AGREE), value=st.text(alphabet="abc/srvx", max_size=400))
def test_every_value_gets_res_verdict_whichever_engine_runs(pattern: str, value: str) -> None:
    # Values past the limit go to `regex` (VERSION0): its verdicts must be re's.
    p = compile_pattern(pattern, "w", "argument 'x'", timeout=5.0, search=True)
    assert p.fullmatch(value) == (re.fullmatch(pattern, value) is not None)
    assert p.search(value) == (re.search(pattern, value) is not None)


@pytest.mark.timeout(10)
def test_a_catastrophic_pattern_times_out_instead_of_stalling() -> None:
    p = compile_pattern(CATASTROPHIC, "tools.x.require.s.pattern", "argument 's'",
                        timeout=0.005, search=True)
    with pytest.raises(PatternTimeout) as caught:
        p.fullmatch(HOSTILE)
    assert caught.value.where == "tools.x.require.s.pattern"
    assert HOSTILE not in str(caught.value)
    with pytest.raises(PatternTimeout):
        p.search(HOSTILE)
    assert p.fullmatch("aaaa") is True  # a short benign value still gets its verdict


# -- a timeout refuses the call, wherever the pattern is ------------------------------

P = CATASTROPHIC
REGEX = {"path": "args.s", "op": "regex", "value": "^" + P}  # searched: anchor it
# (site, tool entry, benign arguments): under "default": "allow", each entry
# allows the benign call; a timeout read the wrong way round would allow too.
SITES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("require pattern", {"require": {"s": {"pattern": P}}}, {"s": "aaa"}),
    ("require not_pattern", {"require": {"s": {"not_pattern": P}}}, {"s": "b"}),
    ("nested pattern", {"require": {"o.s": {"pattern": P}}}, {"o": {"s": "aaa"}}),
    ("each element", {"require": {"l[*]": {"not_pattern": P}}}, {"l": ["b"]}),
    ("when of a deny rule", {"rules": [{"when": {"s": {"pattern": P}}, "action": "deny"}],
                             "action": "allow"}, {"s": "b"}),
    ("when not_pattern of an allow rule",
     {"rules": [{"when": {"s": {"not_pattern": P}}, "action": "allow"}], "action": "deny"},
     {"s": "b"}),
    ("require of a rule", {"rules": [{"when": {"s": {"type": "string"}},
                                      "require": {"s": {"not_pattern": P}},
                                      "action": "allow"}]}, {"s": "b"}),
    ("require test", {"require": [REGEX]}, {"s": "aaa"}),
    ("deny_if test", {"deny_if": [REGEX]}, {"s": "b"}),
    ("checks require", {"checks": [{"name": "c", "require": [REGEX]}]}, {"s": "aaa"}),
    ("checks deny_if", {"checks": [{"name": "c", "deny_if": [REGEX]}]}, {"s": "b"}),
]


def _hostile(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the string replaced by the hostile value."""
    def swap(v: Any) -> Any:
        if isinstance(v, str):
            return HOSTILE
        if isinstance(v, list):
            return [swap(x) for x in v]
        return {k: swap(x) for k, x in v.items()}
    return {k: swap(v) for k, v in args.items()}


def _engine(entry: dict[str, Any]) -> tuple[Engine, list[tuple[Any, ...]]]:
    policy = {"version": "1", "default": "allow", "tools": {"t": entry}}
    engine = Engine(compile_policy(parse_policy(json.dumps(policy)), regex_timeout=0.005))
    heard: list[tuple[Any, ...]] = []
    engine.on_pattern_timeout = lambda exc, rule, server, session: heard.append(
        (exc.where, exc.subject, rule, server, session))
    return engine, heard


def _decide(engine: Engine, args: dict[str, Any]) -> Decision:
    return engine.decide(mcp.Call(mcp.TOOLS_CALL, tool="t", arguments=args), CALLER, "vm", "s1")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("site", "entry", "benign"), SITES, ids=[s[0] for s in SITES])
def test_a_timeout_refuses_the_call_at_every_site(site: str, entry: dict[str, Any],
                                                  benign: dict[str, Any]) -> None:
    engine, heard = _engine(entry)
    assert _decide(engine, benign).action == "allow"
    assert heard == []
    refused = _decide(engine, _hostile(benign))
    assert refused.action == "deny", site
    assert refused.reason is not None and "argument check timed out" in refused.reason
    assert refused.rule == "tools.t"
    assert HOSTILE not in refused.reason
    assert len(heard) == 1
    where, subject, rule, server, session = heard[0]
    assert subject in ("argument 's'", "argument 'o.s'", "argument 'l[*]'", "args.s")
    assert rule == "tools.t" and (server, session) == ("vm", "s1")
    assert where.startswith("<policy>: tools.t")
    assert HOSTILE not in repr(heard)
    # Again (a pattern check remembers no verdict it did not reach).
    assert _decide(engine, _hostile(benign)).action == "deny"


@pytest.mark.timeout(10)
def test_a_catastrophic_pattern_and_a_hostile_30_character_argument_are_refused() -> None:
    # The red team's case: `(a+)+$` must match; `re` would backtrack for
    # minutes on this value, stalling every session. The call is refused and
    # decide returns.
    engine, _ = _engine({"require": {"name": {"pattern": "(a+)+$"}}})
    assert _decide(engine, {"name": "a" * 30 + "!"}).action == "invalid_arguments"
    assert _decide(engine, {"name": "aaaa"}).action == "allow"
    engine, heard = _engine({"require": {"name": {"not_pattern": CATASTROPHIC}}})
    assert _decide(engine, {"name": HOSTILE}).action == "deny"
    assert len(heard) == 1


def test_explain_names_the_timeout_in_its_trace() -> None:
    engine, _ = _engine({"deny_if": [REGEX]})
    explained = engine.explain(mcp.Call(mcp.TOOLS_CALL, tool="t", arguments={"s": HOSTILE}),
                               CALLER, "vm")
    assert explained.decision.action == "deny"
    assert any("timed out" in line for line in explained.trace)


# -- mcpwall check warns about the patterns that need the timeout ---------------------


def test_lint_warns_about_each_catastrophic_pattern_at_its_key_path() -> None:
    policy = parse_policy(json.dumps({"version": "1", "default": "deny", "tools": {"vm": {
        "require": {"name": {"pattern": "(a+)+$"}, "id": {"pattern": "[a-z0-9-]{1,32}"}},
        "deny_if": [{"path": "args.cmd", "op": "regex", "value": r"(\w+\s?)*$"},
                    {"path": "args.cmd", "op": "regex", "value": "rm -rf"}],
        "rules": [{"when": {"path": {"not_pattern": "(.*a){12}"}}, "action": "allow"}],
    }}}))
    findings = lint([LoadedPolicy(policy, "p.json", "")])
    slow = {f.where for f in findings if "backtrack catastrophically" in f.message}
    assert slow == {"p.json: tools.vm.require.name.pattern",
                    "p.json: tools.vm.deny_if[0].value",
                    "p.json: tools.vm.rules[0].when.path.not_pattern"}
    assert all(f.level == "warning" for f in findings if f.where in slow)
