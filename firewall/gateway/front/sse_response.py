"""The event streams mcpwall writes to its clients: one writer for every endpoint.

Whatever feeds it (an upstream's event stream, read through the mediator; a
session's replay buffer; a call held for approval), what reaches the client
on a ``text/event-stream`` response is written by :class:`SseResponse`.
Rules it keeps:

1. The head is the status, :data:`sse.SSE_HEADERS` and the endpoint's own
   headers, written once: a response a held call started already is
   continued, never started again. ``prime`` writes a keepalive comment at
   once (the head and a first byte reach the client, which then knows that
   mcpwall is there); ``flush=False`` lets the head wait for the first body
   bytes, which are usually at hand, and :meth:`SseResponse.relay` flushes it
   before it waits for anything.
2. Silences longer than ``keepalive`` seconds are filled with a comment
   (``: keepalive``), so that idle streams and the proxies between stay open
   through long tool calls.
3. What a relay finds ready goes out in one write; what is left when its
   source ends goes out with the end of the response (one write for the usual
   answer: its event, then the end). Only waits for the source are bounded
   (by the keepalive and the deadline); blocks already there are written
   without one.
4. Blocks are written as the source encoded them: event ids (the session's
   own, for resumption, or the upstream's, unchanged), event types, ``retry``
   and priming events pass through as they are.
5. Writes never overlap: pushed events (:meth:`SseResponse.send`) and
   keepalives (:meth:`SseResponse.keep_open`) take turns under a lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import trio

from firewall.gateway.http.exchange import Exchange
from firewall.protocol import sse


class EventSource(Protocol):
    """Where a relayed stream's event blocks come from (pull mode)."""

    async def take(self, out: list[bytes]) -> None:
        """Append the encoded event blocks ready now to ``out``; no waiting for I/O."""

    def at_end(self) -> bool:
        """True when nothing more will come (known without waiting)."""

    async def receive(self) -> None:
        """Wait until more may be ready (or the end); cancel-safe."""


class SseResponse:
    """One ``text/event-stream`` response to a client.

    Example (pull mode)::

        out = SseResponse(ex, keepalive=15)
        await out.open(headers, flush=False)
        await out.relay(source, deadline)
        await out.end()
    """

    __slots__ = ("_writing", "ex", "flushed", "keepalive", "last_write", "pending")

    def __init__(self, ex: Exchange, keepalive: float) -> None:
        self.ex = ex
        self.keepalive = keepalive
        self.last_write = trio.current_time()
        # A stream a held call started has its head (and a comment) out already.
        self.flushed = ex.started
        self.pending: list[bytes] = []  # read, not written yet: goes with the next write
        self._writing: trio.Lock | None = None

    async def open(self, headers: Iterable[tuple[str, str]] = (), *, status: int = 200,
                   prime: bool = False, flush: bool = True) -> None:
        """Start the response (rule 1), unless it was started already."""
        ex = self.ex
        if ex.started:
            return
        await ex.start(status, [*sse.SSE_HEADERS, *headers], flush=flush)
        self.flushed = flush
        if prime:
            await ex.write(sse.COMMENT_KEEPALIVE)
            self.last_write = trio.current_time()

    async def relay(self, source: EventSource, deadline: float | None = None) -> bool:
        """Write what ``source`` gives until it ends; True if ``deadline`` came first.

        The blocks that end the source stay in :attr:`pending`, for :meth:`end`.
        """
        ex = self.ex
        out = self.pending
        while True:
            await source.take(out)
            if source.at_end():
                return False
            if out:
                await ex.write(b"".join(out))
                out.clear()
                self.last_write = trio.current_time()
            elif not self.flushed:
                await ex.flush()  # the head, before a wait of unknown length
            self.flushed = True
            wake = self.last_write + self.keepalive
            if deadline is not None and deadline < wake:
                wake = deadline
            with trio.move_on_at(wake) as waited:
                await source.receive()
            if waited.cancelled_caught:
                if deadline is not None and trio.current_time() >= deadline:
                    return True
                out.append(sse.COMMENT_KEEPALIVE)

    async def send(self, block: bytes) -> None:
        """Write one encoded block now (push mode; concurrent writers take turns)."""
        if self._writing is None:
            self._writing = trio.Lock()
        async with self._writing:
            await self.ex.write(block)
            self.last_write = trio.current_time()

    async def keep_open(self) -> None:
        """Fill the silences of a pushed stream with keepalive comments, until cancelled."""
        while True:
            await trio.sleep_until(self.last_write + self.keepalive)
            if trio.current_time() >= self.last_write + self.keepalive:
                await self.send(sse.COMMENT_KEEPALIVE)

    async def end(self, last: bytes = b"") -> None:
        """End the response; what is pending and ``last`` go out with the end."""
        if self.pending:
            last = b"".join([*self.pending, last])
            self.pending.clear()
        await self.ex.write_last(last)


async def end_with(ex: Exchange, message: bytes) -> None:
    """End a started stream (a held call's) with ``message`` as its last event."""
    await ex.write_last(sse.encode_event(message))
