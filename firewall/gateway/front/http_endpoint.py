"""HTTP sessions backed by Streamable HTTP upstreams: mediated relay.

Rules this module keeps:

1. The upstream's ``Mcp-Session-Id`` is kept in our session and sent on every
   request of it; the client only ever sees mcpwall's own id. A request without
   a session that is not ``initialize`` is forwarded without one (stateless
   servers, and the coming stateless revision of MCP), mediated on its own.
2. Forwarded: the mediator's Outbound (the decided message in its canonical
   form), ``Accept``, ``Content-Type``, ``MCP-Protocol-Version``,
   ``Last-Event-ID`` and other ``Mcp-*`` headers, plus the server's configured
   ``headers`` (its credentials). Never the client's ``Authorization`` and
   never our session id.
3. An SSE answer is parsed incrementally; each event's data passes through the
   mediator and is written to the client as soon as it arrives, with its
   ``id`` and ``retry`` unchanged, so ``Last-Event-ID`` resumption is the
   upstream's own. An event without a message (no data, or an empty data
   line: the priming event a server sends so that a client can resume) is not
   JSON-RPC: it is relayed with its fields as they came, not mediated.
   The client's stream is written by ``sse_response.SseResponse``, as every
   endpoint's is: events read together go out in one write, those that end
   the upstream's stream with the end of the client's (one write for the
   usual tools/call answer: one event, then the end), keepalive comments
   fill silences longer than ``keepalive_seconds``. A refused
   server->client request on the stream is answered to the upstream in the
   background, bounded by the upstream timeout.
4. The per-request upstream timeout bounds the wait for the answer (on a stream:
   the waits for the upstream's next bytes, not the writes to the client). A
   request the upstream will not answer (it failed, timed out, ended its
   stream without the answer, or answered with something that is no answer)
   is answered by ``Mediator.unanswered``: a JSON-RPC error carrying its id
   (HTTP 502, or 504 for a timeout; the last event of a stream already
   started), recorded as the call's outcome (``upstream_failure``, ``timeout``).
5. Upstream says 404 for our session: the upstream session is gone, so is ours.
6. A session has at most one GET stream (without ``Last-Event-ID``) open: a
   second gets 409 here, without asking the upstream, as for stdio sessions. A
   GET with ``Last-Event-ID`` resumes one of the upstream's streams (its event
   ids, its rules) and is forwarded.
7. GET streams may live for hours: they run on a pool of their own
   (:attr:`HttpEndpoint.streams`, one connection per stream, at most
   ``listen.max_sessions``), so they never take a connection from the POSTs.
9. A request of the stateless revision (2026-07-28) is relayed on its own,
   on the requests pool, with no session id either way: the headers that go
   up are ``Content-Type``, ``Accept``, the server's configured ones and the
   request-metadata headers the front made from the decided body (never the
   client's). An upstream that answers such a request with a 4xx that is no
   JSON-RPC answer to it (no answer under its id: what a handshake-era
   server says to a request without a session) speaks the handshake
   revisions only: the client
   gets -32022 naming them (400, its id, the call's outcome recorded), and
   later requests get it here, but ``server/discover``, which asks again.
10. A ``subscriptions/listen`` of the stateless revision is the front's
   listen desk's (``front/listen.py``): :meth:`HttpEndpoint.open_listen`
   only carries it upstream, on the GET streams' pool (rule 7).
8. Nothing the upstream sends reaches the client but through the mediator: a
   GET answered with anything but an event stream is answered with the
   upstream's status (502 for a 2xx) and mcpwall's own error, never with the
   upstream's body.
10. A 2025 client in front of an upstream that speaks the new revision only
   (it refused ``initialize``, and its ``server/discover`` names a revision
   of the stateless era) has its session kept here and its requests carried
   in the new revision: ``bridge_modern``'s rules. The first such refusal
   teaches the endpoint (:attr:`HttpEndpoint.legacy` False): later
   ``initialize`` requests are not sent up again.
11. With ``bridge = true``, requests of the stateless revision to an upstream
   that showed it speaks only the handshake revisions (rule 9) are carried
   by :mod:`~firewall.gateway.front.bridge` (its rules: one 2025 session of
   mcpwall's own per caller, the server's requests during a call as MRTR
   input requests) over an :class:`HttpLink`: mcpwall's ``initialize``
   POSTed, the upstream's ``Mcp-Session-Id`` kept by the link and never
   shown to anyone, each message POSTed with it and the negotiated
   ``MCP-Protocol-Version``, every message of each answer (JSON or event
   stream) handed to the bridge with the id of the request it answers (the
   bridge's rules 6 and 9: a server request or log message on a call's own
   stream is that call's, however many calls are in flight); a 404 for that session ends the bridged
   session, whose end DELETEs the upstream one. The request that taught
   mcpwall the upstream is handshake-only keeps its recorded failure and is
   then decided afresh and carried by the bridge, so the client never sees
   that -32022. From then on its listens are answered by mcpwall
   (:meth:`HttpEndpoint.listen_source`, ``front/bridge_listen.py``); while
   a bridged session has listens, its link keeps a GET stream of the
   upstream session open for the notifications sent apart from answers.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import trio

from firewall.config import HttpServer
from firewall.gateway.front import bridge_modern, held_http
from firewall.gateway.front.admission import Refusal, ServerCaps
from firewall.gateway.front.bridge import APART, BridgeSession, Dispatch, Link, LinkLost
from firewall.gateway.front.bridge import Bridge as StatelessBridge
from firewall.gateway.front.bridge_listen import BridgedListens
from firewall.gateway.front.endpoint import refuse_stateless
from firewall.gateway.front.sessions import FrontContext, Session, new_session_id
from firewall.gateway.front.sse_response import SseResponse, end_with
from firewall.gateway.http.exchange import JSON, SSE, Exchange, accepts, refuse
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.http import (
    HttpUpstream,
    PreparedHeaders,
    Reason,
    Response,
    UpstreamError,
    UpstreamEvents,
)
from firewall.log import get_logger
from firewall.policy.decision import Caller
from firewall.protocol import jsonrpc, mcp, revision, sse
from firewall.protocol.inbound import Inbound
from firewall.protocol.jsonrpc import Kind, RequestId

MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
_FORWARDED: Final = frozenset({"accept", "content-type", "mcp-protocol-version", "last-event-id"})
# A GET stream waits this long for a connection of the streams pool, then 503.
STREAM_POOL_TIMEOUT: Final = 5.0
# Prepared upstream headers kept for requests without a session.
_STATELESS_CACHE_SIZE: Final = 64
# What every stateless request sends upstream before its request-metadata headers.
_STATELESS_BASE: Final = (("content-type", JSON), ("accept", f"{JSON}, {SSE}"))


def _answered(status: int, ctype: str | None) -> str:
    """What an upstream's answer was, for the error when it relays nothing
    (worded only then: most answers are relayed)."""
    return f"answered HTTP {status} with {ctype or 'no type'}"


class HttpSession(Session):
    """A client session mapped to a session of the upstream server."""

    def __init__(self, *, endpoint: HttpEndpoint, sid: str, caller: Caller,
                 mediator: Mediator) -> None:
        super().__init__(sid=sid, server=endpoint.name, caller=caller, mediator=mediator,
                         idle_limit=endpoint.idle_limit)
        self.endpoint = endpoint
        self.upstream_sid: str | None = None
        # The upstream headers of the last POST, checked once: a client sends
        # the same ones on every call of a session.
        self.prepared: tuple[tuple[tuple[str, str], ...], PreparedHeaders] | None = None
        # A 2025 client's session kept by mcpwall for a new-revision-only
        # upstream (rule 10, bridge_modern): its initialize's params, then what
        # its requests carry upstream.
        self.init_params: Any = None
        self.bridged: bridge_modern.Bridged | None = None

    async def close(self, reason: str) -> None:
        """End the session here and, best effort, at the upstream."""
        if self.closed:
            return
        self.closed = True
        self.log.info("session_closed", reason=reason)
        self.end_get_streams()
        if self.upstream_sid is not None and reason != "upstream":
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    async with self.endpoint.upstream.request(
                            "DELETE", {"mcp-session-id": self.upstream_sid}) as resp:
                        await resp.read(MAX_RESPONSE_BYTES)
                except UpstreamError as exc:
                    self.log.info("upstream_delete_failed", reason=exc.reason.value)


class HttpEndpoint:
    """``/servers/NAME/mcp`` of an HTTP server: a mediated relay."""

    transport: Final = "http"

    def __init__(self, name: str, settings: HttpServer, front: FrontContext) -> None:
        self.name = name
        self.settings = settings
        self.front = front
        listen = front.listen
        self.idle_limit = listen.session_idle_seconds
        # No cap of its own: the front's (listen.max_sessions, per principal too).
        self.caps = ServerCaps(None, None, f"servers.{name}")
        self.timeout = listen.upstream_timeout_seconds
        self.keepalive = listen.keepalive_seconds
        # Requests (POST, DELETE): their answers end, so a bounded pool.
        self.upstream = HttpUpstream(
            settings.url, settings.headers, max_connections=settings.max_connections,
            connect_timeout=settings.connect_timeout_seconds)
        # GET streams: one connection each for as long as the stream lives.
        self.streams = HttpUpstream(
            settings.url, settings.headers, max_connections=listen.max_sessions,
            connect_timeout=settings.connect_timeout_seconds, pool_timeout=STREAM_POOL_TIMEOUT)
        self._stateless: dict[tuple[tuple[str, str], ...], PreparedHeaders] = {}
        # The same for requests of the stateless revision, by their
        # request-metadata headers alone (rule 9).
        self._modern_prepared: dict[tuple[tuple[str, str], ...], PreparedHeaders] = {}
        # Whether the upstream speaks the stateless revision: None until one of
        # its answers to such a request tells (rule 9).
        self.modern: bool | None = None
        # Whether the upstream answers initialize: None until it did or
        # refused one (rule 10); False: its 2025 clients are bridged.
        self.legacy: bool | None = None
        self.bridge = bridge_modern.Bridge(self)
        # Requests of the stateless revision to a handshake-only upstream,
        # carried over 2025 sessions of mcpwall's own (rule 11).
        self.stateless_bridge = (StatelessBridge(name, self._connect, front, self.caps,
                                                 self.idle_limit)
                                 if settings.bridge else None)
        self._listens = (BridgedListens(self.stateless_bridge) if self.stateless_bridge
                         else None)

    @contextlib.asynccontextmanager
    async def _connect(self, session: BridgeSession) -> AsyncIterator[Link]:
        """A bridged session's 2025 session with the upstream (rule 11)."""
        link = HttpLink(self)
        try:
            yield link
        finally:
            with trio.CancelScope(shield=True):
                await link.close()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.streams.aclose()

    def health(self) -> dict[str, Any]:
        stats = self.upstream.stats()
        streams = self.streams.stats()
        report = {"transport": self.transport, "url": self.settings.url,
                  "sessions": self.front.table.count(self.name),
                  "connections": {"idle": stats.idle, "in_flight": stats.in_flight,
                                  "opened": stats.opened},
                  "streams": streams.in_flight}
        if self.stateless_bridge is not None:
            report["bridge"] = self.stateless_bridge.health()
        return report

    def _headers(self, ex: Exchange, session: HttpSession | None) -> list[tuple[str, str]]:
        out = _forwarded(ex)
        if session is not None and session.upstream_sid is not None:
            out.append(("mcp-session-id", session.upstream_sid))
        return out

    def _prepared(self, ex: Exchange, session: HttpSession | None) -> PreparedHeaders:
        """The upstream headers of a POST, checked once per distinct set (per session)."""
        key = tuple(_forwarded(ex))
        if session is not None:
            if session.upstream_sid is not None:
                key += (("mcp-session-id", session.upstream_sid),)
            cached = session.prepared
            if cached is not None and cached[0] == key:
                return cached[1]
            prepared = self.upstream.prepare(key)
            session.prepared = (key, prepared)
            return prepared
        found = self._stateless.get(key)
        if found is None:
            if len(self._stateless) >= _STATELESS_CACHE_SIZE:
                self._stateless.clear()
            found = self._stateless[key] = self.upstream.prepare(key)
        return found

    def _prepared_stateless(self, headers: list[tuple[str, str]]) -> PreparedHeaders:
        """The upstream headers of a stateless request: made from its decided body
        (rule 9), checked once per distinct set."""
        key = tuple(headers)
        found = self._modern_prepared.get(key)
        if found is None:
            if len(self._modern_prepared) >= _STATELESS_CACHE_SIZE:
                self._modern_prepared.clear()
            found = self._modern_prepared[key] = self.upstream.prepare((*_STATELESS_BASE, *key))
        return found

    # -- POST ----------------------------------------------------------------
    async def post(self, ex: Exchange, caller: Caller, session: Session | None,
                   inbound: Inbound, accept_sse: bool) -> None:
        msg = inbound.envelope
        created: HttpSession | None = None
        if session is None and msg.kind is Kind.REQUEST and msg.method == mcp.INITIALIZE:
            slot = self.front.admit(self.name, caller, self.caps)  # taken now: no await before
            if isinstance(slot, Refusal):
                await self.front.refuse_session(ex, slot, caller, self.name)
                return
            sid = new_session_id()
            created = HttpSession(endpoint=self, sid=sid, caller=caller,
                                  mediator=self.front.mediator(self.name, sid, caller))
            created.slot = slot
            created.init_params = revision.params_of(inbound)
            session = created
        assert session is None or isinstance(session, HttpSession)
        if session is not None and (session.bridged is not None
                                    or (created is not None and self.legacy is False)):
            with session.busy():
                try:
                    await self._post_bridged(ex, session, created, inbound, accept_sse)
                finally:
                    if created is not None and not self.front.table.holds(created):
                        self.front.table.remove(created)
            return
        mediator = (session.mediator if session is not None
                    else self.front.mediator(self.name, "stateless-" + new_session_id(), caller))
        if session is None:
            await self._post(ex, None, None, mediator, inbound)
            return
        with session.busy():
            try:
                await self._post(ex, session, created, mediator, inbound)
            finally:
                if created is not None and not self.front.table.holds(created):
                    self.front.table.remove(created)  # never started: its slot goes back

    async def _post_bridged(self, ex: Exchange, session: HttpSession,
                            created: HttpSession | None, inbound: Inbound,
                            accept_sse: bool) -> None:
        """A message of a 2025 client whose upstream speaks the new revision only
        (rule 10): its initialize decided and answered here, the rest bridged."""
        if created is None:
            await self.bridge.post(ex, session, inbound, accept_sse)
            return
        msg = inbound.envelope
        routed = await session.mediator.from_client(inbound)
        if routed.upstream is None:  # refused (recorded): the session never starts
            await (ex.respond(200, routed.client) if routed.client else ex.respond(202))
            return
        rid = msg.request_id
        if not await self.bridge.initialize(ex, created, rid) and rid is not None:
            [reply] = await session.mediator.unanswered(
                Lost("answered server/discover as no server of revision "
                     f"{revision.LATEST_MODERN} does"), [rid])
            await ex.respond(502, reply)

    def prepared_stateless(self, headers: list[tuple[str, str]]) -> PreparedHeaders:
        """The upstream headers of a request made of a decided body (bridge_modern)."""
        return self._prepared_stateless(headers)

    @property
    def versions(self) -> tuple[str, ...]:
        """What the upstream showed it speaks (rule 9): the stateless revision once it
        answered one of its requests (its ``server/discover`` names no other),
        the handshake ones once it refused one; both until it did either."""
        if self.modern is None or (self.modern is False and self.stateless_bridge):
            return revision.SUPPORTED_VERSIONS  # (handshake-only, bridged: rule 11)
        return revision.MODERN_VERSIONS if self.modern else revision.HANDSHAKE_VERSIONS

    def listen_source(self) -> BridgedListens | None:
        """Once the upstream showed it speaks the handshake revisions only, with
        ``bridge = true``, mcpwall answers the listens itself (rule 11)."""
        return self._listens if self.modern is False else None

    async def post_stateless(self, ex: Exchange, mediator: Mediator, inbound: Inbound,
                             accept_sse: bool, headers: list[tuple[str, str]]) -> None:
        """A request of the stateless revision, relayed on its own (rule 9).

        Once the upstream showed it speaks only the handshake revisions, the
        revision's -32022 is answered here without asking it again (but
        ``server/discover``, which asks afresh)."""
        if self.modern is False and self.stateless_bridge is not None:  # rule 11
            await self.stateless_bridge.post(ex, mediator.caller, mediator, inbound, accept_sse)
            return
        if self.modern is False and inbound.envelope.method != revision.DISCOVER:
            await refuse_stateless(ex, mediator, inbound,
                                   dict(headers).get(revision.VERSION_HEADER))
            return
        bridge = self.stateless_bridge
        again = None if bridge is None else functools.partial(
            bridge.post, ex, mediator.caller, mediator, inbound, accept_sse)
        await self._post(ex, None, None, mediator, inbound, headers, again)

    def open_listen(self, headers: list[tuple[str, str]],
                    message: Outbound) -> AbstractAsyncContextManager[Response]:
        """POST a decided ``subscriptions/listen`` (``front/listen.py``) on the
        pool of long-lived connections, as a GET stream is (rule 7)."""
        return _forwarded_on(self.streams, self._prepared_stateless(headers), message,
                             self.timeout)

    async def _post(self, ex: Exchange, session: HttpSession | None, created: HttpSession | None,
                    mediator: Mediator, inbound: Inbound,
                    stateless: list[tuple[str, str]] | None = None,
                    again: Callable[[], Awaitable[None]] | None = None) -> None:
        msg = inbound.envelope
        routed = await mediator.from_client(inbound, wait=False)
        if routed.held is not None and msg.request_id is not None:  # held_http's rules
            routed = await held_http.hold(ex, routed.held, stream=_admits_sse(ex), headers=[],
                                          keepalive=self.keepalive)
            if routed.upstream is None:
                await held_http.finish(ex, msg.request_id, routed, [])
                return
        if routed.rejected is not None:  # a refused id-less request
            await ex.respond(400, routed.rejected)
            return
        if routed.upstream is None:  # refused, or the answer to mcpwall's own request
            await (ex.respond(200, routed.client) if routed.client else ex.respond(202))
            return
        is_request = msg.kind is Kind.REQUEST
        deadline = trio.current_time() + self.timeout
        try:
            prepared = (self._prepared(ex, session) if stateless is None
                        else self._prepared_stateless(stateless))
            async with await self.upstream.forward(
                    prepared, routed.upstream,
                    response_timeout=self.timeout if is_request else None) as resp:
                await self._relay_post(ex, resp, session, created, mediator, msg, deadline,
                                       None if stateless is None
                                       else dict(stateless)[revision.VERSION_HEADER],
                                       again)
        except UpstreamError as exc:
            mediator.log.warning("upstream_failed", reason=exc.reason.value, detail=exc.detail)
            if ex.finished:  # answered already
                return
            rid = msg.request_id if is_request else None
            what = f"failed: {exc.reason.value}"
            status = 504 if exc.code == jsonrpc.UPSTREAM_TIMEOUT else 502
            if rid is None:  # nothing is owed but mcpwall's own word
                if not ex.started:
                    await refuse(ex, status, exc.code, f"upstream server {self.name!r} {what}")
                await ex.end()
                return
            [reply] = await mediator.unanswered(
                TimedOut(self.timeout) if exc.reason is Reason.TIMEOUT else Lost(what, exc.code),
                [rid])
            if ex.started:  # a held call's stream: the answer is its last event
                await end_with(ex, reply)
            else:
                await ex.respond(status, reply)

    async def _relay_post(self, ex: Exchange, resp: Response, session: HttpSession | None,
                          created: HttpSession | None, mediator: Mediator,
                          msg: jsonrpc.Envelope, deadline: float,
                          stateless: str | None = None,
                          again: Callable[[], Awaitable[None]] | None = None) -> None:
        status = resp.status
        if stateless is not None and status < 300 and resp.content_type in (JSON, SSE):
            self.modern = True
        headers: list[tuple[str, str]] = []
        if created is not None and status < 300 and resp.content_type in (JSON, SSE):
            self.legacy = True
            created.upstream_sid = resp.header("mcp-session-id")
            await self.front.start_session(created)
            created.log.info("session_started", transport="http", upstream="http")
            headers.append(("mcp-session-id", created.id))
        if status == 404 and session is not None and session.upstream_sid is not None \
                and created is None:
            await resp.read(MAX_RESPONSE_BYTES)
            await self.front.end_session(session, "upstream")
            await refuse(ex, 404, jsonrpc.INVALID_REQUEST,
                         "Not Found: the upstream server ended this session")
            return
        ctype = resp.content_type
        if ctype == SSE and status < 300:
            out = SseResponse(ex, self.keepalive)  # (a held call's stream is open already)
            # The head waits for the first events (usually at hand: one write
            # for all); the relay flushes it before any wait.
            await out.open(headers, status=status, flush=False)
            await self._relay_events(out, resp, session, mediator, msg, deadline)
            return
        data = await resp.read(MAX_RESPONSE_BYTES)
        if created is not None and self.legacy is not True and \
                bridge_modern.refused_initialize(status, data, msg.request_id) and \
                await self.bridge.initialize(ex, created, msg.request_id):
            return  # a new-revision-only upstream: this session is bridged (rule 10)
        if ex.started:  # a held call's stream: its answer is the last event
            routed = await mediator.from_server(data) if ctype == JSON and data else None
            reply = routed.client if routed is not None else None
            await end_with(ex, reply if reply is not None
                           else await self._no_answer(mediator, msg, _answered(status, ctype)))
            return
        if status == 202 or not data:
            await ex.respond(status, b"", headers=headers)
            return
        if ctype == JSON:
            routed = await mediator.from_server(data)
            if routed.client is not None:  # the answer to this request: its own server's
                if stateless is not None:
                    self.modern = True
                await ex.respond(status, routed.client, headers=headers)
                return
        # A 4xx that answers nothing (no JSON-RPC answer under the request's id):
        # what a handshake-era server says to a request without a session.
        if stateless is not None and status in (400, 404, 405) and msg.request_id is not None:
            await mediator.unanswered(Lost(_answered(status, ctype)), [msg.request_id])
            refusal = self._handshake_only(msg, stateless)
            if self.stateless_bridge is not None and again is not None:
                await again()  # rule 11: decided afresh and carried by the bridge
                return
            await ex.respond(400, refusal)
            return
        await ex.respond(502 if status < 400 else status,
                         await self._no_answer(mediator, msg, _answered(status, ctype)),
                         headers=headers)

    def _handshake_only(self, msg: jsonrpc.Envelope, requested: str) -> bytes:
        """The upstream answered a stateless request as a handshake-era server does:
        it is one (:attr:`modern` False), and the client is told which revisions
        to fall back to (-32022, rule 9)."""
        self.modern = False
        problem = revision.unsupported(requested, revision.HANDSHAKE_VERSIONS)
        get_logger(server=self.name).info("upstream_handshake_only", requested=requested)
        return jsonrpc.error_response(msg.request_id, problem.code, problem.message,
                                      problem.data)

    async def _no_answer(self, mediator: Mediator, msg: jsonrpc.Envelope, what: str) -> bytes:
        """The error for a message the upstream answered with no answer mcpwall can relay.

        A request is owed its answer (and its outcome: ``Mediator.unanswered``);
        anything else gets mcpwall's own error."""
        rid = msg.request_id
        if msg.kind is not Kind.REQUEST or rid is None:
            return jsonrpc.error_response(rid, jsonrpc.UPSTREAM_UNAVAILABLE,
                                          f"upstream server {self.name!r} {what}")
        [reply] = await mediator.unanswered(Lost(what), [rid])
        return reply

    async def _relay_events(self, out: SseResponse, resp: Response,
                            session: HttpSession | None, mediator: Mediator,
                            msg: jsonrpc.Envelope | None, deadline: float | None) -> None:
        """Relay an upstream event stream to the client, event by event (rule 3).

        The writing is :class:`SseResponse`'s (one write for what is ready,
        the last events with the end, keepalives, the deadline); the events
        are read through the mediator by :class:`MediatedEvents`. A request
        the stream did not answer is answered last (rule 4).
        """
        rid = msg.request_id if msg is not None and msg.kind is Kind.REQUEST else None
        source = MediatedEvents(resp.events(keep_dataless=True), mediator, rid,
                                functools.partial(self._answer_soon, session))
        try:
            await out.relay(source, deadline)
        except UpstreamError as exc:
            mediator.log.warning("upstream_stream_failed", reason=exc.reason.value,
                                 detail=exc.detail)
        last = b""
        if rid is not None and not source.answered:
            timed_out = deadline is not None and trio.current_time() >= deadline
            [reply] = await mediator.unanswered(
                TimedOut(self.timeout) if timed_out
                else Lost("ended the stream without an answer"), [rid])
            last = sse.encode_event(reply)
        await out.end(last)

    def _answer_soon(self, session: HttpSession | None, refusal: Outbound) -> None:
        """Answer a refused server->client request in the background, as the relay goes on."""
        nursery = self.front.nursery
        if nursery is not None:
            nursery.start_soon(self._answer_upstream, session, refusal)

    async def _answer_upstream(self, session: HttpSession | None, refusal: Outbound) -> None:
        """POST the refusal of a server->client request back to the upstream.

        Runs in the front's nursery, so it outlives the stream that carried the
        request (the upstream may end that stream at once); bounded by the
        upstream timeout, and dropped once the session is closed.
        """
        with trio.move_on_after(self.timeout):
            if session is not None and session.closed:
                return
            headers = [("content-type", JSON), ("accept", f"{JSON}, {SSE}")]
            if session is not None and session.upstream_sid is not None:
                headers.append(("mcp-session-id", session.upstream_sid))
            try:
                async with await self.upstream.forward(headers, refusal) as resp:
                    await resp.read(MAX_RESPONSE_BYTES)
            except UpstreamError as exc:
                get_logger(server=self.name).warning("upstream_failed", reason=exc.reason.value)

    # -- GET / DELETE ----------------------------------------------------------
    async def get(self, ex: Exchange, session: Session) -> None:
        assert isinstance(session, HttpSession)
        if session.bridged is not None:
            await bridge_modern.refuse_get(ex)
            return
        main = ex.header("last-event-id") is None
        if main and session.get_open:
            await refuse(ex, 409, jsonrpc.INVALID_REQUEST,
                         "Conflict: this session has a GET stream open already")
            return
        scope = trio.CancelScope()
        session.get_scopes.add(scope)
        if main:
            session.get_open = True
        try:
            with session.busy(), scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_disconnect, ex, nursery.cancel_scope)
                    await self._get(ex, session)
                    nursery.cancel_scope.cancel()
        except UpstreamError as exc:
            session.log.warning("upstream_failed", reason=exc.reason.value, detail=exc.detail)
            if not ex.started and exc.reason is Reason.POOL_TIMEOUT:
                await refuse(ex, 503, jsonrpc.UPSTREAM_UNAVAILABLE,
                             f"Service Unavailable: {self.streams.stats().in_flight} GET "
                             f"streams open to {self.name!r}", [("retry-after", "5")])
            elif not ex.started:
                await refuse(ex, 502, exc.code,
                             f"upstream server {self.name!r} failed: {exc.reason.value}")
        finally:
            session.get_scopes.discard(scope)
            if main:
                session.get_open = False
        if ex.started and not ex.disconnected:
            await ex.end()
        elif not ex.started:
            await refuse(ex, 503, jsonrpc.UPSTREAM_UNAVAILABLE, "Service Unavailable")

    async def _get(self, ex: Exchange, session: HttpSession) -> None:
        async with self.streams.request("GET", self._headers(ex, session),
                                        response_timeout=self.timeout) as resp:
            if resp.status == 200 and resp.content_type == SSE:
                out = SseResponse(ex, self.keepalive)
                await out.open()
                await self._relay_events(out, resp, session, session.mediator, None, None)
                return
            await resp.read(MAX_RESPONSE_BYTES)
            status, ctype = resp.status, resp.content_type or "no type"
            if status == 404 and session.upstream_sid is not None:
                await self.front.end_session(session, "upstream")
            # Rule 8: the upstream's own body is never relayed here. A client
            # may read any 2xx GET body as an event stream (the TypeScript SDK
            # does), so a body passed on unread would carry messages no policy
            # decided; the client gets the status and mcpwall's own words.
            allow = resp.header("allow")
            session.log.info("upstream_get_not_a_stream", status=status, content_type=ctype)
            await refuse(ex, 502 if status < 300 else status, jsonrpc.UPSTREAM_UNAVAILABLE,
                         f"upstream server {self.name!r} answered the GET stream with HTTP "
                         f"{status} and {ctype}, not an event stream",
                         [("allow", allow)] if allow else [])

    async def delete(self, ex: Exchange, session: Session) -> None:
        assert isinstance(session, HttpSession)
        status = 204
        if session.upstream_sid is not None:
            try:
                async with self.upstream.request("DELETE", self._headers(ex, session),
                                                 response_timeout=self.timeout) as resp:
                    await resp.read(MAX_RESPONSE_BYTES)
                    status = resp.status if resp.status >= 300 else 204
            except UpstreamError as exc:
                session.log.warning("upstream_failed", reason=exc.reason.value)
        if status == 405:
            await refuse(ex, 405, jsonrpc.INVALID_REQUEST,
                         "Method Not Allowed: the upstream server keeps its sessions",
                         [("allow", "GET, POST")])
            return
        session.upstream_sid = None  # already ended there
        await self.front.end_session(session, "deleted by the client")
        await ex.respond(204)


@asynccontextmanager
async def _forwarded_on(pool: HttpUpstream, headers: PreparedHeaders, message: Outbound,
                        head_seconds: float) -> AsyncIterator[Response]:
    async with await pool.forward(headers, message, response_timeout=head_seconds) as resp:
        yield resp


def _admits_sse(ex: Exchange) -> bool:
    """Whether the client's Accept lets a held call's answer come as an event stream."""
    accept = ex.header("accept")
    return accepts(accept, SSE) or not accepts(accept, JSON)


def _forwarded(ex: Exchange) -> list[tuple[str, str]]:
    """The client's headers that go on to the upstream (rule 2), in their order."""
    return [(name, value) for name, value in ex.headers.items()
            if name in _FORWARDED or (name.startswith("mcp-") and name != "mcp-session-id")]


async def _cancel_on_disconnect(ex: Exchange, scope: trio.CancelScope) -> None:
    await ex.wait_disconnect()
    scope.cancel()


class MediatedEvents:
    """An upstream's event stream read through the mediator: an SSE relay's source.

    Each event with a message passes the mediator and goes on with its ``id``,
    ``event`` and ``retry`` unchanged; an event without one (id/retry only,
    or a priming event's empty data line) is relayed as it came, never
    mediated; a message the mediator keeps back leaves its ``id``/``retry``.
    A refused server->client request goes to ``answer_upstream``.
    :attr:`answered` tells whether the stream carried the answer to ``rid``.
    """

    __slots__ = ("answer_upstream", "answered", "events", "mediator", "rid")

    def __init__(self, events: UpstreamEvents, mediator: Mediator, rid: RequestId | None,
                 answer_upstream: Callable[[Outbound], None]) -> None:
        self.events = events
        self.mediator = mediator
        self.rid = rid
        self.answer_upstream = answer_upstream
        self.answered = False

    async def take(self, out: list[bytes]) -> None:
        for event in self.events.ready():
            if not event.data:
                out.append(sse.encode_event(event.data, id=event.id, event=event.event,
                                            retry=event.retry))
                continue
            routed = await self.mediator.from_server(event.data)
            if routed.upstream is not None:  # a refused server->client request
                self.answer_upstream(routed.upstream)
            if routed.client is not None:
                out.append(sse.encode_event(routed.client, id=event.id, event=event.event,
                                            retry=event.retry))
                if self.rid is not None and routed.answers == self.rid:
                    self.answered = True
            elif event.id is not None or event.retry is not None:
                out.append(sse.encode_event(None, id=event.id, retry=event.retry))

    def at_end(self) -> bool:
        return self.events.at_end()

    async def receive(self) -> None:
        await self.events.receive()


class HttpLink:
    """A 2025 session of mcpwall's own with an HTTP upstream, as a bridge
    :class:`~firewall.gateway.front.bridge.Link` (rule 11): each message is
    POSTed with the session's ``Mcp-Session-Id`` (learnt from the answer to
    mcpwall's ``initialize``) and ``MCP-Protocol-Version``; each message of
    an answer (JSON, or the events of a stream) goes to the bridge, with
    the id of the request whose answer carried it (:data:`APART` for the
    answer to a notification or response: the bridge tells which call a
    server request or log message is for by it). The upstream saying 404
    for the session ends the link; closing it DELETEs the upstream
    session. While the bridged session has listens, a GET stream of the
    upstream session (on the endpoint's pool of long-lived
    connections) brings the notifications the upstream sends apart from its
    answers, each handed to the bridge likewise; an upstream that offers
    none (anything but an event stream) is not asked again; what it brings
    is handed over as :data:`APART` (a stream of no request)."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint
        self.sid: str | None = None
        self.version: str | None = None
        self._out, self._in = trio.open_memory_channel[Outbound](math.inf)
        self._nursery: trio.Nursery | None = None
        self._dispatch: Dispatch | None = None
        self._get: trio.CancelScope | None = None
        self._no_get = False  # the upstream answered a GET with no event stream

    async def send(self, outbound: Outbound) -> None:
        try:
            self._out.send_nowait(outbound)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LinkLost("the upstream session ended") from None

    def negotiated(self, version: str) -> None:
        self.version = version

    def health(self) -> dict[str, Any]:
        return {"upstream_session": self.sid is not None}

    def _headers(self) -> PreparedHeaders:
        headers = [("content-type", JSON), ("accept", f"{JSON}, {SSE}")]
        if self.sid is not None:
            headers.append(("mcp-session-id", self.sid))
        if self.version is not None:
            headers.append((revision.VERSION_HEADER, self.version))
        return self.endpoint.upstream.prepare(headers)

    async def serve(self, dispatch: Dispatch) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery, self._dispatch = nursery, dispatch
            try:
                async for outbound in self._in:
                    nursery.start_soon(self._post, outbound, dispatch, nursery.cancel_scope)
            finally:
                self._nursery = None
                if self._get is not None:  # a GET stream ends with the link
                    self._get.cancel()
        self._out.close()

    def listened(self, on: bool) -> None:
        if not on:
            if self._get is not None:
                self._get.cancel()
                self._get = None
            return
        if self._get is None and not self._no_get and self._nursery is not None \
                and self._dispatch is not None:
            self._get = trio.CancelScope()
            self._nursery.start_soon(self._listen, self._get, self._dispatch)

    async def _listen(self, scope: trio.CancelScope, dispatch: Dispatch) -> None:
        """The upstream session's GET stream, reopened after it ends, until cancelled."""
        endpoint = self.endpoint
        log = get_logger(server=endpoint.name)
        with scope:
            while self.sid is not None:
                headers = [("accept", SSE), ("mcp-session-id", self.sid)]
                if self.version is not None:
                    headers.append((revision.VERSION_HEADER, self.version))
                try:
                    async with endpoint.streams.request(
                            "GET", endpoint.streams.prepare(headers),
                            response_timeout=endpoint.timeout) as resp:
                        if resp.status != 200 or resp.content_type != SSE:
                            await resp.read(MAX_RESPONSE_BYTES)
                            log.info("bridge_get_not_a_stream", status=resp.status)
                            self._no_get = True
                            return
                        async for event in resp.events():
                            if event.data and not await dispatch(
                                    event.data.encode() if isinstance(event.data, str)
                                    else bytes(event.data), APART):
                                return
                except UpstreamError as exc:
                    log.warning("bridge_get_failed", reason=exc.reason.value)
                await trio.sleep(1)  # ended or failed: open it again, at most once a second

    async def _post(self, outbound: Outbound, dispatch: Dispatch,
                    scope: trio.CancelScope) -> None:
        endpoint = self.endpoint
        on = _request_id(outbound.data)  # what comes on this POST's answer is its
        try:
            async with await endpoint.upstream.forward(
                    self._headers(), outbound, response_timeout=endpoint.timeout) as resp:
                if self.sid is None:
                    self.sid = resp.header("mcp-session-id")
                if resp.status == 404 and self.sid is not None:
                    scope.cancel()  # the upstream session is gone: so is the link
                    return
                if resp.content_type == SSE and resp.status < 300:
                    async for event in resp.events():
                        if event.data and not await dispatch(event.data.encode()
                                                             if isinstance(event.data, str)
                                                             else bytes(event.data), on):
                            return
                    return
                data = await resp.read(MAX_RESPONSE_BYTES)
                if resp.content_type == JSON and data:
                    await dispatch(data, on)
        except UpstreamError as exc:  # the call it carried times out at the bridge
            get_logger(server=endpoint.name).warning("bridge_upstream_failed",
                                                     reason=exc.reason.value)

    async def close(self) -> None:
        """End the upstream session (DELETE), best effort."""
        self._out.close()
        if self.sid is None:
            return
        with trio.move_on_after(self.endpoint.timeout), contextlib.suppress(UpstreamError):
            headers = self.endpoint.upstream.prepare([("mcp-session-id", self.sid)])
            async with self.endpoint.upstream.request("DELETE", headers) as resp:
                await resp.read(MAX_RESPONSE_BYTES)


def _request_id(data: bytes) -> str:
    """The id of the bridge's request ``data`` (its ids are strings), or
    :data:`APART` for a notification or response (or what does not decode)."""
    try:
        msg = jsonrpc.decode(data)
    except jsonrpc.ProtocolError:
        return APART
    rid = msg.request_id
    return rid if msg.kind is Kind.REQUEST and isinstance(rid, str) else APART
