"""Property tests: the compiled engine agrees with the reference interpreter.

Random policies (exact names and globs, argument rules, audiences, limits,
defaults, fleet-wide and per-server files) and random call sequences with a
moving clock; every decision must match: action, rule, the violated argument
and condition, dry-run, and rate-limit refusals.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_policy import Outcome, RefEngine

from firewall.policy.compiler import NameIndex, compile_policies
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.limits import MemoryLimiter
from firewall.policy.schema import LoadedPolicy, Policy, parse_policy
from firewall.protocol import mcp

NAMES = st.text(alphabet="ab_", min_size=1, max_size=4)
PATTERNS = st.one_of(NAMES, st.text(alphabet="ab_*?", min_size=1, max_size=4))
VALUES = st.sampled_from([0, 1, 2, 2.0, -1, "a", "b", "ab", "/srv/x", "/srv/../etc", "/srv",
                          True, False, None, [], ["a"], {}])
ARGS = st.dictionaries(st.sampled_from(["x", "y"]), VALUES, max_size=2)
# Counters with one shape each, so that random policies stay consistent.
COUNTERS = {"c1": (2, "minute", "grant"), "c2": (1, "hour", "session"),
            "c3": (3, 10, "global"), "c4": (2, "second", "agent")}


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arg in draw(st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=2)):
        kind = draw(st.sampled_from(["in", "const", "short_list", "short_str", "ops"]))
        if kind == "short_list":
            out[arg] = draw(st.lists(st.sampled_from(["a", "b", "ab"]), min_size=1, max_size=2))
        elif kind == "short_str":
            out[arg] = draw(st.sampled_from(["a", "b"]))
        else:
            cond: dict[str, Any] = {}
            if kind == "in":
                cond["in"] = draw(st.lists(VALUES, min_size=1, max_size=3))
            elif kind == "const":
                cond["const"] = draw(VALUES)
            else:
                for op, strat in [("pattern", st.sampled_from(["a.*", "[ab]+", ".*b"])),
                                  ("not_pattern", st.sampled_from(["a", ".*\\.\\..*"])),
                                  ("prefix", st.sampled_from(["a", "/srv"])),
                                  ("min", st.sampled_from([0, 1.5])),
                                  ("max", st.sampled_from([2, 10])),
                                  ("max_length", st.sampled_from([0, 1, 2])),
                                  ("type", st.sampled_from(["string", "number", "integer",
                                                            "boolean", "array", "null"])),
                                  ("path_under", st.sampled_from(["/srv", "/srv/x"]))]:
                    if draw(st.booleans()) and draw(st.booleans()):
                        cond[op] = draw(strat)
            if draw(st.booleans()) and draw(st.booleans()):
                cond["optional"] = True
            if draw(st.booleans()) and draw(st.booleans()):
                cond["nullable"] = True
            out[arg] = cond
    return out


@st.composite
def limits(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(COUNTERS)))
            mx, window, scope = COUNTERS[name]
            out.append({"counter": name, "max": mx, "window": window, "scope": scope})
        else:
            out.append({"max": draw(st.integers(1, 3)),
                        "window": draw(st.sampled_from(["second", "minute", 5])),
                        "scope": draw(st.sampled_from(["grant", "session", "global"]))})
    return out


def audience(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(["principals", "groups", "grants"]))
        out[key] = draw(st.lists(st.sampled_from(["p1", "p2", "ops", "g1"]), min_size=1,
                                 max_size=2))
    return out


ACTIONS = st.sampled_from(["allow", "deny", "require_approval"])


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = audience(draw)
    if draw(st.booleans()):
        entry["action"] = draw(ACTIONS)
    if draw(st.booleans()):
        entry["limits"] = draw(limits())
    if draw(st.integers(0, 2)) == 0:
        entry["require"] = draw(conditions())
    if draw(st.integers(0, 3)) == 0:
        entry["dry_run"] = True
    rules = []
    for i in range(draw(st.integers(0, 3))):
        rule: dict[str, Any] = audience(draw)
        rule["when"] = draw(conditions())
        if draw(st.booleans()):
            rule["action"] = draw(ACTIONS)
        if draw(st.booleans()):
            rule["limits"] = draw(limits())
        if draw(st.integers(0, 3)) == 0:
            rule["require"] = draw(conditions())
        if draw(st.integers(0, 2)) == 0:
            rule["name"] = f"r{i}"
        rules.append(rule)
    if rules:
        entry["rules"] = rules
    return entry


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": "1"}
    if draw(st.booleans()):
        doc["default"] = draw(ACTIONS)
    if draw(st.booleans()):
        doc["name"] = draw(st.sampled_from(["p", "q"]))
    doc["tools"] = draw(st.dictionaries(PATTERNS, entries(), max_size=6))
    return doc


CALLERS = [Caller("p1", "g1", ("ops",)), Caller("p2", "g2", ()), Caller("p1", "g3", ())]
CALLS = st.lists(st.tuples(NAMES, ARGS, st.integers(0, 2), st.sampled_from(["s1", "s2"]),
                           st.sampled_from([0.0, 0.0, 0.5, 7.0])),
                 min_size=1, max_size=25)


def compare(engine_outcome: Any, ref: Outcome) -> None:
    d = engine_outcome
    assert (d.action, d.rule, d.dry_run) == (ref.action, ref.rule, ref.dry_run), (d, ref)
    if ref.violation is not None:
        arg, op = ref.violation
        assert d.reason.startswith(f"argument '{arg}':"), (d, ref)
        assert d.reason.endswith(f"({op})"), (d, ref)
    assert (d.retry_after is not None) == ref.limited


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=policies(), own=st.one_of(st.none(), policies()), calls=CALLS)
def test_engine_agrees_with_reference(fleet: dict[str, Any], own: dict[str, Any] | None,
                                      calls: list[Any]) -> None:
    fleet_p = parse_policy(json.dumps(fleet))
    own_p = parse_policy(json.dumps(own)) if own is not None else None
    clock = Clock()
    servers = {"srv": [LoadedPolicy(own_p, "own", "")]} if own_p is not None else {}
    engine = Engine(compile_policies([LoadedPolicy(fleet_p, "fleet", "")], servers),
                    MemoryLimiter(clock))
    files: list[tuple[int, Policy, str]] = [(1, fleet_p, "fleet")]
    ref_srv = RefEngine([(0, own_p, "own"), *files] if own_p is not None else files)
    ref_other = RefEngine(files, ref_srv.buckets)  # buckets are fleet-wide
    for name, args, who, session, step in calls:
        clock.now += step
        caller = CALLERS[who]
        for server, ref in (("srv", ref_srv), ("other", ref_other)):
            call = mcp.Call(mcp.TOOLS_CALL, tool=name, arguments=args)
            # explain walks the traced path and takes no token: it must foresee decide.
            foreseen = engine.explain(call, caller, server, session).decision
            got = engine.decide(call, caller, server, session)
            assert foreseen == got
            want = ref.decide(name, args, (caller.principal, caller.grant, caller.groups),
                              session, server, clock.now)
            compare(got, want)


@settings(max_examples=200, deadline=None)
@given(patterns=st.lists(st.text(alphabet="ab_*?[]!", min_size=1, max_size=5), max_size=30),
       names=st.lists(st.text(alphabet="ab_[]", max_size=5), min_size=1, max_size=10))
def test_glob_index_finds_exactly_the_matching_entries(patterns: list[str],
                                                       names: list[str]) -> None:
    policy = parse_policy(json.dumps({"tools": {p: {} for p in patterns}}))
    compiled = compile_policies([LoadedPolicy(policy, "p", "")])
    for name in names:
        got = {e.pattern for e in compiled.fleet.tools.candidates(name)}
        want = {k for k in policy.tools if fnmatch.fnmatchcase(name, k)}
        assert got == want
        # cached second lookup is the same
        assert compiled.fleet.tools.candidates(name) == compiled.fleet.tools.candidates(name)


def test_reference_is_not_trivially_equal() -> None:
    # Guard against a test that cannot fail: the two disagree on a wrong precedence.
    policy = msgspec.convert({"tools": {"a*": {"action": "deny"}, "ab": {}}}, Policy)
    ref = RefEngine([(1, policy, "p")])
    assert ref.decide("ab", {}, ("p", "g", ()), "s", "v", 0.0).action == "allow"
    assert ref.decide("ac", {}, ("p", "g", ()), "s", "v", 0.0).action == "deny"


# -- the glob index's two ways in, and argument rules dispatched on one value --------


# Literals of several lengths and inner-end characters, so that the index
# keeps many tables by length and the one-character tests matter.
LITERALS = st.text(alphabet="ab_.", min_size=1, max_size=6)
GLOBS = st.one_of(
    LITERALS,                                                  # exact
    st.builds(lambda a: a + "*", LITERALS),                    # prefix
    st.builds(lambda a: "*" + a, LITERALS),                    # suffix
    st.builds(lambda a, b: a + "*" + b, LITERALS, LITERALS),   # prefix, then a suffix to match
    st.builds(lambda a, b: a + "?" + b, LITERALS, LITERALS),
    st.builds(lambda a: "*" + a + "*", LITERALS),              # a literal in the middle only
    st.builds(lambda a, b: "[ab]" + a + "*" + b, LITERALS, LITERALS),
)
GLOB_NAMES = st.text(alphabet="ab_.", max_size=12)


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(GLOBS, max_size=40), names=st.lists(GLOB_NAMES, min_size=1, max_size=15))
def test_glob_index_by_length_finds_exactly_the_matching_entries(patterns: list[str],
                                                                 names: list[str]) -> None:
    policy = parse_policy(json.dumps({"tools": {p: {} for p in patterns}}))
    index = compile_policies([LoadedPolicy(policy, "p", "")]).fleet.tools
    for name in names + [p.replace("*", "") for p in patterns]:
        got = [e.pattern for e in index.candidates(name)]
        assert sorted(got) == sorted(k for k in policy.tools if fnmatch.fnmatchcase(name, k))
        # best first: the order is the precedence order
        assert [e.sort_key for e in index.candidates(name)] == sorted(
            e.sort_key for e in index.candidates(name))


@functools.cache
def large_exact_table() -> tuple[Policy, NameIndex]:
    # Past BITS_FROM exact names, a bit array answers most absent names.
    exact = {f"t{i}": {} for i in range(5000)}
    policy = parse_policy(json.dumps({"tools": {**exact, "a*": {}, "*b": {}, "t1*": {}}}))
    return policy, compile_policies([LoadedPolicy(policy, "p", "")]).fleet.tools


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.one_of(GLOB_NAMES, st.builds(lambda i: f"t{i}", st.integers(-5, 6000))),
                      min_size=1, max_size=40))
def test_a_large_exact_table_answers_through_its_bit_array(names: list[str]) -> None:
    policy, index = large_exact_table()
    assert index._exact_bits is not None
    for name in [*names, "t0", "t4999", "t5000", "t12", "ta"]:
        got = {e.pattern for e in index._lookup(name)}
        globs = {k for k in ("a*", "*b", "t1*") if fnmatch.fnmatchcase(name, k)}
        assert got == ({name} & policy.tools.keys()) | globs, name


DISPATCH_VALUES = st.sampled_from(["r", "w", "d", "s", "rw", 1, None, ["r"]])


@st.composite
def dispatched_entries(draw: st.DrawFn) -> dict[str, Any]:
    """Rules keyed on ``x`` with string in/const values (like the virtualization
    pack's ``action``), some with more to them: another check, an audience, a
    ``require``, a check on ``x`` the value alone decides or not."""
    rules = []
    for i in range(draw(st.integers(2, 5))):
        rule: dict[str, Any] = {}
        when: dict[str, Any] = {}
        kind = draw(st.sampled_from(["in", "in", "const", "prefix", "none", "max_length"]))
        if kind == "in":
            when["x"] = draw(st.lists(st.sampled_from(["r", "w", "d", "s", "rw"]), min_size=1,
                                      max_size=3, unique=True))
        elif kind == "const":
            when["x"] = {"const": draw(st.sampled_from(["r", "w", "d"]))}
        elif kind == "prefix":
            when["x"] = {"in": ["r", "rw", "w"], "prefix": "r"}
        elif kind == "max_length":
            when["x"] = {"in": ["r", "rw"], "max_length": 1}
        if draw(st.integers(0, 3)) == 0:
            when["y"] = draw(st.sampled_from([["a"], {"const": 1}]))
        if draw(st.booleans()):
            when["x"] = {"in": when["x"]} if isinstance(when.get("x"), list) else when.get("x", {})
            when["x"]["optional"] = True
            when["x"]["nullable"] = draw(st.booleans())
        if when:
            rule["when"] = when
        rule.update(audience(draw))
        if draw(st.integers(0, 4)) == 0:
            rule["require"] = {"y": {"type": "string"}}
        if draw(st.booleans()):
            rule["action"] = draw(ACTIONS)
        if draw(st.integers(0, 3)) == 0:
            rule["limits"] = draw(limits())
        rule["name"] = f"r{i}"
        rules.append(rule)
    entry: dict[str, Any] = {"rules": rules}
    if draw(st.booleans()):
        entry["action"] = draw(ACTIONS)
    if draw(st.integers(0, 2)) == 0:
        entry["require"] = {"y": {"optional": True, "in": ["a", "b"]}}
    return entry


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tools=st.dictionaries(st.sampled_from(["t", "t*", "*t"]), dispatched_entries(),
                             min_size=1, max_size=2),
       calls=st.lists(st.tuples(st.sampled_from(["t", "tt"]),
                                st.dictionaries(st.sampled_from(["x", "y"]),
                                                st.one_of(DISPATCH_VALUES, VALUES), max_size=2),
                                st.integers(0, 2), st.sampled_from([0.0, 0.5, 7.0])),
                      min_size=1, max_size=20))
def test_rules_dispatched_on_one_argument_agree_with_the_reference(
        tools: dict[str, Any], calls: list[Any]) -> None:
    policy = parse_policy(json.dumps({"default": "deny", "tools": tools}))
    clock = Clock()
    engine = Engine(compile_policies([LoadedPolicy(policy, "fleet", "")]), MemoryLimiter(clock))
    ref = RefEngine([(1, policy, "fleet")])
    for name, args, who, step in calls:
        clock.now += step
        caller = CALLERS[who]
        call = mcp.Call(mcp.TOOLS_CALL, tool=name, arguments=args)
        foreseen = engine.explain(call, caller, "srv", "s1").decision
        got = engine.decide(call, caller, "srv", "s1")
        assert foreseen == got
        compare(got, ref.decide(name, args, (caller.principal, caller.grant, caller.groups),
                                "s1", "srv", clock.now))
