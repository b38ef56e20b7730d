"""The audit writer process: the trail written by a child process on the second core.

The gateway's trio thread and the writer share one GIL when the writer is a
thread, so at high rates the two take turns on one core however many cores the
machine has. With ``writer = "process"`` (the default for ``serve``) the trail is written by
a child process (``python -m firewall.audit.process``): the trio side only
encodes each event (msgspec JSON, about 1 us) and hands batches over a pipe;
the child builds the rows (redaction, canonical encoding, SHA-256), inserts,
commits and acknowledges each batch.

Rules this module keeps:

1. The writer process owns the write connection, the chain head and the lock
   (``<database>.lock``): it opens one :class:`firewall.audit.trail.Trail` and
   runs the writer core (:func:`firewall.audit.core.run`) on it, with the pipe
   as the core's link; nothing else in mcpwall writes the file. What the
   child does with a batch (commit, failure, derived tables, checkpoints,
   close) is the core's, the same as in the writer thread.
2. Wire: frames of a 4-byte big-endian length, one kind byte, a payload.
   Parent to child: ``O`` (open: settings, instance id, log settings), ``B``
   (a batch: a JSON array of events, in append order), ``C`` (close). Child
   to parent: ``R`` (ready), ``F`` (could not open: error class and message),
   ``A`` (one per batch, in order: ok, error, busy and CPU seconds), ``Z``
   (closed: ok, error).
3. Durable: the child writes a batch's ``A`` only after its COMMIT returned
   (fsync'ed in durable mode: WAL with ``synchronous=FULL``); ``committed()``
   returns only after that ``A`` was read. Events are chained in batch order,
   which is append order.
4. Group commit with one batch in flight: while the child commits batch N,
   appends fill batch N+1. When N's ``A`` arrives, N+1 is written to the pipe
   at once (before N's callers are woken) if it holds the target; else N's
   callers append first and the batch is handed over when it reaches the
   target, or when appends pause for one scheduling round. The target is
   half of the events in play (N's and N+1's) from ``_HALVES_FROM`` of them
   (refilling that many outlasts an fsync), else all of them.
   Callers that each wait for their own event (a gateway's calls) thus split
   into two halves under load: the child commits one while the trio thread
   wakes and refills the other, so both cores work; with few callers and a
   slow fsync they share one commit. A batch ends at ``max_batch`` events.
5. Failure is sticky and loud, as with the thread: a failed batch (the
   core acknowledges every later batch as failed too), a child
   that exits or closes its pipe, or a broken pipe fails every pending and
   later ``committed()``/``append`` with :class:`AuditError` and logs
   ``audit_writer_failed``; the gateway then refuses calls.
6. Shutdown: ``aclose`` drains the queue, sends ``C``; the child indexes,
   signs the head, closes and answers ``Z``. If the gateway dies (kill -9), the
   child reads end-of-file, signs what it committed and exits: what it
   committed was committed before any call that depended on it was forwarded.
   The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C or a service
   manager reaches the whole process group): it ends when the gateway says so
   or goes away, never before the gateway's last batch.
7. An event that cannot be stored fails its own ``append``: the trio side checks
   the 64-bit integer columns and encodes the event before it is queued.
8. The derived tables (session, principal, outcome lookups and the full-text
   index; :mod:`firewall.audit.store`, rule 3) follow the core's rule 3: a
   catch-up step after an ``A``, slices when no batch comes for a moment. The
   next ``A`` counts that time, and every ``A`` carries all the CPU the child
   used since the previous one (``time.process_time``: its WAL copier and
   decoding included).

Choices made by measurement (``benchmarks/bench_audit.py``, 2-core machine):

- A process rather than the thread: with the thread, the trio thread (rows,
  hand-over, producers) costs 22 to 42 us per event and the writer thread 16
  to 23, sharing one GIL; with the process, the trio side costs 13 to 19 us
  per event and the child 22 to 28 us (1,000-event batches), each on its own
  core when one is free. The child is the slower side: SQLite with the four
  secondary indexes was most of it (see the derived tables below). On a
  2-core machine already running other work (load average 4 to 8) there is
  no free core: paired runs at 2,048 callers gave the process 0.93x to 1.2x
  the thread's events/s (13.2k against 13.0k median) at about 0.94x its CPU
  per event; the bench prints both in one run.
- JSON on the pipe, not msgpack: msgpack decodes a little faster (2.2 against
  2.9 us per event) but cannot carry integers beyond 64 bits, which a call's
  JSON arguments may hold; JSON text survives the round trip exactly, so the
  rows (and their hashes) are those the thread writer builds.
- Rows built in the child, not in the trio thread: the trio thread was the
  other bottleneck (row building was a third of its CPU per event).
- Secondary lookups out of the commit (the derived tables of
  :mod:`firewall.audit.store`, rule 3). With the keys a gateway gives them (a
  random session id per client, call ids ``<session>.<n>``) every row of a
  batch landed on its own leaf page of the ``(session, ts_ns)``,
  ``(principal, ts_ns)`` and outcome ``call_id`` indexes. Now the commit
  inserts into the table and its ``ts_ns`` index only, and after an ack,
  once :data:`firewall.audit.trail.CATCH_UP_ROWS` rows wait, the child runs
  one sorted catch-up step for all derived tables while the gateway wakes
  the callers and refills (its time is counted in the next ack). Per event,
  on a 1M-row file under load (thread CPU, steps of 8,192): decoding 0.7 us,
  rows 4.3, insert 3.7, commit 1.0, catch-up 6.4 (session 1.3, principal
  1.1, outcome 0.7, full text 1.3, their commit and the WAL checkpoints it
  triggers the rest); steps of 16,384 take the catch-up to about 5.2 (see
  ``CATCH_UP_ROWS``). The figures before and after are in
  ``benchmarks/README.md``.
- Arguments as the gateway's JSON text (:class:`firewall.audit.chain.
  WireDecision`): decoding, walking and re-encoding them cost 2 to 2.5 us per
  decision; :meth:`firewall.audit.redaction.Redactor.clean` says when the text
  can be kept as it came (the same bytes, since one encoder wrote both).
- The WAL copied beside the writer (:class:`firewall.audit.trail.WalCopier`,
  a thread of the child with its own connection, kicked every 4,096
  committed rows): a checkpoint is C code that releases the GIL, so it runs
  on the second core instead of inside the commit that crosses
  ``wal_autocheckpoint``. 1.07x end to end (59,900 against 55,800 events/s,
  medians of 4 interleaved rounds at load 0.4 to 1.1, ``audit_ab.py``). An
  earlier try (every 16,384 rows, the automatic checkpoint raised to 65,536
  pages) measured 0.89x on a machine without a spare core.
- The collector: a batch keeps a few objects per event alive until its
  commit, and the default threshold ran the collector several times per
  batch (5% of the child's samples); the child freezes what it loaded and
  raises the threshold (:data:`_GC_THRESHOLD`).
- The hand-over of rule 4 rather than "whenever the child is free": callers
  that each wait for their own event otherwise all land in one batch (the
  child idles while the trio thread wakes and refills it) or split one
  against the rest. Halves always cost commits where fsync dominates: at 64
  callers and a 3 ms fsync, 32-event batches gave 4.9-5.0k events/s against
  6-7k for the thread's 64-event batches; hence halves only from 256 events
  in play. Comparing the last commit's fsync wait with an estimate of the
  refill instead chose "all" at 2,048 callers on a busy machine (the wait
  includes waiting for a core) and lost the overlap.

Example::

    async with open_audit(AuditSettings(path="audit.db", writer="process"),
                          instance_id="gw-1") as audit:
        receipt = await audit.append(event)
        await receipt.committed()   # durable: now forward the call
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from firewall import log
from firewall.audit import core
from firewall.audit.chain import Row, WireDecision
from firewall.audit.events import Event, LifecycleEvent, OutcomeEvent
from firewall.audit.store import StoreError
from firewall.audit.trail import Trail
from firewall.audit.writer import AuditError, BatchReceipt, WriterSide
from firewall.settings.audit import AuditSettings

_LEN: Final = struct.Struct(">I")
_json: Final = msgspec.json.Encoder()
# Decisions decode with their arguments as raw JSON (see WireDecision).
_events: Final = msgspec.json.Decoder(list[WireDecision | OutcomeEvent | LifecycleEvent])
_READ: Final = 1 << 20
_PIPE_SIZE: Final = 1 << 20  # a whole batch fits: the trio side writes it in one go
_F_SETPIPE_SZ: Final = 1031
_I64: Final = 2**63
# Where the firewall package is imported from: the child imports the same one.
_ROOT: Final = str(Path(__file__).resolve().parents[2])

# Halves from this many events in play (rule 4): refilling that many callers
# (15 to 40 us each here, more on a busy machine) outlasts an fsync.
_HALVES_FROM: Final = 256

# Allocations between two collections of the youngest generation (see main).
_GC_THRESHOLD: Final = 100_000


class _Open(msgspec.Struct, frozen=True):
    settings: AuditSettings
    instance_id: str
    log_level: str
    log_format: str


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _LEN.pack(len(payload) + 1) + kind + payload


def _check_integers(event: Event) -> None:
    """Raise ValueError for an integer column SQLite cannot hold (64-bit)."""
    values: tuple[tuple[str, int | None], ...] = (("ts_ns", event.ts_ns),)
    if isinstance(event, OutcomeEvent):
        values += (("error_code", event.error_code), ("latency_ns", event.latency_ns),
                   ("response_bytes", event.response_bytes))
    for name, value in values:
        if value is not None and not -_I64 <= int(value) < _I64:
            raise ValueError(f"{name}: {value} does not fit in a 64-bit SQLite integer")


# -- the trio side -----------------------------------------------------------

# Events appended between two hand-overs, each as JSON; the receipt of each of them.
_Batch = BatchReceipt[bytes]


class ProcessWriter(WriterSide[bytes]):
    """The trio side of the writer process: the gateway's ``AuditPoint``.

    Create it with :func:`firewall.audit.writer.open_audit` (``writer =
    "process"``). ``append`` may be called from any task of the trio run that
    opened it. Everything here runs in the trio thread: no lock.
    """

    # What the interpreter runs as the child (a benchmark swaps in a child that
    # acknowledges without storing, to measure this side alone).
    child_args: tuple[str, ...] = ("-m", "firewall.audit.process")

    def __init__(self, settings: AuditSettings, instance_id: str) -> None:
        super().__init__(settings, instance_id)
        self.log = log.get_logger(audit=settings.path, instance=instance_id)
        self._inflight: _Batch | None = None  # the batch the child has (one at a time)
        self._rest = b""                       # what of its frame the pipe has not taken
        self._queued = 0                       # events in _batches (not handed over)
        self._target = 1                       # append hands over at this many (rule 4)
        self._work = trio.lowlevel.ParkingLot()   # the pump waits here for a batch
        self._process: trio.Process | None = None
        self._to = -1      # our end of the pipe to the child
        self._from = -1    # our end of the pipe from the child
        self._buf = bytearray()
        self._pump_done = trio.Event()
        self._watched = trio.Event()
        self.pid: int | None = None

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        """Start the child, open the trail in it (raises if that fails), start the pump.

        The pump and the watcher are system tasks owned by this writer: an
        error in the gateway's own tasks neither cancels them nor gets
        wrapped with theirs, and :meth:`aclose` waits for both to finish.
        """
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe only costs more wake-ups
            fcntl.fcntl(to_w, _F_SETPIPE_SZ, _PIPE_SIZE)
        root = _ROOT
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            self._process = await trio.lowlevel.open_process(
                [sys.executable, *self.child_args], stdin=to_r, stdout=from_w, env=env)
        except BaseException:
            for fd in (to_r, to_w, from_r, from_w):
                os.close(fd)
            raise
        os.close(to_r)
        os.close(from_w)
        self._to, self._from = to_w, from_r
        self.pid = self._process.pid
        os.set_blocking(to_w, False)
        os.set_blocking(from_r, False)
        level, fmt = log.current()
        try:
            await self._write(_frame(b"O", msgspec.msgpack.encode(
                _Open(self.settings, self.instance_id, level, fmt))))
            kind, payload = await self._read()
        except BaseException:
            with trio.CancelScope(shield=True):  # the child reads end-of-file and exits
                await self._reap()
            raise
        if kind != b"R":
            await self._reap()
            if kind == b"F":
                cls, message = msgspec.msgpack.decode(payload)
                raise (StoreError if cls == "StoreError" else AuditError)(message)
            raise AuditError("the audit writer process did not start")
        self.log.info("audit_writer_started", pid=self.pid)
        trio.lowlevel.spawn_system_task(self._pump, name="mcpwall-audit-pump")
        trio.lowlevel.spawn_system_task(self._watch, name="mcpwall-audit-watch")

    async def aclose(self) -> None:
        """Flush, let the child sign the head and close, and wait for it to exit."""
        if self._closed or self._process is None:
            return
        self._closed = True
        self._closing = True
        self._work.unpark_all()
        await self._pump_done.wait()
        await self._reap()
        await self._watched.wait()
        self._raise_failure("audit_writer_failed")

    async def _reap(self) -> None:
        for fd in (self._to, self._from):
            if fd >= 0:
                os.close(fd)
        self._to = self._from = -1
        if self._process is not None:
            await self._process.wait()

    # -- AuditPoint ------------------------------------------------------
    async def append(self, event: Event) -> _Batch:
        """Queue one event; waits only while the queue is full (see ``_admit``)."""
        await self._admit()
        try:
            _check_integers(event)
            item = _json.encode(event)
        except BaseException:
            self._room.give(1)
            raise
        batch = self._add(item)
        if self._work:  # the pump waits for a batch: here is one
            self._work.unpark()
        self._queued += 1
        if self._inflight is None and self._queued >= self._target:
            self._send(self._take())
        return batch

    # -- the pump ----------------------------------------------------------
    def _batch_frame(self, batch: _Batch) -> bytes:
        payload = b"[" + b",".join(batch.items) + b"]"
        return _frame(b"B", payload)

    async def _pump(self) -> None:
        """Hand batches to the child one at a time and settle them as acks arrive.

        A system task: the gateway's cancellations do not reach it, so a
        cancelled gateway still drains its queue (``aclose`` ends it).
        """
        try:
            await self._pump_batches()
            if self._error is not None:
                raise _Failed
            await self._write(_frame(b"C", b""))
            kind, payload = await self._read()
            ok, error = msgspec.msgpack.decode(payload) if kind == b"Z" else (False, "")
            if not ok:
                raise AuditError(f"the audit writer process failed to close: {error}")
        except _Failed:
            pass
        except Exception as exc:
            self._fail(exc)
        finally:
            self._pump_done.set()

    async def _pump_batches(self) -> None:
        while True:
            if self._inflight is None:
                if not self._batches:
                    if self._closing or self._error is not None:
                        return
                    await self._work.park()
                    continue
                # The child is idle and events wait: hand them over once the
                # appends pause for one scheduling round (append itself hands
                # them over earlier, at the target: rule 4).
                before = self._queued
                await trio.lowlevel.checkpoint()
                if self._inflight is None and self._batches and (
                        self._queued == before or self._closing):
                    self._send(self._take())
                continue
            await self._write_rest()
            kind, payload = await self._read()
            if kind != b"A":
                raise AuditError(f"the audit writer process sent {kind!r}, expected an ack")
            ok, error, busy, cpu = msgspec.msgpack.decode(payload)
            if not ok:
                raise AuditError(f"the audit writer process could not commit: {error}")
            done, self._inflight = self._inflight, None
            # The callers of ``done`` append next. Halves (the child commits
            # one while this thread wakes and refills the other) pay when the
            # commit's fixed wait (fsync) is shorter than refilling them all;
            # else one batch of everything in play needs fewer commits.
            in_play = self._queued + len(done.items)
            self._target = max(1, in_play // 2 if in_play >= _HALVES_FROM else in_play)
            if self._queued >= self._target:
                self._send(self._take())
            self._settle(done, True, busy, cpu)

    def _send(self, batch: _Batch) -> None:
        """Hand ``batch`` to the child: write what the pipe takes now; the pump
        writes the rest. Only while nothing is in flight."""
        self._inflight = batch
        self._queued -= len(batch.items)
        try:
            self._rest = self._write_now(self._batch_frame(batch))
        except AuditError as exc:
            self._fail(exc)
        if self._work:
            self._work.unpark()

    async def _watch(self) -> None:
        """A child that exits while the gateway still needs it fails the trail at once."""
        process = self._process
        assert process is not None
        try:
            code = await process.wait()
            if not self._closing and self._error is None:
                self._fail(AuditError(f"the audit writer process exited (code {code})"))
                self._work.unpark_all()
        finally:
            self._watched.set()

    def _fail(self, exc: BaseException) -> None:
        """Rule 5: fail everything queued and in flight, loudly, once."""
        if self._error is None:
            self._error = exc
            self.log.error("audit_writer_failed", error=str(exc), pid=self.pid)
        batches = [b for b in (self._inflight, *self._batches) if b is not None and not b.done]
        self._batches.clear()
        self._open = self._inflight = None
        self._queued = 0
        for batch in batches:
            self._settle(batch, False)

    # -- pipe I/O ----------------------------------------------------------
    def _write_now(self, data: bytes) -> bytes:
        """Write what the pipe takes without waiting; return the rest."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._to, view):]
            except BlockingIOError:
                break
            except OSError as exc:
                raise self._lost(exc) from None
        return bytes(view)

    async def _write_rest(self) -> None:
        while self._rest:
            if self._error is not None:
                raise _Failed
            await trio.lowlevel.wait_writable(self._to)
            self._rest = self._write_now(self._rest)

    async def _write(self, data: bytes) -> None:
        self._rest = self._write_now(data)
        await self._write_rest()

    async def _read(self) -> tuple[bytes, bytes]:
        """The next frame from the child: (kind, payload)."""
        buf = self._buf
        while True:
            frame = _take_frame(buf)
            if frame is not None:
                return frame[:1], frame[1:]
            if self._error is not None:
                raise _Failed
            try:
                data = os.read(self._from, _READ)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._from)
                continue
            except OSError as exc:
                raise self._lost(exc) from None
            if not data:
                raise AuditError("the audit writer process closed its pipe (it exited)")
            buf += data

    def _lost(self, exc: OSError) -> AuditError:
        if exc.errno == errno.EPIPE:
            return AuditError("the audit writer process is gone (broken pipe)")
        return AuditError(f"the audit writer pipe failed: {exc}")


def _take_frame(buf: bytearray) -> bytes | None:
    """Cut the first whole frame (a 4-byte length, then the payload) off ``buf``."""
    if len(buf) >= 4:
        size = _LEN.unpack_from(buf)[0]
        if len(buf) >= 4 + size:
            frame = bytes(buf[4:4 + size])
            del buf[:4 + size]
            return frame
    return None


class _Failed(Exception):
    """The pump stops: the trail has already failed (and said so)."""


# -- the child ---------------------------------------------------------------

class _Child:
    """The writer process's link (:class:`firewall.audit.core.Link`): batches
    are ``B`` frames read from the gateway, acks ``A`` frames written back
    (blocking I/O). Opening and closing speak ``O``/``R``/``F`` and ``Z``."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.buf = bytearray()
        self.eof = False

    def frame(self, timeout: float | None) -> bytes | None:
        """The next frame; None when ``timeout`` passes first; b"" at end of input."""
        buf = self.buf
        while True:
            frame = _take_frame(buf)
            if frame is not None:
                return frame
            if buf:
                timeout = None  # a frame has begun: wait for the rest of it
            if self.eof:
                return b""  # a torn last frame was never acknowledged: drop it
            if timeout is not None and not select.select([self.rfd], [], [], timeout)[0]:
                return None
            data = os.read(self.rfd, _READ)
            if not data:
                self.eof = True
            buf += data

    def send(self, kind: bytes, payload: Any) -> None:
        data = memoryview(_frame(kind, msgspec.msgpack.encode(payload)))
        while data:
            data = data[os.write(self.wfd, data):]

    # -- the core's Link ---------------------------------------------------
    def receive(self, timeout: float | None) -> bytes | None:
        frame = self.frame(timeout)
        if frame is not None and (not frame or frame[:1] == b"C"):
            raise core.Closed  # told to close, or the gateway is gone
        return frame

    def rows(self, batch: bytes, trail: Trail) -> list[Row]:
        return trail.rows(_events.decode(memoryview(batch)[1:]))

    def acknowledge(self, batch: bytes, ack: core.Ack) -> bool:
        error = "" if ack.error is None else repr(ack.error)
        try:
            self.send(b"A", [ack.ok, error, ack.busy, ack.cpu])
        except OSError:
            return False  # the gateway is gone: close (and sign) what was committed
        return True

    def failed(self, error: BaseException) -> None:
        pass  # the next ``A`` says so: the gateway reads acks only

    # -- the process -------------------------------------------------------
    def run(self) -> int:
        first = self.frame(None)
        if not first or first[:1] != b"O":
            return 2
        opened = msgspec.msgpack.decode(first[1:], type=_Open)
        log.configure(opened.log_level, opened.log_format)
        try:
            trail = Trail(opened.settings, opened.instance_id)
        except Exception as exc:
            self.send(b"F", [type(exc).__name__, str(exc)])
            return 1
        trail.log.info("audit_writer_process_ready", pid=os.getpid(), seq=trail.seq)
        try:
            self.send(b"R", [trail.seq, trail.head])
        except OSError:  # the gateway gave up while we opened
            trail.close()
            return 0
        failure = core.run(trail, self, time.process_time)
        error = "" if failure is None else repr(failure)
        with contextlib.suppress(OSError):  # the gateway is gone; closed and signed anyway
            self.send(b"Z", [not error, error])
        return 0 if not error else 1


def main() -> int:
    """Entry point of ``python -m firewall.audit.process`` (started by the gateway)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    acks = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the ack stream
    # A batch allocates a few objects per event (decoded events, rows) that
    # live until its commit: with the default threshold (700) the collector
    # ran several times per batch and walked them all (5% of the child's
    # samples under load). What is loaded now stays: out of its walks.
    gc.freeze()
    gc.set_threshold(_GC_THRESHOLD)
    return _Child(0, acks).run()


if __name__ == "__main__":
    sys.exit(main())
