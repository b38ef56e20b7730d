"""Bounds on what a decoder may be asked to build (sans-IO).

Rules this module keeps:

1. Nesting is bounded before anything is decoded: a JSON text nested deeper
   than :data:`MAX_DEPTH` arrays and objects is refused whole, so no decoder,
   policy check, redaction or audit encoder ever recurses over it. (msgspec
   itself stops near Python's recursion limit with RecursionError, which is
   caught too; the explicit bound keeps every later walk far from it.)
2. The check is exact for valid JSON and cheap for the common case: a text
   with at most MAX_DEPTH brackets in all cannot be deeper, whatever its
   layout, and costs two ``bytes.count`` calls. Only longer texts build the
   bracket skeleton, with C-speed byte operations only (no Python loop per
   byte): escapes and strings removed, then one innermost level of pairs
   removed per pass, at most MAX_DEPTH passes (about 0.8 ms for a 350 KB
   tools/list result of 2,000 tools with 14,000 brackets, a third of decoding
   it whole; ``benchmarks/bench_mediation.py`` measures it).
3. An unbalanced skeleton is not JSON: the check lets the decoder refuse it
   with its own words (and its recursion guard still holds).

Example::

    assert not too_deep(b'{"a":[1,2]}')
    assert too_deep(b"[" * 65 + b"]" * 65)
"""

from __future__ import annotations

from typing import Final

# Arrays and objects, nested: MCP messages nest a dozen levels at most (a tool
# call's arguments inside params inside the envelope); JSON Schemas in a
# tools/list result a few more. 64 leaves room for both and keeps every
# recursive walk of a decoded value far from Python's recursion limit.
MAX_DEPTH: Final = 64

# Every byte but brackets and quotes is deleted; opening and closing brackets of
# both kinds become one kind (a mismatch of kinds is the decoder's to refuse).
_DELETE: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_ONE_KIND: Final = bytes.maketrans(b"{}", b"[]")


def too_deep(data: bytes | bytearray | memoryview, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON text ``data`` nests arrays and objects deeper than ``limit``.

    ``too_deep(b'[[[]]]', 2)`` is True; ``too_deep(b'["[[[["]', 2)`` is False
    (brackets inside strings do not count).
    """
    if isinstance(data, memoryview):
        data = bytes(data)
    if _few_brackets(data, limit):
        return False
    return _depth_over(bytes(data), limit)


def _few_brackets(data: bytes | bytearray, limit: int) -> bool:
    """True when ``data`` holds at most ``limit`` opening brackets in all."""
    if len(data) < 4096:  # one pass of count() each is cheapest for short texts
        return data.count(b"[") + data.count(b"{") <= limit
    # A long text (a big result) seldom has many: find() skips to each one with
    # memchr and stops at the first past the limit (count() reads every byte
    # in a loop: 0.3 ms a MB each, against a few us).
    seen = 0
    for bracket in (b"[", b"{"):
        at = data.find(bracket)
        while at >= 0:
            seen += 1
            if seen > limit:
                return False
            at = data.find(bracket, at + 1)
    return True


def _depth_over(data: bytes, limit: int) -> bool:
    # Outside strings valid JSON has no backslash, so removing escaped
    # backslashes first, then escaped quotes, leaves only the quotes that open
    # and close strings.
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Brackets and quotes only. Two adjacent quotes close a string and open
    # the next (or are an empty string): nothing outside a string lies between
    # them, so dropping the pair keeps every bracket on its side. What quotes
    # remain enclose brackets inside strings, which do not count.
    skeleton = data.translate(_ONE_KIND, _DELETE).replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = b"".join(skeleton.split(b'"')[0::2])
    for _ in range(limit):
        if not skeleton:
            return False
        inner = skeleton.replace(b"[]", b"")  # one level: every innermost pair
        if len(inner) == len(skeleton):
            return False  # unbalanced: not JSON, the decoder refuses it
        skeleton = inner
    return bool(skeleton)


def depth(data: bytes) -> int:
    """The nesting depth of a JSON text (reference for tests; slow)."""
    level = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            level += 1
            deepest = max(deepest, level)
        elif byte in (0x5D, 0x7D):
            level -= 1
    return deepest
