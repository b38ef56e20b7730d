"""HTTP sessions backed by stdio upstreams: one supervised child per session.

The HTTP front speaks Streamable HTTP to the client; the child speaks
newline-delimited JSON-RPC. This module correlates the two. Rules it keeps:

1. One child per session, started by ``initialize`` and living in the
   session's task. At most ``max_children`` sessions (hence children) per
   server: the next ``initialize`` gets HTTP 503; at most
   ``max_children_per_principal`` of them for one principal: its next
   ``initialize`` gets HTTP 429 (:mod:`firewall.gateway.front.admission`). A session idle for
   ``min(listen.session_idle_seconds, server.idle_seconds)`` is closed with
   its child (the child is reaped; the session id becomes unknown).
2. A child that dies answers every pending request with a JSON-RPC error
   (``Mediator.unanswered``) and is restarted, up to ``restart_attempts`` times
   with exponential backoff (0.5 s, 1 s, 2 s, ... capped at 30 s); the
   restarted child is given the session's ``initialize`` request and
   ``notifications/initialized`` again, so the client's session goes on (state
   the server kept in memory is lost). After the last attempt the session ends.
3. Routing of what the child says (after the mediator):
   - a response goes to the stream of the POST that carried its request;
   - ``notifications/progress`` goes to the stream of the request that
     announced that ``progressToken``;
   - any other message (server requests such as sampling, elicitation,
     roots/list, and other notifications) goes to the stream of the one
     request in flight when exactly one is (the spec asks for related messages
     to travel on the request's stream, and a stdio server does not say what
     a message relates to), else to the session's GET stream, buffered until
     a GET stream is open.
4. A POST of a request is answered with ``text/event-stream`` (event ids for
   resumption, keepalive comments while idle), or with ``application/json``
   when the client's ``Accept`` admits JSON only (messages other than the
   response then go to the GET stream). The client
   disconnecting does not cancel the request: its answer stays in the
   stream's replay buffer for a ``Last-Event-ID`` GET, and the per-request
   upstream timeout still applies.
5. A child that speaks only the 2026-07-28 revision (it refuses the client's
   ``initialize`` and answers a ``server/discover`` probe) is bridged for the
   session as ``mcpwall wrap`` does it
   (:class:`~firewall.gateway.front.wrap_bridge.ModernChild`): its
   ``initialize`` answered from the discover result, each later message
   rewritten before it is decided; a restarted child gets no handshake. The
   input requests of its ``InputRequiredResult`` answers go on the call's
   event stream (a JSON-only request gets an error instead); the client's
   answers, POSTed, complete the round and the call is sent again
   (:meth:`StdioSession.retry`), its answer on the same stream.
"""

from __future__ import annotations

import collections
from typing import Any, Final

import msgspec
import trio

from firewall.audit.events import LifecycleKind, append_lifecycle
from firewall.config import StdioServer
from firewall.gateway.front import held_http
from firewall.gateway.front.admission import Refusal, ServerCaps
from firewall.gateway.front.bridge import Bridge, stdio_link
from firewall.gateway.front.bridge_listen import BridgedListens
from firewall.gateway.front.endpoint import refuse_stateless
from firewall.gateway.front.sessions import (
    FrontContext,
    Session,
    SessionStream,
    new_session_id,
    parse_event_id,
)
from firewall.gateway.front.sse_response import SseResponse
from firewall.gateway.front.wrap_bridge import ModernChild, Retry
from firewall.gateway.http.exchange import Exchange, refuse
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.stdio import ChildExited, StdioChild, open_stdio_child
from firewall.policy.decision import Caller
from firewall.protocol import framing, jsonrpc, mcp, revision
from firewall.protocol.inbound import Inbound
from firewall.protocol.jsonrpc import Kind, RequestId

RESTART_BACKOFF_FIRST: Final = 0.5
RESTART_BACKOFF_MAX: Final = 30.0
# A child that ran this long before dying resets the restart budget.
STABLE_RUN_SECONDS: Final = 60.0
# Finished request streams kept for resumption, per session.
KEEP_FINISHED_STREAMS: Final = 64
_HANDSHAKE_ID: Final = "mcpwall-restart-initialize"



class _ProgressParams(msgspec.Struct):
    progressToken: int | str | None = None


_progress_params: Final = msgspec.json.Decoder(_ProgressParams)


class StdioSession(Session):
    """A client session whose upstream is a child process of its own."""

    def __init__(self, *, sid: str, server: str, caller: Caller, mediator: Mediator,
                 idle_limit: float, settings: StdioServer, timeout: float,
                 keepalive: float, ttl_ms: int = 60_000) -> None:
        super().__init__(sid=sid, server=server, caller=caller, mediator=mediator,
                         idle_limit=idle_limit)
        self.settings = settings
        self.timeout = timeout
        self.keepalive = keepalive
        self.get_stream = SessionStream(0)
        self._streams: dict[int, SessionStream] = {0: self.get_stream}
        self._finished: collections.OrderedDict[int, SessionStream] = collections.OrderedDict()
        self._next_stream = 1
        self._by_request: dict[RequestId, SessionStream] = {}
        self._by_progress: dict[int | str, SessionStream] = {}
        self._json_only: set[int] = set()
        self._child: StdioChild | None = None
        self._ready = trio.Event()
        self._scope = trio.CancelScope()
        # What the client's initialize and notifications/initialized were
        # forwarded as, replayed to a restarted child.
        self.handshake: list[Outbound] = []
        self._handshake_done = trio.Event()
        self._handshake_done.set()  # only a restart waits for a replayed handshake
        self.restarts = 0
        # A 2025 client over a child of the new revision only (wrap_bridge rules 6, 7).
        self.modern_child = ModernChild(mediator, self.send, ttl_ms)

    # -- lifetime ----------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the child until the session ends. Raises OSError if the
        first child cannot be started (before ``task_status.started``)."""
        first = True
        budget = self.settings.restart_attempts
        with self._scope:
            try:
                while True:
                    started = trio.current_time()
                    try:
                        async with open_stdio_child(self.settings, server=self.server,
                                                    session=self.id) as child:
                            self._child = child
                            await self._record("upstream_start" if first else "upstream_restart",
                                               {"pid": child.pid, "attempt": self.restarts,
                                                "command": self.settings.command})
                            if first:
                                first = False
                                self._ready.set()
                                task_status.started()
                                await self._read(child)
                            else:
                                await self._restarted(child)
                            code = await child.wait()
                    except OSError as exc:
                        if first:
                            raise
                        self.log.error("upstream_start_failed", error=str(exc))
                        code = None
                    self._child = None
                    self._ready = trio.Event()
                    await self._record("upstream_exit", {"returncode": code})
                    await self._lost(f"exited with code {code}")
                    if trio.current_time() - started > STABLE_RUN_SECONDS:
                        budget = self.settings.restart_attempts
                    if budget <= 0 or self.closed:
                        self.log.error("upstream_died", returncode=code, restarts=self.restarts)
                        break
                    budget -= 1
                    delay = min(RESTART_BACKOFF_FIRST * 2 ** self.restarts, RESTART_BACKOFF_MAX)
                    self.restarts += 1
                    self.log.warning("upstream_restarting", returncode=code, delay=delay,
                                     attempt=self.restarts)
                    await trio.sleep(delay)
            finally:
                self.closed = True
                self._child = None
                self._ready.set()  # waiters find no child and get an error
                with trio.CancelScope(shield=True):
                    await self._lost("session closed")
                self.end_get_streams()
                self.get_stream.finish()

    async def _record(self, kind: LifecycleKind, detail: dict[str, Any]) -> None:
        await append_lifecycle(self.mediator.audit, kind, session=self.id,
                               principal=self.caller.principal, server=self.server,
                               detail=detail)

    async def close(self, reason: str) -> None:
        """End the session: its child is stopped, pending requests get errors."""
        if not self.closed:
            self.log.info("session_closed", reason=reason)
        self.closed = True
        self._scope.cancel()

    async def _restarted(self, child: StdioChild) -> None:
        """Replay the client's handshake to a restarted child, then serve."""
        self._handshake_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, child)
            if self.handshake and self.modern_child.bridged is None:  # (rule 5: none)
                init = jsonrpc.decode_any(self.handshake[0].data)
                init["id"] = _HANDSHAKE_ID
                try:
                    await child.send(Outbound.own(framing.canonical(jsonrpc.encode(init)),
                                                  "initialize replayed to a restarted child"))
                    with trio.move_on_after(self.timeout):
                        await self._handshake_done.wait()
                    for note in self.handshake[1:]:
                        await child.send(note)
                except ChildExited:
                    return
            self.log.info("upstream_restarted", pid=child.pid, attempt=self.restarts)
            self._ready.set()

    async def _read(self, child: StdioChild) -> None:
        async for line in child.lines():
            if _HANDSHAKE_ID.encode() in line and not self._handshake_done.is_set():
                self._handshake_done.set()  # the replayed initialize's answer is ours
                continue
            seen, made = await self.modern_child.from_child(line)
            if made is not None:
                self._deliver(made)
            if seen is None:
                continue
            routed = await self.mediator.from_server(seen)
            if routed.upstream is not None:  # a refused server->client request
                try:
                    await child.send(routed.upstream)
                except ChildExited:
                    break
            if routed.client is not None:
                asked = self.modern_child.to_client(routed.client)
                if asked is None or isinstance(asked, bytes):
                    self._deliver(asked or routed.client)
                else:
                    self._ask(*asked)

    def _ask(self, rid: RequestId, requests: list[bytes]) -> None:
        """Input requests of a bridged call (wrap_bridge rule 8), on the call's own
        event stream; a call whose client takes JSON only is answered with an error."""
        stream = self._by_request.get(rid)
        if stream is None or stream.number in self._json_only:
            self.modern_child.forget(rid)
            if stream is not None:
                self._answer(rid, stream, jsonrpc.error_response(
                    rid, jsonrpc.INTERNAL_ERROR, (
                        f"server {self.server!r} asks for input; a client that does not "
                        "accept text/event-stream cannot be asked")))
            return
        for request in requests:
            stream.publish(request)

    def deliver(self, data: bytes) -> None:
        """Put a message made for the client on the stream it belongs to."""
        self._deliver(data)

    async def retry(self, retry: Retry) -> None:
        """A bridged call again, its input requests answered (wrap_bridge rule 8):
        decided like any request, sent to the child, answered on the call's
        stream (still open); a refusal answers it there."""
        routed = await self.mediator.from_client(retry.inbound)
        self.modern_child.decided(retry.inbound, routed.upstream is not None)
        if routed.upstream is not None:
            await self.send(routed.upstream)  # a lost child answers the call when it is seen
        elif routed.client is not None:
            self._deliver(routed.client)

    async def _lost(self, reason: str) -> None:
        for reply in await self.mediator.unanswered(Lost(reason)):
            self._deliver(reply)
        if self._by_request:  # streams the mediator no longer tracked: answered all the same
            for reply in await self.mediator.unanswered(Lost(reason), list(self._by_request)):
                self._deliver(reply)

    # -- routing -----------------------------------------------------------
    def _deliver(self, data: bytes) -> None:
        """Put one message for the client on the stream it belongs to."""
        try:
            msg = jsonrpc.decode(data)
        except jsonrpc.ProtocolError:
            return
        if msg.kind is Kind.RESPONSE:
            rid = msg.request_id
            stream = self._by_request.get(rid) if rid is not None else None
            if stream is None:
                self.log.debug("late_response_dropped", request_id=rid)
                return
            self._answer(rid, stream, data)  # type: ignore[arg-type]
            return
        if msg.kind is Kind.NOTIFICATION and msg.method == mcp.PROGRESS:
            target = self._progress_stream(msg)
            if target is not None:
                target.publish(data)
                return
        live = [s for s in self._by_request.values() if s.number not in self._json_only]
        if len(live) == 1 and len(self._by_request) == 1:
            live[0].publish(data)
        else:
            self.get_stream.publish(data)

    def _progress_stream(self, msg: jsonrpc.Message) -> SessionStream | None:
        try:
            token = _progress_params.decode(msg.params).progressToken if len(msg.params) else None
        except jsonrpc.DECODE_ERRORS:
            return None
        stream = self._by_progress.get(token) if token is not None else None
        if stream is None or stream.number in self._json_only:
            return None
        return stream

    def _answer(self, rid: RequestId, stream: SessionStream, data: bytes) -> None:
        stream.publish(data)
        stream.finish()
        self._by_request.pop(rid, None)
        for token, s in list(self._by_progress.items()):
            if s is stream:
                del self._by_progress[token]
        self._json_only.discard(stream.number)
        self._streams.pop(stream.number, None)
        self._finished[stream.number] = stream
        while len(self._finished) > KEEP_FINISHED_STREAMS:
            self._finished.popitem(last=False)

    def open_request(self, msg: jsonrpc.Message, *, json_only: bool) -> SessionStream | None:
        """A stream for the answer to this request; None if its id is in flight."""
        rid = msg.request_id
        assert rid is not None
        if rid in self._by_request:
            return None
        stream = SessionStream(self._next_stream)
        self._next_stream += 1
        self._streams[stream.number] = stream
        self._by_request[rid] = stream
        if json_only:
            self._json_only.add(stream.number)
        token = mcp.progress_token(msg)
        if token is not None:
            self._by_progress[token] = stream
        return stream

    def in_flight_request(self, rid: RequestId) -> bool:
        return rid in self._by_request

    def stream(self, number: int) -> SessionStream | None:
        return self._streams.get(number) or self._finished.get(number)

    def cancelled_by_client(self, msg: jsonrpc.Message) -> None:
        """A client cancelled a request: end its stream (no answer will come)."""
        try:
            params = jsonrpc.decode_any(msg.params) if len(msg.params) else None
        except jsonrpc.DECODE_ERRORS:
            return
        rid = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(rid, (int, str)) and rid in self._by_request:
            self._answer(rid, self._by_request[rid], jsonrpc.error_response(
                rid, jsonrpc.REQUEST_CANCELLED, "request cancelled by the client"))

    # -- to the child ------------------------------------------------------
    async def send(self, data: Outbound) -> bool:
        """Write one message to the child (waiting out a restart); False if gone."""
        with trio.move_on_after(self.timeout):
            await self._ready.wait()
        child = self._child
        if child is None:
            return False
        try:
            await child.send(data)
        except ChildExited:
            return False
        return True

    async def forward_request(self, msg: jsonrpc.Message, data: Outbound,
                              stream: SessionStream) -> None:
        """Send a request; if the child is gone for good, answer it with an error."""
        if not await self.send(data) and self.closed:
            rid = msg.request_id
            assert rid is not None
            if self._by_request.get(rid) is stream:
                await self._fail(rid, stream, Lost("is not running"))

    async def expire(self, rid: RequestId, stream: SessionStream) -> None:
        """The per-request timeout passed: answer with an error, tell the child."""
        if self._by_request.get(rid) is not stream:
            return
        self.modern_child.forget(rid)  # input requests still unanswered: no retry now
        await self._fail(rid, stream, TimedOut(self.timeout))
        note = framing.line_safe(jsonrpc.request(mcp.CANCELLED, {  # the client's id:
            "requestId": rid, "reason": "mcpwall: timeout"}))      # one line whatever it holds
        await self.send(Outbound.own(note, "cancellation of a timed-out request"))

    async def _fail(self, rid: RequestId, stream: SessionStream,
                    failure: Lost | TimedOut) -> None:
        """Answer one request its upstream will not answer, on its stream (once)."""
        [reply] = await self.mediator.unanswered(failure, [rid])
        if self._by_request.get(rid) is stream:  # not answered while the outcome was recorded
            self._answer(rid, stream, reply)

    # -- HTTP --------------------------------------------------------------
    async def answer_request(self, ex: Exchange, stream: SessionStream, rid: RequestId,
                             headers: list[tuple[str, str]], *, json_only: bool) -> bytes | None:
        """Answer a POSTed request with JSON or SSE; return the final message."""
        deadline = trio.current_time() + self.timeout
        if not json_only:
            out = SseResponse(ex, self.keepalive)
            await out.open(headers)  # (a held call's stream is open already)
            reader = stream.reader(0, self.log)
            if await out.relay(reader, deadline):
                await self.expire(rid, stream)
                await out.relay(reader)
            await out.end()
            return reader.final
        with trio.move_on_at(deadline):
            while not stream.finished:
                await stream.wait_after(stream.last_seq)
        if not stream.finished:
            await self.expire(rid, stream)
        final = stream.events[-1][1] if stream.events else None
        await ex.respond(200, final or b"", headers=headers)
        return final

    async def open_get(self, ex: Exchange, last_event_id: str | None) -> bool:
        """Serve a GET stream (or a resumption); False when one is already open."""
        stream, seq = self.get_stream, self.get_stream.delivered
        if last_event_id is not None:
            where = parse_event_id(last_event_id)
            found = self.stream(where[0]) if where else None
            if found is not None and where is not None:
                stream, seq = found, where[1]
        is_main = stream is self.get_stream
        if is_main and self.get_open:
            return False
        scope = trio.CancelScope()
        self.get_scopes.add(scope)
        if is_main:
            self.get_open = True
        try:
            out = SseResponse(ex, self.keepalive)
            await out.open(prime=True)  # headers and a first byte out now
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_disconnect, ex, nursery.cancel_scope)
                    await out.relay(stream.reader(seq, self.log))
                    nursery.cancel_scope.cancel()
            if not ex.disconnected:
                await out.end()
        finally:
            self.get_scopes.discard(scope)
            if is_main:
                self.get_open = False
        return True

    def health(self) -> dict[str, Any]:
        child = self._child
        return {"pid": child.pid if child else None, "restarts": self.restarts,
                "pending": self.mediator.pending_count}


async def _cancel_on_disconnect(ex: Exchange, scope: trio.CancelScope) -> None:
    await ex.wait_disconnect()
    scope.cancel()


class StdioEndpoint:
    """``/servers/NAME/mcp`` of a stdio server: sessions, each with its child."""

    transport: Final = "stdio"

    def __init__(self, name: str, settings: StdioServer, front: FrontContext) -> None:
        self.name = name
        self.settings = settings
        self.front = front
        listen = front.listen
        self.idle_limit = min(listen.session_idle_seconds, settings.idle_seconds)
        self.caps = ServerCaps(settings.max_children, settings.children_per_principal(),
                               f"servers.{name}")
        # Requests of the stateless revision, carried over sessions of mcpwall's own.
        self.bridge = (Bridge(name, stdio_link(settings), front, self.caps, self.idle_limit)
                       if settings.bridge else None)
        self._listens = BridgedListens(self.bridge) if self.bridge else None

    def listen_source(self) -> BridgedListens | None:
        """With ``bridge = true``, mcpwall answers the listens itself
        (:mod:`~firewall.gateway.front.bridge_listen`)."""
        return self._listens

    async def post(self, ex: Exchange, caller: Caller, session: Session | None,
                   inbound: Inbound, accept_sse: bool) -> None:
        msg = inbound.message  # stdio sessions read the raw params (encoded, not decoded)
        body = inbound.data
        created = False
        if session is None:
            if msg.kind is not Kind.REQUEST or msg.method != mcp.INITIALIZE:
                await refuse(ex, 400, jsonrpc.INVALID_REQUEST,
                             "Bad Request: Mcp-Session-Id header required "
                             "(start a session with initialize)")
                return
            session = await self._create(ex, caller, body)
            if session is None:
                return
            created = True
        assert isinstance(session, StdioSession)
        if session.modern_child.bridged is not None:  # rewritten before it is decided
            rewritten = await session.modern_child.to_decide(inbound)
            if isinstance(rewritten, bytes) and rewritten and msg.method is None:
                session.deliver(rewritten)  # the client refused an input request: the call ends
                await ex.respond(202)
                return
            if isinstance(rewritten, bytes):  # answered here, or goes nowhere
                await (ex.respond(200, rewritten) if rewritten else ex.respond(202))
                return
            if isinstance(rewritten, Retry):  # its input requests answered: the call again
                with session.busy():
                    await session.retry(rewritten)
                await ex.respond(202)
                return
            if rewritten is not None:
                inbound, msg = rewritten, rewritten.message
        with session.busy():
            if msg.kind is Kind.REQUEST:
                final = await self._request(ex, session, inbound, msg, accept_sse, created)
                if created and not _succeeded(final):
                    await self.front.end_session(session, "initialize failed")
                return
            routed = await session.mediator.from_client(inbound)
            if routed.rejected is not None:  # a refused id-less request
                await ex.respond(400, routed.rejected)
                return
            if routed.upstream is None:  # refused, or the answer to mcpwall's own request
                await (ex.respond(200, routed.client) if routed.client else ex.respond(202))
                return
            if msg.method == mcp.CANCELLED:
                session.cancelled_by_client(msg)
            elif msg.method == "notifications/initialized" and len(session.handshake) == 1:
                session.handshake.append(routed.upstream)
            if not await session.send(routed.upstream) and session.closed:
                await refuse(ex, 404, jsonrpc.INVALID_REQUEST, "Not Found: session ended")
                return
            await ex.respond(202)

    @property
    def versions(self) -> tuple[str, ...]:
        """Both eras when the bridge carries the stateless revision; else the
        handshake revisions only (a stdio child is spoken to through a session)."""
        return revision.SUPPORTED_VERSIONS if self.bridge else revision.HANDSHAKE_VERSIONS

    async def post_stateless(self, ex: Exchange, mediator: Mediator, inbound: Inbound,
                             accept_sse: bool, headers: list[tuple[str, str]]) -> None:
        """A request of the stateless revision: carried by the bridge
        (:mod:`firewall.gateway.front.bridge`) over a 2025 session of mcpwall's
        own; with ``bridge = false`` refused with the revision's -32022 naming
        the handshake versions, so a dual-era client falls back to
        ``initialize`` (endpoint rule 5)."""
        if self.bridge is None:
            await refuse_stateless(ex, mediator, inbound,
                                   dict(headers).get("mcp-protocol-version"))
            return
        await self.bridge.post(ex, mediator.caller, mediator, inbound, accept_sse)

    async def _request(self, ex: Exchange, session: StdioSession, inbound: Inbound,
                       msg: jsonrpc.Message, accept_sse: bool, created: bool) -> bytes | None:
        headers = [("mcp-session-id", session.id)] if created else []
        rid = msg.request_id
        assert rid is not None
        if session.in_flight_request(rid):
            session.modern_child.decided(inbound, False)
            await refuse(ex, 400, jsonrpc.INVALID_REQUEST,
                         f"Bad Request: request id {rid!r} is already in flight")
            return None
        routed = await session.mediator.from_client(inbound, wait=False)
        session.modern_child.decided(inbound, routed.upstream is not None
                                     or routed.held is not None)
        if routed.held is not None:  # waits for a person (held_http's rules)
            routed = await held_http.hold(ex, routed.held, stream=accept_sse, headers=headers,
                                          keepalive=self.front.listen.keepalive_seconds)
            if routed.upstream is None:
                return await held_http.finish(ex, rid, routed, headers)
        if routed.upstream is None:  # refused, or invalid params: answered here
            await ex.respond(200, routed.client or b"", headers=headers)
            return routed.client
        stream = session.open_request(msg, json_only=not accept_sse)
        assert stream is not None
        if created:
            session.handshake = [routed.upstream]
            session.modern_child.saw_initialize(session.handshake)
        await session.forward_request(msg, routed.upstream, stream)
        return await session.answer_request(ex, stream, rid, headers, json_only=not accept_sse)

    async def _create(self, ex: Exchange, caller: Caller, body: bytes) -> StdioSession | None:
        front = self.front
        slot = front.admit(self.name, caller, self.caps)  # taken now: no await before
        if isinstance(slot, Refusal):
            await front.refuse_session(ex, slot, caller, self.name)
            return None
        sid = new_session_id()
        session = StdioSession(
            sid=sid, server=self.name, caller=caller,
            mediator=front.mediator(self.name, sid, caller),
            idle_limit=self.idle_limit, settings=self.settings,
            timeout=front.listen.upstream_timeout_seconds,
            keepalive=front.listen.keepalive_seconds,
            ttl_ms=int(front.listen.max_cache_ttl_seconds * 1000))
        session.slot = slot
        try:
            await front.start_session(session, session.run)
        except OSError as exc:
            session.log.error("upstream_start_failed", error=str(exc))
            await refuse(ex, 502, jsonrpc.UPSTREAM_UNAVAILABLE,
                         f"Bad Gateway: upstream server {self.name!r} cannot be started")
            return None
        session.log.info("session_started", transport="http", upstream="stdio")
        return session

    async def get(self, ex: Exchange, session: Session) -> None:
        assert isinstance(session, StdioSession)
        with session.busy():
            opened = await session.open_get(ex, ex.header("last-event-id"))
        if not opened:
            await refuse(ex, 409, jsonrpc.INVALID_REQUEST,
                         "Conflict: this session has a GET stream open already")

    async def delete(self, ex: Exchange, session: Session) -> None:
        await self.front.end_session(session, "deleted by the client")
        await ex.respond(204)

    async def aclose(self) -> None:
        """Nothing is shared across sessions: each child stops with its session."""

    def health(self) -> dict[str, Any]:
        report = {"transport": self.transport, "sessions": self.front.table.count(self.name),
                  "max_children": self.settings.max_children,
                  "max_children_per_principal": self.settings.children_per_principal()}
        if self.bridge is not None:
            report["bridge"] = self.bridge.health()
        return report


def _succeeded(final: bytes | None) -> bool:
    if final is None:
        return False
    try:
        return jsonrpc.decode(final).has_result
    except jsonrpc.ProtocolError:
        return False
