"""Newline-delimited framing for the stdio transport (sans-IO).

MCP's stdio transport sends one JSON-RPC message per line; messages contain
no embedded newlines. :class:`LineSplitter` turns arbitrary chunks into lines
and bounds memory: a line longer than ``max_line`` is not buffered, it is
skipped up to its newline and reported as :data:`TOO_LONG`.

Rules for what mcpwall writes (:func:`canonical`, :func:`line_safe`):

1. Every message mcpwall writes is one line that every reader splits the
   same way. JSON lets CR and LF stand between tokens, and readers split
   lines differently (LF only; CR, LF and CRLF, as Python's universal
   newlines do; also U+0085, U+2028 and U+2029, as ``str.splitlines`` does),
   so a message carrying any of those bytes raw is never written as
   received: it is written in its canonical form.
2. The canonical form of a message is the compact encoding of the value
   mcpwall decoded: no whitespace, no duplicate member names (the decoder
   keeps the last one, and that is the one the policy saw), escapes
   resolved, U+0085, U+2028 and U+2029 written as ``\\u`` escapes. Any
   JSON reader reads it as the value the policy decided, and cannot split it.
3. A message already in that form (what the MCP SDKs write) is its own
   canonical form: its bytes go out unchanged.

Example::

    s = LineSplitter(max_line=1024)
    assert s.feed(b'{"a":1}\\n{"b"') == [b'{"a":1}']
    assert s.feed(b':2}\\n') == [b'{"b":2}']
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from firewall.protocol import bounds


class _TooLong(bytes):
    """Marker for a line that exceeded the cap (its content was dropped)."""


TOO_LONG: Final = _TooLong(b"")


class LineSplitter:
    """Incremental line splitter with a per-line cap."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes | bytearray) -> list[bytes]:
        """Add ``chunk``; return the complete lines (without ``\\n``, ``\\r\\n`` trimmed).

        Empty lines are ignored. A line over the cap appears once as TOO_LONG.
        """
        lines: list[bytes] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._buf += chunk[start:nl]
                if len(self._buf) > self.max_line:
                    lines.append(TOO_LONG)
                else:
                    line = bytes(self._buf).rstrip(b"\r")
                    if line.strip():
                        lines.append(line)
            self._buf.clear()
            start = nl + 1
        if not self._skipping:
            self._buf += chunk[start:]
            if len(self._buf) > self.max_line:
                self._buf.clear()
                self._skipping = True
                lines.append(TOO_LONG)
        return lines

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line."""
        return len(self._buf)

    def remainder(self) -> bytes:
        """What is left at end of stream (a last line without a newline)."""
        rest = b"" if self._skipping else bytes(self._buf).rstrip(b"\r")
        self._buf.clear()
        return rest if rest.strip() else b""


# What a line reader may split on besides LF: CR, and in UTF-8 U+0085 (NEL),
# U+2028 (LS) and U+2029 (PS). Raw CR and LF can only be whitespace between
# tokens in valid JSON (they are not allowed inside strings); NEL, LS and PS
# can only be inside strings, as these exact byte sequences.
_NEL: Final = b"\xc2\x85"
_LS: Final = b"\xe2\x80\xa8"
_PS: Final = b"\xe2\x80\xa9"
_any_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


class NotCanonical(ValueError):
    """The text is not a JSON value mcpwall can put on one line (malformed or too deep)."""


def splittable(data: bytes) -> bool:
    """True when some line reader would split ``data``: it must not go out as is."""
    # Other separators of str.splitlines (VT, FF, FS, GS, RS) cannot occur
    # raw in valid JSON at all: the decoders refuse them.
    # Single bytes first: CPython finds those with memchr, several times faster
    # than a sequence (1 MB of ASCII text: 12 us against 0.7-0.9 ms); and an
    # ASCII text (isascii() reads a word at a time) holds no NEL, LS or PS.
    # find(), not ``in``: ``needle in data`` first tries the needle as an
    # integer, raising and clearing a TypeError (about 1,200 instructions a
    # test, more than the search itself in a message of a few hundred bytes).
    if data.find(b"\n") >= 0 or data.find(b"\r") >= 0:
        return True
    if data.isascii():
        return False
    if data.find(b"\xe2") >= 0 and (data.find(_LS) >= 0 or data.find(_PS) >= 0):
        return True
    return data.find(b"\x85") >= 0 and data.find(_NEL) >= 0


def canonical(data: bytes | bytearray | memoryview,
              keep: frozenset[str] | None = None, *, depth_checked: bool = False) -> bytes:
    """The canonical one-line form of the JSON text ``data`` (rule 2).

    ``canonical(b'{ "a" :\\r\\n1, "a": 2 }') == b'{"a":2}'``. With ``keep``, an
    object keeps only those members at its top level (a JSON-RPC envelope:
    nothing a reader could take for more). Raises :class:`NotCanonical` when
    ``data`` is not JSON or nests deeper than :data:`bounds.MAX_DEPTH`
    (``depth_checked``: the caller's decode refused deeper texts already).
    """
    if not depth_checked and bounds.too_deep(data):
        raise NotCanonical(f"nested deeper than {bounds.MAX_DEPTH} levels")
    try:
        value = _any_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise NotCanonical(str(exc)) from None
    return encode_line(value, data, keep)


def encode_line(value: Any, data: bytes | bytearray | memoryview,
                keep: frozenset[str] | None = None) -> bytes:
    """The canonical form of ``value``, decoded from the JSON text ``data`` (rule 2).

    The encoding half of :func:`canonical`, for a caller that decoded ``data``
    itself (``protocol.inbound``: the policy view and the line come from that
    one value). ``data`` itself comes back when it is that form (rule 3).
    """
    if keep is not None and isinstance(value, dict) and not value.keys() <= keep:
        value = {name: member for name, member in value.items() if name in keep}
    out = one_line(_encoder.encode(value))
    if isinstance(data, bytes) and out == data:
        return data  # rule 3: already canonical, the very bytes received go on
    return out


def one_line(out: bytes) -> bytes:
    """A compact JSON text with U+0085, U+2028 and U+2029 written as escapes
    (the last step of rule 2; the encoder writes them raw)."""
    # isascii() first: a search for two bytes costs ten times more here.
    if not out.isascii() and (out.find(b"\xc2\x85") >= 0 or out.find(b"\xe2\x80") >= 0):
        out = out.replace(_NEL, b"\\u0085").replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")
    return out


def line_safe(data: bytes) -> bytes:
    """``data`` itself when no reader would split it, else its canonical form.

    For messages mcpwall relays without deciding them (responses,
    notifications): they keep their bytes unless framing could read them
    two ways. Raises :class:`NotCanonical` as :func:`canonical` does.
    """
    return canonical(data) if splittable(data) else data
