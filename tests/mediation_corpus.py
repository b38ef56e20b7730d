"""Hostile JSON-RPC messages for the mediation differential test (hypothesis strategies).

A message is built from a base message (an allowed, denied or held tools/call,
initialize, a notification, ping, tools/list, a response) and rendered by a
renderer that takes every liberty JSON allows, and some it does not:

- whitespace (space, tab, CR, and LF where the transport frames by HTTP body)
  between every pair of tokens;
- ``\\u`` escapes (either case) and ``\\/`` in method and tool names;
- duplicate keys (a decoy value first, or last);
- U+2028, U+2029, U+0085, escapes and non-ASCII inside strings; raw control
  characters, lone surrogates and invalid UTF-8 now and then;
- huge integers and extreme floats; deep nesting; batches; id-less requests;
- a SMUGGLED inner message: a complete tools/call placed as a value inside the
  outer one (an extra member of the envelope, of ``params`` or of the
  arguments), with a line break in the whitespace around it, so that a reader
  that splits lines at CR or LF sees it as a message of its own.

With a style of the 2026-07-28 revision (:data:`MODERN_HTTP_STYLE`,
:data:`MODERN_LINE_STYLE`) every message also carries ``params._meta`` (now
and then without its version or capabilities, or naming a 2025 version), and
for HTTP the request-metadata headers (``MCP-Protocol-Version``,
``Mcp-Method``, ``Mcp-Name``): mostly made from the message, now and then
disagreeing with it (another tool, a missing header, a Base64 form of another
name, a method in another case, a 2025 version, a name sent twice), in header
names of odd case.

Every tools/call the corpus writes carries ``"tag": "<n>"`` (``"<n>.in"`` for a
smuggled one) in its arguments, so a call a server executed can be traced back
to the input that carried it.

The tools called are a :class:`Surface`: which call of a server the policy
allows, which it denies and which it holds, with the policy that says so.
:data:`RECORDING` is the recording servers' (``echo``, ``danger``,
``hold_me``); :data:`DEMO` the bundled demo server's under the
virtualization policy pack (decided by the ``action`` and ``vm_name``
arguments, so duplicate ``action`` members are drawn too); :data:`EVERYTHING`
the reference server-everything's (``echo``, ``get-sum``, ``get-env``).

Rules this module keeps: it is pure (no I/O), and the arguments it generates
never match the audit trail's redaction rules (keys and values from a small
alphabet), so the audit's recorded arguments are the arguments sent.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import hypothesis
from hypothesis import strategies as st

ALLOWED: Final = "echo"
DENIED: Final = "danger"
HELD: Final = "hold_me"
TOOLS: Final = (ALLOWED, DENIED, HELD)

# Policy for the recording servers: echo allowed, danger denied, hold_me held.
POLICY: Final = {
    "version": "1",
    "default": "deny",
    "tools": {
        ALLOWED: {"action": "allow"},
        DENIED: {"action": "deny", "reason": "never"},
        HELD: {"action": "require_approval", "reason": "a person decides"},
    },
}

RULES: Final = Path(__file__).resolve().parent.parent / "rules"


@dataclass(frozen=True)
class Surface:
    """The tool calls the corpus makes to one server, and the policy that decides them.

    ``calls`` maps a role (``allowed``, ``denied``, ``held``) to its tool and a
    strategy for its base arguments; ``refused`` lists (tool, arguments subset)
    shapes no server may ever execute; ``decoys`` are values drawn for a
    duplicate argument member (the policy and the server must read the same one).
    """

    name: str
    policy: dict[str, Any]
    calls: dict[str, tuple[str, st.SearchStrategy[dict[str, Any]]]]
    refused: tuple[tuple[str, dict[str, Any]], ...]
    decoys: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    barrier: dict[str, Any] = field(default_factory=dict)

    def is_refused(self, tool: str, arguments: Any) -> bool:
        """True when an executed call has the shape of a denied or held one."""
        if not isinstance(arguments, dict):
            arguments = {}
        return any(tool == t and all(arguments.get(k) == v for k, v in subset.items())
                   for t, subset in self.refused)


HTTP_WS: Final = " \t\r\n"  # HTTP bodies: every JSON whitespace character
LINE_WS: Final = " \t\r"  # stdio lines: LF ends the line at the firewall itself
HTTP_BREAKS: Final = ("\n", "\r", "\r\n", " \n\t", "\t\r ")
LINE_BREAKS: Final = ("\r", " \r", "\r\t")


class Pairs(list[tuple[str, Any]]):
    """A JSON object as a list of members: keys may repeat, order is kept."""


@dataclass(frozen=True)
class Raw:
    """Bytes written as they are (an inner message already rendered, bad UTF-8)."""

    data: bytes


@dataclass(frozen=True)
class Deep:
    """A value nested ``depth`` arrays deep (rendered iteratively)."""

    depth: int


@dataclass(frozen=True)
class Style:
    """How a message is rendered: the whitespace alphabet and line-break choices, and
    whether it is a request of the 2026-07-28 revision (``_meta``, headers)."""

    whitespace: str
    breaks: tuple[str, ...]
    modern: bool = False
    headers: bool = False  # HTTP: the revision's request-metadata headers too


HTTP_STYLE: Final = Style(HTTP_WS, HTTP_BREAKS)
LINE_STYLE: Final = Style(LINE_WS, LINE_BREAKS)
MODERN_HTTP_STYLE: Final = Style(HTTP_WS, HTTP_BREAKS, modern=True, headers=True)
MODERN_LINE_STYLE: Final = Style(LINE_WS, LINE_BREAKS, modern=True)
MODERN: Final = "2026-07-28"
META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"


@dataclass
class Hostile:
    """One generated input: its bytes and what it means (for reports)."""

    tag: str
    data: bytes
    notes: list[str] = field(default_factory=list)
    inner_ids: list[int] = field(default_factory=list)  # ids of smuggled calls
    # HTTP request headers (the 2026-07-28 revision's metadata), in order, repeats kept.
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Its headers (or _meta) disagree with its body: no server may ever execute it.
    header_mismatch: bool = False

    def describe(self) -> str:
        shown = f" headers={self.headers!r}" if self.headers else ""
        return f"#{self.tag} [{', '.join(self.notes)}]{shown} {self.data!r}"


# -- rendering -----------------------------------------------------------------------


def _escape_char(ch: str, mode: int) -> str:
    if ch == "/" and mode == 1:
        return "\\/"
    if mode >= 1:
        code = ord(ch)
        text = f"\\u{code:04x}" if mode == 2 else f"\\u{code:04X}"
        return text if code < 0x10000 else json.dumps(ch)[1:-1]
    return json.dumps(ch, ensure_ascii=False)[1:-1]


def _string(draw: st.DrawFn, text: str, escape: bool) -> bytes:
    if not escape:
        return json.dumps(text, ensure_ascii=draw(st.booleans())).encode()
    modes = draw(st.lists(st.integers(0, 2), min_size=len(text), max_size=len(text)))
    return ('"' + "".join(_escape_char(c, m) for c, m in zip(text, modes, strict=True))
            + '"').encode()


def _ws(draw: st.DrawFn, style: Style) -> bytes:
    return draw(st.text(alphabet=style.whitespace, max_size=2)).encode()


def render(draw: st.DrawFn, value: Any, style: Style, *, escape_keys: frozenset[str] = frozenset(),
           key: str = "") -> bytes:
    """Render ``value`` with hostile whitespace and escapes (see the module docstring)."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, Deep):
        return b"[" * value.depth + b"0" + b"]" * value.depth
    if isinstance(value, Pairs | dict):
        members = value if isinstance(value, Pairs) else list(value.items())
        parts = []
        for k, v in members:
            parts.append(_ws(draw, style) + _string(draw, k, False) + _ws(draw, style) + b":"
                         + _ws(draw, style) + render(draw, v, style, escape_keys=escape_keys,
                                                     key=k) + _ws(draw, style))
        return b"{" + b",".join(parts) + (_ws(draw, style) if not parts else b"") + b"}"
    if isinstance(value, list):
        items = [_ws(draw, style) + render(draw, v, style, escape_keys=escape_keys)
                 + _ws(draw, style) for v in value]
        return b"[" + b",".join(items) + b"]"
    if isinstance(value, str):
        return _string(draw, value, key in escape_keys)
    if isinstance(value, bool) or value is None:
        return json.dumps(value).encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(type(value))


# -- base messages --------------------------------------------------------------------

_KEY: Final = st.sampled_from(["a", "b", "n", "q", "x", "path", "items"])
_TEXT: Final = st.text(alphabet=st.sampled_from(
    ["a", "b", "z", "0", " ", "\u2028", "\u2029", "\u0085", "\u00e9", "\U0001f600", '"', "\\",
     "\t", "\n", "\r", "/", "{", "}", "[", "]", ":", ","]), max_size=8)
_NUMBER: Final = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, -0.0]),
)
_LEAF: Final = st.one_of(_TEXT, _NUMBER, st.booleans(), st.none())
_VALUE: Final = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_KEY, inner, max_size=3)),
    max_leaves=6,
)


_NO_ARGS: Final = st.just({})

RECORDING: Final = Surface(
    "recording", POLICY,
    {"allowed": (ALLOWED, _NO_ARGS), "denied": (DENIED, _NO_ARGS), "held": (HELD, _NO_ARGS)},
    refused=((DENIED, {}), (HELD, {})))

_VMS: Final = ("web-01", "db-01", "build-01")
DEMO: Final = Surface(
    "demo", json.loads((RULES / "virtualization.json").read_text()),
    {"allowed": ("vm_management", st.one_of(
        st.just({"action": "list"}),
        st.sampled_from(_VMS).map(lambda vm: {"action": "info", "vm_name": vm}))),
     # vm_name fails the pack's pattern: the call is refused (invalid_arguments)
     "denied": ("vm_management", st.just({"action": "info", "vm_name": "../web-01"})),
     "held": ("vm_management", st.sampled_from(_VMS).map(
         lambda vm: {"action": "delete", "vm_name": vm}))},
    refused=(("vm_management", {"action": "delete"}),
             ("vm_management", {"vm_name": "../web-01"})),
    decoys={"action": ("delete", "list", "info", "start", "no_such_action")},
    barrier={"action": "list"})

EVERYTHING_POLICY: Final = {
    "version": "1", "default": "deny",
    "tools": {"echo": {"action": "allow"},
              "get-sum": {"action": "deny", "reason": "never"},
              "get-env": {"action": "require_approval", "reason": "shows the environment"}},
}
EVERYTHING: Final = Surface(
    "everything", EVERYTHING_POLICY,
    {"allowed": ("echo", _TEXT.map(lambda text: {"message": text})),
     "denied": ("get-sum", st.just({"a": 1, "b": 2})),
     "held": ("get-env", _NO_ARGS)},
    refused=(("get-sum", {}), ("get-env", {})),
    decoys={"message": ("decoy", "")},
    barrier={"message": "barrier"})


def tool_call(tool: str, tag: str, arguments: dict[str, Any], request_id: Any) -> Pairs:
    """A tools/call as members; ``request_id=None`` leaves the id out (a notification shape)."""
    args = Pairs([("tag", tag), *arguments.items()])
    members = Pairs([("jsonrpc", "2.0")])
    if request_id is not None:
        members.append(("id", request_id))
    members += [("method", "tools/call"), ("params", Pairs([("name", tool), ("arguments", args)]))]
    return members


def _base(kind: str, tag: str, request_id: Any, arguments: dict[str, Any]) -> Pairs:
    if kind in ROLES:
        raise AssertionError("tool calls are built by hostile()")
    if kind == "initialize":
        return Pairs([("jsonrpc", "2.0"), ("id", request_id), ("method", "initialize"),
                      ("params", Pairs([("protocolVersion", "2025-06-18"),
                                        ("capabilities", Pairs()),
                                        ("clientInfo", Pairs([("name", "h"),
                                                              ("version", "1")]))]))])
    if kind == "response":
        return Pairs([("jsonrpc", "2.0"), ("id", request_id), ("result", Pairs())])
    if kind.startswith("notifications/"):
        return Pairs([("jsonrpc", "2.0"), ("method", kind), ("params", Pairs())])
    return Pairs([("jsonrpc", "2.0"), ("id", request_id), ("method", kind), ("params", Pairs())])


ROLES: Final = ("allowed", "denied", "held")
# Smuggled calls' ids: no outer message ever has one of these.
INNER_IDS: Final = (5_000_000, 5_000_999)
KINDS: Final = ("allowed", "allowed", "denied", "held", "initialize",
                "notifications/initialized", "notifications/cancelled", "ping", "tools/list",
                "response", "no/such")


@st.composite
def hostile(draw: st.DrawFn, tag: str, style: Style,
            surface: Surface = RECORDING) -> Hostile:
    """One hostile message (see the module docstring); ``tag`` names it in reports."""
    notes: list[str] = []
    inner_ids: list[int] = []
    headers: list[tuple[str, str]] = []
    tool: str | None = None
    kind = draw(st.sampled_from(KINDS))
    chance = _chances(draw, style)
    request_id = draw(st.one_of(st.integers(1, 10**6), st.text("abc-", min_size=1, max_size=6),
                                st.sampled_from([2**63 + 1, 0, -5])))
    request_id = f"{tag}" if isinstance(request_id, str) else request_id
    arguments = draw(st.dictionaries(_KEY, _VALUE, max_size=3))
    if kind in ROLES:
        tool, base = surface.calls[kind]
        notes.append(f"{kind} {tool}")
        fixed = draw(base)
        message = tool_call(tool, tag, {**fixed, **arguments},
                            None if chance(6) else request_id)
        if not any(k == "id" for k, _ in message):
            notes.append("no id")
        _decoy_argument(draw, message, fixed, surface, notes)
    else:
        notes.append(kind)
        message = _base(kind, tag, request_id, arguments)
    mismatch = False
    if style.modern:
        headers, mismatch = _modernize(draw, message, kind, tool, notes, chance)
        if not style.headers:
            headers, mismatch = [], False
    if chance(4):  # a duplicate key: a decoy before or after
        decoy_key = draw(st.sampled_from(["method", "id", "params", "jsonrpc"]))
        decoy = draw(st.sampled_from(["tools/call", "notifications/initialized", 7, None,
                                      "1.0"]))
        at = draw(st.sampled_from([0, len(message)]))
        message.insert(at, (decoy_key, decoy))
        notes.append(f"duplicate {decoy_key} {'first' if at == 0 else 'last'}")
    if kind in ROLES and chance(8):
        depth = draw(st.sampled_from([30, 100, 300, 2000]))
        args = _member(_member(message, "params"), "arguments")
        if args is not None:
            args.append(("deep", Deep(depth)))
            notes.append(f"depth {depth}")
    if chance(2):
        inner_ids.append(_smuggle(draw, message, tag, style, surface, notes))
    data = render(draw, message, style, escape_keys=frozenset({"method", "name"}))
    if not style.modern:
        data = _corrupt(draw, data, notes, draw(st.integers(0, 15)))
    elif chance(16, 3):
        data = _corrupt(draw, data, notes, draw(st.integers(0, 2)))
    if chance(10):
        data = b"[" + data + b"]"
        notes.append("batch")
    return Hostile(tag, data, notes, inner_ids, headers, mismatch)


# Two in three messages carry a right _meta, one in two right headers: enough
# of them are decided as allowed and executed for the two accounts to mean
# something, the rest disagree in every way drawn here.
_META_MODES: Final = ("right",) * 10 + ("2025", "no-capabilities", "no-version", "none",
                                        "number")
_HEADER_MODES: Final = ("right",) * 11 + (
    "name-other", "name-missing", "name-base64-other", "method-other", "method-case",
    "method-missing", "version-2025", "version-missing", "name-twice", "odd-case",
    "name-base64")
# Modes that change Mcp-Name only: no disagreement for a message that names nothing.
_NAME_MODES: Final = ("name-other", "name-missing", "name-base64-other", "name-twice",
                      "name-base64")


def _modernize(draw: st.DrawFn, message: Pairs, kind: str, tool: str | None,
               notes: list[str], chance: Callable[..., bool]
               ) -> tuple[list[tuple[str, str]], bool]:
    """Give a message of the 2026-07-28 revision its ``_meta`` and its HTTP headers
    (each drawn right, mostly, or wrong in one way); the headers, in order, and
    whether they (or ``_meta``) disagree with the body as drawn."""
    params = _member(message, "params")

    def pick(modes: tuple[str, ...]) -> str:
        return next(m for i, m in enumerate(modes) if i == len(modes) - 1
                    or chance(len(modes) - i))  # uniform over modes

    meta_mode = pick(_META_MODES)
    if params is not None and meta_mode != "none":
        version: Any = {"2025": "2025-06-18", "number": 20260728}.get(meta_mode, MODERN)
        meta = Pairs()
        if meta_mode != "no-version":
            meta.append((META_VERSION, version))
        if meta_mode != "no-capabilities":
            meta.append((META_CAPABILITIES, Pairs()))
        params.append(("_meta", meta))
    if meta_mode != "right":
        notes.append(f"_meta {meta_mode}")
    methods = [v for k, v in message if k == "method"]
    method = str(methods[-1]) if methods else "tools/call"
    mode = pick(_HEADER_MODES)
    if mode != "right":
        notes.append(f"headers {mode}")
    others = [t for t in TOOLS if t != tool] or ["echo"]
    other = others[0] if chance(2) else others[-1]
    version_header = {"version-2025": "2025-06-18"}.get(mode, MODERN)
    method_header = {"method-other": "tools/list" if method != "tools/list" else "tools/call",
                     "method-case": method.upper()}.get(mode, method)
    out: list[tuple[str, str]] = []
    if mode != "version-missing":
        out.append(("MCP-Protocol-Version", version_header))
    if mode != "method-missing":
        out.append(("Mcp-Method", method_header))
    if tool is not None and mode != "name-missing":
        name = {"name-other": other, "name-base64": _b64(tool),
                "name-base64-other": _b64(other)}.get(mode, tool)
        out.append(("Mcp-Name", name))
        if mode == "name-twice":
            out.insert(0 if chance(2) else len(out), ("Mcp-Name", other))
    if mode == "odd-case":
        out = [(k.swapcase(), v) for k, v in out]
    headers_agree = mode in ("right", "odd-case", "name-base64") or (
        tool is None and mode in _NAME_MODES)
    return out, meta_mode != "right" or not headers_agree


def _b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode("ascii") + "?="


def _decoy_argument(draw: st.DrawFn, message: Pairs, fixed: dict[str, Any], surface: Surface,
                    notes: list[str]) -> None:
    """Now and then, a second member for an argument the policy reads (first or last)."""
    keys = [k for k in fixed if k in surface.decoys]
    args = _member(_member(message, "params"), "arguments")
    if not keys or args is None or draw(st.integers(0, 2)) != 0:
        return
    key = draw(st.sampled_from(keys))
    value = draw(st.sampled_from(surface.decoys[key]))
    at = draw(st.sampled_from([0, len(args)]))
    args.insert(at, (key, value))
    notes.append(f"duplicate argument {key}={value!r} {'first' if at == 0 else 'last'}")


def _member(pairs: Pairs | None, key: str) -> Pairs | None:
    """The last member ``key`` of an object, if it is an object itself."""
    if pairs is None:
        return None
    found = [v for k, v in pairs if k == key]
    return found[-1] if found and isinstance(found[-1], Pairs) else None


def _smuggle(draw: st.DrawFn, message: Pairs, tag: str, style: Style, surface: Surface,
             notes: list[str]) -> int:
    """Put a whole tools/call inside ``message``, line breaks around it; its id."""
    tool, base = surface.calls[draw(st.sampled_from(ROLES))]
    inner_id = draw(st.integers(*INNER_IDS))
    inner = tool_call(tool, f"{tag}.in", draw(base), inner_id)
    compact = Style(style.whitespace.replace("\r", "").replace("\n", ""), ())
    body = render(draw, inner, compact)
    before = draw(st.sampled_from(style.breaks)).encode()
    after = draw(st.sampled_from(style.breaks)).encode()
    raw = Raw(before + body + after)
    place = draw(st.sampled_from(["envelope", "params", "arguments"]))
    params = _member(message, "params")
    args = _member(params, "arguments")
    target = {"envelope": message, "params": params, "arguments": args}[place]
    if target is None:
        target, place = message, "envelope"
    target.append(("smuggled", raw))
    notes.append(f"smuggles {tool} #{inner_id} in {place} via {before!r}")
    return inner_id


def _chances(draw: st.DrawFn, style: Style) -> Callable[..., bool]:
    """``chance(n, k=1)``: true k times in n. Drawn by hypothesis for the 2025 styles
    (which favours the boundary: 0 comes up far more often than once in n); for
    the modern styles from one seed drawn per message, so that the odds are the
    ones written and enough messages come out well-formed for the accounts to
    mean something (a call allowed and executed)."""
    if not style.modern:  # the draws the 2025 corpus always made, in its order
        return lambda n, k=1: draw(st.booleans()) if n == 2 else draw(
            st.integers(0, n - 1)) < k
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    return lambda n, k=1: rng.randrange(n) < k


def _corrupt(draw: st.DrawFn, data: bytes, notes: list[str], choice: int) -> bytes:
    """Now and then (``choice`` 0 to 2; the caller's odds), something no JSON parser
    should accept, inside a string."""
    if choice > 2 or b'"tag"' not in data:
        return data
    bad = {0: b"\\ud800", 1: b"\xff\xfe", 2: b"\x01"}[choice]
    notes.append({0: "lone surrogate", 1: "invalid UTF-8", 2: "raw control character"}[choice])
    at = data.index(b'"tag"') + 1
    return data[:at] + bad + data[at:]


def session_inputs(style: Style, size: int = 8,
                   surface: Surface = RECORDING) -> st.SearchStrategy[list[Hostile]]:
    """A list of ``size`` hostile messages, tagged ``0``..``size-1``."""
    return st.tuples(*(hostile(str(i), style, surface) for i in range(size))).map(list)


_PLACEHOLDER: Final = "TAGPLACEHOLDER"


def sample(style: Style, count: int, seed: int, *, first_tag: int = 0,
           surface: Surface = RECORDING) -> list[Hostile]:
    """``count`` hostile messages drawn by hypothesis from ``seed`` (the same every time),
    tagged ``first_tag``, ``first_tag + 1``, ...

    Generating is cheap and pure; the caller sends the lot through one session,
    which is what costs (real processes).
    """
    out: list[Hostile] = []
    seen: set[tuple[tuple[str, ...], int]] = set()

    # Hypothesis mutates its own examples, so many come out nearly alike: keep
    # one of each (notes, length), drawing up to four times as many as needed.
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=4 * count, database=None, deadline=None,
                         phases=[hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.data())
    def collect(data: st.DataObject) -> None:
        drawn = data.draw(hostile(_PLACEHOLDER, style, surface))  # the same draws every time
        shape = (tuple(drawn.notes), len(drawn.data))
        if len(out) < count and shape not in seen:
            seen.add(shape)
            tag = str(first_tag + len(out))
            out.append(Hostile(tag, drawn.data.replace(_PLACEHOLDER.encode(), tag.encode()),
                               drawn.notes, drawn.inner_ids, drawn.headers,
                               drawn.header_mismatch))

    collect()
    return out
