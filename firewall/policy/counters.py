"""Counters: running totals per calendar window, reserved, then kept or given back.

Token buckets (:mod:`firewall.policy.limits`) answer "how fast"; counters
answer "how much this hour/day/month" (calls, or a sum such as an amount of
money taken from the arguments). Rules this module keeps:

1. Windows are calendar-aligned in UTC and never slide: a ``minute`` counter
   starts again at 0 at second 0 of every UTC minute, an ``hour`` one at the
   top of the hour, a ``day`` one at midnight UTC, a ``week`` one on Monday
   00:00 UTC, a ``month`` one on the 1st at 00:00 UTC (:func:`window_bounds`).
   Time is the wall clock (``time.time``), injected so that tests move it.
2. A total is keyed by counter name, scope and scope value (the same key
   space as the buckets, :data:`SEP`) and belongs to the window it was
   added in: a new window reads 0.
3. Two phases. The engine never adds anything: ``decide`` returns a
   :class:`Counted` (a Decision that refuses until settled, so a path that
   forgets to settle fails closed), with the amounts already computed from
   the arguments. The gateway settles it: the ``require_state`` conditions
   read the totals as they are before this call, then every counter of the
   call is reserved at once or none is (a total that would pass its ``max``
   refuses the call, ``limited`` until its window ends). Settling gives a
   :class:`Reservation`.
4. A reservation ends once: :meth:`Reservation.commit` keeps what it added
   (the upstream answered), :meth:`Reservation.rollback` takes it back from
   the window it was added to (the call was refused later, or the upstream
   answered with a JSON-RPC error). One never ended counts as kept: a
   counter errs on the side of counting.
5. Amounts are whole numbers >= 0. ``increment_from`` names a number in the
   arguments (``args.amount``, ``args.order.total``); a missing value, a
   value that is not a number, a negative one or one beyond 2**53 - 1
   refuses the call as invalid arguments; a fraction is rounded up.
6. Where totals live is a :class:`CounterStore`: :class:`MemoryCounters`
   here (sans-IO, synchronous under an async face), or Redis
   (:mod:`firewall.gateway.shared_counters`). The engine keeps its store
   across a policy reload, so totals survive it.

Example::

    store = MemoryCounters(clock=lambda: 1_700_000_000.0)
    spec = CounterSpec("spend", "global", "day")
    reserved = store.reserve([CounterRequest(spec.key(""), "day", 500, 1000, "cap")])
    assert isinstance(reserved, Reservation) and store.value(spec.key(""), "day") == 500
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from firewall.policy.arguments import Check, compile_conditions
from firewall.policy.decision import DENY, INVALID_ARGUMENTS, LIMITED, Decision
from firewall.policy.limits import StoreUnavailable
from firewall.policy.operators import compile_test, describe
from firewall.policy.schema import CalendarWindow, PolicyError, Scope, StateConditions, Test

# Key separator: unit separator, as for buckets (counter names cannot hold it).
SEP: Final = "\x1f"
MAX_AMOUNT: Final = 2**53 - 1
_FIXED: Final = {"minute": 60, "hour": 3600, "day": 86400}


def window_bounds(window: str, now: float) -> tuple[int, int]:
    """``(start, end)`` in whole UTC seconds of the ``window`` holding ``now``.

    >>> window_bounds("hour", 7260.5)
    (7200, 10800)
    """
    t = math.floor(now)
    size = _FIXED.get(window)
    if size is not None:
        start = t - t % size
        return start, start + size
    if window == "week":  # 1970-01-01 was a Thursday: Monday is 3 days before
        days = t // 86400
        start = (days - (days + 3) % 7) * 86400
        return start, start + 7 * 86400
    if window == "month":
        day = datetime.fromtimestamp(t, UTC)
        first = datetime(day.year, day.month, 1, tzinfo=UTC)
        after = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
        return int(first.timestamp()), int(after.timestamp())
    raise ValueError(f"unknown counter window {window!r}")


class CounterSpec(msgspec.Struct, frozen=True):
    """A counter's identity: its name, scope and window (rules sharing it agree)."""

    counter: str
    scope: Scope
    window: CalendarWindow

    @property
    def key_prefix(self) -> str:
        return f"{self.counter}{SEP}{self.scope}{SEP}"

    def key(self, scope_value: str) -> str:
        """The total's key for one scope value (a grant id, a session id...)."""
        return self.key_prefix + scope_value


class CounterUse(msgspec.Struct, frozen=True):
    """One rule's use of a counter: what it adds per call and its ``max``."""

    spec: CounterSpec
    max: int | None
    increment: int
    # The path under the arguments of ``increment_from`` (None: ``increment``).
    increment_from: tuple[str, ...] | None
    limited_reason: str
    source: str = ""  # ``increment_from`` as written, for messages


class StateCheck(msgspec.Struct, frozen=True):
    """A ``require_state`` condition on one counter's total (before this call)."""

    spec: CounterSpec
    check: Check
    message: str


def compile_state_checks(conditions: StateConditions, specs: dict[str, CounterSpec],
                         where: str) -> tuple[StateCheck, ...]:
    """``{counter: condition}``, or tests on ``state.<counter>`` (each refusing
    with its ``reason``), -> checks on totals; an undeclared counter is an error."""
    if isinstance(conditions, list):
        return tuple(_state_test(test, specs, f"{where}[{i}]")
                     for i, test in enumerate(conditions))
    out: list[StateCheck] = []
    for name, spec in conditions.items():
        counter = _declared(specs, name, f"{where}.{name}")
        for check in compile_conditions({"value": spec}, f"{where}.{name}"):
            message = check.message.replace("argument 'value'", f"counter {name!r}", 1)
            out.append(StateCheck(counter, check, message))
    return tuple(out)


def _declared(specs: dict[str, CounterSpec], name: str, where: str) -> CounterSpec:
    counter = specs.get(name)
    if counter is None:
        raise PolicyError(f"{where}: no rule declares counter {name!r} "
                          "(declare it in some rule's \"counters\")")
    return counter


def _state_test(test: Test, specs: dict[str, CounterSpec], where: str) -> StateCheck:
    """One ``{"path": "state.<counter>", "op", "value"}`` test on a total."""
    if not test.path.startswith("state.") or len(test.path) == 6:
        raise PolicyError(f"{where}.path: must be \"state.<counter>\", got {test.path!r}")
    counter = _declared(specs, test.path[6:], f"{where}.path")
    # The total is read into {"value": total}; the operator is the test's own.
    check = compile_test(Test(path="args.value", op=test.op, value=test.value), where)
    return StateCheck(counter, check, test.reason or f"{describe(test)} does not hold")


class CounterRequest(msgspec.Struct, frozen=True):
    """What settling one counter of one call does: add ``amount`` to ``key`` in
    the current ``window``, unless that takes it past ``max``."""

    key: str
    window: str
    amount: int
    max: int | None
    limited_reason: str


class StateRead(msgspec.Struct, frozen=True):
    """A ``require_state`` check to run on the total at ``key`` when settling."""

    key: str
    window: str
    check: Check
    message: str


class Refused(msgspec.Struct, frozen=True):
    """A reservation refused: which request (index) and when its window ends."""

    index: int
    value: int
    retry_after: float


ReservedEntry = tuple[str, int, int]  # (key, window start, amount)


class Reservation:
    """What one call added to its counters; ends once, by commit or rollback."""

    __slots__ = ("entries", "state", "store")

    def __init__(self, store: CounterStore, entries: tuple[ReservedEntry, ...]) -> None:
        self.store = store
        self.entries = entries
        self.state = "open"

    async def commit(self) -> None:
        """Keep what was added (the upstream answered the call)."""
        if self.state == "open":
            self.state = "committed"

    async def rollback(self) -> None:
        """Take back what was added, from the window it was added to."""
        if self.state != "open":
            return
        self.state = "rolled_back"
        await self.store.release(self.entries)

    def __repr__(self) -> str:
        added = [(key.replace(SEP, "/"), amount) for key, _, amount in self.entries]
        return f"Reservation({self.state}, {added})"


class CounterStore:
    """Where totals live. Subclasses implement :meth:`read`, :meth:`reserve_now`
    and :meth:`release`; :meth:`settle` is the same for all."""

    #: "deny" refuses a call when the store fails; "allow" lets it pass uncounted.
    on_error: str = "deny"
    clock: Callable[[], float] = staticmethod(time.time)

    async def read(self, reads: Sequence[tuple[str, str]]) -> list[int]:
        """The totals of ``(key, window)`` pairs in their current windows."""
        raise NotImplementedError

    async def reserve_now(self, requests: Sequence[CounterRequest]) -> Reservation | Refused:
        """Add every request's amount or none (see :class:`Refused`)."""
        raise NotImplementedError

    async def release(self, entries: Sequence[ReservedEntry]) -> None:
        """Take back reserved amounts (each from its own window; gone windows are skipped)."""
        raise NotImplementedError

    def report_failure(self, exc: Exception) -> None:
        """Hook: say that the store failed (the gateway logs it)."""

    async def settle(self, counted: Counted) -> tuple[Decision, Reservation | None]:
        """The final decision on ``counted`` and, when it passes, its reservation."""
        try:
            if counted.reads:
                values = await self.read([(r.key, r.window) for r in counted.reads])
                for read, value in zip(counted.reads, values, strict=True):
                    if not read.check.test({"value": value}):
                        return Decision(DENY, rule=counted.rule, reason=read.message,
                                        dry_run=counted.dry_run), None
            if not counted.requests:
                return counted.allowed, None
            result = await self.reserve_now(counted.requests)
        except (StoreUnavailable, OSError) as exc:
            self.report_failure(exc)
            return counted.store_failed(str(exc), self.on_error == "allow"), None
        if isinstance(result, Refused):
            reason = counted.requests[result.index].limited_reason
            return Decision(LIMITED, rule=counted.rule, reason=reason,
                            retry_after=result.retry_after, dry_run=counted.dry_run), None
        return counted.allowed, result


class MemoryCounters(CounterStore):
    """Totals in this process: ``key -> [window start, total, window end]``.

    Totals of windows that ended are dropped when the table grows.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.state: dict[str, list[int]] = {}
        self._sweep_at = 4096

    def __len__(self) -> int:
        return len(self.state)

    def value(self, key: str, window: str) -> int:
        """The total at ``key`` in the current ``window`` (0 in a new one)."""
        cell = self.state.get(key)
        if cell is None:
            return 0
        start, _ = window_bounds(window, self.clock())
        return cell[1] if cell[0] == start else 0

    async def read(self, reads: Sequence[tuple[str, str]]) -> list[int]:
        return [self.value(key, window) for key, window in reads]

    def reserve(self, requests: Sequence[CounterRequest]) -> Reservation | Refused:
        """:meth:`reserve_now`, synchronously."""
        now = self.clock()
        state = self.state
        plan: list[tuple[CounterRequest, int, int, int]] = []
        for i, req in enumerate(requests):
            start, end = window_bounds(req.window, now)
            cell = state.get(req.key)
            value = cell[1] if cell is not None and cell[0] == start else 0
            if req.max is not None and value + req.amount > req.max:
                return Refused(i, value, max(0.001, math.ceil((end - now) * 1000.0) / 1000.0))
            plan.append((req, start, end, value))
        entries = []
        for req, start, end, value in plan:
            cell = state.get(req.key)
            if cell is None or cell[0] != start:
                state[req.key] = [start, value + req.amount, end]
            else:
                cell[1] += req.amount
            entries.append((req.key, start, req.amount))
        if len(state) >= self._sweep_at:
            self._sweep(now)
        return Reservation(self, tuple(entries))

    async def reserve_now(self, requests: Sequence[CounterRequest]) -> Reservation | Refused:
        return self.reserve(requests)

    def give_back(self, entries: Sequence[ReservedEntry]) -> None:
        """:meth:`release`, synchronously."""
        for key, start, amount in entries:
            cell = self.state.get(key)
            if cell is not None and cell[0] == start:
                cell[1] = max(0, cell[1] - amount)

    async def release(self, entries: Sequence[ReservedEntry]) -> None:
        self.give_back(entries)

    def _sweep(self, now: float) -> None:
        self.state = {k: c for k, c in self.state.items() if c[2] > now}
        self._sweep_at = max(4096, 2 * len(self.state))


class Counted(Decision, frozen=True):
    """A verdict whose counters are not reserved yet.

    As a plain Decision it reads ``limited`` (refused): only :meth:`settle`
    turns it into the verdict, so a path that forgets to settle fails closed.
    """

    allowed: Decision = Decision(DENY)
    requests: tuple[CounterRequest, ...] = ()
    reads: tuple[StateRead, ...] = ()
    store: Any = None

    async def settle(self) -> tuple[Decision, Reservation | None]:
        """Check ``require_state`` and reserve: the decision to enforce, and the
        reservation to commit or roll back once the call's fate is known."""
        store: CounterStore = self.store
        return await store.settle(self)

    def store_failed(self, error: str, allow: bool) -> Decision:
        """The verdict when the store failed: refused, or (``allow``) passed uncounted
        (to the shared buckets still to settle, if the verdict has any)."""
        if allow and type(self.allowed) is not Decision:
            return self.allowed
        if allow:
            return Decision(self.allowed.action, rule=self.rule,
                            reason=f"counter store unavailable ({error}): allowed without "
                                   "counting (limits.on_error = allow)",
                            dry_run=self.dry_run, approval=self.allowed.approval)
        return Decision(DENY, rule=self.rule,
                        reason=f"counter store unavailable ({error}): refused "
                               "(limits.on_error = deny)", dry_run=self.dry_run)

    def but(self, allowed: Decision) -> Counted:
        """The same counters over another allowed decision."""
        return msgspec.structs.replace(self, allowed=allowed)


def counted(allowed: Decision, uses: Sequence[CounterUse], checks: Sequence[StateCheck],
            args: dict[str, Any], values: tuple[str, ...], store: CounterStore
            ) -> Decision:
    """The engine's hook: a :class:`Counted` for ``allowed`` (or the invalid
    arguments refusal when an ``increment_from`` value cannot be counted).

    ``values`` are the scope values indexed as :data:`SCOPE_INDEX`.
    """
    requests = []
    for use in uses:
        amount = use.increment
        if use.increment_from is not None:
            found = amount_of(args, use.increment_from)
            if isinstance(found, str):
                return Decision(INVALID_ARGUMENTS, rule=allowed.rule,
                                reason=f"counter {use.spec.counter!r}: {use.source} {found}",
                                dry_run=allowed.dry_run)
            amount = found
        spec = use.spec
        requests.append(CounterRequest(spec.key_prefix + values[SCOPE_INDEX[spec.scope]],
                                       spec.window, amount, use.max, use.limited_reason))
    reads = tuple(StateRead(c.spec.key_prefix + values[SCOPE_INDEX[c.spec.scope]],
                            c.spec.window, c.check, c.message) for c in checks)
    return Counted(LIMITED, rule=allowed.rule, reason="counters not yet reserved",
                   dry_run=allowed.dry_run, allowed=allowed, requests=tuple(requests),
                   reads=reads, store=store)


SCOPE_INDEX: Final[dict[str, int]] = {"grant": 0, "agent": 1, "session": 2, "server": 3,
                                      "global": 4}


def amount_of(args: dict[str, Any], path: tuple[str, ...]) -> int | str:
    """The whole number at ``path`` in the arguments, or why it cannot be counted."""
    value: Any = args
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return "is missing"
        value = value[part]
    if type(value) is int:
        amount = value
    elif type(value) is float and math.isfinite(value):
        if value < 0:  # before rounding: -0.5 would count as 0
            return "must not be negative"
        amount = math.ceil(value)  # a fraction counts whole: never less than asked
    else:
        return "is not a number"
    if amount < 0:
        return "must not be negative"
    if amount > MAX_AMOUNT:
        return f"is beyond {MAX_AMOUNT}"
    return amount


def parse_increment_from(text: str, where: str) -> tuple[str, ...]:
    """``"args.amount"`` -> ``("amount",)``; anything not under ``args.`` is an error."""
    parts = tuple(text.split("."))
    if len(parts) < 2 or parts[0] != "args" or not all(parts[1:]):
        raise PolicyError(f"{where}.increment_from: expected \"args.<name>\" (a dotted path "
                          f"into the arguments), got {text!r}")
    return parts[1:]


__all__ = [
    "SCOPE_INDEX",
    "SEP",
    "Counted",
    "CounterRequest",
    "CounterSpec",
    "CounterStore",
    "CounterUse",
    "MemoryCounters",
    "Refused",
    "Reservation",
    "StateCheck",
    "StateRead",
    "amount_of",
    "compile_state_checks",
    "counted",
    "parse_increment_from",
    "window_bounds",
]
