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

Every tools/call the corpus writes carries ``"tag": "<n>"`` (``"<n>.in"`` for a
smuggled one) in its arguments, so a call a server executed can be traced back
to the input that carried it.

Rules this module keeps: it is pure (no I/O), and the arguments it generates
never match the audit trail's redaction rules (keys and values from a small
alphabet), so the audit's recorded arguments are the arguments sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    """How a message is rendered: the whitespace alphabet and line-break choices."""

    whitespace: str
    breaks: tuple[str, ...]


HTTP_STYLE: Final = Style(HTTP_WS, HTTP_BREAKS)
LINE_STYLE: Final = Style(LINE_WS, LINE_BREAKS)


@dataclass
class Hostile:
    """One generated input: its bytes and what it means (for reports)."""

    tag: str
    data: bytes
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"#{self.tag} [{', '.join(self.notes)}] {self.data!r}"


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


def tool_call(tool: str, tag: str, arguments: dict[str, Any], request_id: Any) -> Pairs:
    """A tools/call as members; ``request_id=None`` leaves the id out (a notification shape)."""
    args = Pairs([("tag", tag), *arguments.items()])
    members = Pairs([("jsonrpc", "2.0")])
    if request_id is not None:
        members.append(("id", request_id))
    members += [("method", "tools/call"), ("params", Pairs([("name", tool), ("arguments", args)]))]
    return members


def _base(kind: str, tag: str, request_id: Any, arguments: dict[str, Any]) -> Pairs:
    if kind in TOOLS:
        return tool_call(kind, tag, arguments, request_id)
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


KINDS: Final = (ALLOWED, ALLOWED, DENIED, HELD, "initialize", "notifications/initialized",
                "notifications/cancelled", "ping", "tools/list", "response", "no/such")


@st.composite
def hostile(draw: st.DrawFn, tag: str, style: Style) -> Hostile:
    """One hostile message (see the module docstring); ``tag`` names it in reports."""
    notes: list[str] = []
    kind = draw(st.sampled_from(KINDS))
    notes.append(kind)
    request_id = draw(st.one_of(st.integers(1, 10**6), st.text("abc-", min_size=1, max_size=6),
                                st.sampled_from([2**63 + 1, 0, -5])))
    request_id = f"{tag}" if isinstance(request_id, str) else request_id
    arguments = draw(st.dictionaries(_KEY, _VALUE, max_size=3))
    message = _base(kind, tag, request_id, arguments)
    if kind in TOOLS and draw(st.integers(0, 5)) == 0:
        message = tool_call(kind, tag, arguments, None)
        notes.append("no id")
    if draw(st.integers(0, 3)) == 0:  # a duplicate key: a decoy before or after
        decoy_key = draw(st.sampled_from(["method", "id", "params", "jsonrpc"]))
        decoy = draw(st.sampled_from(["tools/call", "notifications/initialized", 7, None,
                                      "1.0"]))
        at = draw(st.sampled_from([0, len(message)]))
        message.insert(at, (decoy_key, decoy))
        notes.append(f"duplicate {decoy_key} {'first' if at == 0 else 'last'}")
    if kind in TOOLS and draw(st.integers(0, 7)) == 0:
        depth = draw(st.sampled_from([30, 100, 300, 2000]))
        args = _member(_member(message, "params"), "arguments")
        if args is not None:
            args.append(("deep", Deep(depth)))
            notes.append(f"depth {depth}")
    if draw(st.booleans()):
        _smuggle(draw, message, tag, style, notes)
    data = render(draw, message, style, escape_keys=frozenset({"method", "name"}))
    data = _corrupt(draw, data, notes)
    if draw(st.integers(0, 9)) == 0:
        data = b"[" + data + b"]"
        notes.append("batch")
    return Hostile(tag, data, notes)


def _member(pairs: Pairs | None, key: str) -> Pairs | None:
    """The last member ``key`` of an object, if it is an object itself."""
    if pairs is None:
        return None
    found = [v for k, v in pairs if k == key]
    return found[-1] if found and isinstance(found[-1], Pairs) else None


def _smuggle(draw: st.DrawFn, message: Pairs, tag: str, style: Style, notes: list[str]) -> None:
    """Put a whole tools/call inside ``message``, line breaks around it."""
    tool = draw(st.sampled_from(TOOLS))
    inner_id = draw(st.integers(9000, 9999))
    inner = tool_call(tool, f"{tag}.in", {}, inner_id)
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
    notes.append(f"smuggles {tool} in {place} via {before!r}")


def _corrupt(draw: st.DrawFn, data: bytes, notes: list[str]) -> bytes:
    """Now and then, something no JSON parser should accept, inside a string."""
    choice = draw(st.integers(0, 15))
    if choice > 2 or b'"tag"' not in data:
        return data
    bad = {0: b"\\ud800", 1: b"\xff\xfe", 2: b"\x01"}[choice]
    notes.append({0: "lone surrogate", 1: "invalid UTF-8", 2: "raw control character"}[choice])
    at = data.index(b'"tag"') + 1
    return data[:at] + bad + data[at:]


def session_inputs(style: Style, size: int = 8) -> st.SearchStrategy[list[Hostile]]:
    """A list of ``size`` hostile messages, tagged ``0``..``size-1``."""
    return st.tuples(*(hostile(str(i), style) for i in range(size))).map(list)


_PLACEHOLDER: Final = "TAGPLACEHOLDER"


def sample(style: Style, count: int, seed: int, *, first_tag: int = 0) -> list[Hostile]:
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
        drawn = data.draw(hostile(_PLACEHOLDER, style))  # the same draws every time
        shape = (tuple(drawn.notes), len(drawn.data))
        if len(out) < count and shape not in seen:
            seen.add(shape)
            tag = str(first_tag + len(out))
            out.append(Hostile(tag, drawn.data.replace(_PLACEHOLDER.encode(), tag.encode()),
                               drawn.notes))

    collect()
    return out
