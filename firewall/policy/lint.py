"""Lint policies: what compiles but is probably not what the author meant.

Findings, each with a level (``error``, ``warning``, ``info``), the file and
key path, and a message:

- rules that can never decide (shadowed by an earlier rule in the same entry,
  or by an entry of the same name that always wins);
- an entry ``action`` that no call reaches because a rule before it catches all;
- allow entries with no conditions under ``default: deny`` (a glob is a warning:
  it allows tools nobody has seen yet; an exact name is info);
- patterns (``pattern``, ``not_pattern``, the ``regex`` operator) that can
  backtrack catastrophically, so every value is matched under the timeout
  (:mod:`firewall.policy.patterns`): a warning naming the key path;
- with the server's tools/list: entries naming tools the server does not have,
  conditions on arguments the tool does not take, ``in``/``const`` values
  outside the argument's ``enum``, and tools no entry covers.

Pure: it reads Policy objects and a tools list already decoded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from firewall.policy.arguments import as_condition
from firewall.policy.compiler import RANK, is_glob
from firewall.policy.patterns import is_catastrophic
from firewall.policy.schema import (
    ArgumentRule,
    Condition,
    Conditions,
    LoadedPolicy,
    ToolEntry,
    join_key,
)

Level = Literal["error", "warning", "info"]


class Finding(msgspec.Struct, frozen=True):
    """One lint result."""

    level: Level
    where: str
    message: str


def _value_set(cond: Condition) -> frozenset[Any] | None:
    """The values a pure membership condition admits, or None if it is more than that."""
    only = msgspec.structs.replace(cond, in_=None, enum=None, const=msgspec.UNSET)
    if only != Condition() or cond.optional:
        return None
    sets: list[frozenset[Any]] = []
    try:
        for values in (cond.in_, cond.enum):
            if values is not None:
                sets.append(frozenset(values))
        if cond.const is not msgspec.UNSET:
            sets.append(frozenset([cond.const]))
    except TypeError:  # unhashable values (objects, arrays)
        return None
    if not sets:
        return None
    out = sets[0]
    for s in sets[1:]:
        out &= s
    return out


def _shadows(earlier: ArgumentRule, later: ArgumentRule) -> bool:
    """True when every call ``later`` would match, ``earlier`` matches first."""
    if earlier.principals or earlier.groups or earlier.grants:
        return False
    for arg, spec in earlier.when.items():
        if arg not in later.when:
            return False
        mine = _value_set(as_condition(spec))
        theirs = _value_set(as_condition(later.when[arg]))
        if mine is None or theirs is None or not theirs <= mine:
            return False
    return True


def _rules(entry: ToolEntry, where: str, findings: list[Finding]) -> None:
    for i, rule in enumerate(entry.rules):
        for j in range(i):
            if _shadows(entry.rules[j], rule):
                findings.append(Finding(
                    "warning", f"{where}.rules[{i}]",
                    f"never decides: rules[{j}] matches every call it would match"))
                break
    catch_all = next((i for i, r in enumerate(entry.rules)
                      if not r.when and not (r.principals or r.groups or r.grants)), None)
    if catch_all is not None and entry.action is not None:
        findings.append(Finding(
            "warning", f"{where}.action",
            f"never used: rules[{catch_all}] has no conditions and catches every call"))


def _unconditional(entry: ToolEntry) -> bool:
    return (entry.action in (None, "allow") and not entry.rules and not entry.require
            and not entry.limits and not entry.deny_if and not entry.checks
            and entry.rate_limit is None and not (entry.principals or entry.groups or entry.grants))


def _tool_args(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    return props if isinstance(props, dict) else {}


def _conditions_vs_schema(conds: Conditions, props: dict[str, Any], where: str,
                          findings: list[Finding]) -> None:
    for arg, spec in conds.items():
        top = arg.split(".")[0].split("[")[0]
        if top not in props:
            findings.append(Finding("warning", join_key(where, arg),
                                    f"the tool takes no argument {top!r}"))
            continue
        enum = props[top].get("enum") if isinstance(props[top], dict) else None
        values = _value_set(as_condition(spec))
        if enum and values is not None and arg == top:
            stray = sorted(str(v) for v in values - frozenset(enum))
            if stray:
                findings.append(Finding("warning", join_key(where, arg),
                                        f"values {stray} are not in the tool's enum"))


def _against_tools(loaded: LoadedPolicy, tools: Sequence[dict[str, Any]],
                   findings: list[Finding]) -> None:
    by_name = {t.get("name"): t for t in tools if isinstance(t, dict)}
    for key, entry in loaded.policy.tools.items():
        where = f"{loaded.source}: {join_key('tools', key)}"
        if is_glob(key):
            matched = [n for n in by_name if isinstance(n, str) and fnmatch.fnmatchcase(n, key)]
            if not matched:
                findings.append(Finding("warning", where, "the glob matches none of the tools"))
            continue
        tool = by_name.get(key)
        if tool is None:
            findings.append(Finding("warning", where, f"the server has no tool {key!r}"))
            continue
        props = _tool_args(tool)
        if isinstance(entry.require, dict):
            _conditions_vs_schema(entry.require, props, f"{where}.require", findings)
        for i, rule in enumerate(entry.rules):
            _conditions_vs_schema(rule.when, props, f"{where}.rules[{i}].when", findings)
            _conditions_vs_schema(rule.require, props, f"{where}.rules[{i}].require", findings)


SLOW_PATTERN = ("can backtrack catastrophically (a quantifier or alternatives inside a "
                "repeated group, or a back-reference): every value is matched under "
                "[policy] regex_timeout_ms, and a call whose value takes longer is refused; "
                "rewrite it without nested repetition")


def _slow_patterns(loaded: LoadedPolicy, findings: list[Finding]) -> None:
    """A warning for each pattern :func:`is_catastrophic` flags, at its key path."""
    def check(pattern: Any, where: str, search: bool) -> None:
        if not isinstance(pattern, str):
            return
        try:
            slow = is_catastrophic(pattern, search)
        except re.error:  # the compiler reports it
            return
        if slow:
            findings.append(Finding("warning", f"{loaded.source}: {where}",
                                    f"pattern {pattern!r} {SLOW_PATTERN}"))

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            check(node.get("pattern"), join_key(path, "pattern"), False)
            check(node.get("not_pattern"), join_key(path, "not_pattern"), False)
            if node.get("op") == "regex":
                check(node.get("value"), join_key(path, "value"), True)
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    walk(value, join_key(path, str(key)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(msgspec.to_builtins(loaded.policy), "")


def lint(policies: Sequence[LoadedPolicy],
         tools: Sequence[dict[str, Any]] | None = None) -> list[Finding]:
    """Findings for policies that apply together (say, fleet-wide plus one server's)."""
    findings: list[Finding] = []
    defaults = [p.policy.default for p in policies if p.policy.default is not None]
    effective = max(defaults, key=lambda a: RANK[a]) if defaults else "deny"
    default_deny = effective == "deny"
    seen: dict[str, str] = {}
    for loaded in policies:
        policy = loaded.policy
        for key, entry in policy.tools.items():
            where = f"{loaded.source}: {join_key('tools', key)}"
            _rules(entry, where, findings)
            if default_deny and _unconditional(entry):
                if is_glob(key):
                    findings.append(Finding(
                        "warning", where,
                        "allows every matching tool with no condition under default deny, "
                        "including tools the server adds later"))
                else:
                    findings.append(Finding("info", where,
                                            "allowed with no condition or limit"))
            if key in seen:
                findings.append(Finding(
                    "warning", where,
                    f"the same name is also an entry at {seen[key]}; only one of them decides"))
            else:
                seen[key] = where
        for key, pentry in policy.prompts.items():
            _rules(pentry, f"{loaded.source}: {join_key('prompts', key)}", findings)
        _slow_patterns(loaded, findings)
        if tools is not None:
            _against_tools(loaded, tools, findings)
    if tools is not None:
        patterns = [k for p in policies for k in p.policy.tools]
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if isinstance(name, str) and not any(fnmatch.fnmatchcase(name, k) for k in patterns):
                findings.append(Finding(
                    "info", f"tools/list: {name}",
                    f"no entry: the default ({effective}) applies"))
    return findings
