"""Audit values made safe for the place they are written to: a terminal, CSV, CEF.

The audit trail keeps what agents sent byte for byte (the database, ``--json``,
``--nl`` and ``export --format jsonl`` show it exactly). Everywhere else a value
is text for another reader, and that reader must not be driven by it.

Rules this module keeps:

1. Terminal (:func:`visible`): no character that a terminal acts on or that
   reorders what is shown reaches the screen raw. C0 controls (including tab,
   CR and LF), DEL, C1 controls, the bidi embeddings, overrides and isolates
   (U+202A..U+202E, U+2066..U+2069), the bidi marks (U+200E, U+200F, U+061C)
   and the line/paragraph separators (U+2028, U+2029) are written as visible
   escapes: ``\\t``, ``\\n``, ``\\r``, ``\\x1b``, ``\\u202e``. An ANSI escape
   sequence therefore shows as text (``\\x1b[2J``) and does nothing.
2. CSV (:func:`csv_cell`): a string cell that a spreadsheet would read as a
   formula (it starts with ``=``, ``+``, ``-``, ``@``, tab or CR; OWASP "CSV
   Injection") is prefixed with a single quote. Numbers are never touched.
3. JSON (:func:`json_text`): exact, yet as inert as the rest. Inside JSON
   strings the characters of rule 1 are written as ``\\uXXXX`` escapes (msgspec
   already does so for C0), which decode to the very same value; so ``--json``
   and ``--nl`` output acts on no terminal and no line splitter (Python's
   ``splitlines`` also breaks on U+0085 and U+2028) cuts a record in two.
4. CEF (:func:`cef_header`, :func:`cef_value`, :func:`cef_key`), after
   ArcSight's "Implementing ArcSight CEF": a header field escapes ``\\`` and
   ``|``, an extension value ``\\`` and ``=``; in both, CR and LF become ``\\r``
   and ``\\n`` and the other characters of rule 1 become ``\\xHH`` / ``\\uHHHH``
   (the backslash itself is escaped first, so every escape is unambiguous). A
   CEF record is therefore always exactly one line. An extension key keeps
   letters, digits and ``_`` only.

Example::

    visible("rm\\x1b[2J")          # 'rm\\\\x1b[2J'
    csv_cell('=HYPERLINK("x")')    # '\\'=HYPERLINK("x")'
"""

from __future__ import annotations

import re
from typing import Any, Final

# Characters a terminal acts on, or that reorder or break what it shows.
_BIDI: Final = (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
_HOSTILE: Final = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *_BIDI, 0x2028, 0x2029)
_NAMED: Final = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_VISIBLE: Final = {code: _escape(code) for code in _HOSTILE}
# str.translate with a dict looks up every character, and most values need
# nothing: str.isprintable() (false for every Cc, Cf, Zl and Zp character, so for
# all of _HOSTILE) says so in C first.
_CEF_HEADER: Final = {**_VISIBLE, ord("\\"): "\\\\", ord("|"): "\\|"}
_CEF_VALUE: Final = {**_VISIBLE, ord("\\"): "\\\\", ord("="): "\\="}
_JSON: Final = {code: f"\\u{code:04x}" for code in _HOSTILE if code >= 0x20}
_FORMULA_START: Final = frozenset(("=", "+", "-", "@", "\t", "\r"))
_KEY_JUNK: Final = re.compile(r"[^A-Za-z0-9_]")


def visible(text: str) -> str:
    """``text`` with every control, bidi and separator character as a visible escape.

    >>> visible("a\\x1b]0;owned\\x07b\\u202e")
    'a\\\\x1b]0;owned\\\\x07b\\\\u202e'
    """
    return text if text.isprintable() else text.translate(_VISIBLE)


def json_text(encoded: bytes) -> str:
    """Encoded JSON as text with DEL, C1, bidi and separator characters as ``\\uXXXX``.

    Outside strings JSON holds ASCII only, so the escapes land in strings, where
    they decode to exactly the characters they replace.
    """
    text = encoded.decode("utf-8")
    if encoded.isascii() and b"\x7f" not in encoded:  # C0 is escaped already
        return text
    return text.translate(_JSON)


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: formula-like strings get a leading ``'``."""
    if isinstance(value, str) and value[:1] in _FORMULA_START:
        return "'" + value
    return value


def cef_header(value: Any) -> str:
    """A CEF header field: ``\\`` and ``|`` escaped, never a raw control character."""
    text = str(value)
    if text.isprintable() and "\\" not in text and "|" not in text:
        return text
    return text.translate(_CEF_HEADER)


def cef_value(value: Any) -> str:
    """A CEF extension value: ``\\`` and ``=`` escaped, CR/LF as ``\\r``/``\\n``."""
    text = str(value)
    if text.isprintable() and "\\" not in text and "=" not in text:
        return text
    return text.translate(_CEF_VALUE)


def cef_key(key: str) -> str:
    """A CEF extension key: letters, digits and ``_`` only (anything else is dropped)."""
    return _KEY_JUNK.sub("", key) or "x"


__all__ = ["cef_header", "cef_key", "cef_value", "csv_cell", "json_text", "visible"]
