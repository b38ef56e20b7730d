"""The policy file: msgspec Structs, and loading JSON, TOML or YAML into them.

Rules this module keeps:

1. Unknown keys are errors, at every level (``forbid_unknown_fields``): a typo
   must never become an allow. Duplicate keys in JSON and YAML are errors too
   (the last one would silently win otherwise).
2. Every error names the file, the key path and what was expected
   (:class:`PolicyError`), e.g.
   ``vm.json: tools.vm_management.limits[0].window: Expected `str` ...``.
3. The format is a superset of PolicyLayer's ``policy.json``; a seed policy
   such as ``{"version":"1","default":"deny","tools":{"vm_management":{"limits":
   [{"counter":"c","window":"minute","max":10,"scope":"grant"}]}}}`` loads verbatim.

Types only: what the keys mean at run time is the compiler's business
(:mod:`firewall.policy.compiler`), and docs/policy.md is the reference.

Example::

    policy = load_policy(Path("rules/virtualization.json"))
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml

ActionName = Literal["allow", "deny", "require_approval"]
# Who approves a require_approval verdict: the operators' desk (`mcpwall
# approvals`), or the person in the client, asked with elicitation/create.
ApproverName = Literal["desk", "client"]
WindowName = Literal["second", "minute", "hour", "day"]
Scope = Literal["grant", "agent", "session", "server", "global"]
TestOp = Literal["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains",
                 "exists"]
JsonType = Literal["string", "number", "integer", "boolean", "array", "object", "null"]

WINDOW_SECONDS: dict[str, float] = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
# Windows of counters: calendar-aligned in UTC (a "day" is midnight to midnight
# UTC, a "week" Monday to Monday, a "month" the 1st to the 1st), never sliding.
CalendarWindow = Literal["minute", "hour", "day", "week", "month"]


class PolicyError(Exception):
    """A policy that cannot be used; the message names file, key path and expectation."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True,
              omit_defaults=True):
    pass


class Limit(_Strict, frozen=True):
    """A token bucket: ``max`` calls per ``window``, one bucket per ``scope`` value.

    Rules naming the same ``counter`` share one bucket (per scope value).
    """

    max: Annotated[int, msgspec.Meta(ge=1, description="Bucket capacity: calls per window.")]
    window: WindowName | Annotated[float, msgspec.Meta(gt=0)] = "minute"
    counter: str | None = None
    scope: Scope = "grant"


class Counter(_Strict, frozen=True):
    """A counter: a running total per calendar window, reserved when a call is
    allowed, kept when the upstream answers it and given back when it fails.

    ``increment`` (or the number at ``increment_from``, e.g. ``"args.amount"``)
    is added per call; with ``max``, a call that would take the total past
    ``max`` is refused (``limited`` until the window ends). Rules naming the
    same ``counter`` share one total (per scope value) and must agree on
    ``window`` and ``scope``; ``max``, ``increment`` and ``reason`` are each
    rule's own. Conditions read a total with ``require_state``.
    """

    counter: Annotated[str, msgspec.Meta(min_length=1)]
    window: CalendarWindow
    max: Annotated[int, msgspec.Meta(ge=0)] | None = None
    increment: Annotated[int, msgspec.Meta(ge=0)] = 1
    increment_from: str | None = None
    scope: Scope = "grant"
    reason: str | None = None


class Condition(_Strict, frozen=True):
    """Conditions on one argument; all stated ones must hold.

    A missing argument fails every condition unless ``optional`` is true; a
    JSON null fails them unless ``nullable`` is true.
    """

    in_: list[Any] | None = msgspec.field(default=None, name="in")
    enum: list[Any] | None = None
    const: Any = msgspec.UNSET
    pattern: str | None = None
    not_pattern: str | None = None
    prefix: str | None = None
    min: float | None = None
    max: float | None = None
    min_length: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_length: Annotated[int, msgspec.Meta(ge=0)] | None = None
    type: JsonType | None = None
    path_under: str | list[str] | None = None
    optional: bool = False
    nullable: bool = False


# Shorthand: a list means {"in": [...]}, a string means {"const": "..."}.
ConditionSpec = Condition | list[Any] | str
Conditions = dict[str, ConditionSpec]


class Test(_Strict, frozen=True):
    """One comparison, PolicyLayer's and Intercept's condition shape:
    ``{"path": "args.amount", "op": "lte", "value": 50000}``.

    ``path`` reads the call's arguments (``args.a.b``); in ``require_state``
    it reads a counter's total (``state.<counter>``). The operators keep
    Intercept's semantics (see :mod:`firewall.policy.operators`).
    """

    path: str
    op: TestOp
    value: Any = None
    reason: str | None = None


# ``require_state``: mcpwall's conditions by counter name, or a list of tests
# on ``state.<counter>`` (Intercept's condition shape), each with its reason.
StateConditions = Conditions | list[Test]


class _Audience(_Strict, frozen=True):
    # Who a rule applies to; empty lists mean everyone.
    principals: list[str] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)
    grants: list[str] = msgspec.field(default_factory=list)


class ArgumentRule(_Audience, frozen=True):
    """One rule inside a tool or prompt entry. Tried in order; the first that
    applies to the caller and whose ``when`` holds decides."""

    name: str | None = None
    description: str | None = None
    when: Conditions = msgspec.field(default_factory=dict)
    require: Conditions = msgspec.field(default_factory=dict)
    action: ActionName = "allow"
    reason: str | None = None
    limits: list[Limit] = msgspec.field(default_factory=list)
    counters: list[Counter] = msgspec.field(default_factory=list)
    require_state: StateConditions = msgspec.field(default_factory=dict)
    dry_run: bool = False
    approval: ApproverName | None = None


class TargetEntry(_Audience, frozen=True):
    """A resource URI pattern or a method: action, reason, limits, counters."""

    description: str | None = None
    action: ActionName = "allow"
    reason: str | None = None
    limits: list[Limit] = msgspec.field(default_factory=list)
    counters: list[Counter] = msgspec.field(default_factory=list)
    require_state: StateConditions = msgspec.field(default_factory=dict)
    dry_run: bool = False
    approval: ApproverName | None = None


class CheckRule(_Strict, frozen=True):
    """One entry of ``checks``: tried in order, the first that fails denies.

    ``require``: every test must hold; ``deny_if``: the call is denied when
    every test holds; ``deny``: always denies. ``reason`` is what the agent
    is told.
    """

    name: str | None = None
    require: list[Test] = msgspec.field(default_factory=list)
    deny_if: list[Test] = msgspec.field(default_factory=list)
    deny: bool = False
    reason: str | None = None


class RateLimit(_Strict, frozen=True):
    """PolicyLayer's ``rate_limit`` block: ``max`` calls per ``window``
    seconds, counted per session (an agent's session)."""

    max: Annotated[int, msgspec.Meta(ge=1)]
    window: WindowName | Annotated[float, msgspec.Meta(gt=0)] = "minute"


class AllTools(_Strict, frozen=True):
    """What applies to every tool call that no earlier step refused: its
    ``checks`` after the tool's own, its ``limits`` with the tool's, its
    ``counters`` after the tool's own and its ``require_state`` with the
    tool's (Intercept's ``"*"`` rules)."""

    limits: list[Limit] = msgspec.field(default_factory=list)
    checks: list[CheckRule] = msgspec.field(default_factory=list)
    counters: list[Counter] = msgspec.field(default_factory=list)
    require_state: StateConditions = msgspec.field(default_factory=dict)


class ToolEntry(_Audience, frozen=True):
    """A tool (or prompt) name or glob.

    Without ``action``: allow (under ``limits``) when there are no ``rules``;
    with ``rules``, a call no rule matches gets the policy default.

    Evaluation order: ``require`` (a map: ``invalid_arguments``; a list of
    tests, PolicyLayer's: deny), ``deny_if``, ``checks``, the policy's
    ``all_tools.checks``, then ``rules``, then the entry's own verdict.
    ``rate_limit`` (PolicyLayer's block) is one more limit, per session.
    """

    description: str | None = None
    action: ActionName | None = None
    reason: str | None = None
    limits: list[Limit] = msgspec.field(default_factory=list)
    counters: list[Counter] = msgspec.field(default_factory=list)
    require: Conditions | list[Test] = msgspec.field(default_factory=dict)
    require_state: StateConditions = msgspec.field(default_factory=dict)
    rules: list[ArgumentRule] = msgspec.field(default_factory=list)
    dry_run: bool = False
    approval: ApproverName | None = None
    deny_if: list[Test] = msgspec.field(default_factory=list)
    checks: list[CheckRule] = msgspec.field(default_factory=list)
    rate_limit: RateLimit | None = None


class Policy(_Strict, frozen=True):
    """One policy file."""

    schema_: str | None = msgspec.field(default=None, name="$schema")
    version: Literal["1"] = "1"
    name: str | None = None
    description: str | None = None
    default: ActionName | None = None
    other_methods: Literal["allow", "deny"] | None = None
    dry_run: bool = False
    hide: list[str] = msgspec.field(default_factory=list)
    all_tools: AllTools | None = None
    tools: dict[str, ToolEntry] = msgspec.field(default_factory=dict)
    resources: dict[str, TargetEntry] = msgspec.field(default_factory=dict)
    prompts: dict[str, ToolEntry] = msgspec.field(default_factory=dict)
    methods: dict[str, TargetEntry] = msgspec.field(default_factory=dict)


class LoadedPolicy(msgspec.Struct, frozen=True):
    """A policy with where it came from, the SHA-256 of the bytes read, and the
    format it was written in (``mcpwall``, ``policylayer`` or ``intercept``)."""

    policy: Policy
    source: str
    sha256: str
    format: str = "mcpwall"


_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def join_key(path: str, key: str) -> str:
    """`tools` + `vm` -> `tools.vm`; keys that are not plain names are quoted."""
    step = f".{key}" if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"
    return (path + step).lstrip(".")


def _describe(exc: msgspec.ValidationError, path: str) -> str:
    """``path: what was expected``, with msgspec's own sub-path appended."""
    text = str(exc)
    m = _PATH_RE.search(text)
    if m is not None:
        sub = m.group("path")
        text = text[: m.start()]
        path = (path + sub).lstrip(".") if not sub.startswith("[") or path else path + sub
    return f"{path or '(top level)'}: {text}"


def _locate(value: Any, tp: Any, path: str) -> str | None:
    """The key path and message of the first error converting ``value`` to ``tp``.

    msgspec reports dict keys as ``[...]``; this walks the value alongside the
    type so the error names the tool, rule and argument, e.g.
    ``tools.vm_management.rules[0].when.action``.
    """
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        error = exc
    else:
        return None
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Annotated:
        return _locate(value, args[0], path)
    if isinstance(value, dict) and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = get_type_hints(tp, include_extras=True)
        for field in msgspec.structs.fields(tp):
            if field.encode_name in value:
                found = _locate(value[field.encode_name], hints[field.name],
                                join_key(path, field.encode_name))
                if found:
                    return found
    elif isinstance(value, dict) and origin is dict:
        for key, item in value.items():
            found = _locate(item, args[1], join_key(path, str(key)))
            if found:
                return found
    elif isinstance(value, list) and origin is list:
        for i, item in enumerate(value):
            found = _locate(item, args[0], f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, dict) and origin in (Union, UnionType):
        for member in args:
            if isinstance(member, type) and issubclass(member, msgspec.Struct):
                return _locate(value, member, path)
    return _describe(error, path)


def locate_error(value: Any, tp: Any, exc: msgspec.ValidationError) -> str:
    """``key.path: what was expected`` for an error converting ``value`` to ``tp``."""
    return _locate(value, tp, "") or _describe(exc, "")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _yaml_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _yaml_mapping)


def format_of(source: str) -> Literal["json", "toml", "yaml"]:
    """The format a file name implies: ``.toml``, ``.yaml``/``.yml``, else JSON."""
    lower = source.lower()
    if lower.endswith(".toml"):
        return "toml"
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    return "json"


class _CollectorPause:
    """Counts the pauses in progress, in any thread: the first one disables the
    collector, the last one re-enables it if it was enabled before the first.
    (A reload compiles in a worker thread while ``check`` or ``explain`` may
    parse on another; a plain save-and-restore would let one turn the
    collector back on under the other, or leave it off for good.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._depth += 1

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._resume:
                if not gc.get_freeze_count():
                    # Move what the pause built (all of it survives) straight to
                    # the oldest generation: two list splices, where the next
                    # young collection would walk every object of it with the
                    # interpreter lock held (0.3 s at 60,000 rules, a stall of
                    # the event loop while a reload compiles in a thread).
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()


_PAUSE: Final = _CollectorPause()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a policy is read or compiled.

    Loading and compiling allocate millions of objects that all survive; the
    collector would run full passes over them again and again as they
    accumulate (most of the time of a 100,000-rule reload). Nothing built
    there is garbage, and reference counting still frees what is dropped, so
    the pause loses nothing; the collector resumes when the last pause in
    progress (in any thread) ends, if it ran before the first.
    """
    _PAUSE.enter()
    try:
        yield
    finally:
        _PAUSE.leave()


def parse_policy(data: bytes | str, source: str = "<string>",
                 fmt: Literal["json", "toml", "yaml"] | None = None) -> Policy:
    """Decode a policy document; raise :class:`PolicyError` naming source and key path.

    Intercept's format is recognised by its shape and read as the mcpwall
    policy it means (:mod:`firewall.policy.foreign`).
    """
    return parse_policy_format(data, source, fmt)[0]


def parse_policy_format(data: bytes | str, source: str = "<string>",
                        fmt: Literal["json", "toml", "yaml"] | None = None
                        ) -> tuple[Policy, str]:
    """:func:`parse_policy`, and the policy format the document is written in."""
    with collector_paused():
        raw = read_document(data, source, fmt)
        from firewall.policy.foreign import format_of_document, intercept_to_mcpwall
        written = format_of_document(raw)
        if written == "intercept":
            raw = intercept_to_mcpwall(raw, source)
        return _parse_policy(raw, source), written


def read_document(data: bytes | str, source: str = "<string>",
                  fmt: Literal["json", "toml", "yaml"] | None = None) -> dict[str, Any]:
    """The document as plain data (an object), in any of the file formats."""
    fmt = fmt or format_of(source)
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        if fmt == "toml":
            raw: Any = tomllib.loads(text)
        elif fmt == "yaml":
            raw = yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass
        else:
            raw = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError(f"{source}: not valid {fmt.upper()}: {exc}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: (top level): expected an object (a policy), "
                          f"got {type(raw).__name__}")
    return raw


def _parse_policy(raw: dict[str, Any], source: str) -> Policy:
    try:
        return _convert(raw)
    except msgspec.ValidationError as exc:
        where = _locate(raw, Policy, "") or _describe(exc, "")
        raise PolicyError(f"{source}: {where}") from None


# Target tables this large are converted a slice at a time: one msgspec call
# holds the interpreter lock throughout (0.2 s for 100,000 tools), which would
# stall the event loop while a reload parses in a worker thread.
_SLICE: Final = 2000
_TARGET_TABLES: Final[dict[str, Any]] = {
    "tools": dict[str, ToolEntry], "resources": dict[str, TargetEntry],
    "prompts": dict[str, ToolEntry], "methods": dict[str, TargetEntry]}


def _convert(raw: dict[str, Any]) -> Policy:
    """``msgspec.convert(raw, Policy)``, large target tables a slice at a time.

    Any error is raised by the one-call conversion, so it reads the same.
    """
    large = {key: value for key in _TARGET_TABLES
             if isinstance(value := raw.get(key), dict) and len(value) > _SLICE}
    if not large:
        return msgspec.convert(raw, Policy)
    try:
        head = msgspec.convert({**raw, **{key: {} for key in large}}, Policy)
        tables: dict[str, dict[str, Any]] = {}
        for key, value in large.items():
            items = list(value.items())
            table = tables[key] = {}
            for start in range(0, len(items), _SLICE):
                table.update(msgspec.convert(dict(items[start:start + _SLICE]),
                                             _TARGET_TABLES[key]))
    except msgspec.ValidationError:
        return msgspec.convert(raw, Policy)  # raises, naming the key path in full
    return msgspec.structs.replace(head, **tables)


def load_policy(path: Path) -> LoadedPolicy:
    """Read and decode one policy file; raise :class:`PolicyError` naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    policy, written = parse_policy_format(data, str(path))
    return LoadedPolicy(policy, str(path), hashlib.sha256(data).hexdigest(), written)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file (for editor completion)."""
    schema: dict[str, Any] = msgspec.json.schema(Policy)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mcpwall policy"
    return schema
