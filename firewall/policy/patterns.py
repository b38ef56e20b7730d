"""Policy regular expressions: compiled once, matched in bounded time.

A policy's patterns (``pattern`` and ``not_pattern`` conditions, the ``regex``
operator) are matched against arguments an agent chose, on the thread that
runs every session. Python's ``re`` backtracks: a careless pattern such as
``(a+)+$`` takes exponential time on a hostile 30-character value and would
stall the whole process. Rules this module keeps:

1. The syntax is ``re``'s: a pattern must compile under ``re`` (so existing
   policies keep their meaning), and it is also compiled with the ``regex``
   module in its ``re``-compatible mode (``VERSION0``), which can give up on a
   match after a timeout.
2. Which engine runs is decided per value from the pattern's shape
   (:func:`input_limit`): ``re`` (the fastest) for values no longer than the
   length up to which the pattern's worst case is provably small, ``regex``
   with the timeout for anything longer. A pattern with a quantifier inside a
   repeated group, an alternation inside a repeated group, a back-reference or
   a conditional group gets no ``re`` length at all: every value goes to
   ``regex`` with the timeout. ``mcpwall check`` warns about those.
3. A match that times out raises :class:`PatternTimeout`, never returns a
   verdict: whatever the pattern's place in the policy (a ``pattern`` that
   must match, a ``not_pattern``, a ``deny_if``, the ``when`` of a rule that
   allows or denies), the engine refuses the call (fail closed).
4. A value's verdict is the same whichever engine computes it (the tests hold
   the two to each other).

Example::

    p = compile_pattern("[a-z0-9-]{1,32}", "tools.vm.require.name.pattern",
                        "argument 'name'")
    p.fullmatch("web-01") is True
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Final

import regex

from firewall.policy.schema import PolicyError

#: The default bound on one match, in seconds (``[policy] regex_timeout_ms``).
DEFAULT_TIMEOUT: Final = 0.020
#: The most backtracking steps (roughly) a value may cost ``re`` in the worst
#: case before it goes to the engine with a timeout instead.
STEP_BUDGET: Final = 100_000
UNLIMITED: Final = sys.maxsize
# A bounded quantifier with at most this many choices of count ({1,32}) is a
# constant factor; with more, it counts as one that grows with the value.
_FEW: Final = 64

_REPEATS: Final = frozenset({sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT,
                             getattr(sre_constants, "POSSESSIVE_REPEAT", sre_constants.MAX_REPEAT)})
_UNSAFE: Final = frozenset({sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS})


class PatternTimeout(Exception):
    """A policy pattern did not finish matching within its timeout.

    ``where`` is the pattern's key path in the policy, ``subject`` what it was
    matched against (``argument 'path'``), ``timeout`` the bound in seconds.
    It never holds the value itself.
    """

    def __init__(self, where: str, subject: str, timeout: float) -> None:
        super().__init__(f"{where}: matching {subject} timed out after "
                         f"{timeout * 1000:g} ms")
        self.where = where
        self.subject = subject
        self.timeout = timeout


class _Shape:
    """What :func:`_walk` learns of a parsed pattern."""

    __slots__ = ("degree", "factor", "unsafe")

    def __init__(self) -> None:
        self.degree = 0      # quantifiers whose iteration count grows with the value
        self.factor = 1      # constant multipliers (alternatives)
        self.unsafe = False  # a nested quantifier, a loop over alternatives, a back-reference


def _walk(items: Any, shape: _Shape, in_loop: bool) -> None:
    """Record ``items`` (a parsed sub-pattern) in ``shape``; ``in_loop``: it is
    repeated, so a choice within it (a quantifier, alternatives) is unsafe."""
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            choices = high - low + 1
            if choices > 1 and in_loop:
                shape.unsafe = True
            if high == sre_constants.MAXREPEAT or choices > _FEW:
                shape.degree += 1
            else:  # a{3}: no choice; a?, a{1,8}: a few
                shape.factor *= choices
            # The body of anything repeated more than once must not vary.
            _walk(body, shape, in_loop or high > 1)
        elif op == sre_constants.BRANCH:
            _, alternatives = av
            if in_loop:
                shape.unsafe = True
            shape.factor *= max(1, len(alternatives))
            for alt in alternatives:
                _walk(alt, shape, in_loop)
        elif op == sre_constants.SUBPATTERN:
            _walk(av[-1], shape, in_loop)
        elif op == sre_constants.ATOMIC_GROUP:
            _walk(av, shape, in_loop)
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            _walk(av[1], shape, in_loop)
        elif op in _UNSAFE:
            shape.unsafe = True


def _shape(pattern: str) -> _Shape:
    shape = _Shape()
    _walk(sre_parse.parse(pattern).data, shape, False)
    return shape


def input_limit(pattern: str, search: bool) -> int:
    """The longest value ``re`` may match ``pattern`` against: 0 when the
    pattern can backtrack catastrophically (every value then goes to the
    engine with a timeout), :data:`UNLIMITED` when its cost does not grow
    faster than the value.

    Without a quantifier inside a repeated group (or a loop over
    alternatives, a back-reference, a conditional), a backtracking match tries
    at most ``(n + 1) ** d`` ways of sharing a value of length ``n`` among the
    pattern's ``d`` quantifiers (one more factor ``n`` for an unanchored
    search, which starts at every position), times a constant for its
    alternatives. The limit is the largest ``n`` that keeps that under
    :data:`STEP_BUDGET`. It is an upper bound on the work, not an estimate:
    most patterns cost far less.
    """
    return _limit(_shape(pattern), search)


def _limit(shape: _Shape, search: bool) -> int:
    if shape.unsafe or shape.factor >= STEP_BUDGET:
        return 0
    degree = shape.degree + (1 if search else 0)
    if degree <= 1:
        return UNLIMITED  # linear in the value (a single greedy quantifier backs off once)
    root: float = (STEP_BUDGET / shape.factor) ** (1.0 / degree)
    return max(0, math.floor(root) - 1)


class Pattern:
    """One compiled policy pattern: :meth:`fullmatch` / :meth:`search` -> bool.

    ``limit`` is :func:`input_limit` for the use it was compiled for (``search``
    or not); each of the two functions keeps its own. Either raises
    :class:`PatternTimeout` when the engine with a timeout gives up.
    """

    __slots__ = ("fullmatch", "limit", "search", "source", "where")

    def __init__(self, source: str, where: str, subject: str, timeout: float,
                 search: bool) -> None:
        try:
            fast = re.compile(source)
        except re.error as exc:
            raise PolicyError(f"{where}: not a valid regular expression: {exc}") from None
        try:
            slow = regex.compile(source, regex.VERSION0)
        except regex.error as exc:  # pragma: no cover (re accepted it)
            raise PolicyError(f"{where}: not a valid regular expression: {exc}") from None
        self.source = source
        self.where = where
        shape = _shape(source)
        self.limit = _limit(shape, search)
        self.fullmatch = _bounded(fast.fullmatch, slow.fullmatch, _limit(shape, False),
                                  timeout, where, subject)
        self.search = _bounded(fast.search, slow.search, _limit(shape, True),
                               timeout, where, subject)

    @property
    def catastrophic(self) -> bool:
        """True when the pattern can backtrack catastrophically: every value
        is matched under the timeout."""
        return self.limit == 0


def _bounded(fast: Callable[[str], object], slow: Callable[..., object], limit: int,
             timeout: float, where: str, subject: str) -> Callable[[str], bool]:
    def matches(v: str) -> bool:
        if len(v) <= limit:
            return fast(v) is not None
        try:
            return slow(v, timeout=timeout) is not None
        except TimeoutError:
            raise PatternTimeout(where, subject, timeout) from None

    return matches


def compile_pattern(source: str, where: str, subject: str,
                    timeout: float = DEFAULT_TIMEOUT, *, search: bool = False) -> Pattern:
    """``source`` compiled for full matches (or, with ``search``, for
    unanchored searches too); raise :class:`PolicyError` naming ``where``."""
    return Pattern(source, where, subject, timeout, search)


def is_catastrophic(source: str, search: bool = False) -> bool:
    """True when a valid ``re`` pattern needs the timeout for every value."""
    return input_limit(source, search) == 0
