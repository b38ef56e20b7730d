"""Redaction of secrets in call arguments, before anything is stored.

A value whose argument name matches a glob (``*password*``), or a part of a
string that matches a value pattern (a JWT, an AWS key, ``Bearer ...``), is
replaced by ``[redacted:<hmac>]`` where ``<hmac>`` is the first 16 hex digits of
HMAC-SHA256(redaction key, value). Equal secrets give equal replacements, so an
investigator can still see that two calls used the same token, but the token
itself is never written. Pure: no I/O.

Example::

    r = Redactor.compile(["*token*"], [r"\\bsk-\\w{20,}"], key=b"k" * 32)
    r.apply({"api_token": "abc", "q": "hello"})  # {"api_token": "[redacted:...]", "q": "hello"}
"""

from __future__ import annotations

import fnmatch
import hmac
import re
from typing import Any

import msgspec

_encode = msgspec.json.Encoder(order="sorted").encode


_GLOBAL_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")


def _scoped(pattern: str) -> str:
    """``(?i)abc`` -> ``(?i:abc)``: global flags cannot sit inside an alternation."""
    m = _GLOBAL_FLAGS.match(pattern)
    if m:
        return f"(?{m.group(1)}:{pattern[m.end():]})"
    return f"(?:{pattern})"


class RedactionError(ValueError):
    """A redaction rule that does not compile; the message names it."""


class Redactor:
    """Compiled redaction rules."""

    __slots__ = ("_key", "_names", "_values")

    def __init__(self, names: re.Pattern[str] | None, values: re.Pattern[str] | None,
                 key: bytes) -> None:
        self._names = names
        self._values = values
        self._key = key

    @classmethod
    def compile(cls, names: list[str] | tuple[str, ...], values: list[str] | tuple[str, ...],
                key: bytes) -> Redactor:
        """Compile name globs and value regexes once; raise :class:`RedactionError`."""
        name_re = None
        if names:
            name_re = re.compile("|".join(f"(?:{fnmatch.translate(g.lower())})" for g in names))
        value_re = None
        if values:
            for i, pattern in enumerate(values):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise RedactionError(f"redaction.values[{i}]: {pattern!r}: {exc}") from None
            value_re = re.compile("|".join(_scoped(p) for p in values))
        return cls(name_re, value_re, key)

    def token(self, value: Any) -> str:
        """The replacement for one secret value."""
        raw = value.encode() if isinstance(value, str) else _encode(value)
        return f"[redacted:{hmac.digest(self._key, raw, 'sha256').hex()[:16]}]"

    def apply(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``arguments`` with secrets replaced (the input is not changed)."""
        out = self._walk(arguments)
        assert isinstance(out, dict)
        return out

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            values = self._values
            if values is not None and values.search(value) is not None:
                return values.sub(lambda m: self.token(m.group(0)), value)
            return value
        if isinstance(value, dict):
            names = self._names
            return {
                k: (self.token(v) if names is not None and isinstance(k, str)
                    and names.match(k.lower()) else self._walk(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        return value
