"""``wrap`` mode: mcpwall as a stdio MCP server in front of a stdio child.

Clients that launch their servers themselves (Claude Desktop, Cursor, Claude
Code) run ``mcpwall wrap -- COMMAND ARGS...`` instead of ``COMMAND ARGS...``
(or ``mcpwall wrap --upstream URL`` for a server reached over Streamable
HTTP: :mod:`firewall.gateway.front.wrap_http`, on the same
:class:`StdioClient`).

Invariants:

1. Two tasks in one nursery: the client reader and the upstream reader. Each
   handles what one read brought as a batch and writes it on with one write,
   so pipelined traffic costs a syscall per burst, not per message. Writes to
   the client are serialised by a lock, writes to the child by the child's.
2. Messages to the upstream keep the client's order. A batch is written only
   after its decision events are durable (the child's ``send_many`` awaits
   each Outbound's receipt); while a commit is
   in flight, further client messages wait in the pipe, so the next batch and
   the next group commit grow with the load.
3. Client EOF ends the session cleanly: the child's stdin is closed, it gets
   ``terminate_grace`` to exit, then SIGTERM, then SIGKILL. Exit code 0.
4. Child exit answers every pending request with a JSON-RPC error
   (``Mediator.unanswered``); if the
   client was still there, the session ends with a non-zero exit code.
5. A call held for approval waits in a task of its own and may write to the
   client meanwhile (progress keep-alives, elicitation). When the session
   ends (client EOF or child exit), held calls are withdrawn: nobody can
   approve them afterwards.
6. Everything written to the client is one line for every reader
   (``framing.line_safe``): the mediator's messages already are; mcpwall's
   own (refusals naming what the client sent) are made so here.
7. ``subscriptions/listen`` (2026-07-28) is narrowed to the types the policy
   allows before the mediator decides it, the listen-stream notifications
   relayed are those of an open listen's honoured filter, a listen past the
   cap is refused, a listen held for approval is open from its release,
   before it reaches the server, and a policy reload re-decides the open
   listens and tells those that follow tools (``listen.StdioListens``). A
   listen open for ``listen.listen_stream_max_seconds`` is ended by mcpwall:
   the child is sent ``notifications/cancelled`` for its id (mcpwall's own
   message; a bridged listen is ended in the bridge), the mediator records
   the request ``cancelled``, the client gets the graceful end (a
   ``SubscriptionsListenResult`` under its id) and ``listen_end`` says
   ``lifetime``. A listen the client cancels is recorded ``cancelled`` at once.
8. Client and child of different protocol eras are bridged by
   :mod:`firewall.gateway.front.wrap_bridge`: a 2026-07-28 client over a
   2025-only child with ``bridge`` set (``--bridge``), a 2025 client over a
   child of the new revision only always (found out when the child refuses
   ``initialize``; its input requests asked of the client, the call retried
   once they are answered). What reaches the child is still a decided message
   (translated, its receipt kept: a client's answer to the child's own
   request is its decided retry) or mcpwall's own handshake, refusals of the
   child's requests and cancellations of calls it abandoned.
9. Answers of the 2026-07-28 revision (those that carry ``resultType``) are
   relayed as on the HTTP front (``revision.ResultView``): a cacheable
   result's ``ttlMs`` capped by ``listen.max_cache_ttl_seconds`` (so a policy
   reload is seen within it), ``server/discover`` naming the revisions
   mcpwall speaks, the tools' ``x-mcp-header`` annotations learnt (``wrap
   --upstream`` sends the ``Mcp-Param-*`` headers made from them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import trio

from firewall.config import StdioServer
from firewall.gateway.front.listen import PendingListen, StdioListens
from firewall.gateway.front.wrap_bridge import ModernChild, ModernClient, Retry
from firewall.gateway.mediator import HeldCall, Lost, Mediator, Routed
from firewall.gateway.outbound import Outbound
from firewall.gateway.policy_reload import watchers_of
from firewall.gateway.upstream.stdio import (
    ChildExited,
    StdioChild,
    line_batches,
    open_stdio_child,
)
from firewall.log import get_logger
from firewall.protocol import framing, jsonrpc, mcp, revision
from firewall.protocol.framing import TOO_LONG


class StdioClient:
    """The client side of a wrapped session: its stdin read in batches, each
    message decided, refusals answered, held calls waited for in their own
    tasks, and everything for the client written one line each (rule 6).

    A subclass says how decided messages reach its upstream
    (:meth:`forward`, :meth:`forward_one`) and runs the session.
    """

    def __init__(
        self,
        mediator: Mediator,
        client_in: trio.abc.ReceiveStream,
        client_out: trio.abc.SendStream,
        max_line: int,
        max_listens: int = 16,
        listen_seconds: float = 3600.0,
        ttl_ms: int = 60_000,
    ) -> None:
        self.mediator = mediator
        # Rule 9: the revision's answers as every front relays them (a bridge
        # of the session may take over the mediator's hook).
        self.results = revision.ResultView(ttl_ms, era_marked=True)
        mediator.on_result = self._result_seen
        self.client_in = client_in
        self.client_out = client_out
        self.max_line = max_line
        self.log: Any = mediator.log
        self.exit_code = 0
        self._client_lock = trio.Lock()
        self._client_gone = False
        self._client_eof = False
        self._client_scope = trio.CancelScope()
        self._held_calls: trio.Nursery
        self.listens = StdioListens(mediator, max_listens, listen_seconds)  # rule 7
        self._listen_opened = trio.Event()  # wakes the lifetime watch (rule 7)

    def _result_seen(self, method: str, line: bytes, narrowed: bool) -> bytes:
        return self.results.seen(method, line, narrowed)

    async def forward(self, messages: list[Outbound]) -> bool:
        """Write decided messages to the upstream, in order; False if it is gone."""
        raise NotImplementedError

    async def forward_one(self, message: Outbound) -> None:
        """Write one released held call to the upstream (a gone upstream is ignored:
        its reader answers what is pending)."""
        raise NotImplementedError

    async def end_listen(self, key: str, why: str) -> None:
        """End an open listen (rule 7: its lifetime, the session's end): the
        upstream told, the client given the graceful end, ``listen_end`` recorded."""
        raise NotImplementedError

    async def listen_cancelled(self, key: str) -> None:
        """The client cancelled an open listen (its ``notifications/cancelled`` is
        decided and goes on like any message): the request is recorded
        ``cancelled`` now, and the upstream owes no answer (a late one is dropped)."""
        rid = jsonrpc.decode_any(key.encode())
        if isinstance(rid, (int, str)):
            await self.mediator.ended_here(rid, "listen cancelled by the client")

    def _opened(self, key: str | None) -> None:
        if key is not None:
            self._listen_opened.set()

    async def _lifetimes(self) -> None:
        """End each listen when its lifetime does (rule 7)."""
        while True:
            self._listen_opened = trio.Event()
            with trio.move_on_at(self.listens.next_due()):
                await self._listen_opened.wait()
            for key in self.listens.due(trio.current_time()):
                await self.end_listen(key, "lifetime")

    async def _decide(self, line: bytes) -> Routed:
        """Decide one client message (a subclass may rewrite it first)."""
        return await self.mediator.from_client(line, wait=False)

    async def _to_client(self, messages: list[bytes]) -> None:
        if not messages or self._client_gone:
            return
        lines = []
        for message in messages:  # rule 6: one line each, for any reader
            try:
                lines.append(framing.line_safe(message))
            except framing.NotCanonical as exc:
                self.log.error("client_message_not_relayable", error=str(exc))
        async with self._client_lock:
            try:
                await self.client_out.send_all(b"\n".join(lines) + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.log.info("client_gone")
                self._client_gone = self._client_eof = True
                self._client_scope.cancel()

    async def _read_client(self) -> None:
        async for lines in line_batches(self.client_in, self.max_line):
            if not await self._client_batch(lines):
                return  # the upstream is gone: its reader answers what is pending
        self._client_eof = True
        self.log.info("client_eof")

    async def _client_batch(self, lines: list[bytes]) -> bool:
        """Decide a batch, answer refusals, forward the rest in one write.

        False when the upstream can no longer be written to.
        """
        replies: list[bytes] = []
        routed: list[Outbound] = []
        for line in lines:
            if line is TOO_LONG:
                self.log.warning("client_line_too_long", limit=self.max_line)
                replies.append(jsonrpc.error_response(
                    None, jsonrpc.MESSAGE_TOO_LARGE,
                    f"message longer than {self.max_line} bytes refused"))
                continue
            line = self.listens.incoming(line)
            for key in self.listens.take_cancelled():
                await self.listen_cancelled(key)
            if self.listens.over_cap:
                replies.append(await self.listens.refuse(line))
                continue
            r = await self._decide(line)
            listen = None
            if self.listens.pending:
                if r.held is not None:  # opened once approved (rule 7)
                    listen = self.listens.held()
                else:
                    self._opened(await self.listens.decided(r.upstream is not None))
            if r.held is not None:  # waits for a person in its own task
                self._held_calls.start_soon(self._release, r.held, listen)
                continue
            if r.client is not None:
                replies.append(r.client)
            if r.upstream is not None:
                routed.append(r.upstream)
        for out in routed:  # durable before the client hears of the batch
            await out.ready()
        await self._to_client(replies)
        await self.listens.flush()  # the listens the client cancelled (rule 7)
        return await self.forward(routed)

    @contextlib.asynccontextmanager
    async def _reload_pushes(self) -> AsyncIterator[None]:
        """While open, a policy reload that changed the table reaches the
        session's listens (rule 7): re-decided, and told to refetch tools; and
        each listen ends with its lifetime."""
        watchers = watchers_of(self.mediator.policy)
        send, receive = trio.open_memory_channel[None](1)

        def changed() -> None:  # a reload while one waits: that one covers it
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(None)

        async def push() -> None:
            async for _ in receive:
                await self._to_client(self.listens.policy_changed())

        watchers.append(changed)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(push)
                nursery.start_soon(self._lifetimes)
                yield
                nursery.cancel_scope.cancel()
        finally:
            watchers.remove(changed)

    async def _release(self, held: HeldCall, listen: PendingListen | None = None) -> None:
        """Forward or refuse a held call once a person (or the deadline) decided
        (a held listen is open before it goes on)."""

        async def to_client(data: bytes) -> None:
            await self._to_client([data])

        r = await held.wait(to_client)
        self._opened(await self.listens.released(listen, r.upstream is not None))
        await self._to_client([r.client] if r.client is not None else [])
        if r.upstream is not None:
            await self.forward_one(r.upstream)


class WrapSession(StdioClient):
    """One wrapped session: a client on two streams, a child, a mediator."""

    def __init__(
        self,
        mediator: Mediator,
        child: StdioChild,
        client_in: trio.abc.ReceiveStream,
        client_out: trio.abc.SendStream,
        max_line: int,
        *,
        bridge: bool = False,
        timeout: float = 300.0,
        ttl_ms: int = 60_000,
        max_listens: int = 16,
        listen_seconds: float = 3600.0,
    ) -> None:
        super().__init__(mediator, client_in, client_out, max_line, max_listens,
                         listen_seconds, ttl_ms)
        self.child = child
        # Bridging (rule 7): --bridge for a 2026-07-28 client over a 2025 child;
        # a child of the new revision only is found out on its own.
        self.modern_client = ModernClient(mediator, child, timeout) if bridge else None
        if self.modern_client is not None:  # one listen, ended in both parts at once
            self.modern_client.open_listens = self.listens.open
        self.modern_child = ModernChild(mediator, self._send_child, ttl_ms)

    async def run(self) -> int:
        """Mediate until the client leaves or the child dies; return the exit code."""
        async with trio.open_nursery() as nursery:
            self._held_calls = nursery
            if self.modern_client is not None:
                self.modern_client.nursery = nursery  # its retry timers
            nursery.start_soon(self._read_child)
            async with self._reload_pushes():
                with self._client_scope:
                    await self._read_client()
            if self.modern_client is not None:
                self.modern_client.close()
            self.mediator.holds.withdraw("the client disconnected" if self._client_eof
                                         else "the session ended")
            # Client EOF (or the client or the child gone): ask the child to
            # exit, relaying what it still says until it does. Returns at once
            # when the child has already exited.
            await self.child.terminate()
        await self.listens.close("session ended")
        return self.exit_code

    async def _decide(self, line: bytes) -> Routed:
        rewritten = await self.modern_child.to_decide(line)
        if isinstance(rewritten, bytes):  # answered here, or goes nowhere
            return Routed(client=rewritten or None)
        if isinstance(rewritten, Retry):  # a call whose input requests were answered
            rewritten = rewritten.inbound
        if rewritten is not None:
            routed = await self.mediator.from_client(rewritten, wait=False)
            self.modern_child.decided(rewritten, routed.upstream is not None
                                      or routed.held is not None)
            return routed
        return await self.mediator.from_client(line, wait=False)

    async def _send_child(self, message: Outbound) -> bool:
        try:
            await self.child.send(message)
        except ChildExited:
            return False
        return True

    async def forward(self, messages: list[Outbound]) -> bool:
        try:
            self.modern_child.saw_initialize(messages)
            if self.modern_client is not None and not self.modern_child.client_initialized:
                messages = await self.modern_client.outbound(messages, self._to_client)
            await self.child.send_many(messages)
        except ChildExited:
            return False
        return True

    async def forward_one(self, message: Outbound) -> None:
        await self.forward([message])

    async def end_listen(self, key: str, why: str) -> None:
        ended = self.listens.end(key, why)
        if ended is None:
            return
        rid, graceful = ended
        if self.modern_client is None or not await self.modern_client.end_listen(rid):
            # One line whatever the client's id holds (U+2028 is written raw).
            note = framing.line_safe(jsonrpc.request(mcp.CANCELLED, {
                "requestId": rid, "reason": f"mcpwall: listen {why}"}))
            with contextlib.suppress(ChildExited):
                await self.child.send(Outbound.own(note, "cancellation of a listen it ended"))
        await self.mediator.ended_here(rid, f"listen ended by mcpwall: {why}")
        await self._to_client([graceful])
        await self.listens.flush()

    async def _read_child(self) -> None:
        async for batch in self.child.batches():
            to_client: list[bytes] = []
            to_child: list[Outbound] = []
            lines: list[bytes] = []
            for raw in batch:
                if self.modern_client is None:
                    lines.append(raw)
                    continue
                seen, question = await self.modern_client.from_child(raw)
                if question is not None:  # a server request carried as an input request
                    to_client.append(question)
                if seen is not None:  # a change, once for each bridged listen following it
                    lines.extend(self.modern_client.tagged(seen))
            for raw in lines:
                line: bytes | None = raw
                if line is not None:
                    line, made = await self.modern_child.from_child(line)
                    if made is not None:
                        to_client.append(made)
                if line is None:
                    continue
                r = await self.mediator.from_server(line)
                asked = None if r.client is None else self.modern_child.to_client(r.client)
                if isinstance(asked, bytes):  # the error that ends a bridged call
                    to_client.append(asked)
                elif asked is not None:  # input requests of a bridged call, asked of the client
                    to_client.extend(asked[1])
                elif r.client is not None and self.listens.admits(r.client):
                    to_client.append(r.client)
                if r.upstream is not None:
                    to_child.append(r.upstream)
            await self._to_client(to_client)
            await self.listens.flush()
            with contextlib.suppress(ChildExited):
                await self.child.send_many(to_child)
        if self.modern_client is not None:
            self.modern_client.child_gone()
        code = await self.child.wait()
        # Pending requests are answered even after client EOF: a client may
        # close its end of our stdin and still read our stdout.
        await self._to_client(await self.mediator.unanswered(Lost(f"exited with code {code}")))
        if not self._client_eof:
            self.log.error("upstream_died", returncode=code)
            self.exit_code = code if code > 0 else (128 - code if code < 0 else 1)
            self._client_scope.cancel()


def client_streams(client_in: trio.abc.ReceiveStream | None,
                   client_out: trio.abc.SendStream | None
                   ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
    """The given streams, or our own stdin and stdout."""
    return (client_in if client_in is not None else trio.lowlevel.FdStream(os.dup(0)),
            client_out if client_out is not None else trio.lowlevel.FdStream(os.dup(1)))


async def run_wrap(
    settings: StdioServer,
    *,
    mediator: Mediator,
    client_in: trio.abc.ReceiveStream | None = None,
    client_out: trio.abc.SendStream | None = None,
    handshake_seconds: float = 300.0,
    ttl_ms: int = 60_000,
    max_listens: int = 16,
    listen_seconds: float = 3600.0,
) -> int:
    """Run one wrapped session on the given streams (our stdin/stdout by default);
    ``handshake_seconds``: how long mcpwall's own handshake with a bridged child may take,
    ``ttl_ms``: the cache cap of a bridged child's answers, ``max_listens``: the
    listens open at once, ``listen_seconds``: the longest one lives."""
    client_in, client_out = client_streams(client_in, client_out)
    log = get_logger(server=mediator.server, session=mediator.session)
    try:
        async with open_stdio_child(settings, server=mediator.server,
                                    session=mediator.session) as child:
            code = await WrapSession(mediator, child, client_in, client_out,
                                     settings.max_line_bytes, bridge=settings.bridge,
                                     timeout=handshake_seconds, ttl_ms=ttl_ms,
                                     max_listens=max_listens,
                                     listen_seconds=listen_seconds).run()
    except OSError as exc:
        log.error("upstream_start_failed", error=str(exc))
        return 127
    finally:
        with trio.CancelScope(shield=True):
            await client_out.aclose()
            await client_in.aclose()
    return code
