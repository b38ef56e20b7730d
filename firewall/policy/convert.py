"""Policy documents from one format to another: pure functions on plain data.

``convert(doc, to)`` takes a document in any of the three formats (mcpwall's,
PolicyLayer's hosted ``policy.json``, Intercept's YAML policy, told apart by
shape) and returns ``(document, notes)``: the document in the format asked
for, and one note per thing it could not express (dropped). An empty list of
notes means the two documents decide alike.

Rules this module keeps:

1. No I/O and no engine: dicts in, dicts out (callers serialise them).
2. Nothing is dropped silently: every key the target cannot say is a note
   naming its path.
3. Reading goes through the same translation the loader uses, so what is
   converted is what mcpwall would enforce.

Example::

    doc, notes = convert({"version": "1", "tools": {"x": {"rules": [
        {"name": "small", "conditions": [{"path": "args.n", "op": "lt", "value": 3}]}]}}},
        "mcpwall")
"""

from __future__ import annotations

from typing import Any

from firewall.policy.foreign import (
    Format,
    format_of_document,
    intercept_to_mcpwall,
    literal_name,
    scope_of,
)

# mcpwall keys of a tool entry the other formats can say (per format).
_HOSTED_TOOL = frozenset({"require", "deny_if", "limits", "rate_limit", "action", "reason",
                          "checks"})
_INTERCEPT_TOOL = frozenset({"require", "deny_if", "checks", "action", "reason", "counters",
                             "require_state"})
_INTERCEPT_WINDOWS = frozenset({"minute", "hour", "day"})


def to_mcpwall(doc: dict[str, Any], source: str = "<document>") -> dict[str, Any]:
    """Any format's document as an mcpwall one (raise PolicyError when invalid)."""
    if format_of_document(doc) == "intercept":
        return intercept_to_mcpwall(doc, source)
    return dict(doc)


def convert(doc: dict[str, Any], to: Format, source: str = "<document>"
            ) -> tuple[dict[str, Any], list[str]]:
    """``doc`` (any format) in format ``to``, and notes on what was dropped."""
    mcpwall = to_mcpwall(doc, source)
    if to == "mcpwall":
        return mcpwall, []
    if to == "policylayer":
        return to_policylayer(mcpwall)
    return to_intercept(mcpwall)


def _foreign_top(doc: dict[str, Any], notes: list[str]) -> str:
    """What PolicyLayer's two formats keep of a document's top level: its
    ``default`` (allow or deny), the other keys they cannot express noted."""
    _top_notes(doc, {"version", "default", "hide", "all_tools", "tools", "$schema", "name",
                     "description"}, notes)
    default = doc.get("default") or "deny"
    if default not in ("allow", "deny"):
        notes.append(f"default: {default!r} cannot be expressed; written as deny")
        default = "deny"
    return str(default)


def _top_notes(doc: dict[str, Any], keep: set[str], notes: list[str]) -> None:
    for key in doc:
        if key not in keep and doc[key] not in (None, [], {}, False):
            notes.append(f"{key}: cannot be expressed (dropped)")


def _checks_as_lists(checks: list[dict[str, Any]], where: str, notes: list[str]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool, str | None]:
    """``checks`` as hosted ``require``/``deny_if`` items: (require, deny_if,
    deny, reason of the deny)."""
    require: list[dict[str, Any]] = []
    deny_if: list[dict[str, Any]] = []
    deny, deny_reason = False, None
    for i, check in enumerate(checks):
        reason = check.get("reason")
        if check.get("deny"):
            deny, deny_reason = True, reason
            continue
        for test in check.get("require", []):
            require.append({**test, **({"reason": reason} if reason else {})})
        tests = check.get("deny_if", [])
        if len(tests) == 1:
            deny_if.append({**tests[0], **({"reason": reason} if reason else {})})
        elif tests:
            notes.append(f"{where}[{i}].deny_if: several tests that must all hold to deny "
                         "cannot be expressed (dropped)")
    return require, deny_if, deny, deny_reason


def to_policylayer(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An mcpwall document in PolicyLayer's hosted format."""
    notes: list[str] = []
    default = _foreign_top(doc, notes)
    out: dict[str, Any] = {"version": "1", "default": default}
    if doc.get("hide"):
        out["hide"] = list(doc["hide"])
    every = doc.get("all_tools") or {}
    if every.get("limits"):
        out["all_tools"] = {"limits": list(every["limits"])}
    for key in ("checks", "counters", "require_state"):
        if every.get(key):
            notes.append(f"all_tools.{key}: cannot be expressed (dropped)")
    tools: dict[str, Any] = {}
    for key, entry in (doc.get("tools") or {}).items():
        where = f"tools.{key}"
        name = literal_name(key)
        if name is None:
            notes.append(f"{where}: a glob cannot be expressed (dropped)")
            continue
        if name != key:
            # mcpwall reads the hosted format's keys as globs: "a*" would match
            # every name starting with "a", not the one tool.
            notes.append(f"{where}: a name with glob characters cannot be expressed "
                         "(dropped)")
            continue
        out_entry: dict[str, Any] = {}
        for k in entry:
            if k in ("counters", "require_state"):
                notes.append(f"{where}.{k}: counters cannot be expressed (the hosted "
                             "format's limits are read as token buckets) (dropped)")
            elif k not in _HOSTED_TOOL:
                notes.append(f"{where}.{k}: cannot be expressed (dropped)")
        require = entry.get("require", [])
        if isinstance(require, dict):
            if require:
                notes.append(f"{where}.require: argument conditions cannot be expressed "
                             "(dropped)")
            require = []
        require = list(require)
        deny_if = list(entry.get("deny_if", []))
        more_require, more_deny, deny, deny_reason = _checks_as_lists(
            entry.get("checks", []), f"{where}.checks", notes)
        require += more_require
        deny_if += more_deny
        action = entry.get("action")
        if action not in (None, "allow", "deny"):
            notes.append(f"{where}.action: {action!r} cannot be expressed; written as deny")
            action = "deny"
        if deny:
            action, out_entry["reason"] = "deny", deny_reason or entry.get("reason")
        if action:
            out_entry["action"] = action
        if entry.get("reason") and "reason" not in out_entry:
            out_entry["reason"] = entry["reason"]
        if require:
            out_entry["require"] = require
        if deny_if:
            out_entry["deny_if"] = deny_if
        for k in ("limits", "rate_limit"):
            if entry.get(k):
                out_entry[k] = entry[k]
        tools[name] = {k: v for k, v in out_entry.items() if v is not None}
    out["tools"] = tools
    return out, notes


def _intercept_rules(entry: dict[str, Any], where: str, notes: list[str]
                     ) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    require = entry.get("require", [])
    if isinstance(require, dict):
        if require:
            notes.append(f"{where}.require: argument conditions cannot be expressed (dropped)")
        require = []
    for i, test in enumerate(require):
        rules.append({"name": f"require {i}", "conditions": [_condition(test)],
                      **({"on_deny": test["reason"]} if test.get("reason") else {})})
    for i, test in enumerate(entry.get("deny_if", [])):
        negated = _negated(test)
        if negated is None:
            notes.append(f"{where}.deny_if[{i}]: operator {test.get('op')!r} has no negation "
                         "in Intercept (dropped)")
            continue
        rules.append({"name": f"deny_if {i}", "conditions": [negated],
                      **({"on_deny": test["reason"]} if test.get("reason") else {})})
    for i, check in enumerate(entry.get("checks", [])):
        name = check.get("name") or f"check {i}"
        rule: dict[str, Any] = {"name": name}
        if check.get("deny"):
            rule["action"] = "deny"
        elif check.get("deny_if"):
            notes.append(f"{where}.checks[{i}].deny_if: cannot be expressed (dropped)")
            continue
        else:
            rule["conditions"] = [_condition(t) for t in check.get("require", [])]
        if check.get("reason"):
            rule["on_deny"] = check["reason"]
        rules.append(rule)
    if entry.get("action") == "deny":
        rules.append({"name": "deny", "action": "deny",
                      **({"on_deny": entry["reason"]} if entry.get("reason") else {})})
    return rules


def _condition(test: dict[str, Any]) -> dict[str, Any]:
    return {"path": test["path"], "op": test["op"], "value": test.get("value")}


def _negated(test: dict[str, Any]) -> dict[str, Any] | None:
    """``deny_if X`` as ``require Y``, where that is exact. An absent value fails
    both an operator and its opposite (``lt`` / ``gte`` ...), so only ``exists``
    has an exact negation."""
    if test.get("op") == "exists" and isinstance(test.get("value"), bool):
        return {"path": test["path"], "op": "exists", "value": not test["value"]}
    return None


def to_intercept(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An mcpwall document in Intercept's format."""
    notes: list[str] = []
    default = _foreign_top(doc, notes)
    out: dict[str, Any] = {"version": "1", "default": default}
    if doc.get("description"):
        out["description"] = doc["description"]
    if doc.get("hide"):
        out["hide"] = list(doc["hide"])
    every = doc.get("all_tools") or {}
    counters = _Counters(doc)
    tools: dict[str, Any] = {}
    for key, entry in (doc.get("tools") or {}).items():
        where = f"tools.{key}"
        name = literal_name(key)
        if name is None or name == "*":
            notes.append(f"{where}: a glob cannot be expressed (dropped)")
            continue
        if name != key:
            # A file whose rules use nothing only Intercept has is read as
            # mcpwall's format, where "a*" is a glob: such names are dropped.
            notes.append(f"{where}: a name with glob characters cannot be expressed "
                         "(dropped)")
            continue
        for k in entry:
            if k not in _INTERCEPT_TOOL:
                notes.append(f"{where}.{k}: cannot be expressed (dropped)")
        if entry.get("action") not in (None, "allow", "deny"):
            notes.append(f"{where}.action: {entry['action']!r} cannot be expressed (dropped)")
        tools[name] = {"rules": _intercept_rules(entry, where, notes)
                       + counters.rules(entry, name, where, notes)}
    if every.get("limits"):
        notes.append("all_tools.limits: token buckets cannot be expressed (dropped)")
    wildcard = (_intercept_rules({"checks": every.get("checks", [])}, "all_tools", notes)
                + counters.rules(every, "*", "all_tools", notes))
    if wildcard:
        tools["*"] = {"rules": wildcard}
    out["tools"] = tools
    return out, notes


class _Counters:
    """mcpwall's counters as Intercept's state blocks.

    Intercept keys a total by the tool whose rule declares it (``"*"``:
    ``_global``) and any rule may read it (``state.<tool>.<counter>``). So a
    counter is expressible when one place (one tool, or ``all_tools``)
    declares it, it counts for everyone (``scope: global``), by minute, hour
    or day, under a ``max``.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.owners: dict[str, set[str]] = {}
        every = doc.get("all_tools") or {}
        places = [("*", every), *((literal_name(k) or k, e)
                                  for k, e in (doc.get("tools") or {}).items())]
        for owner, entry in places:
            for c in entry.get("counters", []):
                self.owners.setdefault(c["counter"], set()).add(owner)

    def local(self, name: str) -> tuple[str, str] | None:
        """``(scope, name)`` of the counter in Intercept, or None when several
        places declare it (they share one total, which Intercept cannot)."""
        owners = self.owners.get(name, set())
        if len(owners) != 1:
            return None
        scope = scope_of(next(iter(owners)))
        prefix = f"{scope}."
        return scope, (name[len(prefix):] if name.startswith(prefix) and name != prefix
                       else name)

    def rules(self, entry: dict[str, Any], owner: str, where: str, notes: list[str]
              ) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        for i, test in enumerate(_state_tests(entry.get("require_state"),
                                              f"{where}.require_state", notes)):
            at = f"{where}.require_state[{i}]"
            found = self.local(test["path"][len("state."):])
            if found is None:
                notes.append(f"{at}: counter {test['path'][6:]!r} is declared in several "
                             "places (Intercept keeps a total per tool) (dropped)")
                continue
            rules.append({"name": f"require_state {i}", "conditions": [
                {"path": f"state.{found[0]}.{found[1]}", "op": test["op"],
                 "value": test["value"]}],
                **({"on_deny": test["reason"]} if test.get("reason") else {})})
        seen: set[str] = set()
        for i, c in enumerate(entry.get("counters", [])):
            at = f"{where}.counters[{i}]"
            found = self.local(c["counter"])
            why = _inexpressible(c)
            if found is None:
                why = "is declared in several places (Intercept keeps a total per tool)"
            elif found[1] in seen:
                why = f"is a second counter named {found[1]!r} on this tool"
            if why is not None or found is None:
                notes.append(f"{at}: counter {c['counter']!r} {why} (dropped)")
                continue
            scope, local = found
            seen.add(local)
            state: dict[str, Any] = {"counter": local, "window": c["window"]}
            if c.get("increment_from"):
                state["increment_from"] = c["increment_from"]
            elif c.get("increment", 1) != 1:
                state["increment"] = c["increment"]
            path = f"state.{scope}.{local}"
            # Intercept adds only under an lt/lte of the rule's own counter; a
            # total that never grows is a state block under another condition.
            condition = ({"path": path, "op": "lte", "value": c["max"]}
                         if c.get("max") is not None else {"path": path, "op": "gte", "value": 0})
            rules.append({"name": f"counter {c['counter']}", "conditions": [condition],
                          "state": state,
                          **({"on_deny": c["reason"]} if c.get("reason") else {})})
        return rules


def _inexpressible(c: dict[str, Any]) -> str | None:
    """Why a counter has no Intercept equivalent, or None."""
    if c.get("scope", "grant") != "global":
        return (f"counts per {c.get('scope', 'grant')} (Intercept's totals are one for "
                "every caller)")
    if c.get("window") not in _INTERCEPT_WINDOWS:
        return f"counts by {c.get('window')} (Intercept: minute, hour or day)"
    increment = 0 if c.get("increment_from") else c.get("increment", 1)
    if c.get("max") is None and increment:
        return "has no max (Intercept adds to a total only under a limit)"
    if c.get("max") is not None and not c.get("increment_from") and increment == 0:
        return "adds 0 under a max (Intercept reads an increment of 0 as 1)"
    return None


def _state_names(conditions: Any) -> list[str]:
    if isinstance(conditions, dict):
        return list(conditions)
    if isinstance(conditions, list):
        return [t["path"][len("state."):] for t in conditions
                if isinstance(t, dict) and str(t.get("path", "")).startswith("state.")]
    return []


# mcpwall's condition keys on a number, as Intercept operators.
_CONDITION_OPS = {"min": "gte", "max": "lte", "const": "eq", "in": "in", "enum": "in"}


def _state_tests(conditions: Any, where: str, notes: list[str]) -> list[dict[str, Any]]:
    """``require_state`` as tests on ``state.<counter>`` (a map's conditions
    converted where Intercept has the operator)."""
    if isinstance(conditions, list):
        return conditions
    out: list[dict[str, Any]] = []
    for name, spec in (conditions or {}).items():
        if isinstance(spec, list):
            spec = {"in": spec}
        elif isinstance(spec, str):
            spec = {"const": spec}
        for key, value in spec.items():
            op = _CONDITION_OPS.get(key)
            if op is None:
                if key not in ("optional", "nullable"):
                    notes.append(f"{where}.{name}.{key}: cannot be expressed (dropped)")
                continue
            out.append({"path": f"state.{name}", "op": op, "value": value})
    return out
