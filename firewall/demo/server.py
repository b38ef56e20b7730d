"""The demo server's I/O: newline-delimited JSON-RPC over a pair of trio streams.

:func:`serve` works on any ``trio.abc`` streams (a child's pipes,
``trio.testing.memory_stream_pair()``); :func:`main` runs it on stdin and
stdout. All protocol decisions live in :mod:`firewall.demo.session`.

Rules this module keeps:

1. Lines are handled one at a time, in arrival order, so pipelined calls see
   each other's effects (a ``create`` then a ``start`` of the same VM works).
2. A reply is written whole, under one lock, and never cancelled half-way:
   frames of different replies never interleave.
3. With a step delay, the frames of long-ish actions (create, clone) are
   written from their own task, one progress notification per step, then the
   response; the read loop carries on meanwhile (a ping is answered during a
   slow create), and ``notifications/cancelled`` drops the pending response.
   The host state changed when the request arrived (rule 1).
4. End of input: wait for pending replies, then return. A closed output ends
   the loop quietly. Nothing but protocol frames is ever written to stdout;
   logs go to stderr.
5. ``--record-file`` (off by default) appends one JSON line per executed
   tool call, ``{"arguments": ..., "id": ..., "tool": ...}``, with one
   ``write`` on an ``O_APPEND`` descriptor, so lines never interleave. Tests
   compare it with a firewall's audit trail.

Example::

    python -m firewall.demo --log-level info
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any, Final

import click
import trio

from firewall import log
from firewall.demo.session import DemoSession, Recorder, Reply
from firewall.protocol import jsonrpc
from firewall.protocol.jsonrpc import RequestId

MAX_LINE_BYTES: Final = 4 << 20
_READ_SIZE: Final = 64 << 10


class LineBuffer:
    """Split a byte stream into lines; an over-long line comes out as ``None`` once.

    Blank lines are skipped and surrounding whitespace (``\\r`` included) is
    stripped. ``LineBuffer(16).feed(b'{"a":1}\\n{"b"')`` yields ``b'{"a":1}'``
    and keeps ``{"b"`` for the next feed.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._scanned = 0
        self._skipping = False

    def feed(self, data: bytes | bytearray) -> Iterator[bytes | None]:
        self._buf += data
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self._limit:
                    if not self._skipping:
                        yield None
                    self._skipping = True
                    self._buf.clear()
                    self._scanned = 0
                return
            line = bytes(self._buf[:end]).strip()
            del self._buf[: end + 1]
            self._scanned = 0
            if self._skipping:
                self._skipping = False
            elif len(line) > self._limit:
                yield None
            elif line:
                yield line

    def flush(self) -> Iterator[bytes | None]:
        """The unterminated last line, at end of input."""
        yield from self.feed(b"\n")


async def serve(
    receive: trio.abc.ReceiveStream,
    send: trio.abc.SendStream,
    session: DemoSession | None = None,
    *,
    step_delay: float = 0.0,
) -> None:
    """Answer newline-delimited JSON-RPC from ``receive`` on ``send`` until end of input."""
    session = session or DemoSession()
    lock = trio.Lock()
    pending: dict[RequestId, trio.CancelScope] = {}
    lines = LineBuffer()

    async with trio.open_nursery() as nursery:

        async def write(frames: tuple[bytes, ...]) -> None:
            if not frames:
                return
            with trio.CancelScope(shield=True):
                async with lock:
                    try:
                        await send.send_all(b"".join(frame + b"\n" for frame in frames))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()  # the reader went away: stop

        async def deliver_slowly(reply: Reply, scope: trio.CancelScope) -> None:
            with scope:
                for step in range(reply.steps + 1):
                    await trio.sleep(step_delay)
                    if step < len(reply.progress):
                        await write((reply.progress[step],))
                await write(reply.frames)
            if reply.request_id is not None and pending.get(reply.request_id) is scope:
                del pending[reply.request_id]

        async def answer(line: bytes | None) -> None:
            if line is None:
                await write((jsonrpc.error_response(
                    None, jsonrpc.INVALID_REQUEST,
                    f"message too large (limit {MAX_LINE_BYTES} bytes)"),))
                return
            reply = session.receive(line)
            if reply.cancel is not None and reply.cancel in pending:
                pending.pop(reply.cancel).cancel()
            if step_delay > 0 and reply.steps and reply.request_id is not None:
                scope = trio.CancelScope()
                pending[reply.request_id] = scope
                nursery.start_soon(deliver_slowly, reply, scope)
            else:
                await write(reply.progress + reply.frames)

        while True:
            try:
                data = await receive.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            for line in lines.feed(data):
                await answer(line)
        for line in lines.flush():
            await answer(line)


def stdio_command() -> list[str]:
    """The argv that runs this server as a stdio child of this interpreter."""
    return [sys.executable, "-m", "firewall.demo"]


def record_to(path: str) -> Recorder:
    """A recorder appending each executed call to ``path`` as a JSON line (rule 5)."""

    def record(tool: str, arguments: dict[str, Any], request_id: RequestId | None) -> None:
        line = jsonrpc.encode({"tool": tool, "arguments": arguments, "id": request_id})
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)

    return record


async def _run_stdio(step_delay: float, logger: Any, record_file: str | None) -> None:
    # Duplicates, so closing the streams leaves fds 0 and 1 to the interpreter.
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    session = DemoSession(log=logger, record=record_to(record_file) if record_file else None)
    async with stdin, stdout:
        await serve(stdin, stdout, session, step_delay=step_delay)


@click.command(name="demo")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, envvar="MCPWALL_DEMO_LOG_LEVEL",
              help="Lowest level logged to stderr (env MCPWALL_DEMO_LOG_LEVEL).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="json",
              show_default=True, envvar="MCPWALL_DEMO_LOG_FORMAT",
              help="Log format on stderr (env MCPWALL_DEMO_LOG_FORMAT).")
@click.option("--step-delay", type=click.FloatRange(0, 60), default=0.0, show_default=True,
              envvar="MCPWALL_DEMO_STEP_DELAY",
              help="Seconds per work step of create and clone, to simulate slow calls "
                   "(env MCPWALL_DEMO_STEP_DELAY).")
@click.option("--record-file", type=click.Path(dir_okay=False), default=None,
              envvar="MCPWALL_DEMO_RECORD_FILE",
              help="Append one JSON line per executed tool call (tool, arguments, id) to "
                   "this file, for comparing with an audit trail; off by default "
                   "(env MCPWALL_DEMO_RECORD_FILE).")
def main(log_level: str, log_format: str, step_delay: float, record_file: str | None) -> None:
    """Run the demo virtualization MCP server on stdin and stdout.

    It serves the tool surface of the Virtualization MCP server over a
    simulated, in-memory host (VMs web-01, db-01, build-01): nothing is ever
    executed on this machine. Logs go to stderr, never stdout.

    \b
    Example:
        python -m firewall.demo --log-level info --step-delay 0.5

    \b
    Exit codes:
        0    end of input
        2    bad command-line option
        130  interrupted (Ctrl-C)
    """
    log.configure(log_level, log_format)
    logger = log.get_logger(server="demo")
    logger.info("demo_server_started", pid=os.getpid(), step_delay=step_delay)
    try:
        trio.run(_run_stdio, step_delay, logger, record_file)
    except KeyboardInterrupt:
        sys.exit(130)
    logger.info("demo_server_stopped")
