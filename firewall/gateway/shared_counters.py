"""Counters shared by a fleet: totals per calendar window in Redis.

The same Redis as the shared token buckets (the ``[limits]`` table, over the
bucket limiter's connections, timeout and ``on_error``): with ``backend =
"redis"``, "1000 a day" means 1000 for the fleet, not per instance.

Rules this module keeps:

1. One key per total and window: ``<key_prefix>counter<SEP><counter><SEP>
   <scope><SEP><value><SEP><window start>``, so a new window is a new key
   (it reads 0) and an old one expires by itself a minute after its window
   ends (``PEXPIRE`` with the time left, so Redis's own clock does not
   matter). Window starts come from this host's clock (UTC, calendar-aligned:
   :func:`firewall.policy.counters.window_bounds`).
2. A reservation is one ``EVALSHA`` of :data:`RESERVE_LUA`: it reads every
   total of the call, and adds every amount only if none would pass its
   ``max``; Redis runs it atomically, so two instances can never both take
   the last unit. ``require_state`` reads are one ``MGET`` before it (not
   atomic with it: a condition sees a total as it was a moment before).
3. A rollback is ``DECRBY`` on the reservation's own window key, only if that
   key still exists (:data:`RELEASE_LUA`): a window that ended is left alone.
4. Failures are the buckets' (:class:`~firewall.policy.limits.StoreUnavailable`,
   ``limits.on_error``, ``rate_limit_store_failed`` logged at most once a
   second). A rollback that fails leaves the total counted (logged).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Final

from firewall.gateway.shared_limits import RedisLimiter
from firewall.policy.counters import (
    SEP,
    CounterRequest,
    CounterStore,
    Refused,
    Reservation,
    ReservedEntry,
    window_bounds,
)
from firewall.policy.limits import StoreUnavailable
from firewall.protocol.resp import Reply, RespError

# Seconds an old window's key outlives its window (hosts' clocks may differ).
GRACE_SECONDS: Final = 60

RESERVE_LUA: Final = """\
-- mcpwall counters: add every amount, or none if one would pass its max.
-- KEYS[i]: a total's key in its current window. For KEYS[i]: ARGV[3i-2]
-- amount, ARGV[3i-1] max ('' for none), ARGV[3i] time to live (ms).
-- Returns 0 when added, else {i, total} of the first total that refused.
for i = 1, #KEYS do
  local max = ARGV[3 * i - 1]
  if max ~= '' then
    local total = tonumber(redis.call('GET', KEYS[i]) or '0')
    if total + tonumber(ARGV[3 * i - 2]) > tonumber(max) then return {i, total} end
  end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
end
return 0
"""
RESERVE_SHA: Final = hashlib.sha1(RESERVE_LUA.encode()).hexdigest()

RELEASE_LUA: Final = """\
-- mcpwall counters: take back reserved amounts (ARGV[i] from KEYS[i]) from
-- windows still kept; a key gone with its window is left alone.
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('DECRBY', KEYS[i], ARGV[i]) end
end
return 0
"""
RELEASE_SHA: Final = hashlib.sha1(RELEASE_LUA.encode()).hexdigest()


class RedisCounters(CounterStore):
    """Counter totals in the Redis of ``limiter`` (its pool, timeout, on_error)."""

    def __init__(self, limiter: RedisLimiter, clock: Callable[[], float] = time.time) -> None:
        self.limiter = limiter
        self.clock = clock
        self.on_error = limiter.on_error
        self.prefix = f"{limiter.key_prefix}counter{SEP}"

    def _key(self, key: str, start: int) -> str:
        return f"{self.prefix}{key}{SEP}{start}"

    async def read(self, reads: Sequence[tuple[str, str]]) -> list[int]:
        now = self.clock()
        keys = [self._key(key, window_bounds(window, now)[0]) for key, window in reads]
        reply = await self.limiter.run(b"MGET", *keys)
        if not isinstance(reply, list) or len(reply) != len(keys):
            raise self._refused(reply)
        return [int(v) if isinstance(v, bytes) else 0 for v in reply]

    async def reserve_now(self, requests: Sequence[CounterRequest]) -> Reservation | Refused:
        now = self.clock()
        keys: list[str] = []
        argv: list[bytes] = []
        entries: list[ReservedEntry] = []
        ends: list[int] = []
        for req in requests:
            start, end = window_bounds(req.window, now)
            keys.append(self._key(req.key, start))
            argv += (str(req.amount).encode(), b"" if req.max is None else str(req.max).encode(),
                     str(max(1, math.ceil((end + GRACE_SECONDS - now) * 1000))).encode())
            entries.append((req.key, start, req.amount))
            ends.append(end)
        reply = await self._script(RESERVE_SHA, RESERVE_LUA, keys, argv)
        if reply == 0:
            return Reservation(self, tuple(entries))
        if isinstance(reply, list) and len(reply) == 2 and all(isinstance(v, int) for v in reply):
            index, total = int(reply[0]) - 1, int(reply[1])  # type: ignore[arg-type]
            if 0 <= index < len(requests):
                wait = max(0.001, round(ends[index] - now, 3))
                return Refused(index, total, wait)
        raise self._refused(reply)

    async def release(self, entries: Sequence[ReservedEntry]) -> None:
        keys = [self._key(key, start) for key, start, _ in entries]
        try:
            reply = await self._script(RELEASE_SHA, RELEASE_LUA, keys,
                                       [str(amount).encode() for _, _, amount in entries])
            if reply != 0:
                raise self._refused(reply)
        except StoreUnavailable as exc:  # the total stays counted: the safe side
            self.limiter.report_failure(exc)

    def report_failure(self, exc: Exception) -> None:
        self.limiter.report_failure(exc if isinstance(exc, StoreUnavailable)
                                    else StoreUnavailable(str(exc)))

    async def _script(self, sha: str, source: str, keys: list[str], argv: list[bytes]
                      ) -> Reply:
        reply = await self.limiter.run(b"EVALSHA", sha, len(keys), *keys, *argv)
        if isinstance(reply, RespError) and reply.kind == "NOSCRIPT":
            reply = await self.limiter.run(b"EVAL", source, len(keys), *keys, *argv)
        if isinstance(reply, RespError):
            raise self._refused(reply)
        return reply

    def _refused(self, reply: Reply) -> StoreUnavailable:
        if isinstance(reply, RespError):
            return StoreUnavailable(f"Redis refused the counter script: {reply.message}")
        return StoreUnavailable(f"unexpected reply from the counter script: {reply!r}")


__all__ = ["RELEASE_LUA", "RESERVE_LUA", "RedisCounters"]
