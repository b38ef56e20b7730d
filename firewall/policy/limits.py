"""Rate limits: token buckets behind a :class:`Limiter` protocol.

Rules this module keeps:

1. A bucket holds at most ``capacity`` tokens and refills continuously at
   ``capacity / window`` tokens a second; a call takes one token.
2. A call takes a token from every bucket it names, or from none: if any
   bucket is short, nothing is debited and the refusal carries ``retry_after``,
   the seconds until every bucket could pay.
3. Buckets are keyed by strings (``counter``, scope, scope value): the same key
   space a Redis implementation would use, so one can replace the in-memory one.
4. Time comes from an injected clock (``time.monotonic`` by default;
   ``trio.current_time`` under ``trio.testing.MockClock``), never from the
   wall clock, so tests and NTP steps cannot move it.

A Redis limiter implements the same :meth:`Limiter.acquire` as one Lua script
run with ``EVALSHA`` (KEYS = bucket keys, ARGV = capacities, rates, now): the
script reads every bucket, refills, and writes only if all can pay, which
Redis runs atomically. See docs/policy.md, "Limits".

Example::

    limiter = MemoryLimiter(clock=lambda: 0.0)
    spec = BucketSpec("vm_rate", "grant", capacity=10, window=60.0)
    assert limiter.acquire([(spec.key("grant-1"), spec)]) is None
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from firewall.policy.schema import Scope

# Key separator: unit separator, which policy counter names do not contain.
SEP = "\x1f"


class BucketSpec(msgspec.Struct, frozen=True):
    """A bucket's shape: ``capacity`` tokens refilled over ``window`` seconds."""

    counter: str
    scope: Scope
    capacity: int
    window: float

    @property
    def rate(self) -> float:
        """Tokens refilled per second."""
        return self.capacity / self.window

    @property
    def key_prefix(self) -> str:
        return f"{self.counter}{SEP}{self.scope}{SEP}"

    def key(self, scope_value: str) -> str:
        """The bucket key for one scope value (a grant id, a session id...)."""
        return self.key_prefix + scope_value


BucketRequest = tuple[str, BucketSpec]


class Limiter(Protocol):
    """Where token buckets live. Implementations must be all-or-nothing."""

    def acquire(self, requests: Sequence[BucketRequest], debit: bool = True) -> float | None:
        """Take one token from each bucket, or none.

        Returns None when the tokens were taken (or, with ``debit=False``,
        could be), else the seconds until all of them could be.
        """
        ...


class MemoryLimiter:
    """In-process token buckets; state is ``key -> [tokens, last_refill_time, window]``.

    Buckets that have been full for a whole window are indistinguishable from
    absent ones and are dropped when the table grows, so idle sessions and
    grants do not accumulate.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # Public so that the engine's fast path can step a bucket without a
        # call; only this class adds or drops buckets.
        self.clock = clock
        self.state: dict[str, list[float]] = {}
        self._sweep_at = 4096

    def __len__(self) -> int:
        return len(self.state)

    def acquire(self, requests: Sequence[BucketRequest], debit: bool = True) -> float | None:
        now = self.clock()
        state = self.state
        if len(requests) == 1:
            return self._acquire_one(requests[0], now, debit)
        wait = 0.0
        levels: list[float] = []
        for key, spec in requests:
            cell = state.get(key)
            if cell is None:
                tokens = float(spec.capacity)
            else:
                tokens = cell[0] + (now - cell[1]) * spec.rate
                if tokens > spec.capacity:
                    tokens = float(spec.capacity)
            if tokens < 1.0:
                short = (1.0 - tokens) / spec.rate
                if short > wait:
                    wait = short
            levels.append(tokens)
        if wait > 0.0:
            return wait
        if debit:
            for (key, spec), tokens in zip(requests, levels, strict=True):
                cell = state.get(key)
                if cell is None:
                    state[key] = [tokens - 1.0, now, spec.window]
                else:
                    cell[0] = tokens - 1.0
                    cell[1] = now
            if len(state) >= self._sweep_at:
                self._sweep(now)
        return None

    def _acquire_one(self, request: BucketRequest, now: float, debit: bool) -> float | None:
        # The common case, one bucket, without the all-or-nothing bookkeeping.
        key, spec = request
        cell = self.state.get(key)
        if cell is None:
            if debit:
                self.state[key] = [spec.capacity - 1.0, now, spec.window]
                if len(self.state) >= self._sweep_at:
                    self._sweep(now)
            return None
        tokens = cell[0] + (now - cell[1]) * spec.rate
        if tokens > spec.capacity:
            tokens = float(spec.capacity)
        if tokens < 1.0:
            return (1.0 - tokens) / spec.rate
        if debit:
            cell[0] = tokens - 1.0
            cell[1] = now
        return None

    def take_one(self, key: str, capacity: float, rate: float, window: float) -> float | None:
        """:meth:`acquire` of one bucket, shape unpacked: the engine's fast path.

        Same arithmetic as ``acquire([(key, spec)])`` with ``capacity``,
        ``rate`` and ``window`` taken from ``spec``.
        """
        now = self.clock()
        state = self.state
        cell = state.get(key)
        if cell is None:
            state[key] = [capacity - 1.0, now, window]
            if len(state) >= self._sweep_at:
                self._sweep(now)
            return None
        tokens = cell[0] + (now - cell[1]) * rate
        if tokens > capacity:
            tokens = capacity
        if tokens < 1.0:
            return (1.0 - tokens) / rate
        cell[0] = tokens - 1.0
        cell[1] = now
        return None

    def tokens(self, key: str, spec: BucketSpec) -> float:
        """The tokens a bucket holds now (for explain and tests)."""
        cell = self.state.get(key)
        if cell is None:
            return float(spec.capacity)
        return min(float(spec.capacity), cell[0] + (self.clock() - cell[1]) * spec.rate)

    def _sweep(self, now: float) -> None:
        # A bucket untouched for a whole window is full again: the same as absent.
        self.state = {k: c for k, c in self.state.items() if now - c[1] < c[2]}
        self._sweep_at = max(4096, 2 * len(self.state))
