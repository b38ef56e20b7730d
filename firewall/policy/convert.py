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
)

# mcpwall keys of a tool entry the other formats can say (per format).
_HOSTED_TOOL = frozenset({"require", "deny_if", "limits", "rate_limit", "action", "reason",
                          "checks"})
_INTERCEPT_TOOL = frozenset({"require", "deny_if", "checks", "action", "reason"})


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
    _top_notes(doc, {"version", "default", "hide", "all_tools", "tools", "$schema", "name",
                     "description"}, notes)
    default = doc.get("default") or "deny"
    if default not in ("allow", "deny"):
        notes.append(f"default: {default!r} cannot be expressed; written as deny")
        default = "deny"
    out: dict[str, Any] = {"version": "1", "default": default}
    if doc.get("hide"):
        out["hide"] = list(doc["hide"])
    every = doc.get("all_tools") or {}
    if every.get("limits"):
        out["all_tools"] = {"limits": list(every["limits"])}
    if every.get("checks"):
        notes.append("all_tools.checks: cannot be expressed (dropped)")
    tools: dict[str, Any] = {}
    for key, entry in (doc.get("tools") or {}).items():
        where = f"tools.{key}"
        name = literal_name(key)
        if name is None:
            notes.append(f"{where}: a glob cannot be expressed (dropped)")
            continue
        out_entry: dict[str, Any] = {}
        for k in entry:
            if k not in _HOSTED_TOOL:
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
    _top_notes(doc, {"version", "default", "hide", "all_tools", "tools", "$schema", "name",
                     "description"}, notes)
    default = doc.get("default") or "deny"
    if default not in ("allow", "deny"):
        notes.append(f"default: {default!r} cannot be expressed; written as deny")
        default = "deny"
    out: dict[str, Any] = {"version": "1", "default": default}
    if doc.get("description"):
        out["description"] = doc["description"]
    if doc.get("hide"):
        out["hide"] = list(doc["hide"])
    tools: dict[str, Any] = {}
    for key, entry in (doc.get("tools") or {}).items():
        where = f"tools.{key}"
        name = literal_name(key)
        if name is None or name == "*":
            notes.append(f"{where}: a glob cannot be expressed (dropped)")
            continue
        for k in entry:
            if k not in _INTERCEPT_TOOL:
                notes.append(f"{where}.{k}: cannot be expressed (dropped)")
        if entry.get("action") not in (None, "allow", "deny"):
            notes.append(f"{where}.action: {entry['action']!r} cannot be expressed (dropped)")
        tools[name] = {"rules": _intercept_rules(entry, where, notes)}
    every = doc.get("all_tools") or {}
    if every.get("limits"):
        notes.append("all_tools.limits: token buckets cannot be expressed (dropped)")
    if every.get("checks"):
        tools["*"] = {"rules": _intercept_rules({"checks": every["checks"]}, "all_tools",
                                                notes)}
    out["tools"] = tools
    return out, notes
