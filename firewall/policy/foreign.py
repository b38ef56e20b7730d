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

Example::

    fmt = detect(raw)            # "mcpwall" | "intercept"
    doc = intercept_to_mcpwall(raw, "github.yaml") if fmt == "intercept" else raw
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from firewall.policy.operators import compile_test
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


def _check(rule: InterceptRule, where: str) -> dict[str, Any]:
    """One Intercept rule as an mcpwall ``checks`` entry."""
    if rule.rate_limit:
        if parse_rate_limit(rule.rate_limit) is None:
            raise PolicyError(f"{where}.rate_limit: must be \"N/window\" with N > 0 and window "
                              f"minute, hour or day, got {rule.rate_limit!r}")
        if rule.conditions or rule.state is not None:
            raise PolicyError(f"{where}: rate_limit cannot be combined with conditions or state")
        if rule.action == "deny":
            raise PolicyError(f"{where}: rate_limit cannot be used with action \"deny\"")
        raise PolicyError(f"{where}.rate_limit: Intercept's counters (rate_limit, state) are "
                          "not supported yet")
    if not rule.name:
        raise PolicyError(f"{where}: rule must have a name")
    action = rule.action or "evaluate"
    if action not in ("evaluate", "deny"):
        raise PolicyError(f"{where}.action: must be \"evaluate\" or \"deny\", got {action!r}")
    if rule.state is not None:
        raise PolicyError(f"{where}.state: Intercept's counters (rate_limit, state) are not "
                          "supported yet")
    out: dict[str, Any] = {"name": rule.name}
    if action == "deny":
        if rule.conditions:
            raise PolicyError(f"{where}: deny rules must not have conditions")
        out["deny"] = True
    else:
        if not rule.conditions:
            raise PolicyError(f"{where}: evaluate rules must have at least one condition")
        for i, c in enumerate(rule.conditions):  # errors name the Intercept path
            compile_test(Test(path=c.path, op=c.op, value=c.value),  # type: ignore[arg-type]
                         f"{where}.conditions[{i}]")
        out["require"] = [_test(c) for c in rule.conditions]
    if rule.on_deny:
        out["reason"] = rule.on_deny
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
    tools: dict[str, Any] = {}
    for name, tool in policy.tools.items():
        where = f"{source}: tools.{name}.rules"
        checks = [_check(rule, f"{where}[{i}]") for i, rule in enumerate(tool.rules)]
        if name == "*":
            if checks:
                out["all_tools"] = {"checks": checks}
            continue
        tools[literal_key(name)] = {"checks": checks} if checks else {}
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
