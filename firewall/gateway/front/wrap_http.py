"""``wrap --upstream URL``: mcpwall as a stdio MCP server in front of a
Streamable HTTP server, for clients that only launch commands.

The client side is :class:`~firewall.gateway.front.wrap.StdioClient` (the
same batches, refusals, held calls and one-line writes as ``wrap -- CMD``);
the upstream side is :class:`~firewall.gateway.upstream.http.HttpUpstream`,
the client the HTTP front's endpoints use. Rules this module keeps:

1. Nothing is written upstream but an Outbound the mediator made:
   ``HttpUpstream.forward`` POSTs it once its decision is durable. The GET
   stream and the final DELETE carry no body.
2. Each forwarded message is its own POST, in a task of its own, started in
   the order the client sent them (as every Streamable HTTP client does: a
   long tool call does not hold up the next message). ``initialize`` is
   the exception: it is answered before the next message goes, since the
   others need the upstream's ``Mcp-Session-Id``.
3. The upstream's ``Mcp-Session-Id`` (from the answer to ``initialize``) and
   the negotiated ``MCP-Protocol-Version`` go on every later request; the
   ``--header`` values on every request. The client never sees either id.
4. An answer comes as JSON or as an event stream; every message in it, and
   on the GET stream the session opens after ``notifications/initialized``,
   passes through ``mediator.from_server`` before the client sees it. A
   server->client request (sampling, elicitation, roots) goes to the client
   as decided, and the client's answer is POSTed back like any message; a
   refused one is answered to the upstream by the mediator's Outbound.
   Events with no data (priming events) are not messages and go nowhere.
5. A request whose POST fails (unreachable, refused, timeout, an HTTP error
   or an answer that is neither JSON nor an event stream) is answered with a
   JSON-RPC error carrying its id, recorded as the call's outcome. The first
   failure after a success (or at start) is logged at error level
   (``upstream_unreachable``) with the URL and why; the process lives on and
   later calls try again.
6. Client EOF: held calls are withdrawn, exchanges in flight get
   ``terminate_grace`` seconds to finish, then are cancelled and their
   requests answered with an error; the upstream session is ended with a
   DELETE (best effort, bounded). Exit code 0. An upstream that ended our
   session (HTTP 404) answers what is pending with an error; later requests
   go without a session id and get the upstream's own answer.
7. A message whose body names the 2026-07-28 revision (``_meta``) goes with
   the request-metadata headers made from the decided body
   (``revision.upstream_headers``: ``MCP-Protocol-Version``, ``Mcp-Method``,
   ``Mcp-Name``, and the ``Mcp-Param-*`` of the arguments the tool's
   ``x-mcp-header`` annotations name, as learnt from the upstream's tools/list
   answers by ``revision.ResultView``), never a session id.
8. A decided ``subscriptions/listen`` of that revision is POSTed on the pool
   of long-lived connections (as the GET stream is), its answer's head within
   the upstream timeout, its stream not bounded by it. Its events pass the
   mediator and ``StdioListens`` as any answer's do. It ends when the server
   answers it (relayed), when the client cancels it (the POST is closed, the
   request recorded ``cancelled``), at ``listen.listen_stream_max_seconds`` or
   at the session's end (the POST closed, the client given the graceful end:
   a ``SubscriptionsListenResult`` under its id); a stream that ends or fails
   without an answer gets the client an error under its id. ``listen_end``
   records each end once. A listen that ended before its POST started (the
   client cancelled it in the same read) is not POSTed.
"""

from __future__ import annotations

from typing import Final

import msgspec
import trio

from firewall.config import HttpServer
from firewall.gateway.front.listen import LISTEN
from firewall.gateway.front.wrap import StdioClient, client_streams
from firewall.gateway.http.exchange import JSON, SSE
from firewall.gateway.mediator import Lost, Mediator, TimedOut, UpstreamFailure
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.http import (
    HttpUpstream,
    PreparedHeaders,
    Reason,
    Response,
    UpstreamError,
)
from firewall.protocol import jsonrpc, mcp, revision
from firewall.protocol.jsonrpc import Kind, RequestId
from firewall.protocol.sse import Event

MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
ACCEPT: Final = f"{JSON}, {SSE}"
INITIALIZED: Final = "notifications/initialized"
# The GET stream is opened again after it ends or fails, waiting this long
# first (doubling up to the maximum while it keeps failing).
GET_RETRY_SECONDS: Final = 1.0
GET_RETRY_MAX_SECONDS: Final = 30.0
DELETE_SECONDS: Final = 5.0
_MODERN_CACHE_SIZE: Final = 64
_MODERN_CACHE_VALUE_CHARS: Final = 1024  # a header set kept holds at most this much


class _InitResult(msgspec.Struct):
    protocol_version: str | None = msgspec.field(default=None, name="protocolVersion")


class _InitAnswer(msgspec.Struct):
    result: _InitResult | None = None


_init_decoder: Final = msgspec.json.Decoder(_InitAnswer)


class HttpWrapSession(StdioClient):
    """One wrapped session: a client on two streams, an HTTP upstream, a mediator."""

    def __init__(
        self,
        mediator: Mediator,
        settings: HttpServer,
        client_in: trio.abc.ReceiveStream,
        client_out: trio.abc.SendStream,
        *,
        max_line: int,
        timeout: float,
        grace: float,
        max_listens: int = 16,
        listen_seconds: float = 3600.0,
        ttl_ms: int = 60_000,
    ) -> None:
        super().__init__(mediator, client_in, client_out, max_line, max_listens,
                         listen_seconds, ttl_ms)
        self.url = settings.url
        self.timeout = timeout
        self.grace = grace
        # POSTs and the DELETE: their answers end, so a bounded pool.
        self.upstream = HttpUpstream(settings.url, settings.headers,
                                     max_connections=settings.max_connections,
                                     connect_timeout=settings.connect_timeout_seconds)
        # The GET stream and the listens (rule 8): a connection each for as long
        # as it lives, apart from the POSTs' budget.
        self.streams = HttpUpstream(settings.url, settings.headers,
                                    max_connections=1 + max_listens,
                                    connect_timeout=settings.connect_timeout_seconds)
        self._listen_scopes: dict[str, trio.CancelScope] = {}  # open listens' POSTs
        self._modern: dict[tuple[tuple[str, str], ...], PreparedHeaders] = {}
        self.upstream_sid: str | None = None
        self.protocol_version: str | None = None
        self._prepared: tuple[tuple[tuple[str, str], ...], PreparedHeaders] | None = None
        self._reachable: bool | None = None  # None: not tried yet
        self._get_started = False
        self._posts_open = False
        self._session_nursery: trio.Nursery

    # -- the session -----------------------------------------------------------
    async def run(self) -> int:
        """Mediate until the client closes stdin; return the exit code (rule 6)."""
        try:
            async with trio.open_nursery() as session:
                self._session_nursery = session
                async with trio.open_nursery() as posts:
                    self._held_calls = posts
                    self._posts_open = True
                    async with self._reload_pushes():
                        with self._client_scope:
                            await self._read_client()
                    self.mediator.holds.withdraw("the client disconnected" if self._client_eof
                                                 else "the session ended")
                    posts.cancel_scope.deadline = trio.current_time() + self.grace
                self._posts_open = False
                for key in list(self.listens.open):  # rule 8: ended gracefully
                    await self.end_listen(key, "session ended")
                session.cancel_scope.cancel()  # the GET stream
            # Exchanges cut short by the grace: their requests get an answer.
            await self._to_client(await self.mediator.unanswered(
                Lost("did not answer before the session ended")))
            await self._end_upstream_session()
        finally:
            with trio.CancelScope(shield=True):
                await self.listens.close("session ended")
                await self.upstream.aclose()
                await self.streams.aclose()
        return self.exit_code

    async def forward(self, messages: list[Outbound]) -> bool:
        """Requests go in tasks of their own, each started once the one before
        it has its decision durable; ``initialize``, notifications and answers
        are POSTed in line, so what follows them waits (rule 2)."""
        for message in messages:
            msg = self._decoded(message)
            if msg is None:
                continue
            if msg.kind is Kind.REQUEST and msg.method == LISTEN and self._ended(msg):
                continue  # rule 8: ended before its POST started
            if msg.kind is Kind.REQUEST and msg.method == LISTEN and \
                    _key(msg.request_id) in self.listens.open:  # rule 8
                await self._session_nursery.start(self._listen_post, message, msg)
            elif msg.kind is Kind.REQUEST and msg.method != mcp.INITIALIZE:
                await self._start(message, msg)
            else:
                await self._exchange(message, msg)
        return True

    async def forward_one(self, message: Outbound) -> None:
        msg = self._decoded(message)
        if msg is None or (msg.method == LISTEN and self._ended(msg)):
            return
        if msg.method == LISTEN and _key(msg.request_id) in self.listens.open:
            await self._session_nursery.start(self._listen_post, message, msg)
        else:
            await self._exchange(message, msg)

    async def end_listen(self, key: str, why: str) -> None:
        """Rule 8: the upstream's stream closed, the client given the graceful end."""
        ended = self.listens.end(key, why)
        scope = self._listen_scopes.pop(key, None)
        if scope is not None:
            scope.cancel()
        if ended is None:
            return
        rid, graceful = ended
        await self.mediator.ended_here(rid, f"listen ended by mcpwall: {why}")
        await self._to_client([graceful])
        await self.listens.flush()

    async def listen_cancelled(self, key: str) -> None:
        """Rule 8: the client cancelled a listen; its POST is closed."""
        scope = self._listen_scopes.pop(key, None)
        if scope is not None:
            scope.cancel()
        await super().listen_cancelled(key)

    def _ended(self, listen: jsonrpc.Message) -> bool:
        """Whether a decided listen ended before its POST started (rule 8: the
        client cancelled it in the same read, or mcpwall ended it): recorded
        ``cancelled``, no longer open, and no answer owed."""
        rid = listen.request_id
        return (rid is not None and _key(rid) not in self.listens.open
                and not self.mediator.awaits(rid))

    def _decoded(self, message: Outbound) -> jsonrpc.Message | None:
        try:  # the mediator's own canonical line: it decodes
            return jsonrpc.decode(message.data)
        except jsonrpc.ProtocolError as exc:  # never expected; fails this message only
            self.log.error("message_failed", direction="client", error=str(exc))
            return None

    async def _start(self, message: Outbound, msg: jsonrpc.Message) -> None:
        if self._posts_open:
            await self._held_calls.start(self._exchange, message, msg)
        else:
            self.log.info("upstream_message_dropped", reason="the session is ending",
                          method=msg.method)

    async def _end_upstream_session(self) -> None:
        if self.upstream_sid is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(DELETE_SECONDS):
            try:
                async with self.upstream.request("DELETE", self._headers()) as resp:
                    await resp.read(MAX_RESPONSE_BYTES)
            except UpstreamError as exc:
                self.log.info("upstream_delete_failed", reason=exc.reason.value)

    # -- headers ---------------------------------------------------------------
    def _headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        out = list(extra)
        if self.upstream_sid is not None:
            out.append(("mcp-session-id", self.upstream_sid))
        if self.protocol_version is not None:
            out.append(("mcp-protocol-version", self.protocol_version))
        return out

    def _headers_for(self, message: Outbound, msg: jsonrpc.Message) -> PreparedHeaders:
        """The headers of one POST: those of the 2026-07-28 revision made from
        its decided body when the body names it (rule 7), else the session's."""
        if message.data.find(revision.META_VERSION_BYTES) < 0 or msg.method is None:
            return self._post_headers()
        try:
            value = jsonrpc.decode_any(message.data)
        except jsonrpc.DECODE_ERRORS:
            return self._post_headers()
        params = value.get("params") if isinstance(value, dict) else None
        version = revision.body_version(params)
        if version not in revision.MODERN_VERSIONS:
            return self._post_headers()
        spec = self.results.headers_of(params) if msg.method == mcp.TOOLS_CALL else None
        key = (("content-type", JSON), ("accept", ACCEPT), *revision.upstream_headers(
            version, msg.method, params if msg.kind is Kind.REQUEST else None, spec))
        found = self._modern.get(key)
        if found is None:
            found = self.upstream.prepare(key)
            # Kept for the next request alike, unless its values are large: Mcp-Name
            # and Mcp-Param-* are the client's arguments (a line each, at most).
            if sum(len(value) for _, value in key) <= _MODERN_CACHE_VALUE_CHARS:
                if len(self._modern) >= _MODERN_CACHE_SIZE:
                    self._modern.clear()
                self._modern[key] = found
        return found

    def _post_headers(self) -> PreparedHeaders:
        """The headers of a POST, checked once per session id and version (rule 3)."""
        key = tuple(self._headers(("content-type", JSON), ("accept", ACCEPT)))
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, self.upstream.prepare(key))
        return self._prepared[1]

    # -- POST ------------------------------------------------------------------
    async def _exchange(self, message: Outbound, msg: jsonrpc.Message,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """POST one decided message and relay its answer (rules 4 and 5)."""
        rid = msg.request_id if msg.kind is Kind.REQUEST else None
        await message.ready()
        task_status.started()
        deadline = trio.current_time() + self.timeout
        try:
            async with await self.upstream.forward(self._headers_for(message, msg), message,
                                                   response_timeout=self.timeout) as resp:
                self._reached()
                await self._relay(resp, msg, rid, deadline)
        except UpstreamError as exc:
            self._unreachable(exc)
            if rid is not None:
                await self._to_client(await self._unanswered(
                    rid, TimedOut(self.timeout) if exc.reason is Reason.TIMEOUT
                    else Lost(f"failed: {exc.reason.value}", exc.code)))

    async def _relay(self, resp: Response, msg: jsonrpc.Message, rid: RequestId | None,
                     deadline: float) -> None:
        status, ctype = resp.status, resp.content_type
        if msg.method == mcp.INITIALIZE and status < 300 and ctype in (JSON, SSE):
            self.upstream_sid = resp.header("mcp-session-id")
        if status == 404 and self.upstream_sid is not None and msg.method != mcp.INITIALIZE:
            await resp.read(MAX_RESPONSE_BYTES)
            self.log.error("upstream_session_ended", url=self.url)
            self.upstream_sid = None
            self._prepared = None
            await self._to_client(await self.mediator.unanswered(Lost("ended the session")))
            return
        if ctype == SSE and status < 300:
            await self._relay_events(resp, msg, rid, deadline)
            return
        data = await resp.read(MAX_RESPONSE_BYTES)
        if msg.method == INITIALIZED and status < 300 and not self._get_started:
            self._get_started = True
            self._session_nursery.start_soon(self._listen)
        if ctype == JSON and data:  # an answer, or the upstream's own error for it
            answered = await self._from_upstream([data], msg)
            if rid is None or rid in answered:
                return
        if rid is None or (status < 300 and not data):
            if status >= 300:
                self.log.warning("upstream_refused_message", status=status, method=msg.method)
            return  # a notification or a response accepted (202), or refused: no answer
        await self._to_client(await self._unanswered(
            rid, Lost(f"answered HTTP {status} with {ctype or 'no type'}")))

    async def _relay_events(self, resp: Response, msg: jsonrpc.Message,
                            rid: RequestId | None, deadline: float) -> None:
        """Relay the messages of an answer's event stream as they come, until it
        ends; each wait for the upstream is bounded by the request's deadline."""
        events = resp.events()
        answered = False
        try:
            while True:
                ready = events.ready()
                if ready and rid in await self._from_upstream(_messages(ready), msg):
                    answered = True
                if events.at_end():
                    break
                with trio.move_on_at(deadline) as waited:
                    await events.receive()
                if waited.cancelled_caught:
                    break
        except UpstreamError as exc:
            self.log.warning("upstream_stream_failed", reason=exc.reason.value,
                             detail=exc.detail)
        if rid is None or answered:
            return
        await self._to_client(await self._unanswered(
            rid, TimedOut(self.timeout) if trio.current_time() >= deadline
            else Lost("ended the stream without an answer")))

    async def _from_upstream(self, messages: list[bytes], msg: jsonrpc.Message | None
                             ) -> list[RequestId]:
        """Mediate messages from the upstream; relay them to the client in one
        write and POST back refusals. Returns the ids of the client's requests
        they answer (rule 4)."""
        out: list[bytes] = []
        answered: list[RequestId] = []
        for data in messages:
            routed = await self.mediator.from_server(data)
            if routed.upstream is not None:  # a refused server->client request
                refusal = self._decoded(routed.upstream)
                if refusal is not None:
                    await self._start(routed.upstream, refusal)
            if routed.client is not None and self.listens.admits(routed.client):
                out.append(routed.client)
                if routed.answers is not None:
                    answered.append(routed.answers)
                    if msg is not None and msg.method == mcp.INITIALIZE:
                        self._negotiated(routed.client)
        await self._to_client(out)
        await self.listens.flush()
        return answered

    def _negotiated(self, answer: bytes) -> None:
        try:
            result = _init_decoder.decode(answer).result
        except msgspec.DecodeError:
            return
        if result is not None and result.protocol_version:
            self.protocol_version = result.protocol_version
            self._prepared = None

    async def _unanswered(self, rid: RequestId, failure: UpstreamFailure) -> list[bytes]:
        """The error answering a request the upstream will not answer (recorded
        as its outcome), unless it was answered meanwhile (e.g. on the GET stream)."""
        if not self.mediator.awaits(rid):
            return []
        return await self.mediator.unanswered(failure, [rid])

    def _reached(self) -> None:
        if self._reachable is False:
            self.log.info("upstream_reachable", url=self.url)
        self._reachable = True

    def _unreachable(self, exc: UpstreamError) -> None:
        if self._reachable is not False:
            self.log.error("upstream_unreachable", url=self.url, reason=exc.reason.value,
                           detail=exc.detail,
                           effect="its calls are answered with an error; mcpwall runs on "
                                  "until the client closes stdin and tries again on each call")
        else:
            self.log.warning("upstream_failed", reason=exc.reason.value)
        self._reachable = False

    # -- listens (rule 8) ------------------------------------------------------
    async def _listen_post(self, message: Outbound, msg: jsonrpc.Message,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        """POST one decided listen on the long-lived pool and relay its stream
        until the server answers it, or mcpwall or the client ends it."""
        rid = msg.request_id
        assert rid is not None
        key = _key(rid)
        await message.ready()
        task_status.started()
        if key not in self.listens.open:  # ended (or cancelled) while its receipt was made
            return
        scope = self._listen_scopes[key] = trio.CancelScope()
        failure: UpstreamFailure = Lost("ended the stream without an answer")
        try:
            with scope:
                async with await self.streams.forward(
                        self._headers_for(message, msg), message,
                        response_timeout=self.timeout) as resp:
                    self._reached()
                    if resp.status < 300 and resp.content_type == SSE:
                        await self._listen_events(resp, msg, rid)
                    else:  # an answer at once (an error): relayed as any POST's
                        await self._relay(resp, msg, rid, trio.current_time() + self.timeout)
        except UpstreamError as exc:
            self._unreachable(exc)
            failure = (TimedOut(self.timeout) if exc.reason is Reason.TIMEOUT
                       else Lost(f"failed: {exc.reason.value}", exc.code))
        finally:
            if self._listen_scopes.get(key) is scope:
                del self._listen_scopes[key]
        if scope.cancelled_caught:
            return  # ended by mcpwall or the client: told already
        # The server ended it: answered (the answer relayed, the listen closed by
        # StdioListens), or not: the client is owed an error under its id.
        if self.listens.end(key, "upstream ended") is not None:
            await self._to_client(await self._unanswered(rid, failure))
            await self.listens.flush()

    async def _listen_events(self, resp: Response, msg: jsonrpc.Message,
                             rid: RequestId) -> None:
        """Relay a listen's stream (no deadline) until it ends or answers it; a
        server->client request on it is dropped (none rides a listen stream)."""
        events = resp.events()
        while True:
            ready = [data for data in _messages(events.ready()) if not _is_request(data)]
            if ready and rid in await self._from_upstream(ready, msg):
                return
            if events.at_end():
                return
            await events.receive()

    # -- GET -------------------------------------------------------------------
    async def _listen(self) -> None:
        """The GET stream: server->client messages outside any answer (rule 4).

        Opened again when it ends or fails, with ``Last-Event-ID`` when the
        upstream numbered its events; given up when the upstream offers none
        (405) or ended the session (404).
        """
        wait = GET_RETRY_SECONDS
        last_id: str | None = None
        while True:
            extra = [("accept", SSE)] + ([("last-event-id", last_id)] if last_id else [])
            try:
                async with self.streams.request("GET", self._headers(*extra),
                                                response_timeout=self.timeout) as resp:
                    if resp.status == 200 and resp.content_type == SSE:
                        wait = GET_RETRY_SECONDS
                        async for event in resp.events():
                            if event.id is not None:
                                last_id = event.id
                            await self._from_upstream(_messages([event]), None)
                    else:
                        await resp.read(MAX_RESPONSE_BYTES)
                        self.log.info("upstream_get_not_a_stream", status=resp.status,
                                      content_type=resp.content_type or "no type")
                        if resp.status in (404, 405):
                            return
            except UpstreamError as exc:
                self.log.info("upstream_get_failed", reason=exc.reason.value)
            await trio.sleep(wait)
            wait = min(wait * 2, GET_RETRY_MAX_SECONDS)


def _key(rid: RequestId | None) -> str:
    """A request id as ``StdioListens`` keys it (its JSON text)."""
    return jsonrpc.encode(rid).decode()


def _is_request(data: bytes) -> bool:
    try:
        return jsonrpc.decode(data).kind is Kind.REQUEST
    except jsonrpc.ProtocolError:
        return False  # the mediator records what it cannot read


def _messages(events: list[Event]) -> list[bytes]:
    """The data of the events that carry a message (priming events carry none)."""
    return [e.data for e in events if e.data]


async def run_wrap_http(
    settings: HttpServer,
    *,
    mediator: Mediator,
    answer_seconds: float,
    grace: float,
    max_line: int,
    max_listens: int = 16,
    listen_seconds: float = 3600.0,
    ttl_ms: int = 60_000,
    client_in: trio.abc.ReceiveStream | None = None,
    client_out: trio.abc.SendStream | None = None,
) -> int:
    """Run one wrapped session on the given streams (our stdin/stdout by default);
    each call waits at most ``answer_seconds`` for its answer; at most
    ``max_listens`` listens are open at once, each for ``listen_seconds`` at most;
    ``ttl_ms``: the cap on a cacheable result's ``ttlMs``."""
    client_in, client_out = client_streams(client_in, client_out)
    try:
        return await HttpWrapSession(mediator, settings, client_in, client_out,
                                     max_line=max_line, timeout=answer_seconds,
                                     grace=grace, max_listens=max_listens,
                                     listen_seconds=listen_seconds, ttl_ms=ttl_ms).run()
    finally:
        with trio.CancelScope(shield=True):
            await client_out.aclose()
            await client_in.aclose()
