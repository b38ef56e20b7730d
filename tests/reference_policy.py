"""A small, slow, obviously-correct interpreter of policy files.

It reads the schema objects directly, with no compilation, indexing or
precomputed decisions, and implements docs/policy.md's precedence as written:
sort every matching entry by (exact, literal characters, restrictiveness,
layer, file, position), take the first that applies to the caller, then its
rules in order. The property tests check the compiled engine against it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from firewall.policy.schema import WINDOW_SECONDS, Condition, Limit, Policy, ToolEntry

MISSING = object()
ORDER = ["in", "enum", "const", "pattern", "not_pattern", "prefix", "min", "max",
         "min_length", "max_length", "type", "path_under"]
RANK = {"allow": 0, "limited": 1, "require_approval": 2, "deny": 3}
SCOPES = ("grant", "agent", "session", "server", "global")


def json_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def is_number(v: Any) -> bool:
    return type(v) in (int, float)


def resolve(path: str) -> str | None:
    """Absolute path with '.', '..' and empty segments resolved by a stack."""
    if not path.startswith("/") or "\x00" in path:
        return None
    stack: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if stack:
                stack.pop()
        else:
            stack.append(seg)
    return "/" + "/".join(stack)


def op_holds(op: str, cond: Condition, v: Any) -> bool:
    if op in ("in", "enum"):
        values = cond.in_ if op == "in" else cond.enum
        return any(json_eq(v, x) for x in values or [])
    if op == "const":
        return json_eq(v, cond.const)
    if op == "pattern":
        return isinstance(v, str) and re.fullmatch(cond.pattern or "", v) is not None
    if op == "not_pattern":
        return isinstance(v, str) and re.fullmatch(cond.not_pattern or "", v) is None
    if op == "prefix":
        return isinstance(v, str) and v.startswith(cond.prefix or "")
    if op == "min":
        return is_number(v) and v >= (cond.min or 0)
    if op == "max":
        return is_number(v) and v <= (cond.max or 0)
    if op == "min_length":
        return isinstance(v, (str, list, dict)) and len(v) >= (cond.min_length or 0)
    if op == "max_length":
        return isinstance(v, (str, list, dict)) and len(v) <= (cond.max_length or 0)
    if op == "type":
        return {
            "string": lambda: isinstance(v, str),
            "number": lambda: is_number(v),
            "integer": lambda: type(v) is int or (type(v) is float and v.is_integer()),
            "boolean": lambda: isinstance(v, bool),
            "array": lambda: isinstance(v, list),
            "object": lambda: isinstance(v, dict),
            "null": lambda: v is None,
        }[cond.type or "null"]()
    if op == "path_under":
        roots = [cond.path_under] if isinstance(cond.path_under, str) else cond.path_under or []
        p = resolve(v) if isinstance(v, str) else None
        if p is None:
            return False
        for root in roots:
            r = resolve(root) or ""
            if p == r or p.startswith(r.rstrip("/") + "/"):
                return True
        return False
    raise AssertionError(op)


def stated(cond: Condition) -> list[str]:
    out = []
    for op in ORDER:
        value = cond.const if op == "const" else getattr(cond, "in_" if op == "in" else op)
        if (value is not msgspec.UNSET) if op == "const" else (value is not None):
            out.append(op)
    return out or ([] if cond.optional else ["present"])


def as_cond(spec: Any) -> Condition:
    if isinstance(spec, Condition):
        return spec
    if isinstance(spec, list):
        return Condition(in_=spec)
    return Condition(const=spec)


def first_violation(conds: dict[str, Any], args: dict[str, Any]) -> tuple[str, str] | None:
    """(argument, condition) of the first failing check, in declaration order."""
    for arg, spec in conds.items():
        cond = as_cond(spec)
        v = args.get(arg, MISSING)
        for op in stated(cond):
            if v is MISSING:
                ok = cond.optional
            elif (v is None and cond.nullable) or op == "present":
                ok = True
            else:
                ok = op_holds(op, cond, v)
            if not ok:
                return arg, op
    return None


def literals(pattern: str) -> int:
    return sum(c not in "*?" for c in pattern)


def is_glob(pattern: str) -> bool:
    return any(c in "*?[" for c in pattern)


@dataclass
class Outcome:
    action: str
    rule: str
    violation: tuple[str, str] | None = None
    limited: bool = False
    dry_run: bool = False


@dataclass
class RefEngine:
    """Files as (layer, policy, source): layer 0 is the server's own, 1 fleet-wide."""

    files: list[tuple[int, Policy, str]]
    buckets: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)

    def default(self) -> str:
        stated_defaults = [p.default for _, p, _ in self.files if p.default]
        return max(stated_defaults, key=lambda a: RANK[a]) if stated_defaults else "deny"

    def _limits_rank(self, action: str, limits: list[Limit]) -> int:
        if action == "allow" and limits:
            return RANK["limited"]
        return RANK[action]

    def _fallback(self, e: ToolEntry) -> str:
        return self.default() if e.action is None and e.rules else (e.action or "allow")

    def rank(self, e: ToolEntry) -> int:
        ranks = [self._limits_rank(self._fallback(e), e.limits)]
        for r in e.rules:
            ranks.append(self._limits_rank(r.action, [*e.limits, *r.limits]))
        return max(ranks)

    def decide(self, tool: str, args: dict[str, Any], who: tuple[str, str, tuple[str, ...]],
               session: str, server: str, now: float) -> Outcome:
        principal, grant, groups = who
        found = []
        ordered = sorted(self.files, key=lambda lf: lf[0])
        for fi, (layer, policy, source) in enumerate(ordered):
            for ei, (key, entry) in enumerate(policy.tools.items()):
                if fnmatch.fnmatchcase(tool, key):
                    sk = (1 if is_glob(key) else 0, -literals(key), -self.rank(entry),
                          layer, fi, ei)
                    found.append((sk, key, entry, policy, source))
        found.sort(key=lambda t: t[0])

        def admits(x: Any) -> bool:
            if not (x.principals or x.groups or x.grants):
                return True
            return (principal in x.principals or grant in x.grants
                    or any(g in x.groups for g in groups))

        for _, key, entry, policy, source in found:
            if not admits(entry):
                continue
            rid = f"{policy.name + ':' if policy.name else ''}tools.{key}"
            dry = entry.dry_run or policy.dry_run
            bad = first_violation(entry.require, args)
            if bad:
                return Outcome("invalid_arguments", rid, bad, dry_run=dry)
            for i, r in enumerate(entry.rules):
                if not admits(r):
                    continue
                if first_violation(r.when, args) is None:
                    rrid = f"{rid}.rules[{r.name or i}]"
                    rdry = dry or r.dry_run
                    bad = first_violation(r.require, args)
                    if bad:
                        return Outcome("invalid_arguments", rrid, bad, dry_run=rdry)
                    named = [*self._named(rid, source, entry.limits),
                             *self._named(rrid, source, r.limits)]
                    return self._verdict(rrid, r.action, named, rdry, who, session, server, now)
            own = self._named(rid, source, entry.limits)
            return self._verdict(rid, self._fallback(entry), own, dry, who, session, server, now)
        return self._verdict("default", self.default(), [], False, who, session, server, now)

    @staticmethod
    def _named(rule: str, source: str, limits: list[Limit]) -> list[tuple[str, Limit]]:
        return [(lim.counter or f"{rule}#{i}@{source}", lim) for i, lim in enumerate(limits)]

    def _verdict(self, rule: str, action: str, limits: list[tuple[str, Limit]], dry: bool,
                 who: tuple[str, str, tuple[str, ...]], session: str, server: str,
                 now: float) -> Outcome:
        name = {"allow": "allow", "deny": "deny", "require_approval": "pending"}[action]
        if action != "allow" or not limits:
            return Outcome(name, rule, dry_run=dry and name != "allow")
        principal, grant, _ = who
        values = {"grant": grant, "agent": principal, "session": session, "server": server,
                  "global": ""}
        keys = {}
        for counter, lim in limits:
            window = (WINDOW_SECONDS[lim.window] if isinstance(lim.window, str)
                      else float(lim.window))
            keys.setdefault((counter, lim.scope, values[lim.scope]), (lim.max, window))
        levels = {}
        for k, (cap, window) in keys.items():
            tokens, last = self.buckets.get(k, (float(cap), now))
            levels[k] = min(float(cap), tokens + (now - last) * cap / window)
        if any(level < 1.0 for level in levels.values()):
            return Outcome("limited", rule, limited=True, dry_run=dry)
        for k, level in levels.items():
            self.buckets[k] = (level - 1.0, now)
        return Outcome("allow", rule)
