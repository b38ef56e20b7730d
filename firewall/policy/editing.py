"""What the console's policy page shows of a tool, and the edit it makes.

Pure: a compiled table and a file's parsed data in, states and new data out.
The operator plane does the reading, writing, backup and reload
(:mod:`firewall.gateway.operator.policy_page`).

Rules this module keeps:

1. A tool's state is what the compiled table in force would do with a call
   to it, read from the entry that decides it (the first candidate of the
   tools index): ``allow``, ``deny`` or ``require_approval`` for an entry
   that says only that; ``custom`` for an entry with conditions, argument
   rules, rate limits or an audience (the page shows them and does not
   flatten them unasked); ``default`` when no entry matches (the file's
   ``default`` decides); ``hide`` when the file lists it in ``hide``.
2. An edit changes one tool of one file and nothing else: the entry is
   replaced by the plain state (``default`` removes it), ``hide`` adds the
   name to the top-level ``hide`` list and every other state removes it from
   there. The entry's key matches that one name only (glob characters are
   bracketed: tool ``net_*`` is written ``net_[*]``): an edit never writes a
   pattern. Keys of the file the edit does not concern keep their order and
   values. An entry that was ``custom`` is replaced only when the edit says
   ``replace_custom`` (its rules would be lost; the file's backup keeps them).
3. The edited data is checked by the caller (loaded and compiled with the
   other files) before anything is written: an edit never produces a policy
   that does not load.
"""

from __future__ import annotations

import copy
from typing import Any, Final, Literal

import msgspec

from firewall.policy.compiler import CompiledEntry, ServerTable
from firewall.policy.foreign import literal_key

State = Literal["allow", "deny", "require_approval", "hide", "custom", "default"]
SETTABLE: Final = ("allow", "deny", "require_approval", "hide", "default")
HIDE_ALL: Final = "*"


class EditError(Exception):
    """An edit that cannot be made; the message says why."""


class ToolState(msgspec.Struct, frozen=True):
    """One tool of one server as the policy page shows it."""

    server: str
    tool: str
    state: State
    effective: str            # the action a plain call gets (the default's, for "default")
    rule: str | None          # the entry deciding, e.g. "tools.vm_management"
    source: str | None        # the file of that entry
    details: list[str]        # custom: its conditions, rules, limits, audience, in words
    seen: bool = False        # the server offered it (tools/list) or it was called


def entry_details(entry: CompiledEntry) -> list[str]:
    """What makes an entry more than a plain action, in words."""
    out: list[str] = []
    if entry.audience is not None:
        out.append(f"only for {entry.audience!r}")
    for req in entry.require:
        out.append(f"requires {req.check.message}")
    for rule in entry.rules:
        what: str = rule.verdict.action
        if rule.verdict.buckets:
            what = rule.verdict.limited_reason
        when = "; ".join(c.message for c in rule.when) or "always"
        out.append(f"rule {rule.rule}: when {when} -> {what}")
    if entry.fallback.buckets:
        out.append(entry.fallback.limited_reason)
    return out


def tool_state(table: ServerTable, server: str, tool: str, hidden: bool,
               seen: bool = False) -> ToolState:
    """The state of ``tool`` under ``table`` (rule 1)."""
    candidates = table.tools.candidates(tool)
    if hidden:
        return ToolState(server, tool, "hide", "deny", "hide", None, [], seen)
    if not candidates:
        return ToolState(server, tool, "default", table.default.action, table.default.rule,
                         None, [], seen)
    entry = candidates[0]
    details = entry_details(entry)
    plain = not details and len(candidates) == 1
    state: State = "custom"
    if plain:
        state = entry.fallback.action
    return ToolState(server, tool, state, entry.fallback.action, entry.rule, entry.source,
                     details, seen)


def hidden_names(data: dict[str, Any]) -> set[str]:
    """The names a policy file's top-level ``hide`` lists."""
    hide = data.get("hide")
    return {h for h in hide if isinstance(h, str)} if isinstance(hide, list) else set()


def is_plain(entry: Any) -> bool:
    """Whether a file's entry for a tool says no more than an action (and a reason)."""
    return isinstance(entry, dict) and set(entry) <= {"action", "reason", "description"}


def set_state(data: dict[str, Any], tool: str, state: str, *, by: str,
              replace_custom: bool = False) -> dict[str, Any]:
    """A copy of the file data with ``tool`` set to ``state`` (rule 2)."""
    if state not in SETTABLE:
        raise EditError(f"state: expected one of {', '.join(SETTABLE)}, got {state!r}")
    if not tool or tool == HIDE_ALL:
        raise EditError("tool: name one tool (patterns are edited in the file)")
    out = copy.deepcopy(data)
    tools = out.get("tools")
    if tools is None:
        tools = {}
    if not isinstance(tools, dict):
        raise EditError("the file's tools is not a table: edit it by hand")
    key = literal_key(tool)  # "net_*" is one tool here, never a glob
    current = tools.get(key)
    if current is not None and not is_plain(current) and not replace_custom:
        raise EditError(f"tool {tool!r} has conditions, rules or limits in this file; "
                        "set replace_custom to replace them (a backup of the file is kept)")
    hide = [h for h in out.get("hide", []) if h != tool] if isinstance(
        out.get("hide"), list) else []
    if state == "hide":
        hide.append(tool)  # hide entries are names, never globs (but "*")
        tools.pop(key, None)
    elif state == "default":
        tools.pop(key, None)
    else:
        entry: dict[str, Any] = {"action": state}
        if state == "deny":
            entry["reason"] = f"denied in the console by {by}"
        tools[key] = entry
    if hide:
        out["hide"] = hide
    else:
        out.pop("hide", None)
    if tools or "tools" in data:
        out["tools"] = tools
    return out


__all__ = ["SETTABLE", "EditError", "State", "ToolState", "entry_details", "hidden_names",
           "is_plain", "set_state", "tool_state"]
