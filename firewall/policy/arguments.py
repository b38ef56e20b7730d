"""Argument conditions compiled once into checks.

Rules this module keeps:

1. Compile once, evaluate many: every regex is compiled (as a
   :class:`~firewall.policy.patterns.Pattern`, matched in bounded time), every ``in`` list
   becomes a frozenset where it can, every ``path_under`` root is normalised,
   and every violation message is built here, at compile time. At call time a
   check is one closure call on the arguments dict.
2. One :class:`Check` per (argument, condition), so a violation names both:
   ``argument 'path': must be under /srv (path_under)``.
3. A missing argument fails every condition on it unless the condition is
   ``optional``; a null fails unless it is ``nullable``. ``name[*]`` applies
   the conditions to every element of the array ``name`` (an empty array
   passes; a non-array fails). ``a.b`` reaches into nested objects.
4. JSON semantics, not Python's: ``true`` is not ``1``, ``1`` equals ``1.0``.

Example::

    checks = compile_conditions({"action": Condition(in_=["list", "info"])}, "tools.vm")
    assert all(c.test({"action": "list"}) for c in checks)
"""

from __future__ import annotations

import ntpath
import posixpath
import re
from collections.abc import Callable
from typing import Any, Final

import msgspec

from firewall.policy.patterns import DEFAULT_TIMEOUT, compile_pattern
from firewall.policy.schema import Condition, ConditionSpec, PolicyError

Predicate = Callable[[Any], bool]
_MISSING: Final = object()
_SEGMENT: Final = re.compile(r"^(?P<name>[^\[\]]+)(?P<each>(\[\*\])*)$")
_WINDOWS_ROOT: Final = re.compile(r"^[A-Za-z]:[\\/]")


class Check(msgspec.Struct, frozen=True):
    """One compiled condition: ``test(arguments) -> bool`` and what a failure means."""

    test: Callable[[dict[str, Any]], bool]
    argument: str
    condition: str
    message: str
    # For the commonest checks on a top-level argument, what the compiler may
    # inline in an entry's evaluator instead of calling ``test`` (which it
    # still calls for any value that is not a string): ("in", key, frozenset),
    # ("const", key, str), ("prefix", key, str) or ("memo", key, verdicts by
    # value, filled by ``test``). None: always call ``test``.
    fast: tuple[str, str, Any] | None = None


def as_condition(spec: ConditionSpec) -> Condition:
    """Expand shorthand: a list means ``in``, a string means ``const``."""
    if isinstance(spec, Condition):
        return spec
    if isinstance(spec, list):
        return Condition(in_=spec)
    return Condition(const=spec)


MEMO_ENTRIES: Final = 65536
MEMO_LENGTH: Final = 64


class MatchMemo:
    """What the ``pattern`` checks of one compiled table remember of their verdicts.

    A regular expression costs several times a dict lookup, and the same
    values (a VM name, a path) come back call after call. Each check keeps a
    dict of the strings it has judged, up to :data:`MEMO_LENGTH` characters
    long; all of a table's checks together keep at most ``entries`` of them,
    after which they judge new values afresh and remember nothing more. The
    memo belongs to the compiled table, so a reload starts a new one.
    """

    __slots__ = ("remaining",)

    def __init__(self, entries: int = MEMO_ENTRIES) -> None:
        self.remaining = entries


def compile_conditions(conditions: dict[str, ConditionSpec], where: str,
                       memo: MatchMemo | None = None,
                       timeout: float = DEFAULT_TIMEOUT) -> tuple[Check, ...]:
    """Compile ``{argument: condition}`` into checks; ``where`` prefixes errors.

    With ``memo``, ``pattern`` checks remember their verdicts within its budget.
    ``timeout`` (seconds) bounds one match of a ``pattern`` or ``not_pattern``
    (:mod:`firewall.policy.patterns`): a check that times out raises
    :class:`~firewall.policy.patterns.PatternTimeout` (and remembers nothing).
    """
    checks: list[Check] = []
    if not conditions:
        return ()
    for argument, spec in conditions.items():
        cond = as_condition(spec)
        here = f"{where}.{argument}"
        predicates = _predicates(cond, here, f"argument {argument!r}", timeout)
        access = _accessor(argument, cond.optional, cond.nullable, here)
        simple = _SIMPLE_NAME.match(argument) is not None
        for op, pred, text in predicates:
            fused = (_fused(argument, op, cond, pred, memo, here, timeout) if simple
                     else None)
            test, fast = fused if fused is not None else (access(pred), None)
            checks.append(Check(test, argument, op, f"argument '{argument}': {text} ({op})",
                                fast))
    return tuple(checks)


_SIMPLE_NAME: Final = re.compile(r"^[^\[\].]+$")


Fused = tuple[Callable[[dict[str, Any]], bool], tuple[str, str, Any] | None]


def _fused(key: str, op: str, cond: Condition, pred: Predicate,
           memo: MatchMemo | None, where: str, timeout: float) -> Fused | None:
    """The hot path's version of ``_accessor(key, ...)(pred)`` for the commonest
    conditions on a top-level argument: the test on a plain string is inlined,
    which saves a call per check; every other value goes through ``pred`` as in
    the general wrapper, so both give the same answers."""
    optional, nullable = cond.optional, cond.nullable
    if op in ("in", "enum"):
        values = cond.in_ if op == "in" else cond.enum
        if not values or not all(isinstance(x, str) for x in values):
            return None
        strings = frozenset(values)

        def member(args: dict[str, Any]) -> bool:
            v = args.get(key, _MISSING)
            if type(v) is str:
                return v in strings
            if v is _MISSING:
                return optional
            return (v is None and nullable) or pred(v)

        return member, ("in", key, strings)
    if op == "pattern" and cond.pattern is not None:
        fullmatch = compile_pattern(cond.pattern, f"{where}.pattern", f"argument {key!r}",
                                    timeout).fullmatch
        if memo is None:
            def matches(args: dict[str, Any]) -> bool:
                v = args.get(key, _MISSING)
                if type(v) is str:
                    return fullmatch(v)
                if v is _MISSING:
                    return optional
                return (v is None and nullable) or pred(v)

            return matches, None
        budget = memo
        seen: dict[str, bool] = {}

        def remembers(args: dict[str, Any]) -> bool:
            v = args.get(key, _MISSING)
            if type(v) is str:
                verdict = seen.get(v)
                if verdict is None:
                    verdict = fullmatch(v)  # a timeout raises: nothing is remembered
                    if len(v) <= MEMO_LENGTH and budget.remaining > 0:
                        budget.remaining -= 1
                        seen[v] = verdict
                return verdict
            if v is _MISSING:
                return optional
            return (v is None and nullable) or pred(v)

        return remembers, ("memo", key, seen)
    if op == "const" and type(cond.const) is str:
        const = cond.const

        def equals(args: dict[str, Any]) -> bool:
            v = args.get(key, _MISSING)
            if type(v) is str:
                return v == const
            if v is _MISSING:
                return optional
            return (v is None and nullable) or pred(v)

        return equals, ("const", key, const)
    if op == "prefix" and cond.prefix is not None:
        prefix = cond.prefix

        def starts(args: dict[str, Any]) -> bool:
            v = args.get(key, _MISSING)
            if type(v) is str:
                return v.startswith(prefix)
            if v is _MISSING:
                return optional
            return (v is None and nullable) or pred(v)

        return starts, ("prefix", key, prefix)
    return None


def _json_equal(a: Any, b: Any) -> bool:
    # bool is an int subclass in Python; in JSON true and 1 differ.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPES: Final[dict[str, Predicate]] = {
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _member(values: list[Any]) -> Predicate:
    if values and all(isinstance(x, str) for x in values):
        strings = frozenset(values)
        return lambda v: isinstance(v, str) and v in strings
    frozen = tuple(values)
    return lambda v: any(_json_equal(v, x) for x in frozen)


def _predicates(cond: Condition, where: str, subject: str = "the value",
                timeout: float = DEFAULT_TIMEOUT) -> list[tuple[str, Predicate, str]]:
    """(condition name, predicate on one value, what it requires) for each stated one."""
    out: list[tuple[str, Predicate, str]] = []
    for op, values in (("in", cond.in_), ("enum", cond.enum)):
        if values is not None:
            if not values:
                raise PolicyError(f"{where}.{op}: expected at least one value")
            out.append((op, _member(values), f"must be one of {_short(values)}"))
    if cond.const is not msgspec.UNSET:
        const = cond.const
        out.append(("const", lambda v: _json_equal(v, const), f"must be {_short(const)}"))
    if cond.pattern is not None:
        rx = compile_pattern(cond.pattern, f"{where}.pattern", subject, timeout).fullmatch
        out.append(("pattern", lambda v: isinstance(v, str) and rx(v),
                    f"must match {cond.pattern!r}"))
    if cond.not_pattern is not None:
        nrx = compile_pattern(cond.not_pattern, f"{where}.not_pattern", subject,
                              timeout).fullmatch
        out.append(("not_pattern",
                    lambda v: isinstance(v, str) and not nrx(v),
                    f"must be a string not matching {cond.not_pattern!r}"))
    if cond.prefix is not None:
        prefix = cond.prefix
        out.append(("prefix", lambda v: isinstance(v, str) and v.startswith(prefix),
                    f"must start with {prefix!r}"))
    if cond.min is not None:
        lo = cond.min
        out.append(("min", lambda v: _is_number(v) and v >= lo, f"must be a number >= {lo:g}"))
    if cond.max is not None:
        hi = cond.max
        out.append(("max", lambda v: _is_number(v) and v <= hi, f"must be a number <= {hi:g}"))
    if cond.min is not None and cond.max is not None and cond.min > cond.max:
        raise PolicyError(f"{where}: min {cond.min:g} is greater than max {cond.max:g}")
    if cond.min_length is not None:
        n = cond.min_length
        out.append(("min_length",
                    lambda v: isinstance(v, (str, list, dict)) and len(v) >= n,
                    f"must have length >= {n}"))
    if cond.max_length is not None:
        m = cond.max_length
        out.append(("max_length",
                    lambda v: isinstance(v, (str, list, dict)) and len(v) <= m,
                    f"must have length <= {m}"))
    if cond.type is not None:
        out.append(("type", _TYPES[cond.type], f"must be of type {cond.type}"))
    if cond.path_under is not None:
        roots = [cond.path_under] if isinstance(cond.path_under, str) else cond.path_under
        out.append(("path_under", _path_under(roots, f"{where}.path_under"),
                    f"must be a path under {', '.join(roots)}"))
    if not out and not cond.optional:
        # {} alone means "must be present": a useful condition of its own.
        out.append(("present", lambda v: v is not _MISSING, "must be present"))
    return out


def _short(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def normalise_path(path: str) -> str | None:
    """An absolute path with ``.``, ``..`` and repeated separators resolved, or
    None for a relative path or one holding a NUL. Windows paths (``C:\\x``)
    are normalised with Windows rules and lower-cased."""
    if "\x00" in path:
        return None
    if _WINDOWS_ROOT.match(path):
        return ntpath.normpath(path).lower()
    if not path.startswith("/"):
        return None
    norm = posixpath.normpath(path)
    # POSIX keeps a leading "//"; the filesystem does not care, nor do we.
    return "/" + norm.lstrip("/")


def _path_under(roots: list[str], where: str) -> Predicate:
    prepared: list[tuple[str, str]] = []
    for root in roots:
        norm = normalise_path(root)
        if norm is None:
            raise PolicyError(f"{where}: expected an absolute path, got {root!r}")
        sep = "\\" if _WINDOWS_ROOT.match(root) else "/"
        prepared.append((norm, norm if norm.endswith(sep) else norm + sep))
    frozen = tuple(prepared)

    def under(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        norm = normalise_path(v)
        if norm is None:
            return False
        return any(norm == root or norm.startswith(slash) for root, slash in frozen)

    return under


def _accessor(argument: str, optional: bool, nullable: bool,
              where: str) -> Callable[[Predicate], Callable[[dict[str, Any]], bool]]:
    """Wrap a value predicate into a test on the arguments dict, following the path."""
    steps: list[tuple[str, int]] = []
    for part in argument.split("."):
        m = _SEGMENT.match(part)
        if m is None:
            raise PolicyError(f"{where}: expected an argument name, `a.b` or `a[*]`")
        steps.append((m.group("name"), len(m.group("each")) // 3))

    if len(steps) == 1 and steps[0][1] == 0:
        key = steps[0][0]

        def simple(pred: Predicate) -> Callable[[dict[str, Any]], bool]:
            def test(args: dict[str, Any]) -> bool:
                v = args.get(key, _MISSING)
                if v is _MISSING:
                    return optional
                if v is None and nullable:
                    return True
                return pred(v)
            return test

        return simple

    frozen = tuple(steps)

    def nested(pred: Predicate) -> Callable[[dict[str, Any]], bool]:
        def test(args: dict[str, Any]) -> bool:
            values = _resolve(args, frozen)
            if values is None:
                return optional
            return all((v is None and nullable) or pred(v) for v in values)
        return test

    return nested


def _resolve(args: dict[str, Any], steps: tuple[tuple[str, int], ...]) -> list[Any] | None:
    """The values a path reaches, or None when a step is missing or not a container.

    A wrong type (a ``[*]`` over a non-array) yields ``[_MISSING]`` so the
    predicate fails even for optional arguments: optional means absent, not malformed.
    """
    current: list[Any] = [args]
    for name, each in steps:
        nxt: list[Any] = []
        for obj in current:
            if not isinstance(obj, dict):
                return [_MISSING]
            v = obj.get(name, _MISSING)
            if v is _MISSING:
                return None
            nxt.append(v)
        for _ in range(each):
            flat: list[Any] = []
            for v in nxt:
                if not isinstance(v, list):
                    return [_MISSING]
                flat.extend(v)
            nxt = flat
        current = nxt
    return current
