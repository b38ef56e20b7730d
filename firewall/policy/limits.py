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

5. Buckets shared by a fleet live in Redis (:class:`SharedLimiter`, whose I/O
   is in :mod:`firewall.gateway.shared_limits`): the same arithmetic as
   :class:`MemoryLimiter`, written once more in Lua (:data:`ACQUIRE_LUA`) and
   run with ``EVALSHA`` (KEYS = bucket keys, ARGV = capacities, rates, expiry,
   now): the script reads every bucket, refills, and writes only if all can
   pay, which Redis runs atomically. Its clock is Redis's own ``TIME``, so
   hosts whose clocks disagree still agree on the buckets. A bucket key expires
   a window after its last debit, when it would be full again anyway.
6. The engine never waits: with a :class:`SharedLimiter`, ``decide`` returns a
   :class:`PendingLimit` (a :class:`Decision` that refuses until settled) and
   the gateway awaits :meth:`PendingLimit.settle`. A pending limit that some
   path forgot to settle therefore fails closed. See docs/policy.md, "Limits".

Example::

    limiter = MemoryLimiter(clock=lambda: 0.0)
    spec = BucketSpec("vm_rate", "grant", capacity=10, window=60.0)
    assert limiter.acquire([(spec.key("grant-1"), spec)]) is None
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec

from firewall.policy.decision import DENY, LIMITED, Decision
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


# -- buckets in Redis ---------------------------------------------------------------

# MemoryLimiter.acquire, in Lua. Numbers cross as "%.17g" text, which round-trips
# a double exactly, so both limiters compute the same floats from the same inputs.
ACQUIRE_LUA: Final = """\
-- mcpwall token buckets: take one token from every bucket, or from none.
-- KEYS[i]: bucket keys. ARGV[1]: '1' takes, '0' only looks. ARGV[2]: now in
-- seconds, or '' for Redis's own clock. For KEYS[i]: ARGV[3i] capacity,
-- ARGV[3i+1] rate (tokens a second), ARGV[3i+2] expiry (ms, one window).
-- Returns nil when the tokens were (or could be) taken, else the seconds until
-- every bucket could pay, as text.
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local wait = 0
local levels = {}
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[3 * i])
  local rate = tonumber(ARGV[3 * i + 1])
  local tokens = capacity
  local cell = redis.call('GET', KEYS[i])
  if cell then
    local level, last = string.match(cell, '^(%S+) (%S+)$')
    tokens = tonumber(level) + (now - tonumber(last)) * rate
    if tokens > capacity then tokens = capacity end
  end
  if tokens < 1 then
    local short = (1 - tokens) / rate
    if short > wait then wait = short end
  end
  levels[i] = tokens
end
if wait > 0 then return string.format('%.17g', wait) end
if ARGV[1] == '1' then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.17g %.17g', levels[i] - 1, now),
               'PX', ARGV[3 * i + 2])
  end
end
return false
"""
ACQUIRE_SHA: Final = hashlib.sha1(ACQUIRE_LUA.encode()).hexdigest()


def script_arguments(requests: Sequence[BucketRequest], prefix: str, debit: bool,
                     now: float | None) -> tuple[list[bytes], list[bytes]]:
    """KEYS and ARGV of :data:`ACQUIRE_LUA` for one call (``now`` None: Redis's clock)."""
    keys = [(prefix + key).encode() for key, _ in requests]
    argv = [b"1" if debit else b"0", b"" if now is None else repr(now).encode()]
    for _, spec in requests:
        argv += (str(spec.capacity).encode(), repr(spec.rate).encode(),
                 str(max(1, math.ceil(spec.window * 1000.0))).encode())
    return keys, argv


def script_wait(reply: object) -> float | None:
    """The script's reply as :meth:`Limiter.acquire` returns it."""
    if reply is None:
        return None
    if isinstance(reply, bytes):
        return float(reply)
    raise ValueError(f"unexpected reply from the rate limit script: {reply!r}")


class StoreUnavailable(Exception):
    """The shared bucket store did not answer (down, slow, refused us)."""


class SharedLimiter:
    """Buckets kept outside the process, shared by every instance using them.

    ``decide`` cannot wait for the store, so the engine hands back a
    :class:`PendingLimit` naming the buckets and the gateway awaits
    :meth:`settle`. Subclasses do the I/O in :meth:`acquire`.
    """

    #: "deny" refuses a call when the store fails; "allow" lets it pass unlimited.
    on_error: str = "deny"

    async def acquire(self, requests: Sequence[BucketRequest], debit: bool = True) -> float | None:
        """As :meth:`Limiter.acquire`; raises :class:`StoreUnavailable`."""
        raise NotImplementedError

    async def settle(self, pending: PendingLimit) -> Decision:
        """The final decision on a pending limit: its verdict, limited, or the failure's."""
        try:
            wait = await self.acquire(pending.requests)
        except StoreUnavailable as exc:
            self.report_failure(exc)
            return pending.store_failed(str(exc), self.on_error == "allow")
        return pending.resolve(wait)

    def report_failure(self, exc: StoreUnavailable) -> None:
        """Hook: say that the store failed (the gateway logs it)."""


def retry_after(seconds: float) -> float:
    """Seconds rounded up to the millisecond: a client that waits this long passes."""
    return math.ceil(seconds * 1000.0) / 1000.0


class PendingLimit(Decision, frozen=True):
    """A verdict whose buckets are in a :class:`SharedLimiter`, not yet paid.

    As a plain Decision it reads ``limited`` (refused): only :meth:`settle`
    turns it into the verdict, so a path that forgets to settle fails closed.
    """

    allowed: Decision = Decision(DENY)
    requests: tuple[BucketRequest, ...] = ()
    limited_reason: str | None = None
    limiter: Any = None

    @classmethod
    def of(cls, allowed: Decision, requests: Sequence[BucketRequest],
           limited_reason: str | None, dry_run: bool, limiter: SharedLimiter) -> PendingLimit:
        """The pending form of ``allowed``, whose buckets ``limiter`` holds.

        ``limited_reason`` and ``dry_run`` are the verdict's, for a refusal.
        """
        return cls(LIMITED, rule=allowed.rule, reason="rate limit not yet checked",
                   dry_run=dry_run, allowed=allowed, requests=tuple(requests),
                   limited_reason=limited_reason, limiter=limiter)

    async def settle(self) -> Decision:
        """Pay the buckets in the store; the decision to enforce and audit."""
        limiter: SharedLimiter = self.limiter
        return await limiter.settle(self)

    def resolve(self, wait: float | None) -> Decision:
        """The verdict once the store answered ``wait`` (None: the tokens were taken)."""
        if wait is None:
            return self.allowed
        return Decision(LIMITED, rule=self.rule, reason=self.limited_reason,
                        retry_after=retry_after(wait), dry_run=self.dry_run)

    def store_failed(self, error: str, allow: bool) -> Decision:
        """The verdict when the store failed: refused, or (``allow``) passed unlimited."""
        if allow:
            return Decision(self.allowed.action, rule=self.rule,
                            reason=f"rate limit store unavailable ({error}): allowed "
                                   "without a limit check (limits.on_error = allow)",
                            dry_run=self.dry_run, approval=self.allowed.approval)
        return Decision(DENY, rule=self.rule,
                        reason=f"rate limit store unavailable ({error}): refused "
                               "(limits.on_error = deny)",
                        dry_run=self.dry_run)


def defer(allowed: Decision, requests: Sequence[BucketRequest], limited_reason: str | None,
          dry_run: bool, limiter: SharedLimiter, debit: bool) -> Decision:
    """The engine's hook for shared buckets: a :class:`PendingLimit` to settle.

    Without ``debit`` (explain) the store is not consulted at all: explain
    stays pure, and says so in its trace.
    """
    if not debit:
        return allowed
    return PendingLimit.of(allowed, requests, limited_reason, dry_run, limiter)


__all__ = ["ACQUIRE_LUA", "ACQUIRE_SHA", "BucketRequest", "BucketSpec", "Limiter",
           "MemoryLimiter", "PendingLimit", "SharedLimiter", "StoreUnavailable", "defer",
           "retry_after", "script_arguments", "script_wait"]
