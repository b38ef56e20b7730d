"""The audit writer: one thread, one write connection, group commit, hash chain.

Rules this module keeps:

1. One writer per chain. :class:`Trail` owns the only write connection and an
   exclusive lock (``<database>.lock``) so a second writer fails at once.
   In the gateway, :class:`AuditWriter` runs the Trail in ONE dedicated thread
   that opens, uses and closes the connection.
2. Events are appended in the order ``append`` was called; each gets
   ``seq = previous + 1`` and ``prev_hash = previous hash`` (see
   :mod:`firewall.audit.chain`), across segment files too.
3. Group commit: the thread takes everything queued (up to ``max_batch``),
   writes it in ONE transaction and commits (fsync in ``durable`` mode:
   WAL with ``synchronous=FULL``), then wakes the callers waiting on those
   events in one hop to the trio thread.
4. Backpressure, never loss: at most ``queue_size`` events are queued and not
   yet committed; ``append`` waits for room. Nothing is dropped.
5. Failure is sticky and loud: if a commit fails, that batch is rolled back,
   every pending and later ``committed()``/``append`` raises :class:`AuditError`,
   and the gateway refuses calls rather than forwarding them unaudited.
6. A signed checkpoint covers the head every ``checkpoint_every_rows`` rows or
   ``checkpoint_every_seconds`` (whichever first), on segment rotation and on
   close; it is committed with the batch it closes, then written to the anchor.

Example::

    async with open_audit(AuditSettings(path="audit.db"), instance_id="gw-1") as audit:
        receipt = await audit.append(event)
        await receipt.committed()   # durable: now forward the call
"""

from __future__ import annotations

import fcntl
import heapq
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Final

import trio

from firewall.audit.chain import COLUMNS, GENESIS, HASH, SEQ, Row, event_row
from firewall.audit.checkpoint import Anchor, Checkpoint, load_signer, secret_key
from firewall.audit.events import Event
from firewall.audit.redaction import Redactor
from firewall.audit.settings import AuditSettings
from firewall.audit.store import (
    INDEX_BATCH,
    StoreError,
    chain_files,
    connect_writer,
    create_schema,
    segment_info,
    segment_path,
)
from firewall.log import get_logger

_INSERT: Final = (
    f"INSERT INTO events ({', '.join(f'[{c}]' for c in COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
_INSERT_CHECKPOINT: Final = (
    "INSERT INTO checkpoints (chain, segment, seq, hash, ts_ns, algorithm, key_id, signature) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class AuditError(Exception):
    """The audit trail cannot record events; calls must not be forwarded."""


class Trail:
    """The synchronous appender: the write connection, the chain head, checkpoints.

    Used by the writer thread, and directly by tests, benchmarks and tools that
    write without trio. Not thread-safe: one thread at a time.

    Example::

        with Trail(AuditSettings(path="audit.db"), instance_id="gw-1") as trail:
            trail.append_batch([event1, event2])
    """

    def __init__(self, settings: AuditSettings, instance_id: str,
                 *, clock: Any = time.time_ns) -> None:
        self.settings = settings
        self.instance = instance_id
        self.durable = settings.mode == "durable"
        self._clock = clock
        self.first = settings.database()
        self.first.parent.mkdir(parents=True, exist_ok=True)
        self.log = get_logger(audit=str(self.first), instance=instance_id)
        self._lock_fd = self._lock()
        try:
            self.signer = load_signer(settings)
            redaction = settings.redaction
            self.redactor = Redactor.compile(
                redaction.names, redaction.values,
                secret_key(redaction.key_env, settings.redaction_key(), create=True))
            self.anchor = Anchor(settings.anchor())
            self._open_active()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ---------------------------------------------------------
    def _lock(self) -> int:
        path = self.first.with_name(self.first.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.first}: another mcpwall process is writing this audit "
                             "trail") from None
        return fd

    def _open_active(self) -> None:
        files = chain_files(self.first)
        if not files:
            self._new_segment(1, uuid.uuid4().hex, 1, GENESIS)
            return
        path = files[-1]
        self.conn = connect_writer(path, self.durable)
        info = segment_info(self.conn, path)
        self.path = path
        self.segment = info.number
        self.chain = info.chain
        self.segment_started_ns = info.created_ns
        last = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
                                 ).fetchone()
        self.seq: int = int(last[0]) if last else info.first_seq - 1
        self.head: str = str(last[1]) if last else info.prev_hash
        cp = self.conn.execute("SELECT max(seq) FROM checkpoints").fetchone()[0]
        self.checkpointed = cp if cp is not None else info.first_seq - 1
        self._since_checkpoint = time.monotonic()
        self.log.info("audit_opened", path=str(path), segment=self.segment, seq=self.seq)

    def _new_segment(self, number: int, chain: str, first_seq: int, prev_hash: str) -> None:
        path = segment_path(self.first, number)
        if path.exists():
            raise StoreError(f"{path}: segment {number} already exists; will not overwrite it")
        conn = connect_writer(path, self.durable)
        created = self._clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            create_schema(conn)
            conn.execute(
                "INSERT INTO segment (number, chain, instance, first_seq, prev_hash, created_ns,"
                " format) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (number, chain, self.instance, first_seq, prev_hash, created,
                 "mcpwall-audit/1"))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self.conn, self.path, self.segment, self.chain = conn, path, number, chain
        self.segment_started_ns = created
        self.seq, self.head, self.checkpointed = first_seq - 1, prev_hash, first_seq - 1
        self._since_checkpoint = time.monotonic()
        self.log.info("audit_segment_started", path=str(path), segment=number, first_seq=first_seq)

    # -- appending -------------------------------------------------------
    def rows(self, events: Sequence[Event]) -> list[Row]:
        """Chain ``events`` after the head (does not write; advances nothing)."""
        rows: list[Row] = []
        seq, head, instance, redactor = self.seq, self.head, self.instance, self.redactor
        for event in events:
            seq += 1
            row = event_row(event, seq=seq, instance=instance, prev_hash=head, redactor=redactor)
            head = row[HASH]
            rows.append(row)
        return rows

    def append_batch(self, events: Sequence[Event]) -> int:
        """Append ``events`` in one transaction; return the last seq. Rolls back on error."""
        if not events:
            return self.seq
        return self.append_rows(self.rows(events))

    def append_rows(self, rows: list[Row]) -> int:
        """Append rows built by :meth:`rows` (the bulk path) in one transaction."""
        conn = self.conn
        checkpoint = None
        last = rows[-1]
        if (last[SEQ] - self.checkpointed >= self.settings.checkpoint_every_rows
                or self._checkpoint_overdue()):
            checkpoint = self._sign(last[SEQ], last[HASH])
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute(INDEX_BATCH, (rows[0][SEQ], last[SEQ]))
            if checkpoint is not None:
                self._insert_checkpoint(checkpoint)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.seq, self.head = int(last[SEQ]), str(last[HASH])
        if checkpoint is not None:
            self._anchored(checkpoint)
        self._maybe_rotate()
        return self.seq

    # -- checkpoints -----------------------------------------------------
    def _checkpoint_overdue(self) -> bool:
        return time.monotonic() - self._since_checkpoint >= self.settings.checkpoint_every_seconds

    def checkpoint_due_in(self) -> float | None:
        """Seconds until a time-based checkpoint is due, None if nothing is unsigned."""
        if self.seq <= self.checkpointed:
            return None
        left = self.settings.checkpoint_every_seconds - (time.monotonic() - self._since_checkpoint)
        return max(left, 0.0)

    def _sign(self, seq: int, hash: str) -> Checkpoint:
        return Checkpoint.sign(self.signer, chain=self.chain, segment=self.segment, seq=seq,
                               hash=hash, ts_ns=self._clock())

    def _insert_checkpoint(self, cp: Checkpoint) -> None:
        self.conn.execute(_INSERT_CHECKPOINT, (cp.chain, cp.segment, cp.seq, cp.hash, cp.ts_ns,
                                               cp.algorithm, cp.key_id, cp.signature))

    def _anchored(self, cp: Checkpoint) -> None:
        self.checkpointed = cp.seq
        self._since_checkpoint = time.monotonic()
        self.anchor.append(cp, fsync=self.durable)
        if self.settings.anchor_log:
            self.log.info("audit_checkpoint", chain=cp.chain, segment=cp.segment, seq=cp.seq,
                          hash=cp.hash, key_id=cp.key_id, signature=cp.signature)

    def checkpoint(self) -> Checkpoint | None:
        """Sign the head now if rows are not covered yet (own transaction)."""
        if self.seq <= self.checkpointed:
            return None
        cp = self._sign(self.seq, self.head)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert_checkpoint(cp)
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self._anchored(cp)
        return cp

    # -- segments --------------------------------------------------------
    def _maybe_rotate(self) -> None:
        s = self.settings
        if s.segment_max_bytes > 0:
            pages, size = (self.conn.execute("PRAGMA page_count").fetchone()[0],
                           self.conn.execute("PRAGMA page_size").fetchone()[0])
            if pages * size >= s.segment_max_bytes:
                self.rotate()
                return
        if s.segment_max_age_seconds > 0 and (
                self._clock() - self.segment_started_ns >= s.segment_max_age_seconds * 1e9):
            self.rotate()

    def rotate(self) -> None:
        """Close the active segment (signed) and continue the chain in a new file."""
        if self.seq < self._first_seq_of_active():
            return  # an empty segment: nothing to rotate away from
        self.checkpoint()
        self.conn.close()
        self._new_segment(self.segment + 1, self.chain, self.seq + 1, self.head)

    def _first_seq_of_active(self) -> int:
        return int(self.conn.execute("SELECT first_seq FROM segment").fetchone()[0])

    # -- closing ---------------------------------------------------------
    def close(self) -> None:
        """Sign the head, close the connection, release the lock."""
        if self._lock_fd < 0:
            return
        try:
            self.checkpoint()
            self.conn.close()
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1
            self.log.info("audit_closed", seq=self.seq)

    def __enter__(self) -> Trail:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_CLOSE: Final = object()


class _Receipt:
    """What :meth:`AuditWriter.append` returns."""

    __slots__ = ("_ticket", "_writer")

    def __init__(self, writer: AuditWriter, ticket: int) -> None:
        self._writer = writer
        self._ticket = ticket

    async def committed(self) -> None:
        """Return once the event is committed (at once in ``fast`` mode)."""
        await self._writer._wait(self._ticket)


class AuditWriter:
    """The trio side of the writer thread: the gateway's ``AuditPoint``.

    Create it with :func:`open_audit`. ``append`` may be called from any task
    of the trio run that opened it.
    """

    def __init__(self, settings: AuditSettings, instance_id: str) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.durable = settings.mode == "durable"
        self._queue: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._room = trio.Semaphore(settings.queue_size)
        # (ticket, event) of callers waiting for a commit: a heap, so a batch
        # wakes exactly the callers it committed, not every waiter.
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._waiter_ids = 0
        self._issued = 0       # tickets handed out (one per event)
        self._done = 0         # tickets processed (committed or failed)
        self._ok = 0           # tickets committed
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        self.trail: Trail | None = None

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

    async def flush(self) -> None:
        """Wait until every event appended so far is committed."""
        await self._wait(self._issued, force=True)

    async def aclose(self) -> None:
        """Flush, sign the head, close the database and stop the thread."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._queue.put((-1, _CLOSE))
        await trio.to_thread.run_sync(self._thread.join)
        if self._error is not None:
            raise AuditError("the audit trail failed; see the audit_write_failed log") \
                from self._error

    # -- AuditPoint ------------------------------------------------------
    async def append(self, event: Event) -> _Receipt:
        """Queue one event; waits only while the queue is full."""
        if self._error is not None:
            raise AuditError("the audit trail failed; refusing to record more") from self._error
        if self._closed:
            raise AuditError("the audit trail is closed")
        await self._room.acquire()
        self._issued += 1
        ticket = self._issued
        self._queue.put((ticket, event))
        return _Receipt(self, ticket)

    async def _wait(self, ticket: int, *, force: bool = False) -> None:
        if not self.durable and not force:
            if self._error is not None:
                raise AuditError("the audit trail failed") from self._error
            return
        if self._done < ticket:
            done = trio.Event()
            self._waiter_ids += 1
            heapq.heappush(self._waiters, (ticket, self._waiter_ids, done))
            await done.wait()
        if ticket > self._ok:
            raise AuditError("the audit event was not committed") from self._error

    # -- thread side -----------------------------------------------------
    def _run(self) -> None:
        try:
            self.trail = Trail(self.settings, self.instance_id)
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        trail = self.trail
        q = self._queue
        max_batch = self.settings.max_batch
        closing = False
        while not closing:
            try:
                first = q.get(timeout=trail.checkpoint_due_in())
            except queue.Empty:
                self._guarded(trail.checkpoint)
                continue
            batch = [first]
            while len(batch) < max_batch:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1][1] is _CLOSE:
                closing = True
                batch.pop()
            if batch:
                self._commit(trail, batch)
        try:
            trail.close()
        except Exception as exc:
            if self._error is None:
                self._error = exc
            trail.log.error("audit_close_failed", error=repr(exc))

    def _guarded(self, step: Any) -> None:
        if self._error is not None:
            return
        try:
            step()
        except Exception as exc:
            self._error = exc
            trail = self.trail
            if trail is not None:
                trail.log.error("audit_write_failed", error=repr(exc))

    def _commit(self, trail: Trail, batch: list[tuple[int, Any]]) -> None:
        ok = False
        if self._error is None:
            try:
                trail.append_batch([event for _, event in batch])
                ok = True
            except Exception as exc:
                self._error = exc
                trail.log.error("audit_write_failed", error=repr(exc), events=len(batch))
        token = self._token
        if token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._committed, batch[-1][0], len(batch), ok)

    def _committed(self, last: int, count: int, ok: bool) -> None:
        """Runs in the trio thread: wake the waiters of one batch, free queue room."""
        self._done = last
        if ok:
            self._ok = last
        for _ in range(count):
            self._room.release()
        waiters = self._waiters
        while waiters and waiters[0][0] <= last:
            heapq.heappop(waiters)[2].set()


@asynccontextmanager
async def open_audit(settings: AuditSettings, *, instance_id: str) -> AsyncIterator[AuditWriter]:
    """The audit trail for one gateway process; flushed, signed and closed on exit.

    Example::

        async with open_audit(config.audit, instance_id="gw-1") as audit:
            await serve(audit)
    """
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


