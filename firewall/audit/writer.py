"""The audit writer: the trio side of both writers, and the writer thread.

The trail is written where its :class:`~firewall.audit.trail.Trail` lives: a
child process (:mod:`firewall.audit.process`, the default; ``open_audit``
starts it) or, with ``writer = "thread"``, ONE dedicated thread of the gateway
run by :class:`AuditWriter`. Either runs the writer core
(:func:`firewall.audit.core.run`): the two differ only in how batches and
acks cross (here: a deque under a lock and one hop back to the trio thread).

Rules this module keeps:

1. One writer per chain: the Trail (its lock, its only write connection) is
   opened, used and closed in ONE place, the writer thread or the child.
2. Events are appended in the order ``append`` was called and committed in
   that order (the core takes batches oldest first). The writer thread's
   ``append`` builds the row (redaction, encoding, hash) in the caller's
   thread: the chain cursor lives on this side, and an event that cannot be
   encoded fails that ``append`` and leaves the chain as it was.
3. Group commit: appends fill a batch (at most ``max_batch`` events); the core
   takes the oldest batch as soon as it is free and commits it in ONE
   transaction; its Ack wakes that batch's callers with one hop to the trio
   thread. A batch (:class:`BatchReceipt`) is the receipt of each of its events.
4. Backpressure, never loss: at most ``queue_size`` events are queued and not
   yet committed (:class:`QueueRoom`); ``append`` waits for room.
5. Failure is sticky and loud: once the core reports a failure, every pending
   and later ``committed()``/``append`` raises :class:`AuditError`, and the
   gateway refuses calls rather than forwarding them unaudited.
6. Close drains: ``aclose`` lets the core commit every queued batch, sign the
   head and close the Trail before it returns.

Example::

    async with open_audit(AuditSettings(path="audit.db"), instance_id="gw-1") as audit:
        receipt = await audit.append(event)
        await receipt.committed()   # durable: now forward the call
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import msgspec
import trio

from firewall.audit import core
from firewall.audit.chain import GENESIS, HASH, Row, event_row
from firewall.audit.events import Event
from firewall.audit.redaction import Redactor
from firewall.audit.trail import Trail
from firewall.settings.audit import AuditSettings

if TYPE_CHECKING:
    from firewall.audit.process import ProcessWriter

T = TypeVar("T")


class AuditError(Exception):
    """The audit trail cannot record events; calls must not be forwarded."""


class QueueRoom:
    """Room for events appended and not committed yet: at most ``size``.

    An append that finds no room waits; freed room goes to the waiting
    appends first, in the order they came (FIFO, no barging). Both writers
    (thread and process) count their queue with it.
    """

    __slots__ = ("lot", "pending", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending = 0  # events appended and not committed (or failed) yet
        self.lot = trio.lowlevel.ParkingLot()

    async def take(self) -> None:
        """Room for one event: at once, or once :meth:`give` hands it over."""
        if self.pending >= self.size or self.lot:
            await self.lot.park()  # give() counted us in
        else:
            self.pending += 1

    def give(self, count: int) -> None:
        """``count`` events are done (committed, failed or never queued)."""
        self.pending -= count
        lot = self.lot
        if lot:
            free = self.size - self.pending
            if free > 0:
                self.pending += len(lot.unpark(count=free))


class _Settling(Protocol):
    """What a receipt needs of its writer (thread or process)."""

    durable: bool
    _error: BaseException | None


class BatchReceipt(Generic[T]):
    """Events handed over to the writer together, committed in one transaction.

    The batch itself is the :class:`firewall.audit.events.Receipt` of each of
    its events: ``append`` allocates nothing per event, and one commit wakes
    its callers with one ``unpark_all``. ``items`` holds what the writer
    carries per event: rows for the thread, encoded events for the process.
    """

    __slots__ = ("done", "items", "lot", "ok", "writer")

    def __init__(self, writer: _Settling) -> None:
        self.writer = writer
        self.items: list[T] = []
        self.lot = trio.lowlevel.ParkingLot()
        self.done = False  # committed or failed (set in the trio thread)
        self.ok = False

    async def committed(self) -> None:
        """Return once the event is committed (``durable``); a checkpoint in ``fast`` mode.

        Raises :class:`AuditError` if the writer failed.
        """
        writer = self.writer
        if self.done or not writer.durable:
            await trio.lowlevel.checkpoint()
        else:
            await self.lot.park()
        if not self.ok and (self.done or writer._error is not None):
            raise AuditError("the audit event was not committed") from writer._error

    async def _settled(self) -> None:
        """Wait until the batch is committed or failed, whatever the mode."""
        if self.done:
            await trio.lowlevel.checkpoint()
        else:
            await self.lot.park()


class WriterStats(msgspec.Struct, frozen=True):
    """What the writer (thread or process) has done so far (for metrics and benchmarks)."""

    events: int
    batches: int
    # Wall time the writer core worked: batches (building rows where the core
    # does, inserting, committing) and the derived tables and checkpoints
    # between them (firewall.audit.core, rule 4).
    busy_seconds: float
    cpu_seconds: float = 0.0  # the core's CPU time meanwhile (thread, or whole child)


class WriterSide(Generic[T]):
    """What the trio side of both writers (thread and process) shares: the
    queue room, the batches not yet handed over, the failure and close state,
    ``flush``, settling a batch, the counters behind ``stats`` and the checks
    every ``append`` starts with."""

    def __init__(self, settings: AuditSettings, instance_id: str) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.durable = settings.mode == "durable"
        # Batches not yet handed over, oldest first; ``_open`` is the last of
        # them while it still takes events; ``_last`` the newest batch (flush
        # waits for it).
        self._batches: collections.deque[BatchReceipt[T]] = collections.deque()
        self._open: BatchReceipt[T] | None = None
        self._last: BatchReceipt[T] | None = None
        self._max_batch = settings.max_batch
        self._room = QueueRoom(settings.queue_size)
        self._error: BaseException | None = None
        self._closed = False
        self._closing = False
        self._events = 0
        self._batch_count = 0
        self._busy = 0.0
        self._cpu = 0.0

    async def _admit(self) -> None:
        """Room in the queue for one event, or :class:`AuditError` (failed or closed).

        A cancellation point, but a schedule point only when it waits: the
        ``committed()`` that follows is the caller's schedule point.
        """
        if self._error is not None:
            raise AuditError("the audit trail failed; refusing to record more") from self._error
        if self._closed:
            raise AuditError("the audit trail is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._room.take()
        if self._error is not None:  # it failed while this append waited for room
            self._room.give(1)
            raise AuditError("the audit trail failed; refusing to record more") from self._error

    def _add(self, item: T) -> BatchReceipt[T]:
        """Put one admitted event's item in the open batch (a new one when it is full)."""
        batch = self._open
        if batch is None or len(batch.items) >= self._max_batch:
            batch = self._open = self._last = BatchReceipt(self)
            self._batches.append(batch)
        batch.items.append(item)
        return batch

    def _take(self) -> BatchReceipt[T]:
        """Hand over the oldest batch (closing it if it still takes events)."""
        batch = self._batches.popleft()
        if batch is self._open:
            self._open = None
        return batch

    def _settle(self, batch: BatchReceipt[T], ok: bool,
                busy: float = 0.0, cpu: float = 0.0) -> None:
        """In the trio thread: count the batch, wake its callers, free its room."""
        count = len(batch.items)
        if ok:
            self._events += count
            self._batch_count += 1
        self._busy += busy
        self._cpu += cpu
        batch.done = True
        batch.ok = ok
        batch.lot.unpark_all()
        self._room.give(count)

    def _raise_failure(self, log_event: str) -> None:
        """After close: raise :class:`AuditError` if the trail failed on the way."""
        if self._error is not None:
            raise AuditError(f"the audit trail failed; see the {log_event} log") \
                from self._error

    async def flush(self) -> None:
        """Wait until every event appended so far is committed."""
        last = self._last
        if last is not None:
            await last._settled()
        if self._error is not None:
            raise AuditError("the audit trail failed") from self._error

    @property
    def queue_depth(self) -> int:
        """Events appended and not committed yet (the ``mcpwall_audit_queue_depth`` gauge)."""
        return self._room.pending

    def stats(self) -> WriterStats:
        """Events and batches committed so far, and the writer's busy and CPU time."""
        return WriterStats(self._events, self._batch_count, self._busy, self._cpu)


class AuditWriter(WriterSide[Row]):
    """The trio side of the writer thread: the gateway's ``AuditPoint``.

    Create it with :func:`open_audit`. ``append`` may be called from any task
    of the trio run that opened it.

    ``append`` builds the event's row here, in the trio thread (redaction,
    encoding, hash: the chain cursor ``_seq``/``_head`` lives on this side),
    so the writer thread only binds, inserts and commits, which is mostly
    SQLite and fsync time without the GIL, and an event that cannot be
    encoded fails its own ``append`` instead of the trail.

    Hand-over (the only state both threads touch, always under ``_lock``):
    ``_batches`` and ``_open`` (see :class:`WriterSide`), ``_idle`` and
    ``_closing``. The writer thread runs the core with a :class:`_ThreadLink`,
    which takes the oldest batch, so appends never wait for a commit unless
    the queue is full.
    """

    def __init__(self, settings: AuditSettings, instance_id: str) -> None:
        super().__init__(settings, instance_id)  # _closing is set under _lock here
        self._lock = threading.Lock()
        self._idle = False                 # the thread waits for work (under _lock)
        self._wake = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.trail: Trail | None = None
        self._seq = 0                      # the chain cursor: last seq handed out
        self._head = GENESIS               # and its hash
        self._redactor: Redactor | None = None

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        """Start the writer thread; it opens the database. Raises if that fails."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name="mcpwall-audit-writer",
                                        daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(self._started.wait)
        if self._error is not None:
            await trio.to_thread.run_sync(self._thread.join)
            raise self._error
        trail = self.trail
        assert trail is not None
        self._seq, self._head, self._redactor = trail.seq, trail.head, trail.redactor

    async def aclose(self) -> None:
        """Flush, sign the head, close the database and stop the thread."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        with self._lock:
            self._closing = True
        self._wake.set()
        await trio.to_thread.run_sync(self._thread.join)
        self._raise_failure("audit_write_failed")

    # -- AuditPoint ------------------------------------------------------
    async def append(self, event: Event) -> BatchReceipt[Row]:
        """Queue one event; waits only while the queue is full (see ``_admit``)."""
        await self._admit()
        seq = self._seq + 1
        try:
            row = event_row(event, seq=seq, instance=self.instance_id, prev_hash=self._head,
                            redactor=self._redactor)
        except BaseException:
            self._room.give(1)
            raise
        self._head = row[HASH]
        self._seq = seq
        with self._lock:
            batch = self._add(row)
            idle = self._idle
            self._idle = False  # one wake-up per idle spell, not one per append
        if idle:
            self._wake.set()
        return batch

    # -- the writer thread -------------------------------------------------
    def _run(self) -> None:
        try:
            self.trail = Trail(self.settings, self.instance_id)
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        token = self._token
        assert token is not None
        error = core.run(self.trail, _ThreadLink(self, token), time.thread_time)
        if self._error is None:
            self._error = error  # a failure to close (a failure to write is set already)


class _ThreadLink:
    """The writer thread's :class:`firewall.audit.core.Link`: batches from the
    writer's deque (under its lock), acks back with one hop to the trio thread."""

    __slots__ = ("token", "writer")

    def __init__(self, writer: AuditWriter, token: trio.lowlevel.TrioToken) -> None:
        self.writer = writer
        self.token = token

    def receive(self, timeout: float | None) -> BatchReceipt[Row] | None:
        writer = self.writer
        while True:
            with writer._lock:
                writer._idle = False
                if writer._batches:
                    return writer._take()
                if writer._closing:
                    raise core.Closed
                writer._idle = True
                writer._wake.clear()
            if not writer._wake.wait(timeout):
                return None

    def rows(self, batch: BatchReceipt[Row], trail: Trail) -> list[Row]:
        return batch.items  # built (and chained) by append

    def acknowledge(self, batch: BatchReceipt[Row], ack: core.Ack) -> bool:
        with suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self.writer._settle, batch, ack.ok, ack.busy, ack.cpu)
        return True

    def failed(self, error: BaseException) -> None:
        # Set here, in the writer thread, so appends refuse at once (rule 5).
        self.writer._error = error


@asynccontextmanager
async def open_audit(settings: AuditSettings, *,
                     instance_id: str) -> AsyncIterator[AuditWriter | ProcessWriter]:
    """The audit trail for one gateway process; flushed, signed and closed on exit.

    ``settings.writer`` says who writes: a child process
    (:class:`firewall.audit.process.ProcessWriter`, the default) or a thread
    (:class:`AuditWriter`).

    Example::

        async with open_audit(config.audit, instance_id="gw-1") as audit:
            await serve(audit)
    """
    writer: AuditWriter | ProcessWriter
    if settings.writer != "thread":  # "process", or "auto" outside `wrap`
        from firewall.audit.process import ProcessWriter  # it imports this module

        writer = ProcessWriter(settings, instance_id)
    else:
        writer = AuditWriter(settings, instance_id)
    await writer.start()
    try:
        yield writer
    finally:
        with trio.CancelScope(shield=True):
            await writer.aclose()


def default_instance_id() -> str:
    """A readable id for this process: host name and pid."""
    return f"{os.uname().nodename}:{os.getpid()}"


