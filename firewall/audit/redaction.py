"""Redaction of secrets in call arguments, before anything is stored.

A value whose argument name matches a glob (``*password*``), or a part of a
string that matches a value pattern (a JWT, an AWS key, ``Bearer ...``), is
replaced by ``[redacted:<hmac>]`` where ``<hmac>`` is the first 16 hex digits of
HMAC-SHA256(redaction key, value). Equal secrets give equal replacements, so an
investigator can still see that two calls used the same token, but the token
itself is never written. Pure: no I/O.

The value patterns are the operator's and the strings are the agents': a
careless pattern must not let a hostile argument stall the writer (and, in
durable mode, every call waiting for its receipt). Each string is searched
with ``re`` only up to the length where the patterns' worst case is provably
small (:func:`firewall.policy.patterns.input_limit`); a longer one (or any,
for a pattern that can backtrack catastrophically) is searched by the
``regex`` engine with a timeout, and a search that times out redacts the
whole string: a secret can never be kept because a search gave up.

Example::

    r = Redactor.compile(["*token*"], [r"\\bsk-\\w{20,}"], key=b"k" * 32)
    r.apply({"api_token": "abc", "q": "hello"})  # {"api_token": "[redacted:...]", "q": "hello"}
"""

from __future__ import annotations

import fnmatch
import hmac
import importlib
import re
from typing import Any

import msgspec
import regex

from firewall.policy.patterns import DEFAULT_TIMEOUT, input_limit

_encode = msgspec.json.Encoder(order="sorted").encode


_NAME_CACHE = 4096  # argument names whose verdict is remembered

_GLOBAL_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")


def _survives_json(literal: str) -> bool:
    """True if JSON text shows ``literal`` as it is (no character of it escaped)."""
    return all(ch not in '"\\' and ch >= " " for ch in literal)


def _scoped(pattern: str) -> str:
    """``(?i)abc`` -> ``(?i:abc)``: global flags cannot sit inside an alternation."""
    m = _GLOBAL_FLAGS.match(pattern)
    if m:
        return f"(?{m.group(1)}:{pattern[m.end():]})"
    return f"(?:{pattern})"


def required_literals(pattern: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """Literals one of which every match of ``pattern`` contains, or None if unsure.

    Returns ``(plain, folded)``: ``folded`` literals come from case-insensitive
    parts and are lower case (compare them with an ASCII string lowered).
    Derived conservatively from the parsed regex: runs of literal characters
    (zero-width assertions between them do not break a run), and what a group,
    every branch of an alternation, or a repeat of at least one must contain.
    Anything unexpected gives None, and the caller then always runs the regex.

    >>> required_literals(r"\\bsk-[A-Za-z0-9]{20,}")
    (('sk-',), ())
    """
    try:
        parser: Any = importlib.import_module("re._parser")
        consts: Any = importlib.import_module("re._constants")
        tree = parser.parse(pattern)
        icase = bool(tree.state.flags & consts.SRE_FLAG_IGNORECASE)
        found = _needed(list(tree), icase, consts)
    except Exception:  # another Python's parser, or a shape we do not know
        return None
    if not found:
        return None
    plain = tuple(sorted({text for text, folded in found if not folded}))
    folded = tuple(sorted({text for text, is_folded in found if is_folded}))
    return plain, folded


def _needed(items: list[Any], icase: bool, c: Any) -> list[tuple[str, bool]] | None:
    """The best literal set a match of the sequence ``items`` must contain."""
    best: list[tuple[str, bool]] | None = None
    run: list[str] = []

    def consider(option: list[tuple[str, bool]] | None) -> None:
        nonlocal best
        if not option or min(len(text) for text, _ in option) == 0:
            return
        score = (min(len(text) for text, _ in option), -len(option))
        if best is None or score > (min(len(text) for text, _ in best), -len(best)):
            best = option

    def close() -> None:
        if run:
            consider([("".join(run), icase)])
            run.clear()

    ignorecase = c.SRE_FLAG_IGNORECASE
    for op, av in items:
        if op == c.LITERAL:
            ch = chr(av)
            if icase and not ch.isascii():
                close()  # non-ASCII case folding has more than two spellings
                continue
            run.append(ch.lower() if icase else ch)
            continue
        if op == c.AT:
            continue  # zero-width: the literals around it stay adjacent
        close()
        if op == c.SUBPATTERN:
            _, add, delete, sub = av
            consider(_needed(list(sub), (icase or bool(add & ignorecase))
                             and not delete & ignorecase, c))
        elif op == c.BRANCH:
            alternatives = [_needed(list(alt), icase, c) for alt in av[1]]
            if all(alternatives):
                consider([lit for alt in alternatives if alt for lit in alt])
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            consider(_needed(list(av[2]), icase, c))
        elif op == c.ATOMIC_GROUP:
            consider(_needed(list(av), icase, c))
    close()
    return best


def _any_of(literals: tuple[str, ...]) -> re.Pattern[str] | None:
    """A regex that finds any of ``literals`` (longest first), None for none."""
    if not literals:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(set(literals), key=len,
                                                              reverse=True)))


class RedactionError(ValueError):
    """A redaction rule that does not compile; the message names it."""


class Redactor:
    """Compiled redaction rules."""

    __slots__ = ("_clean_lowered", "_clean_plain", "_folded", "_gated", "_key", "_limit",
                 "_name_literals", "_names", "_plain", "_secret_names", "_slow", "_values",
                 "timeouts")

    def __init__(self, names: re.Pattern[str] | None, values: re.Pattern[str] | None,
                 key: bytes, *, sources: list[str] | tuple[str, ...] = (),
                 name_sources: list[str] | tuple[str, ...] | None = None) -> None:
        """``sources``: the value patterns ``values`` was built from (enables the
        gate); ``name_sources``: the name globs ``names`` was built from (with
        the value gate, enables :meth:`clean`)."""
        self._names = names
        self._values = values
        self._key = key
        # Strings up to ``_limit`` characters go to ``re``; longer ones to the
        # engine with a timeout (module docstring). Without the sources the
        # patterns are unknown: every string takes the bounded path.
        self._limit = min((input_limit(p, True) for p in sources), default=0)
        self._slow = (regex.compile(values.pattern, regex.VERSION0)
                      if values is not None else None)
        self.timeouts = 0  # searches that gave up (their strings were redacted whole)
        # A string is searched with the value patterns only if it holds one of
        # the literals every match needs (a few ``in`` tests instead of a regex
        # scan, which costs microseconds per string).
        self._gated = False
        self._plain: tuple[str, ...] = ()
        self._folded: tuple[str, ...] = ()
        if values is not None and sources:
            gates = [required_literals(p) for p in sources]
            if gates and all(g is not None for g in gates):
                self._gated = True
                self._plain = tuple(sorted({t for g in gates if g for t in g[0]}))
                self._folded = tuple(sorted({t for g in gates if g for t in g[1]}))
        # Argument names repeat (they come from tool schemas): remember the
        # verdict per name. Bounded, so hostile names cannot grow it forever.
        self._secret_names: dict[str, bool] = {}
        # What a secret NAME must contain (lower case), for clean(); None: unsure.
        self._name_literals: tuple[str, ...] | None = None
        if name_sources is not None and (values is None or self._gated):
            found: list[str] = []
            for glob in name_sources:
                gate = required_literals(fnmatch.translate(glob.lower()))
                if gate is None or gate[1]:
                    found = []
                    break
                found.extend(gate[0])
            if (found or not name_sources) and all(
                    _survives_json(t) for t in (*found, *self._plain, *self._folded)):
                self._name_literals = tuple(sorted(set(found)))
        # clean() looks for all those literals with two searches (one over the
        # lowered text, one over the text) instead of one ``in`` test each.
        self._clean_lowered = _any_of((*(self._name_literals or ()), *self._folded))
        self._clean_plain = _any_of(self._plain)

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
        return cls(name_re, value_re, key, sources=values, name_sources=names)

    def token(self, value: Any) -> str:
        """The replacement for one secret value."""
        raw = value.encode() if isinstance(value, str) else _encode(value)
        return f"[redacted:{hmac.digest(self._key, raw, 'sha256').hex()[:16]}]"

    def apply(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``arguments`` with secrets replaced (the input is not changed)."""
        out = self._walk(arguments)
        assert isinstance(out, dict)
        return out

    def clean(self, text: str) -> bool:
        """True if the JSON text of a call's arguments (as msgspec writes it)
        certainly holds nothing to redact: it is ASCII and contains none of
        the literals that every secret name, and every match of a value
        pattern, needs. False says nothing: run :meth:`apply`.

        Sound because the literals contain no character JSON escapes (checked
        when compiled), so a literal in a name or string value appears as it
        is in the text; keys and numbers only add false alarms. Lets the
        writer keep the text it received instead of decoding, walking and
        encoding the arguments again (a few microseconds per call).
        """
        if self._name_literals is None or not text.isascii():
            return False
        lowered, plain = self._clean_lowered, self._clean_plain
        return ((lowered is None or lowered.search(text.lower()) is None)
                and (plain is None or plain.search(text) is None))

    def _may_hold_secret(self, value: str) -> bool:
        for literal in self._plain:
            if literal in value:
                return True
        if self._folded:
            if not value.isascii():
                return True
            lowered = value.lower()
            for literal in self._folded:
                if literal in lowered:
                    return True
        return False

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            values = self._values
            if values is None or (self._gated and not self._may_hold_secret(value)):
                return value
            if len(value) <= self._limit:
                if values.search(value) is not None:
                    return values.sub(lambda m: self.token(m.group(0)), value)
                return value
            return self._bounded(value)
        if isinstance(value, dict):
            return {k: self.token(v) if self._is_secret_name(k) else self._walk(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        return value

    def _bounded(self, value: str) -> str:
        """Search and replace under the timeout; all of ``value`` redacted if it runs out."""
        slow = self._slow
        assert slow is not None
        try:
            if slow.search(value, timeout=DEFAULT_TIMEOUT) is None:
                return value
            return str(slow.sub(lambda m: self.token(m.group(0)), value,
                                timeout=DEFAULT_TIMEOUT))
        except TimeoutError:
            self.timeouts += 1
            return self.token(value)

    def _is_secret_name(self, name: Any) -> bool:
        known = self._secret_names.get(name)
        if known is not None:
            return known
        names = self._names
        secret = (names is not None and isinstance(name, str)
                  and names.match(name.lower()) is not None)
        if len(self._secret_names) >= _NAME_CACHE:
            self._secret_names.clear()
        if isinstance(name, str):
            self._secret_names[name] = secret
        return secret
