"""The trail: the synchronous appender that owns a chain's write connection.

:class:`Trail` is what every writer drives: the writer core
(:mod:`firewall.audit.core`, in the gateway's writer process or writer
thread) and, directly, tests, benchmarks and tools that write without trio.

Rules this module keeps:

1. One writer per chain: a Trail holds the only write connection and an
   exclusive lock (``<database>.lock``), so a second writer fails (after
   waiting up to ``_LOCK_WAIT`` seconds for one that is closing).
2. Rows continue the chain: each gets ``seq = previous + 1`` and ``prev_hash
   = previous hash`` (see :mod:`firewall.audit.chain`), across segment files
   too. The head (``seq``, ``head``) moves only after a COMMIT returned; a
   failed transaction is rolled back and leaves the head as it was.
3. One batch, one transaction: :meth:`Trail.append_rows` inserts a batch
   (multi-row INSERTs) and commits it once (fsync in ``durable`` mode: WAL
   with ``synchronous=FULL``). The derived tables (:mod:`firewall.audit.store`,
   rule 3) join that commit only once they lag by ``fts_max_lag`` rows;
   otherwise they are filled in their own, unsynced transactions
   (:meth:`Trail.index_pending`, :meth:`Trail.catch_up`).
4. A signed checkpoint covers the head every ``checkpoint_every_rows`` rows or
   ``checkpoint_every_seconds`` (whichever first), on segment rotation and on
   close; it is committed with the batch it closes, then written to the anchor.
5. Rotation (``segment_max_bytes``, ``segment_max_age_seconds``) indexes and
   signs the active file, then continues the chain in the next segment.
6. Not thread-safe: one thread at a time. Only the :class:`WalCopier` thread
   beside it touches the file, on a connection of its own, and it never fails
   the trail.

Example::

    with Trail(AuditSettings(path="audit.db"), instance_id="gw-1") as trail:
        trail.append_batch([event1, event2])
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from firewall.audit.chain import COLUMNS, GENESIS, HASH, SEQ, Row, chain_rows
from firewall.audit.checkpoint import Anchor, Checkpoint, load_signer, secret_key
from firewall.audit.events import Event
from firewall.audit.redaction import Redactor
from firewall.audit.store import (
    StoreError,
    add_meta_columns,
    adopt_progress,
    chain_files,
    connect_writer,
    create_schema,
    has_derived,
    index_range,
    segment_info,
    segment_path,
)
from firewall.log import get_logger
from firewall.settings.audit import AuditSettings

_INSERT: Final = (
    f"INSERT INTO events ({', '.join(f'[{c}]' for c in COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
# Rows per multi-row INSERT: one statement binds many rows and runs in ONE
# sqlite3_step, so the writer thread gives up and takes back the GIL once per
# chunk instead of once per row (executemany steps per row; with the trio
# thread busy, every re-take of the GIL waits for it).
_CHUNK: Final = 256
_ROW_VALUES: Final = f"({', '.join('?' for _ in COLUMNS)})"


def _insert_many(count: int) -> str:
    """The INSERT statement for ``count`` rows (bound flat, row after row)."""
    return _INSERT + ", " + ", ".join([_ROW_VALUES] * (count - 1)) if count > 1 else _INSERT


# One statement per power of two up to _CHUNK, so any batch is inserted with
# at most log2(_CHUNK) + 1 distinct statements (sqlite3 caches them).
_INSERTS: Final = {n: _insert_many(n) for n in (1 << k for k in range(_CHUNK.bit_length()))}


_flat: Final = itertools.chain.from_iterable


def _insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert ``rows`` in multi-row statements of at most :data:`_CHUNK` rows."""
    i, total = 0, len(rows)
    while i < total:
        n = _CHUNK if total - i >= _CHUNK else 1 << ((total - i).bit_length() - 1)
        # chain.from_iterable flattens in C: half the time of a comprehension.
        conn.execute(_INSERTS[n], [*_flat(rows[i:i + n])])
        i += n



# Under load: once this many rows wait, a catch-up step of this many rows
# follows the commit (its callers are already woken). Sorted bulk inserts cost
# less per row the more rows share a step (rows of one session share a leaf
# page, rewritten and checkpointed once per step): on a 1M-row file, 6.0 us of
# CPU per event in steps of 8,192, 5.2 in steps of 16,384, 4.8 in steps of
# 32,768. The step is also how long the next batch may wait for it, and about
# the most rows a reader scans in the tail (see firewall.audit.store, rule 3).
CATCH_UP_ROWS: Final = 16_384

# Rows committed (appended or indexed) between two kicks of the WAL copier.
WAL_COPY_ROWS: Final = 4_096

# Seconds to wait for the lock held by a writer that is closing (see _lock).
_LOCK_WAIT: Final = 3.0

_INSERT_CHECKPOINT: Final = (
    "INSERT INTO checkpoints (chain, segment, seq, hash, ts_ns, algorithm, key_id, signature) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)



class WalCopier:
    """Copies committed WAL frames into the database file from a thread of its own.

    A checkpoint (``wal_checkpoint(PASSIVE)``) is C code that releases the GIL,
    so on its own connection and thread it runs beside the writer instead of
    inside the commit that crosses ``wal_autocheckpoint``. PASSIVE never waits
    for the writer or for readers: it copies what it can. When it has copied
    everything by the time the writer's next transaction starts, SQLite starts
    the WAL over; the write connection's own automatic checkpoint stays as the
    bound (it then only has the rest to copy). Durability is the writer's: a
    commit is synced in the WAL before it is acknowledged; the copy syncs the
    database file as a checkpoint always does. A failed copy is logged once
    and left to the automatic checkpoint: it never fails the trail.
    """

    def __init__(self, path: Path, durable: bool, log: Any) -> None:
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._log = log
        self._kick = threading.Event()
        self._stop = False
        self._warned = False
        self.copies = 0  # checkpoints run (for tests and benchmarks)
        self._thread = threading.Thread(target=self._run, name="mcpwall-audit-wal",
                                        daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Copy what is committed now (at once if the thread is idle)."""
        self._kick.set()

    def _run(self) -> None:
        try:
            while True:
                self._kick.wait()
                self._kick.clear()
                if self._stop:
                    return
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.copies += 1
                except sqlite3.Error as exc:
                    if not self._warned:
                        self._warned = True
                        self._log.warning("audit_wal_copy_failed", error=repr(exc))
        finally:
            self._conn.close()

    def close(self) -> None:
        """Stop the thread (after the copy under way, if any) and close its connection."""
        self._stop = True
        self._kick.set()
        self._thread.join()


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
        # A writer process outlives a killed gateway by the moment it takes to
        # read end-of-file, sign and exit: wait that long before refusing.
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                os.close(fd)
                raise StoreError(f"{self.first}: another mcpwall process is writing this "
                                 "audit trail") from None

    def _open_active(self) -> None:
        files = chain_files(self.first)
        if not files:
            self._new_segment(1, uuid.uuid4().hex, 1, GENESIS)
            return
        path = files[-1]
        self.conn = connect_writer(path, self.durable)
        info = segment_info(self.conn, path)
        add_meta_columns(self.conn)  # a file written before them (store rule 6)
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
        # The last seq in the derived tables (full-text index, ix_*; see
        # firewall.audit.store, rule 3): rows after it are indexed off the commit.
        self.indexed: int = max(adopt_progress(self.conn), info.first_seq - 1)
        self.derived = has_derived(self.conn)
        self._since_checkpoint = time.monotonic()
        self._start_copier(path)
        self.log.info("audit_opened", path=str(path), segment=self.segment, seq=self.seq)

    def _new_segment(self, number: int, chain: str, first_seq: int, prev_hash: str) -> None:
        path = segment_path(self.first, number)
        if path.exists():
            raise StoreError(f"{path}: segment {number} already exists; will not overwrite it")
        conn = connect_writer(path, self.durable)
        created = self._clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            create_schema(conn, indexed_upto=first_seq - 1)
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
        self.indexed = first_seq - 1
        self.derived = True
        self._since_checkpoint = time.monotonic()
        self._start_copier(path)
        self.log.info("audit_segment_started", path=str(path), segment=number, first_seq=first_seq)

    def _start_copier(self, path: Path) -> None:
        self.wal = WalCopier(path, self.durable, self.log)
        self._uncopied = 0

    def _copy_after(self, rows: int) -> None:
        """``rows`` were committed: kick the WAL copier every :data:`WAL_COPY_ROWS`."""
        self._uncopied += rows
        if self._uncopied >= WAL_COPY_ROWS:
            self._uncopied = 0
            self.wal.kick()

    # -- appending -------------------------------------------------------
    def rows(self, events: Sequence[Event]) -> list[Row]:
        """Chain ``events`` after the head (does not write; advances nothing)."""
        return chain_rows(events, seq=self.seq, instance=self.instance, prev_hash=self.head,
                          redactor=self.redactor)

    def append_batch(self, events: Sequence[Event]) -> int:
        """Append ``events`` in one transaction; return the last seq. Rolls back on error."""
        if not events:
            return self.seq
        return self.append_rows(self.rows(events))

    def append_rows(self, rows: list[Row]) -> int:
        """Append rows built by :meth:`rows` (or :func:`firewall.audit.chain.event_row`,
        continuing the chain) in one transaction; return the last seq. Rolls back on error.
        """
        last = rows[-1]
        last_seq, head = int(last[SEQ]), str(last[HASH])
        conn = self.conn
        checkpoint = None
        # The derived tables wait for idle time (or a catch-up step), unless
        # they lag too far: then this commit indexes as many rows as it
        # appends (the lag stays put).
        indexed = self.indexed
        if last_seq - indexed > self.settings.fts_max_lag:
            indexed = min(last_seq, indexed + len(rows))
        if (last_seq - self.checkpointed >= self.settings.checkpoint_every_rows
                or self._checkpoint_overdue()):
            checkpoint = self._sign(last_seq, head)
        conn.execute("BEGIN IMMEDIATE")
        try:
            _insert_rows(conn, rows)
            if indexed > self.indexed:
                index_range(conn, self.indexed + 1, indexed, derived=self.derived)
            if checkpoint is not None:
                self._insert_checkpoint(checkpoint)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.seq, self.head, self.indexed = last_seq, head, indexed
        self._copy_after(len(rows))
        if checkpoint is not None:
            self._anchored(checkpoint)
        self._maybe_rotate()
        return last_seq

    # -- derived tables (full-text index, ix_session/principal/outcome) ----
    def unindexed(self) -> int:
        """Rows appended and not yet in the derived tables."""
        return self.seq - self.indexed

    def index_pending(self, max_rows: int = 0) -> int:
        """Index up to ``max_rows`` (0: all) waiting rows in their own transaction.

        Not fsync'ed even in durable mode: the tables are derived data, and
        their progress mark is in the same transaction, so a lost index
        transaction is simply redone from the mark (and readers cover the rows
        meanwhile). The next durable commit syncs the WAL with it anyway. It
        writes only derived tables: the events themselves are never touched.
        """
        if self.seq <= self.indexed:
            return 0
        last = self.seq if max_rows <= 0 else min(self.seq, self.indexed + max_rows)
        conn = self.conn
        if self.durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                index_range(conn, self.indexed + 1, last, derived=self.derived)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if self.durable:
                conn.execute("PRAGMA synchronous=FULL")
        count, self.indexed = last - self.indexed, last
        self._copy_after(count)
        return count

    def catch_up(self) -> int:
        """A catch-up step under load: index :data:`CATCH_UP_ROWS` rows (at
        most half of ``fts_max_lag``, so steps come before the commits start
        indexing) if at least that many wait (see :meth:`index_pending`);
        return how many."""
        step = min(CATCH_UP_ROWS, max(1, self.settings.fts_max_lag // 2))
        if self.seq - self.indexed < step:
            return 0
        return self.index_pending(step)

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
        self.index_pending()
        self.checkpoint()
        self.wal.close()
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
            self.wal.close()  # first: the write connection, closed last, removes the WAL
            self.index_pending()
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
