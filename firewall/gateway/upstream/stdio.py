"""An MCP server run as a child process, speaking newline-delimited JSON-RPC.

Invariants:

1. The child lives inside the nursery of :func:`open_stdio_child`; leaving the
   block always ends it: stdin is closed first (the MCP way to ask a stdio
   server to exit), then SIGTERM after ``terminate_grace``, then SIGKILL.
2. The child's stderr is never mixed with protocol traffic: each line goes to
   the structured log (``upstream_stderr``), bound with server and session.
3. Reads are bounded: a stdout line longer than ``max_line`` is dropped and
   logged, never buffered whole.
4. Writes take :class:`~firewall.gateway.outbound.Outbound` values only, wait
   for their receipts (the decisions are durable), and put each on a line of
   its own; an Outbound never holds a byte a reader could split on.

Example::

    async with open_stdio_child(settings, server="vm", session=sid) as child:
        await child.send(routed.upstream)  # an Outbound from the mediator
        async for line in child.lines():
            ...
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from firewall.config import StdioServer
from firewall.gateway.outbound import Outbound
from firewall.log import get_logger
from firewall.protocol.framing import TOO_LONG, LineSplitter

_READ_SIZE = 65536


class ChildExited(Exception):
    """The child is gone; ``returncode`` says how it ended."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"exited with code {returncode}")
        self.returncode = returncode


class StdioChild:
    """A running stdio MCP server. Create it with :func:`open_stdio_child`."""

    def __init__(self, process: trio.Process, settings: StdioServer, log: Any) -> None:
        self.process = process
        self.settings = settings
        self.log = log
        self._send_lock = trio.Lock()
        self._stdin_closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def send(self, message: Outbound) -> None:
        """Write one message and its newline once its decision is durable;
        raise ChildExited if the pipe is gone."""
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[Outbound]) -> None:
        """Write several messages in one write, once all their decisions are
        durable; raise ChildExited if the pipe is gone."""
        if not messages:
            return
        for message in messages:
            await message.ready()
        payload = b"".join([m.data + b"\n" for m in messages])
        stdin = self.process.stdin
        assert stdin is not None
        async with self._send_lock:
            try:
                await stdin.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ChildExited(self.process.returncode) from None

    async def lines(self) -> AsyncIterator[bytes]:
        """The child's stdout, a message per line; ends when stdout closes."""
        async for batch in self.batches():
            for line in batch:
                yield line

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The child's stdout as the lists of complete lines each read brings."""
        stdout = self.process.stdout
        assert stdout is not None
        limit = self.settings.max_line_bytes
        async for lines in line_batches(stdout, limit):
            if any(line is TOO_LONG for line in lines):
                self.log.warning("upstream_line_too_long", limit=limit)
                lines = [line for line in lines if line is not TOO_LONG]
            if lines:
                yield lines

    async def close_stdin(self) -> None:
        """Ask the child to exit by closing its stdin (idempotent)."""
        if not self._stdin_closed and self.process.stdin is not None:
            self._stdin_closed = True
            async with self._send_lock:
                await self.process.stdin.aclose()

    async def wait(self) -> int:
        """Wait for the child to exit and return its code."""
        return await self.process.wait()

    async def terminate(self, grace: float | None = None) -> int:
        """Close stdin, wait ``grace`` s, SIGTERM, wait again, SIGKILL. Returns the code."""
        grace = self.settings.terminate_grace_seconds if grace is None else grace
        with trio.CancelScope(shield=True):
            await self.close_stdin()
            with trio.move_on_after(grace):
                return await self.process.wait()
            self.log.warning("upstream_terminate", signal="SIGTERM", pid=self.pid)
            _signal(self.process, signal.SIGTERM)
            with trio.move_on_after(grace):
                return await self.process.wait()
            self.log.warning("upstream_terminate", signal="SIGKILL", pid=self.pid)
            _signal(self.process, signal.SIGKILL)
            return await self.process.wait()
        raise AssertionError("unreachable: the shielded scope always returns")


def _signal(process: trio.Process, sig: int) -> None:
    """Signal the child's process group (it may have children of its own)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        with suppress(ProcessLookupError):
            process.send_signal(sig)


async def line_batches(
    stream: trio.abc.ReceiveStream, max_line: int
) -> AsyncIterator[list[bytes]]:
    """The lines each read of ``stream`` completes (TOO_LONG marks an over-long
    one), then the last unterminated line, if any, when the stream ends."""
    splitter = LineSplitter(max_line)
    while True:
        try:
            chunk = await stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
        if not chunk:
            break
        lines = splitter.feed(chunk)
        if lines:
            yield lines
    rest = splitter.remainder()
    if rest:
        yield [rest]


class StderrTail:
    """The last ``size`` lines a child wrote to stderr; ``closed`` is set once
    the child's stderr has ended (so the tail is complete)."""

    def __init__(self, size: int) -> None:
        self.lines: deque[str] = deque(maxlen=size)
        self.closed = trio.Event()


async def _pump_stderr(stream: trio.abc.ReceiveStream, log: Any,
                       tail: StderrTail | None) -> None:
    try:
        async for lines in line_batches(stream, 64 * 1024):
            for line in lines:
                text = "<line too long, dropped>" if line is TOO_LONG else line.decode(
                    "utf-8", "replace")
                log.info("upstream_stderr", line=text)
                if tail is not None:
                    tail.lines.append(text)
    finally:
        if tail is not None:
            tail.closed.set()


@asynccontextmanager
async def open_stdio_child(
    settings: StdioServer, *, server: str, session: str | None = None,
    stderr_tail: StderrTail | None = None,
) -> AsyncIterator[StdioChild]:
    """Start the configured command as a child; end it when the block exits.

    Raises OSError (with the command named) when it cannot be started. Each
    stderr line is logged and, given a :class:`StderrTail`, kept there too,
    for an error message that quotes the child's last words.
    """
    log = get_logger(server=server, session=session)
    env = {**os.environ, **settings.env}
    argv = [settings.command, *settings.args]
    try:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=settings.cwd,
            start_new_session=True,  # its own process group: signals reach its children
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot start {settings.command!r}: {exc.strerror}") from None
    child = StdioChild(process, settings, log)
    log.info("upstream_started", pid=process.pid, command=settings.command)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(_pump_stderr, process.stderr, log, stderr_tail)
            try:
                yield child
            finally:
                code = await child.terminate()
                log.info("upstream_exited", pid=process.pid, returncode=code)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                _signal(process, signal.SIGKILL)
                await process.wait()
