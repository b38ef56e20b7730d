"""PolicyLayer's policy formats, recognised by shape and read into mcpwall's.

Rules this module keeps:

1. There is one engine. A foreign document is translated, as plain data, into
   an mcpwall policy document, which the schema and compiler then read like
   any other; nothing downstream knows where it came from.
2. Detection is by shape, never by file name, and an mcpwall document is never
   reclassified: a document is Intercept's only if a rule uses something only
   Intercept has (``conditions``, ``on_deny``, ``rate_limit``, ``state`` or
   ``action: evaluate``), which no valid mcpwall rule has; then every key must
   be one Intercept defines. Anything else is read as mcpwall's format, which includes
   PolicyLayer's hosted ``policy.json`` keys (``hide``, ``all_tools``, lists
   in ``require`` and ``deny_if``, the ``rate_limit`` block) as they are.
3. Unknown keys are errors here too, named by their path in the document as
   written (``tools.create_issue.rules[0].conditon``).
4. Intercept's semantics are kept exactly: rules of a tool, then the ``"*"``
   rules, all must pass, the first that fails denies with its ``on_deny``;
   under ``default: deny`` a tool not listed is refused before the ``"*"``
   rules. Its ``"*"`` becomes ``all_tools``, its rules ``checks``.
5. Counters (``rate_limit: N/window``, ``state``) become mcpwall counters
   named ``<tool>.<counter>`` (``_global.<counter>`` for ``"*"``), one total
   for everyone (``scope: global``), bounded by the rule's first ``lt``/``lte``
   on its own counter (``max`` N - 1 / N, as ``extractLimit``); its other
   ``state.`` conditions become ``require_state`` tests. A block no limit
   bounds is never added to (Intercept reserves only under a limit).

Example::

    fmt = detect(raw)            # "mcpwall" | "intercept"
    doc = intercept_to_mcpwall(raw, "github.yaml") if fmt == "intercept" else raw
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal

import msgspec

from firewall.policy.counters import MAX_AMOUNT
from firewall.policy.operators import compile_test, is_number
from firewall.policy.schema import PolicyError, Test, locate_error

Format = Literal["mcpwall", "policylayer", "intercept"]
FORMATS: Final[tuple[Format, ...]] = ("mcpwall", "policylayer", "intercept")

_INTERCEPT_ONLY: Final = frozenset({"conditions", "on_deny", "rate_limit", "state"})
WINDOWS: Final = ("minute", "hour", "day")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True,
              omit_defaults=True):
    pass


class InterceptCondition(_Strict, frozen=True):
    path: str
    op: str
    value: Any = None


class InterceptState(_Strict, frozen=True):
    counter: str = ""
    window: str = ""
    increment: int = 0
    increment_from: str = ""


class InterceptRule(_Strict, frozen=True):
    name: str = ""
    action: str = ""
    rate_limit: str = ""
    conditions: list[InterceptCondition] = msgspec.field(default_factory=list)
    on_deny: str = ""
    state: InterceptState | None = None


class InterceptTool(_Strict, frozen=True):
    rules: list[InterceptRule] = msgspec.field(default_factory=list)


class InterceptPolicy(_Strict, frozen=True):
    """Intercept's YAML policy (``POLICY.md``), every key it defines."""

    version: str = ""
    description: str = ""
    default: str = ""
    hide: list[str] = msgspec.field(default_factory=list)
    tools: dict[str, InterceptTool] = msgspec.field(default_factory=dict)


def detect(raw: dict[str, Any]) -> Format:
    """``"intercept"`` for a document with a rule only Intercept's format has
    (no valid mcpwall document has one), else ``"mcpwall"`` (PolicyLayer's
    hosted format is a subset of it)."""
    tools = raw.get("tools")
    if not isinstance(tools, dict):
        return "mcpwall"
    for entry in tools.values():
        rules = entry.get("rules") if isinstance(entry, dict) else None
        if not isinstance(rules, list):
            continue
        for rule in rules:
            if isinstance(rule, dict) and (_INTERCEPT_ONLY.intersection(rule)
                                           or rule.get("action") == "evaluate"):
                return "intercept"
    return "mcpwall"


def is_hosted(raw: dict[str, Any]) -> bool:
    """True when a document uses only keys PolicyLayer's hosted format defines
    (``version``, ``default``, ``hide``, ``all_tools.limits``, and per tool
    ``require``/``deny_if`` lists, ``limits``, ``rate_limit``, ``action``,
    ``reason``): for ``explain`` and ``check`` to say which format they read."""
    if not {"version", "default", "hide", "all_tools", "tools"}.issuperset(raw):
        return False
    every = raw.get("all_tools")
    if every is not None and not (isinstance(every, dict) and {"limits"}.issuperset(every)):
        return False
    tools = raw.get("tools", {})
    if not isinstance(tools, dict):
        return False
    allowed = {"require", "deny_if", "limits", "rate_limit", "action", "reason"}
    for entry in tools.values():
        if not isinstance(entry, dict) or not allowed.issuperset(entry):
            return False
        if "require" in entry and not isinstance(entry["require"], list):
            return False
    return True


def format_of_document(raw: dict[str, Any]) -> Format:
    """Which of the three formats a document is written in (by shape)."""
    if detect(raw) == "intercept":
        return "intercept"
    return "policylayer" if is_hosted(raw) else "mcpwall"


def parse_rate_limit(text: str) -> tuple[int, str] | None:
    """``"5/hour"`` -> ``(5, "hour")``; None when it is not of that form."""
    count, _, window = text.partition("/")
    if not count.isdigit() or int(count) <= 0 or window not in WINDOWS:
        return None
    return int(count), window


def _test(c: InterceptCondition) -> dict[str, Any]:
    return {"path": c.path, "op": c.op, "value": c.value}


def scope_of(tool: str) -> str:
    """The scope Intercept keys a tool's counters by: its name, ``_global`` for ``"*"``."""
    return "_global" if tool == "*" else tool


def _state_counter(rule: InterceptRule) -> tuple[str, str] | None:
    """``(counter, window)`` of a rule's state block, ``rate_limit`` desugared."""
    if rule.rate_limit:
        parsed = parse_rate_limit(rule.rate_limit)
        return None if parsed is None else (f"_rate_{parsed[1]}", parsed[1])
    return None if rule.state is None else (rule.state.counter, rule.state.window)


def go_int(value: float) -> int:
    """Go's ``int64(f)``: toward zero."""
    return math.trunc(value)


class _Translation:
    """What the rules of one Intercept tool (or ``"*"``) become in mcpwall:
    ``checks``, ``counters`` and ``require_state``, in the rules' order."""

    def __init__(self, tool: str, declared: dict[str, dict[str, str]]) -> None:
        self.tool = tool
        self.scope = scope_of(tool)
        self.declared = declared  # Intercept tool key -> {counter: window}
        self.checks: list[dict[str, Any]] = []
        self.counters: list[dict[str, Any]] = []
        self.state: list[dict[str, Any]] = []
        self.counted: set[str] = set()  # counters that add per call (have a limit)

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("checks", self.checks), ("counters", self.counters),
                           ("require_state", self.state)):
            if value:
                out[key] = value
        return out

    def rule(self, rule: InterceptRule, where: str) -> None:
        if rule.rate_limit:
            self._rate_limit(rule, where)
            return
        if not rule.name:
            raise PolicyError(f"{where}: rule must have a name")
        action = rule.action or "evaluate"
        if action not in ("evaluate", "deny"):
            raise PolicyError(f"{where}.action: must be \"evaluate\" or \"deny\", got {action!r}")
        if rule.state is not None:
            _validate_state(rule.state, f"{where}.state")
        if action == "deny":
            if rule.conditions:
                raise PolicyError(f"{where}: deny rules must not have conditions")
            self.checks.append({"name": rule.name, "deny": True,
                                **({"reason": rule.on_deny} if rule.on_deny else {})})
            return
        if not rule.conditions:
            raise PolicyError(f"{where}: evaluate rules must have at least one condition")
        own = f"state.{self.scope}.{rule.state.counter}" if rule.state is not None else None
        limit_at: int | None = None
        args: list[dict[str, Any]] = []
        state: list[dict[str, Any]] = []
        for i, c in enumerate(rule.conditions):
            at = f"{where}.conditions[{i}]"
            if c.path.startswith("state."):
                self._check_state_path(c.path, at)
                # Validate the operator and value as Intercept does.
                compile_test(Test(path="args.value", op=c.op, value=c.value),  # type: ignore[arg-type]
                             at)
                if (limit_at is None and c.path == own and c.op in ("lt", "lte")
                        and is_number(c.value)):
                    limit_at = i  # the limit Intercept reserves against
                    continue
                state.append(_test(c))
            else:
                compile_test(Test(path=c.path, op=c.op, value=c.value),  # type: ignore[arg-type]
                             at)
                args.append(_test(c))
        reason = {"reason": rule.on_deny} if rule.on_deny else {}
        if limit_at is not None:
            assert rule.state is not None
            c = rule.conditions[limit_at]
            value = float(c.value) if abs(c.value) <= MAX_AMOUNT else math.nan
            if math.isnan(value):
                raise PolicyError(f"{where}.conditions[{limit_at}].value: a counter's limit "
                                  f"must be a number within +-{MAX_AMOUNT}, got {c.value!r}")
            if (c.op == "lte" and value < 0) or (c.op == "lt" and value <= 0):
                # No total passes it: the rule denies every call when evaluated.
                self.checks.append({"name": rule.name, "deny": True, **reason})
                return
            limit = go_int(value) if c.op == "lte" else go_int(value) - 1
            if limit < 0:
                # The condition passes, the reservation never does.
                self.checks.append({"name": rule.name, "deny": True, "reason": rule.on_deny
                                    or f"Rate limit exceeded for {rule.name}"})
                return
            self._counter(rule.state.counter, rule.state.window, limit, rule.state,
                          rule.on_deny or f"Rate limit exceeded for {rule.name}")
        if args:
            self.checks.append({"name": rule.name, "require": args, **reason})
        self.state += [{**t, **reason} for t in state]

    def _rate_limit(self, rule: InterceptRule, where: str) -> None:
        parsed = parse_rate_limit(rule.rate_limit)
        if parsed is None:
            raise PolicyError(f"{where}.rate_limit: must be \"N/window\" with N > 0 and window "
                              f"minute, hour or day, got {rule.rate_limit!r}")
        if rule.conditions or rule.state is not None:
            raise PolicyError(f"{where}: rate_limit cannot be combined with conditions or state")
        if rule.action == "deny":
            raise PolicyError(f"{where}: rate_limit cannot be used with action \"deny\"")
        count, window = parsed
        self._counter(f"_rate_{window}", window, count, None, rule.on_deny
                      or f"Rate limit of {count} per {window} reached. Try again later.")

    def _counter(self, name: str, window: str, limit: int, state: InterceptState | None,
                 reason: str) -> None:
        out: dict[str, Any] = {"counter": f"{self.scope}.{name}", "window": window,
                               "max": limit, "scope": "global", "reason": reason}
        if state is not None and state.increment_from:
            out["increment_from"] = state.increment_from
        elif state is not None and state.increment > 1:
            out["increment"] = state.increment
        self.counters.append(out)
        self.counted.add(name)

    def _check_state_path(self, path: str, where: str) -> None:
        """Intercept's check: ``state.<tool>.<counter>`` names a state block of that
        tool (``_global``: of ``"*"``)."""
        parts = path.split(".", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise PolicyError(f"{where}.path: must be \"state.<tool>.<counter>\", got {path!r}")
        tool = "*" if parts[1] == "_global" and "_global" not in self.declared else parts[1]
        if parts[2] not in self.declared.get(tool, {}):
            raise PolicyError(f"{where}: condition references {path} but no matching state "
                              "block found")


def _validate_state(state: InterceptState, where: str) -> None:
    if not state.counter:
        raise PolicyError(f"{where}.counter: must not be empty")
    if state.window not in WINDOWS:
        raise PolicyError(f"{where}.window: must be \"minute\", \"hour\" or \"day\", got "
                          f"{state.window!r}")
    if state.increment_from and not state.increment_from.startswith("args."):
        raise PolicyError(f"{where}.increment_from: must start with \"args.\", got "
                          f"{state.increment_from!r}")
    if state.increment < 0:
        raise PolicyError(f"{where}.increment: must not be negative (mcpwall never subtracts "
                          "from a total)")


def _declared_counters(policy: InterceptPolicy, source: str) -> dict[str, dict[str, str]]:
    """``{tool: {counter: window}}`` of every state block (``rate_limit``
    desugared); two on one tool with one name are Intercept's error."""
    out: dict[str, dict[str, str]] = {}
    for name, tool in policy.tools.items():
        seen: dict[str, int] = {}
        windows: dict[str, str] = {}
        for i, rule in enumerate(tool.rules):
            found = _state_counter(rule)
            if found is None:
                continue
            counter, window = found
            if counter in seen:
                raise PolicyError(f"{source}: tools.{name}.rules[{i}]: duplicate state counter "
                                  f"{counter!r} (also used by rules[{seen[counter]}])")
            seen[counter] = i
            windows[counter] = window
        out[name] = windows
    return out


def intercept_to_mcpwall(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """An Intercept document as an mcpwall one; raise :class:`PolicyError`
    naming ``source`` and the key path (in the Intercept document)."""
    try:
        policy = msgspec.convert(raw, InterceptPolicy)
    except msgspec.ValidationError as exc:
        raise PolicyError(f"{source}: {locate_error(raw, InterceptPolicy, exc)}") from None
    if policy.version != "1":
        raise PolicyError(f"{source}: version: must be \"1\", got {policy.version!r}")
    default = policy.default or "allow"
    if default not in ("allow", "deny"):
        raise PolicyError(f"{source}: default: must be \"allow\" or \"deny\", got {default!r}")
    seen: set[str] = set()
    for i, name in enumerate(policy.hide):
        if not name.strip():
            raise PolicyError(f"{source}: hide[{i}]: entry must not be empty")
        if name in seen:
            raise PolicyError(f"{source}: hide: duplicate entry {name!r}")
        seen.add(name)
    out: dict[str, Any] = {"version": "1", "default": default}
    if policy.description:
        out["description"] = policy.description
    if policy.hide:
        out["hide"] = list(policy.hide)
    declared = _declared_counters(policy, source)
    done: dict[str, _Translation] = {}
    for name, tool in policy.tools.items():
        done[name] = t = _Translation(name, declared)
        for i, rule in enumerate(tool.rules):
            t.rule(rule, f"{source}: tools.{name}.rules[{i}]")
    # A state block no lt/lte of its own bounds is never added to (Intercept
    # reserves only against a limit): a total conditions may still read, at 0.
    read = {t["path"][len("state."):] for d in done.values() for t in d.state}
    for name, t in done.items():
        for counter, window in declared[name].items():
            if counter not in t.counted and f"{t.scope}.{counter}" in read:
                t.counters.append({"counter": f"{t.scope}.{counter}", "window": window,
                                   "increment": 0, "scope": "global"})
    tools: dict[str, Any] = {}
    for name, t in done.items():
        if name == "*":
            if t.entry():
                out["all_tools"] = t.entry()
            continue
        tools[literal_key(name)] = t.entry()
    out["tools"] = tools
    return out


def literal_key(name: str) -> str:
    """An mcpwall ``tools`` key matching exactly ``name`` (glob characters bracketed)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def literal_name(key: str) -> str | None:
    """The one name an mcpwall key matches, or None if it is a real glob."""
    out: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "[" and i + 2 < len(key) and key[i + 2] == "]" and key[i + 1] in "*?[":
            out.append(key[i + 1])
            i += 3
            continue
        if c in "*?[":
            return None
        out.append(c)
        i += 1
    return "".join(out)
