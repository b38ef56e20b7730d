"""``wrap`` mode: mcpwall as a stdio MCP server in front of a stdio child.

Clients that launch their servers themselves (Claude Desktop, Cursor, Claude
Code) run ``mcpwall wrap -- COMMAND ARGS...`` instead of ``COMMAND ARGS...``.

Invariants:

1. Four tasks in one nursery: client reader, ordered forwarder, upstream
   reader, client writer. Writes to each side go through one task or lock, so
   messages never interleave; bounded channels give backpressure.
2. Messages to the upstream keep the client's order; each waits for its audit
   receipt (durable mode) before it is written, without stalling the reader.
3. Client EOF ends the session cleanly: the child's stdin is closed, it gets
   ``terminate_grace`` to exit, then SIGTERM, then SIGKILL. Exit code 0.
4. Child exit while the client is still there answers every pending request
   with a JSON-RPC error and ends the session with a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import trio

from firewall.audit.events import AuditPoint
from firewall.config import StdioServer
from firewall.gateway.mediator import Mediator, Routed
from firewall.gateway.upstream.stdio import ChildExited, StdioChild, open_stdio_child
from firewall.log import get_logger
from firewall.protocol import jsonrpc
from firewall.protocol.framing import TOO_LONG, LineSplitter

_READ_SIZE = 65536
_QUEUE = 256


class WrapSession:
    """One wrapped session: a client on two streams, a child, a mediator."""

    def __init__(
        self,
        mediator: Mediator,
        child: StdioChild,
        client_in: trio.abc.ReceiveStream,
        client_out: trio.abc.SendStream,
        max_line: int,
    ) -> None:
        self.mediator = mediator
        self.child = child
        self.client_in = client_in
        self.client_out = client_out
        self.max_line = max_line
        self.log: Any = mediator.log
        self._to_client_send, self._to_client_recv = trio.open_memory_channel[bytes](_QUEUE)
        self._to_child_send, self._to_child_recv = trio.open_memory_channel[Routed](_QUEUE)
        self.exit_code = 0
        self._client_eof = False
        self._client_scope = trio.CancelScope()

    async def run(self) -> int:
        """Mediate until the client leaves or the child dies; return the exit code."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_client)
            nursery.start_soon(self._forward_to_child)
            nursery.start_soon(self._read_child)
            with self._client_scope:
                await self._read_client()
            # Client EOF: everything it sent is queued; let it reach the child,
            # then ask the child to exit and collect what it still says.
            await self._to_child_send.aclose()
        return self.exit_code

    async def _read_client(self) -> None:
        splitter = LineSplitter(self.max_line)
        async with self._to_client_send.clone() as replies:
            while True:
                try:
                    chunk = await self.client_in.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                lines = splitter.feed(chunk) if chunk else [splitter.remainder()]
                for line in lines:
                    if line is TOO_LONG:
                        self.log.warning("client_line_too_long", limit=self.max_line)
                        await replies.send(jsonrpc.error_response(
                            None, jsonrpc.MESSAGE_TOO_LARGE,
                            f"message longer than {self.max_line} bytes refused"))
                        continue
                    if not line:
                        continue
                    routed = await self.mediator.from_client(line)
                    try:
                        if routed.client is not None:
                            await replies.send(routed.client)
                        if routed.upstream is not None:
                            await self._to_child_send.send(routed)
                    except trio.BrokenResourceError:
                        return  # the client's output is gone: the session is over
                if not chunk:
                    self._client_eof = True
                    self.log.info("client_eof")
                    return

    async def _forward_to_child(self) -> None:
        async with self._to_child_recv:
            async for routed in self._to_child_recv:
                await routed.ready()
                assert routed.upstream is not None
                try:
                    await self.child.send(routed.upstream)
                except ChildExited:
                    return  # _read_child reports the exit
        # Client is done and everything was forwarded: end the child gracefully.
        await self.child.terminate()

    async def _read_child(self) -> None:
        async with self._to_client_send.clone() as out:
            async for line in self.child.lines():
                routed = await self.mediator.from_server(line)
                if routed.upstream is not None:
                    await routed.ready()
                    try:
                        await self.child.send(routed.upstream)
                    except ChildExited:
                        break
                if routed.client is not None:
                    try:
                        await out.send(routed.client)
                    except trio.BrokenResourceError:
                        break  # the client's output is gone
            code = await self.child.wait()
            # Pending requests are answered even after client EOF: a client may
            # close its end of our stdin and still read our stdout.
            for reply in await self.mediator.upstream_lost(f"exited with code {code}"):
                with contextlib.suppress(trio.BrokenResourceError):
                    await out.send(reply)
            if not self._client_eof:
                self.log.error("upstream_died", returncode=code)
                self.exit_code = code if code > 0 else (128 - code if code < 0 else 1)
                # Stop reading the client; the writer drains the errors, then ends.
                self._client_scope.cancel()
        await self._to_client_send.aclose()

    async def _write_client(self) -> None:
        async with self._to_client_recv:
            async for data in self._to_client_recv:
                try:
                    await self.client_out.send_all(data + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.log.info("client_gone")
                    self._client_eof = True
                    self._client_scope.cancel()
                    return


async def run_wrap(
    settings: StdioServer,
    *,
    mediator: Mediator,
    client_in: trio.abc.ReceiveStream | None = None,
    client_out: trio.abc.SendStream | None = None,
) -> int:
    """Run one wrapped session on the given streams (our stdin/stdout by default)."""
    if client_in is None:
        client_in = trio.lowlevel.FdStream(os.dup(0))
    if client_out is None:
        client_out = trio.lowlevel.FdStream(os.dup(1))
    log = get_logger(server=mediator.server, session=mediator.session)
    try:
        async with open_stdio_child(settings, server=mediator.server,
                                    session=mediator.session) as child:
            code = await WrapSession(mediator, child, client_in, client_out,
                                     settings.max_line_bytes).run()
    except OSError as exc:
        log.error("upstream_start_failed", error=str(exc))
        return 127
    finally:
        with trio.CancelScope(shield=True):
            await client_out.aclose()
            await client_in.aclose()
    return code


__all__ = ["AuditPoint", "WrapSession", "run_wrap"]
