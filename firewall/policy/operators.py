"""Tests of the ``{"path", "op", "value"}`` shape, with Intercept's semantics.

PolicyLayer's formats (the hosted ``policy.json`` lists ``require`` and
``deny_if``, the open-source proxy Intercept's ``conditions``) compare one value
of a call with an operator. mcpwall compiles them here, once, into
:class:`~firewall.policy.arguments.Check` objects the compiler binds into an
entry's evaluator like any other check.

Rules this module keeps (Intercept's engine, operator for operator):

1. ``args.a.b`` walks objects only; a segment that is missing, or a value that
   is not an object on the way, means "absent". An absent value fails every
   operator but ``exists``; ``exists: true`` holds when the value is present
   and not null, ``exists: false`` when it is absent or null.
2. Numbers are compared as float64 (an integer beyond its range reads as an
   infinity, never an error): ``eq`` and ``neq`` compare two numbers by
   value (``5`` equals ``5.0``), anything else by Go's ``%v`` text of each
   side (so the string ``"5"`` equals the number ``5``, and ``"true"`` equals
   ``true``). ``lt``/``lte``/``gt``/``gte`` hold only when both sides are
   numbers (booleans are not).
3. ``in``/``not_in``: ``eq`` against each element of the list; ``not_in`` is
   the negation of ``in`` (so an absent value fails both).
4. ``regex`` searches (it is not anchored) a string value; anything else
   fails. The search is bounded in time (:mod:`firewall.policy.patterns`);
   one that times out raises instead of answering.
5. ``contains``: a substring of a string value, or an element (by ``eq``) of an
   array value; anything else fails.

``state.`` paths name counters: :func:`compile_test` refuses them unless the
caller passes a ``state`` reader (``require_state`` tests are compiled on the
total, :func:`firewall.policy.counters.compile_state_checks`).

Example::

    check = compile_test(Test(path="args.amount", op="lte", value=500), "tools.pay")
    check.test({"amount": 20}) is True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from firewall.policy.arguments import Check
from firewall.policy.patterns import DEFAULT_TIMEOUT, compile_pattern
from firewall.policy.schema import PolicyError, Test

_ABSENT: Final = object()
Reader = Callable[[dict[str, Any]], Any]


def is_number(value: Any) -> bool:
    """A JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_float(value: int | float) -> float:
    """A number as float64; an integer beyond its range is an infinity (the
    JSON and YAML readers give integers of any size, ``float()`` of which raises)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _go_float(f: float) -> str:
    """Go's ``%v`` of a float64 (``strconv.FormatFloat(f, 'g', -1, 64)``)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign, digits, exponent = Decimal(repr(f)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    exp = len(digits) + exponent - 1  # the decimal exponent of the first digit
    minus = "-" if sign else ""
    # Shortest 'g' uses %e when the exponent is < -4 or >= 6: 1e6 reads
    # "1e+06", 123456 reads "123456".
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp >= len(text) - 1:
        return minus + text + "0" * (exp - len(text) + 1)
    if exp >= 0:
        return minus + text[:exp + 1] + "." + text[exp + 1:]
    return minus + "0." + "0" * (-exp - 1) + text


def go_text(value: Any, from_call: bool) -> str:
    """Go's ``%v`` of a decoded value.

    A call's numbers are float64 in Go whatever their JSON spelling; a policy's
    integers (YAML ``50000``) are Go ints. ``from_call`` says which side this is.
    """
    if value is None:
        return "<nil>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not from_call:
        return str(value)
    if is_number(value):
        return _go_float(as_float(value))
    if isinstance(value, list):
        return "[" + " ".join(go_text(v, from_call) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_text(value[k], from_call)}"
                                 for k in sorted(value)) + "]"
    return str(value)


def go_equal(actual: Any, expected: Any) -> bool:
    """Intercept's ``eq``: numbers by value, anything else by ``%v`` text."""
    if is_number(actual) and is_number(expected):
        return as_float(actual) == as_float(expected)
    return go_text(actual, True) == go_text(expected, False)


def arguments_reader(path: str) -> Reader:
    """A function reading ``args.a.b`` from a call's arguments (``_ABSENT`` if absent)."""
    steps = tuple(path.split("."))

    def read(args: dict[str, Any]) -> Any:
        current: Any = args
        for step in steps:
            if type(current) is not dict:
                return _ABSENT
            current = current.get(step, _ABSENT)
            if current is _ABSENT:
                return _ABSENT
        return current

    return read


def _predicate(test: Test, where: str, timeout: float) -> Callable[[Any], bool]:
    """What the operator says of a present value."""
    op, value = test.op, test.value
    if op in ("eq", "neq"):
        if op == "eq":
            return lambda v: go_equal(v, value)
        return lambda v: not go_equal(v, value)
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise PolicyError(f"{where}.value: operator {op!r} requires a list value")
        items = tuple(value)
        if op == "in":
            return lambda v: any(go_equal(v, item) for item in items)
        return lambda v: not any(go_equal(v, item) for item in items)
    if op in ("lt", "lte", "gt", "gte"):
        if not is_number(value):
            raise PolicyError(f"{where}.value: operator {op!r} requires a numeric value")
        bound = as_float(value)
        compare: Callable[[float], bool] = {
            "lt": lambda a: a < bound, "lte": lambda a: a <= bound,
            "gt": lambda a: a > bound, "gte": lambda a: a >= bound}[op]
        return lambda v: is_number(v) and compare(as_float(v))
    if op == "regex":
        if not isinstance(value, str):
            raise PolicyError(f"{where}.value: regex value must be a string")
        search = compile_pattern(value, f"{where}.value", test.path, timeout,
                                 search=True).search
        return lambda v: isinstance(v, str) and search(v)
    if op == "contains":
        def contains(v: Any) -> bool:
            if isinstance(v, str):
                return isinstance(value, str) and value in v
            if isinstance(v, list):
                return any(go_equal(item, value) for item in v)
            return False
        return contains
    raise PolicyError(f"{where}.op: unknown operator {op!r}")  # pragma: no cover (Literal)


def describe(test: Test) -> str:
    """``args.amount lte 500``: a test as people read it."""
    return f"{test.path} {test.op} {go_text(test.value, False)}"


def compile_test(test: Test, where: str, state: Callable[[str], Reader] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> Check:
    """One test as a :class:`Check` (``test(args) -> bool``); raise
    :class:`PolicyError` naming ``where`` for a bad path, operator or value.

    ``state(path)`` gives the reader of a ``state.`` path; without it such a
    path is an error. ``timeout`` (seconds) bounds one ``regex`` match: past
    it the test raises :class:`~firewall.policy.patterns.PatternTimeout`,
    whichever way the caller reads its truth (``require``, ``deny_if``).
    """
    path = test.path
    if path.startswith("args.") and len(path) > 5:
        read = arguments_reader(path[5:])
    elif path.startswith("state.") and state is not None:
        read = state(path)
    elif path.startswith("state."):
        raise PolicyError(f"{where}.path: a counter (state.*) is read in \"require_state\", "
                          f"not here: {path!r}")
    else:
        raise PolicyError(f"{where}.path: must start with \"args.\" or \"state.\", got {path!r}")
    message = f"{describe(test)} does not hold"
    if test.op == "exists":
        if not isinstance(test.value, bool):
            raise PolicyError(f"{where}.value: operator 'exists' requires a boolean value")
        want = test.value

        def exists(args: dict[str, Any]) -> bool:
            v = read(args)
            return (v is not _ABSENT and v is not None) == want

        return Check(exists, path, test.op, message)
    holds = _predicate(test, where, timeout)

    def run(args: dict[str, Any]) -> bool:
        v = read(args)
        return v is not _ABSENT and holds(v)

    return Check(run, path, test.op, message)
