"""The writer core: the one loop that drives a :class:`~firewall.audit.trail.Trail`.

The gateway's trail is written by a thread of the gateway
(:class:`firewall.audit.writer.AuditWriter`) or by a child process
(:mod:`firewall.audit.process`). Both open a Trail and hand it to
:func:`run` with a :class:`Link`; they differ only in the link: how a batch
reaches the core (a deque under a lock and a wake-up event, or a frame on a
pipe) and how its :class:`Ack` goes back (one hop to the trio thread, or a
frame). Everything between (commit, failure, derived tables, checkpoints,
close) is here, once.

Rules this module keeps:

1. Batches are committed one at a time, in the order the link hands them
   over, each in ONE transaction (:meth:`Trail.append_rows`). A batch's
   :class:`Ack` is sent only after its COMMIT returned (fsync'ed in durable
   mode): it is the receipt of each of its events.
2. Failure is sticky and never silent: the first failure (a batch that cannot
   be built or committed, a derived-table step, a checkpoint) is logged as
   ``audit_write_failed`` and reported to the link at once
   (:meth:`Link.failed`); from then on nothing more is written, and every
   later batch is still acknowledged, as failed. No batch is dropped and none
   is committed after a failure.
3. The derived tables stay off the commit: after each Ack, one catch-up step
   (:meth:`Trail.catch_up`, once enough rows wait) runs while the other side
   wakes the batch's callers and refills. When no batch comes for
   :data:`INDEX_IDLE` seconds, a slice of at most :data:`INDEX_SLICE` rows is
   indexed and a time-based checkpoint signed when due; a slice never starts
   the moment the core falls idle (batches may be a scheduling round away),
   so a batch waits for one slice at most.
4. Every Ack carries the wall time the core worked since the previous Ack
   (the batch, and the steps and idle work before it) and the CPU time the
   given clock counted meanwhile (the writer thread's own time, or the whole
   child process's).
5. Close: when the link says so (:class:`Closed`) or the other side is gone,
   :func:`run` closes the Trail (indexes the rest, signs the head, releases
   the lock); a failure there is logged as ``audit_close_failed`` and is
   returned like any other.

No trio and no threads here: the core blocks in :meth:`Link.receive` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol, TypeVar

from firewall.audit.chain import Row
from firewall.audit.trail import Trail

# Derived tables when idle: at most this many rows per transaction (what a
# batch that arrives meanwhile may wait for), after this many idle seconds.
INDEX_SLICE: Final = 2_000
INDEX_IDLE: Final = 0.02

B = TypeVar("B")


class Closed(Exception):
    """Raised by :meth:`Link.receive`: every batch was handed over; close the trail."""


class Ack(NamedTuple):
    """What the core reports for one batch (rule 4)."""

    ok: bool                     # committed (False: the trail has failed)
    error: BaseException | None  # the sticky failure, if any
    busy: float                  # wall seconds worked since the previous Ack
    cpu: float                   # CPU seconds of the core's clock since the previous Ack


class Link(Protocol[B]):
    """How batches reach the core and acks go back (one per writer)."""

    def receive(self, timeout: float | None) -> B | None:
        """The next batch, waiting up to ``timeout`` seconds (None: for ever);
        None when that time passed. Raises :class:`Closed` to end the loop."""
        ...

    def rows(self, batch: B, trail: Trail) -> list[Row]:
        """The batch's rows, chained after ``trail``'s head; raising fails the trail."""
        ...

    def acknowledge(self, batch: B, ack: Ack) -> bool:
        """Hand ``ack`` back; False when the other side is gone (the core closes)."""
        ...

    def failed(self, error: BaseException) -> None:
        """The trail has just failed (rule 2); called once, from the core's thread."""
        ...


def run(trail: Trail, link: Link[B], cpu_clock: Callable[[], float]) -> BaseException | None:
    """Serve ``link`` until it closes, then close ``trail``; the failure, if any.

    Example::

        error = run(Trail(settings, "gw-1"), link, time.thread_time)
    """
    error = serve(trail, link, cpu_clock)
    try:
        trail.close()
    except Exception as exc:
        trail.log.error("audit_close_failed", error=repr(exc))
        error = error or exc
    return error


def serve(trail: Trail, link: Link[B], cpu_clock: Callable[[], float]) -> BaseException | None:
    """Commit and acknowledge batches until :class:`Closed`; the sticky failure or None."""
    perf = time.perf_counter
    error: BaseException | None = None
    busy = 0.0
    cpu = cpu_clock()
    while True:
        try:
            batch = link.receive(None if error is not None else idle_timeout(trail))
        except Closed:
            return error
        t = perf()
        if batch is None:  # no batch in time (a failed core asks to wait for ever)
            if error is None:
                error = _step(trail, link, idle_step)
                busy += perf() - t
            continue
        if error is None:
            try:
                trail.append_rows(link.rows(batch, trail))
            except Exception as exc:
                error = _failed(trail, link, exc)
        now = cpu_clock()
        if not link.acknowledge(batch, Ack(error is None, error, busy + perf() - t, now - cpu)):
            return error  # the other side is gone: close (and sign) what was committed
        busy, cpu = 0.0, now
        if error is None:
            t = perf()
            error = _step(trail, link, Trail.catch_up)
            busy = perf() - t


def idle_timeout(trail: Trail) -> float | None:
    """How long to wait for a batch before indexing or signing (None: for ever)."""
    due = trail.checkpoint_due_in()
    if trail.unindexed():
        return INDEX_IDLE if due is None else min(due, INDEX_IDLE)
    return due


def idle_step(trail: Trail) -> None:
    """No batch came in time: index one slice, sign the head if it is due."""
    if trail.unindexed():
        trail.index_pending(INDEX_SLICE)
    if trail.checkpoint_due_in() == 0.0:
        trail.checkpoint()


def _step(trail: Trail, link: Link[B],
          step: Callable[[Trail], object]) -> BaseException | None:
    try:
        step(trail)
    except Exception as exc:
        return _failed(trail, link, exc)
    return None


def _failed(trail: Trail, link: Link[B], exc: BaseException) -> BaseException:
    trail.log.error("audit_write_failed", error=repr(exc))
    link.failed(exc)
    return exc
