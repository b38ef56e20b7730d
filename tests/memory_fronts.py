"""The ``wrap`` front in memory: a client and a child on trio memory streams, no process.

:class:`MemoryChild` has the interface :class:`~firewall.gateway.front.wrap.WrapSession`
uses of :class:`~firewall.gateway.upstream.stdio.StdioChild` (``send``, ``send_many``,
``batches``, ``wait``, ``terminate``), over two one-way memory streams: what the front
writes to the child's stdin, the test reads as the server (``next_line``, ``received``);
what the test says as the server (``say``) the front reads as the child's stdout.
:func:`memory_wrap` runs a real ``WrapSession`` with a real ``Mediator`` between a
:class:`LinePeer` client and such a child.

Rules this file keeps, so that a fast test means what the process test means:

1. The child is written to the way ``StdioChild`` writes: each Outbound's receipt is
   awaited first (nothing reaches it undecided or unaudited), one line per message, one
   write per batch, ``ChildExited`` once the child is gone.
2. ``received`` is every line that reached the child, in order: what a server executes.
3. A child exits only when told (``exit``), when its stdin closes (``exits_on_eof``, as
   MCP servers do), or when ``terminate`` gives up waiting after ``grace`` seconds
   (``signals`` then says so). Exit closes its stdout, then ``wait`` returns the code.
4. No wall clock: nothing here sleeps; timeouts are cancel scopes, so a test may run
   under ``autojump_clock``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from firewall.gateway.front.wrap import WrapSession
from firewall.gateway.mediator import Mediator
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.stdio import ChildExited, line_batches
from firewall.protocol.framing import TOO_LONG, LineSplitter

MAX_LINE = 1 << 20


class MemoryChild:
    """A stdio MCP server in memory, with StdioChild's interface towards the front."""

    def __init__(self, max_line: int = MAX_LINE, *, exits_on_eof: bool = True,
                 grace: float = 5.0) -> None:
        self.max_line = max_line
        self.exits_on_eof = exits_on_eof
        self.grace = grace
        self.returncode: int | None = None
        self.received: list[bytes] = []
        self.signals: list[str] = []
        self._stdin_send, self._stdin_recv = trio.testing.memory_stream_one_way_pair()
        self._stdout_send, self._stdout_recv = trio.testing.memory_stream_one_way_pair()
        self._send_lock = trio.Lock()
        self._splitter = LineSplitter(max_line)
        self._unread: list[bytes] = []
        self._exited = trio.Event()
        self._stdin_closed = False

    # -- the front's side: what WrapSession calls ------------------------
    async def send(self, message: Outbound) -> None:
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[Outbound]) -> None:
        if not messages:
            return
        for message in messages:
            await message.ready()
        payload = b"".join([m.data + b"\n" for m in messages])
        async with self._send_lock:
            try:
                await self._stdin_send.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ChildExited(self.returncode) from None

    async def batches(self) -> AsyncIterator[list[bytes]]:
        async for lines in line_batches(self._stdout_recv, self.max_line):
            lines = [line for line in lines if line is not TOO_LONG]
            if lines:
                yield lines

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def close_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            async with self._send_lock:
                await self._stdin_send.aclose()

    async def terminate(self, grace: float | None = None) -> int:
        with trio.CancelScope(shield=True):
            await self.close_stdin()
            if self.exits_on_eof:
                await self.exit(0)
            with trio.move_on_after(self.grace if grace is None else grace):
                return await self.wait()
            self.signals.append("SIGKILL")
            await self.exit(-9)
            return await self.wait()
        raise AssertionError("unreachable: the shielded scope always returns")

    # -- the server's side: what a test does as the child ------------------
    async def next_line(self) -> bytes:
        """The next line the front wrote to the child (b"" once its stdin is closed)."""
        while not self._unread:
            try:
                chunk = await self._stdin_recv.receive_some(65536)
            except trio.ClosedResourceError:  # the child exited
                return b""
            if not chunk:
                return b""
            self._unread.extend(self._splitter.feed(chunk))
        line = self._unread.pop(0)
        self.received.append(line)
        return line

    async def say(self, *lines: bytes) -> None:
        """Write lines to the child's stdout, in one write."""
        await self._stdout_send.send_all(b"".join(line + b"\n" for line in lines))

    async def exit(self, code: int) -> None:
        """The child ends: its stdout closes, its stdin is gone, ``wait`` returns ``code``."""
        if self._exited.is_set():
            return
        self.returncode = code
        await self._stdout_send.aclose()
        await self._stdin_recv.aclose()
        self._exited.set()

    async def echo(self) -> None:
        """Serve like tests/fixtures/echo_server.py: answer each request with its params;
        exit 0 at stdin EOF."""
        while line := await self.next_line():
            message = json.loads(line)
            if "id" in message and "method" in message:
                await self.say(json.dumps({"jsonrpc": "2.0", "id": message["id"],
                                           "result": {"echo": message.get("params")}}).encode())
        await self.exit(0)


class LinePeer:
    """The client's end of the wrap front: lines in, lines out."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, max_line: int = MAX_LINE) -> None:
        self.stream = stream
        self._splitter = LineSplitter(max_line)
        self._unread: list[bytes] = []
        self.seen: list[dict[str, Any]] = []

    async def send(self, *lines: bytes) -> None:
        await self.stream.send_all(b"".join(line + b"\n" for line in lines))

    async def close(self) -> None:
        """Client EOF: the end of the front's stdin."""
        await self.stream.send_eof()

    async def line(self) -> bytes:
        """The next line the front wrote to the client (b"" at EOF)."""
        while not self._unread:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return b""
            self._unread.extend(self._splitter.feed(chunk))
        return self._unread.pop(0)

    async def message(self) -> dict[str, Any]:
        line = await self.line()
        assert line, "the front closed the client's stream"
        got: dict[str, Any] = json.loads(line)
        self.seen.append(got)
        return got

    async def answer(self, rid: object) -> dict[str, Any]:
        """Read messages until the response to ``rid``."""
        while True:
            got = await self.message()
            if got.get("id") == rid and "method" not in got:
                return got


class MemoryWrap:
    """A running in-memory wrap session: ``client``, ``child``, and its ``exit_code``."""

    def __init__(self, session: WrapSession, client: LinePeer, child: MemoryChild) -> None:
        self.session = session
        self.client = client
        self.child = child
        self.exit_code: int | None = None
        self.done = trio.Event()

    async def _run(self) -> None:
        try:
            self.exit_code = await self.session.run()
        finally:  # as run_wrap does: the session over, the client's streams close
            with trio.CancelScope(shield=True):
                await self.session.client_out.aclose()
            self.done.set()

    async def ended(self) -> int:
        """Wait for the session to end; its exit code."""
        await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code


@asynccontextmanager
async def memory_wrap(mediator: Mediator, child: MemoryChild | None = None, *,
                      echo: bool = True, max_line: int = MAX_LINE,
                      seconds: float = 10,
                      listen_seconds: float = 3600.0) -> AsyncIterator[MemoryWrap]:
    """Run a WrapSession between an in-memory client and child.

    With ``echo`` the child serves as the echo server; without, the test speaks for it.
    Leaving the block ends the client's stream and waits (``seconds`` at most) for the
    session to end. ``listen_seconds``: ``listen.listen_stream_max_seconds``.
    """
    child = child or MemoryChild(max_line)
    client_end, front_end = trio.testing.memory_stream_pair()
    # WrapSession annotates StdioChild; MemoryChild has the part of it the session uses.
    session = WrapSession(mediator, child, front_end, front_end, max_line,  # type: ignore[arg-type]
                          listen_seconds=listen_seconds)
    wrap = MemoryWrap(session, LinePeer(client_end), child)
    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            if echo:
                nursery.start_soon(child.echo)
            nursery.start_soon(wrap._run)
            yield wrap
            if not wrap.done.is_set():
                await wrap.client.close()
            await wrap.done.wait()
