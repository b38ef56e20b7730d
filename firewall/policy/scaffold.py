"""A starter policy from a server's tools/list: classify each tool, say why.

Pure: tool, prompt and resource descriptors (the dicts of a ``tools/list``,
``prompts/list``, ``resources/list`` and ``resources/templates/list`` result)
in; a policy document (a plain dict, loadable by :func:`~firewall.policy.schema.parse_policy`)
and a reason per tool and rule out. ``mcpwall scan`` does the I/O.

Rules this module keeps:

1. Every tool gets exactly one class: ``read`` (allowed), ``change`` (allowed
   under a token bucket), ``destroy`` and ``execute`` (held for approval), or
   ``unknown`` (held for approval, "could not classify"). Nothing a scan cannot
   explain is ever allowed outright.
2. Evidence is weighed in this order: the MCP annotations (``readOnlyHint``,
   ``destructiveHint``, with the spec's default of destructive when
   ``readOnlyHint`` is false), then the verbs in the tool's name, then the
   first verb of its description. Annotations are the server's own claim, so
   they never make a tool less severe than its name says: a
   ``readOnlyHint`` tool named ``delete_x`` is ``destroy``, and the reason says so.
3. A portmanteau tool (an argument named like ``action``/``operation`` whose
   schema lists its values, or whose description lists them) becomes one rule
   per class of values, in the order read, change, destroy, execute, unknown;
   a value outside the lists matches no rule and gets the policy default.
4. The policy default is ``deny``: a tool the server adds after the scan is
   refused until someone writes its entry.
5. Every entry and rule carries a ``description`` saying why (the YAML writer
   turns them into comments, with control characters and every line break
   YAML knows escaped, so nothing a server names can end a comment); held
   ones carry a ``reason`` too, shown to the agent.

Example::

    result = scaffold(tools, server="git")
    result.policy["tools"]["git_reset"]["action"] == "require_approval"
    to_yaml(result)  # the policy, with a comment per tool
"""

from __future__ import annotations

import fnmatch
import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
import yaml

from firewall.policy.convert import convert
from firewall.policy.foreign import literal_key

Kind = Literal["read", "change", "destroy", "execute", "unknown"]

KINDS: Final[tuple[Kind, ...]] = ("read", "change", "destroy", "execute", "unknown")
# Higher is more severe; evidence combines to the most severe class it names.
SEVERITY: Final[dict[Kind, int]] = {"unknown": -1, "read": 0, "change": 1, "destroy": 2,
                                    "execute": 3}

VERBS: Final[dict[str, Kind]] = {
    **dict.fromkeys((
        "get", "list", "read", "search", "describe", "find", "fetch", "query", "show", "view",
        "inspect", "info", "status", "stat", "stats", "version", "metrics", "health", "help",
        "schema", "diff", "log", "logs", "count", "check", "lookup", "browse", "explain",
        "preview", "validate", "verify", "ls", "cat", "head", "tail", "grep", "echo", "ping",
        "whoami", "download", "export", "convert", "calculate", "compute", "suggest",
        "summarize", "analyze", "screenshot", "watch", "peek", "print", "poll", "return",
    ), "read"),
    **dict.fromkeys((
        "create", "update", "set", "write", "move", "add", "put", "post", "patch", "edit",
        "modify", "rename", "copy", "clone", "insert", "append", "upload", "import", "save",
        "commit", "push", "merge", "checkout", "switch", "start", "stop", "restart",
        "shutdown", "pause", "resume", "suspend", "attach", "detach", "configure", "enable",
        "disable", "toggle", "apply", "install", "send", "publish", "tag", "label", "assign",
        "mkdir", "touch", "register", "subscribe", "unsubscribe", "schedule", "approve",
        "open", "close", "lock", "unlock", "mount", "unmount", "init", "deploy", "scale",
        "grant", "invite", "replace", "sync", "stage", "unstage", "fork", "archive", "cancel",
        "abort", "reply", "comment", "submit", "record", "generate", "build",
    ), "change"),
    **dict.fromkeys((
        "delete", "remove", "drop", "destroy", "reset", "kill", "terminate", "purge",
        "erase", "wipe", "truncate", "rm", "rmdir", "uninstall", "revoke", "restore",
        "revert", "rollback", "overwrite", "clear", "prune", "evict", "deregister",
        "unregister", "discard", "flush", "ban",
    ), "destroy"),
    **dict.fromkeys((
        "exec", "execute", "run", "shell", "eval", "evaluate", "command", "cmd", "script",
        "spawn", "invoke", "call", "sudo", "powershell",
    ), "execute"),
}

# Arguments whose values name the operation a portmanteau tool performs.
ACTION_ARGUMENTS: Final = ("action", "operation", "op", "command", "mode", "method", "verb",
                           "cmd", "task", "subcommand")
# A free-form argument with one of these names is a command line, code or a
# script: the tool executes what it is given.
FREE_FORM_CODE: Final = frozenset({"command", "cmd", "script", "code", "shell_command",
                                   "shell", "bash", "expression", "sql"})

DEFAULT_CHANGE_LIMIT: Final = 10
DEFAULT_WINDOW: Final = "minute"

_TOKEN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_WORD = re.compile(r"[A-Za-z]+")
_IDENT = r"[A-Za-z][A-Za-z0-9_.-]*"


class Evidence(msgspec.Struct, frozen=True):
    """A class and the words that say why."""

    kind: Kind
    why: str


class ToolPlan(msgspec.Struct, frozen=True):
    """How one tool is classified: its class, why, and for a portmanteau tool,
    the argument it is split on and the values of each class."""

    name: str
    kind: Kind
    why: str
    argument: str | None = None
    values: dict[Kind, list[Any]] = msgspec.field(default_factory=dict)
    value_why: dict[Kind, str] = msgspec.field(default_factory=dict)
    values_from: Literal["schema", "description"] | None = None


class Scaffold(msgspec.Struct, frozen=True):
    """The starter policy (a dict in mcpwall's format) and the plan behind it."""

    policy: dict[str, Any]
    tools: list[ToolPlan]
    header: list[str]


def tokens(name: str) -> list[str]:
    """The lowercase words of an identifier: ``getVMInfo`` -> get, vm, info."""
    return [t.lower() for t in _TOKEN.findall(name)]


def _verb(word: str) -> Kind | None:
    word = word.lower()
    for candidate in (word, word[:-1] if word.endswith("s") else "",
                      word[:-2] if word.endswith("es") else "",
                      word[:-3] if word.endswith("ing") else "",
                      word[:-1] if word.endswith("ed") else "",
                      word[:-2] if word.endswith("ed") else ""):
        if candidate and candidate in VERBS:
            return VERBS[candidate]
    return None


def from_name(name: str) -> Evidence | None:
    """The most severe class the words of ``name`` name, or None.

    ``delete_snapshot`` -> destroy; ``list_vms`` -> read; ``vm_tools`` -> None.
    """
    found: dict[str, Kind] = {}
    for word in tokens(name):
        if word in VERBS:
            found.setdefault(word, VERBS[word])
    if not found:
        return None
    kind = max(found.values(), key=SEVERITY.__getitem__)
    words = ", ".join(w for w, k in found.items() if k == kind)
    return Evidence(kind, f"the name says {words!s}")


def from_description(text: str) -> Evidence | None:
    """The class of the first verb in the first sentence of a description."""
    first = re.split(r"(?<=[.!?])\s|\n\s*\n", text.strip(), maxsplit=1)[0]
    for word in _WORD.findall(first)[:12]:
        kind = _verb(word)
        if kind is not None:
            return Evidence(kind, f"the description says {word!r}")
    return None


def from_annotations(annotations: Any) -> Evidence | None:
    """The class MCP tool annotations state, or None when they state none."""
    if not isinstance(annotations, Mapping):
        return None
    read_only = annotations.get("readOnlyHint")
    destructive = annotations.get("destructiveHint")
    if read_only is True:
        return Evidence("read", "annotated readOnlyHint")
    if destructive is True:
        return Evidence("destroy", "annotated destructiveHint")
    if read_only is False:
        if destructive is False:
            return Evidence("change", "annotated not read-only, not destructive")
        return Evidence("destroy", "annotated not read-only (destructive by default)")
    return None


def _notes(annotations: Any) -> list[str]:
    if not isinstance(annotations, Mapping):
        return []
    notes = []
    if annotations.get("idempotentHint") is True:
        notes.append("idempotent")
    if annotations.get("openWorldHint") is True:
        notes.append("reaches the outside world (openWorldHint)")
    return notes


def _properties(tool: Mapping[str, Any]) -> dict[str, Any]:
    schema = tool.get("inputSchema")
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    return dict(props) if isinstance(props, Mapping) else {}


def enum_values(schema: Any) -> list[Any] | None:
    """The values a JSON Schema admits when it lists them (``enum``, ``const``,
    or those of its ``anyOf``/``oneOf`` members), ignoring ``null``."""
    if not isinstance(schema, Mapping):
        return None
    if isinstance(schema.get("enum"), list):
        return [v for v in schema["enum"] if v is not None]
    if "const" in schema:
        return [schema["const"]]
    for key in ("anyOf", "oneOf"):
        members = schema.get(key)
        if isinstance(members, list):
            values: list[Any] = []
            for member in members:
                if isinstance(member, Mapping) and member.get("type") == "null":
                    continue
                found = enum_values(member)
                if found is None:
                    return None
                values.extend(found)
            return values or None
    return None


def _is_string(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    if schema.get("type") == "string":
        return True
    members = schema.get("anyOf") or schema.get("oneOf")
    return isinstance(members, list) and any(_is_string(m) for m in members)


def listed_in_description(argument: str, description: str) -> list[str]:
    """Values of ``argument`` a description lists: ``Actions: a, b, c.`` on one
    line, or a bulleted list (``- name  what it does``) under a line naming
    the argument (``Operations:``)."""
    stem = re.escape(argument.rstrip("s"))
    inline = re.search(rf"(?im)^\s*{stem}s?\s*:\s*({_IDENT}(?:\s*,\s*{_IDENT})+)\s*\.?\s*$",
                       description)
    if inline:
        return [v.strip().rstrip(".") for v in inline.group(1).split(",")]
    values: list[str] = []
    lines = description.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"(?i)^\s*(?:#+\s*)?{stem}s?\s*:?\s*$", line):
            for item in lines[i + 1:]:
                m = re.match(rf"^\s*[-*]\s+`?({_IDENT})`?(?:\s|$)", item)
                if not m:
                    if values:
                        break
                    continue
                values.append(m.group(1))
            break
    return values


def _value_kind(value: Any, floor: Evidence | None) -> Evidence:
    """One value of a portmanteau tool: its own words, else the tool's annotations."""
    own = from_name(str(value)) if isinstance(value, str) else None
    if own is not None:
        if floor is not None and floor.kind == "read" and SEVERITY[own.kind] > 0:
            return Evidence(own.kind, f"{own.why}, though the tool is {floor.why}")
        return own
    if floor is not None:
        return Evidence(floor.kind, f"the tool is {floor.why}")
    return Evidence("unknown", "could not classify")


def _portmanteau(tool: Mapping[str, Any], annotation: Evidence | None) -> ToolPlan | None:
    props = _properties(tool)
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    for argument in ACTION_ARGUMENTS:
        schema = props.get(argument)
        if schema is None:
            continue
        values = enum_values(schema)
        source: Literal["schema", "description"] = "schema"
        if values is None and _is_string(schema):
            values = listed_in_description(argument, description or "")
            source = "description"
        if not values or len(values) < 2:
            continue
        groups: dict[Kind, list[Any]] = {}
        why: dict[Kind, list[str]] = {}
        for value in values:
            ev = _value_kind(value, annotation)
            groups.setdefault(ev.kind, []).append(value)
            why.setdefault(ev.kind, []).append(ev.why)
        ordered = {k: groups[k] for k in KINDS if k in groups}
        kind = max(ordered, key=SEVERITY.__getitem__)
        counts = ", ".join(f"{len(v)} {k}" for k, v in ordered.items())
        where = "its schema" if source == "schema" else "its description"
        return ToolPlan(
            name=str(tool.get("name")), kind=kind,
            why=f"split on {argument!r} ({len(values)} values from {where}: {counts})",
            argument=argument, values=ordered,
            value_why={k: _summarise(v) for k, v in why.items()}, values_from=source)
    return None


def _summarise(reasons: Sequence[str]) -> str:
    if len(set(reasons)) == 1:
        return reasons[0]
    words = [r.removeprefix("the name says ") for r in reasons if r.startswith("the name says")]
    rest = sorted({r for r in reasons if not r.startswith("the name says")})
    parts = [f"the names say {', '.join(dict.fromkeys(words))}"] if words else []
    return "; ".join(parts + rest)


def classify(tool: Mapping[str, Any]) -> ToolPlan:
    """Classify one tool descriptor (an element of ``tools/list``'s ``tools``)."""
    name = str(tool.get("name"))
    annotation = from_annotations(tool.get("annotations"))
    split = _portmanteau(tool, annotation)
    if split is not None:
        return split
    by_name = from_name(name)
    description = tool.get("description")
    by_text = from_description(description) if isinstance(description, str) else None
    code_args = sorted(a for a, s in _properties(tool).items()
                       if a.lower() in FREE_FORM_CODE and enum_values(s) is None)
    evidence = [e for e in (annotation, by_name) if e is not None]
    if code_args:
        evidence.append(Evidence("execute", f"it takes free-form {', '.join(code_args)}"))
    if not evidence and by_text is not None:
        evidence.append(by_text)
    if not evidence:
        return ToolPlan(name, "unknown", "could not classify")
    kind = max((e.kind for e in evidence), key=SEVERITY.__getitem__)
    chosen = [e.why for e in evidence if e.kind == kind]
    overruled = [e.why for e in evidence if e.kind != kind]
    why = "; ".join(chosen)
    if overruled:
        why += f" (over: {'; '.join(overruled)})"
    return ToolPlan(name, kind, why)


def _limit(counter: str, per_minute: int) -> dict[str, Any]:
    return {"counter": counter, "window": DEFAULT_WINDOW, "max": per_minute, "scope": "grant"}


_VERDICT: Final[dict[Kind, str]] = {
    "read": "allowed",
    "change": "rate-limited",
    "destroy": "held for approval",
    "execute": "held for approval",
    "unknown": "held for approval",
}
_REASON: Final[dict[Kind, str]] = {
    "destroy": "destructive: needs a person's approval",
    "execute": "runs code or commands: needs a person's approval",
    "unknown": "could not classify: needs a person's approval",
}


def _verdict(kind: Kind, per_minute: int) -> str:
    if kind == "change":
        return f"rate-limited ({per_minute} a minute per grant)"
    return _VERDICT[kind]


def _apply(target: dict[str, Any], kind: Kind, counter: str, per_minute: int) -> None:
    """Set the verdict keys of an entry or rule for a class."""
    if kind == "change":
        target["limits"] = [_limit(counter, per_minute)]
    elif kind != "read":
        target["action"] = "require_approval"
        target["reason"] = _REASON[kind]


def _tool_entry(plan: ToolPlan, notes: list[str], per_minute: int) -> dict[str, Any]:
    extra = f" [{'; '.join(notes)}]" if notes else ""
    if plan.argument is None:
        entry: dict[str, Any] = {
            "description": f"{plan.kind}: {plan.why}: {_verdict(plan.kind, per_minute)}{extra}"}
        _apply(entry, plan.kind, f"{plan.name}_changes", per_minute)
        return entry
    rules = []
    for kind, values in plan.values.items():
        rule: dict[str, Any] = {
            "name": kind,
            "description": f"{', '.join(map(str, values))}: {plan.value_why[kind]}: "
                           f"{_verdict(kind, per_minute)}",
            "when": {plan.argument: list(values)}}
        _apply(rule, kind, f"{plan.name}_changes", per_minute)
        rules.append(rule)
    other = "other values get the policy default (deny)"
    return {"description": f"{plan.why}; {other}{extra}", "rules": rules}


def resource_pattern(uri_template: str) -> str:
    """A URI template as a glob: ``file:///{path}`` -> ``file:///*``; glob
    characters outside the ``{...}`` match only themselves (``[*]``)."""
    return "*".join(literal_key(part) for part in re.split(r"\{[^}]*\}", uri_template))


def scaffold(tools: Iterable[Mapping[str, Any]],
             prompts: Iterable[Mapping[str, Any]] = (),
             resources: Iterable[Mapping[str, Any]] = (),
             templates: Iterable[Mapping[str, Any]] = (),
             *, server: str = "server", change_limit: int = DEFAULT_CHANGE_LIMIT) -> Scaffold:
    """The starter policy for a server that lists these tools, prompts and resources.

    Tools are sorted by name; the result loads with ``parse_policy`` and decides
    as each ``description`` says.
    """
    plans: list[ToolPlan] = []
    entries: dict[str, Any] = {}
    named = {t["name"]: t for t in tools if isinstance(t.get("name"), str) and t["name"]}
    for _, tool in sorted(named.items()):
        plan = classify(tool)
        plans.append(plan)
        entries[literal_key(plan.name)] = _tool_entry(plan, _notes(tool.get("annotations")),
                                                      change_limit)
    policy: dict[str, Any] = {
        "version": "1",
        "name": server,
        "description": f"Starter policy for {server}, written by mcpwall scan: reads pass, "
                       f"changes are rate-limited, destructive and unclassified tools are held "
                       f"for approval; tools not listed are denied. Review before use.",
        "default": "deny",
        "tools": entries,
    }
    prompt_names = {p["name"] for p in prompts if isinstance(p.get("name"), str) and p["name"]}
    prompt_entries = {literal_key(name): {"description": "a prompt only returns messages: allowed"}
                      for name in sorted(prompt_names)}
    if prompt_entries:
        policy["prompts"] = prompt_entries
    resource_entries: dict[str, Any] = {}
    for template in templates:
        uri = template.get("uriTemplate")
        if isinstance(uri, str):
            resource_entries[resource_pattern(uri)] = {
                "description": f"resource template {uri}: reading is allowed"}
    for resource in resources:
        uri = resource.get("uri")
        if isinstance(uri, str) and not any(_glob_covers(k, uri) for k in resource_entries):
            resource_entries[literal_key(uri)] = {
                "description": "listed resource: reading is allowed"}
    if resource_entries:
        policy["resources"] = resource_entries
    counts = {k: sum(p.kind == k if p.argument is None else k in p.values for p in plans)
              for k in KINDS}
    split = sum(p.argument is not None for p in plans)
    header = [
        f"Starter policy for {server}, written by mcpwall scan.",
        f"{len(plans)} tools ({split} split by an action argument); tools with a class: "
        + (", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none") + ".",
        "read: allowed; change: rate-limited; destroy, execute and unclassified: held for",
        "approval. Tools the server adds later are denied (default: deny). Review each entry.",
    ]
    return Scaffold(policy, plans, header)


def _glob_covers(pattern: str, uri: str) -> bool:
    return fnmatch.fnmatchcase(uri, pattern)


# -- other formats -------------------------------------------------------------

_NO_APPROVAL: Final = "mcpwall would hold it for approval; this format has none, so it is denied"


def lowered(result: Scaffold) -> dict[str, Any]:
    """The starter policy in the terms PolicyLayer's and Intercept's formats share:
    no approval (held classes are denied, saying why), no argument rules (a
    portmanteau tool requires its read and change values; the others are denied),
    no notes. Prompts and resources are left out: those formats speak of tools."""
    tools: dict[str, Any] = {}
    for plan in result.tools:
        counter = f"{plan.name}_changes"
        limit = _limit(counter, _per_minute(result))
        key = literal_key(plan.name)
        if plan.argument is None:
            if plan.kind == "read":
                tools[key] = {}
            elif plan.kind == "change":
                tools[key] = {"limits": [limit]}
            else:
                tools[key] = {"action": "deny",
                                    "reason": f"{_REASON[plan.kind].split(':')[0]}: "
                                              f"{_NO_APPROVAL}"}
            continue
        allowed = [v for k in ("read", "change") for v in plan.values.get(k, [])]
        if not allowed:
            tools[key] = {"action": "deny",
                                "reason": f"every {plan.argument} is held: {_NO_APPROVAL}"}
            continue
        # Values outside the read and change classes (and values the scan never
        # saw) fail the requirement: denied, as mcpwall's default would.
        entry: dict[str, Any] = {"require": [{
            "path": f"args.{plan.argument}", "op": "in", "value": allowed,
            "reason": f"other {plan.argument} values: {_NO_APPROVAL}"}]}
        if plan.values.get("change"):
            entry["limits"] = [limit]  # the whole tool's: these formats limit per tool
        tools[key] = entry
    return {"version": "1", "default": "deny",
            "description": result.policy.get("description"), "tools": tools}


def _per_minute(result: Scaffold) -> int:
    for entry in result.policy["tools"].values():
        for target in (entry, *entry.get("rules", [])):
            if target.get("limits"):
                return int(target["limits"][0]["max"])
    return DEFAULT_CHANGE_LIMIT


def in_format(result: Scaffold, fmt: str) -> tuple[str, list[str]]:
    """The starter policy as text in ``fmt`` (``mcpwall`` YAML, ``policylayer``
    JSON, ``intercept`` YAML), and the converter's notes on what it dropped."""
    if fmt == "mcpwall":
        return to_yaml(result), []
    doc, notes = convert(lowered(result), "policylayer" if fmt == "policylayer" else "intercept")
    if fmt == "policylayer":
        return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n", notes
    lines = [c for line in result.header for c in _comment(line, 0)]
    lines.append("# Intercept has no approval: held tools and actions are denied.")
    lines += [c for note in notes for c in _comment(f"Dropped: {note}", 0)]
    for plan in result.tools:
        lines += _comment(f"{plan.name}: {plan.kind}: {plan.why}", 0)
    return "\n".join(lines) + "\n\n" + yaml.safe_dump(doc, sort_keys=False, width=100), notes


# -- writers -----------------------------------------------------------------


def _dump(value: Any, indent: int, *, flow: bool | None = None) -> list[str]:
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=flow, width=100,
                          allow_unicode=True)
    pad = " " * indent
    return [pad + line for line in text.splitlines()]


# Characters a comment must not carry as they are: controls, and the line
# breaks YAML adds to CR and LF (NEL, U+2028, U+2029), which would end the
# comment and let the rest of a server's name be read as policy.
_UNSAFE_IN_COMMENT: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent
    text = _UNSAFE_IN_COMMENT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    wrapped = textwrap.wrap(text, width=max(40, 98 - indent), subsequent_indent="  ",
                            break_on_hyphens=False) or [""]
    return [f"{pad}# {line}".rstrip() for line in wrapped]


def _without_description(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != "description"}


def to_yaml(result: Scaffold) -> str:
    """The policy as YAML, each entry's and rule's ``description`` as a comment above it."""
    policy = result.policy
    lines = [c for line in result.header for c in _comment(line, 0)] + [""]
    top = {k: v for k, v in policy.items() if k not in ("tools", "prompts", "resources")}
    lines += _dump(top, 0, flow=False)
    for table in ("tools", "prompts", "resources"):
        entries = policy.get(table)
        if not entries:
            continue
        lines.append(f"{table}:")
        for key, entry in entries.items():
            lines += _comment(f"{key}: {entry['description']}", 2)
            body = _without_description(entry)
            rules = body.pop("rules", None)
            if not body and not rules:
                lines += _dump({key: {}}, 2)
                continue
            lines.append(f"  {_key(key)}:")
            if body:
                lines += _dump(body, 4)
            if rules:
                lines.append("    rules:")
                for rule in rules:
                    lines += _comment(rule["description"], 4)
                    lines += _dump([_without_description(rule)], 4)
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    """A mapping key as YAML reads it back: plain when it is a plain name, else
    a JSON string (a YAML double-quoted scalar)."""
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key) and yaml.safe_load(key) == key
    return key if plain else json.dumps(key)


def to_json(result: Scaffold) -> str:
    """The policy as JSON, reasons in each entry's and rule's ``description``."""
    return msgspec.json.format(msgspec.json.encode(result.policy), indent=2).decode() + "\n"


__all__ = [
    "KINDS",
    "VERBS",
    "Evidence",
    "Kind",
    "Scaffold",
    "ToolPlan",
    "classify",
    "enum_values",
    "from_annotations",
    "from_description",
    "from_name",
    "in_format",
    "listed_in_description",
    "lowered",
    "resource_pattern",
    "scaffold",
    "to_json",
    "to_yaml",
]
