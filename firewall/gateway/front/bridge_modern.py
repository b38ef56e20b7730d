"""A 2025 client in front of an HTTP server that speaks only the 2026-07-28 revision.

The handshake revisions open a session with ``initialize``; the stateless one
has neither. When the upstream of an :class:`~.http_endpoint.HttpEndpoint`
speaks only the new revision, mcpwall keeps the 2025 client's session itself
and speaks the new revision upstream on the client's behalf. Rules this
module keeps:

1. An upstream is taken for new-revision-only when it refuses ``initialize``
   (a 4xx, or a JSON-RPC error under its id) and then answers
   ``server/discover`` with a result naming a revision of the stateless era
   (:func:`discovered`). From then on (``HttpEndpoint.legacy`` False) no
   ``initialize`` is sent to it again; a ``server/discover`` that fails makes
   the initialize fail as the upstream answered it.
2. The client's ``initialize`` is decided and recorded like any request;
   mcpwall answers it itself (:func:`initialize_result`): the client's
   ``protocolVersion`` when mcpwall speaks it, else the newest handshake
   revision; ``capabilities``, ``instructions`` and ``serverInfo`` from the
   upstream's ``server/discover``, asked afresh for each session through the
   session's mediator (decided and recorded as a request of the session, id
   ``mcpwall-discover-N``). The answer passes the mediator as the upstream's
   would (the outcome, the session's negotiated version). The session id is
   mcpwall's own, as for every session.
3. Each later request of the session is rewritten *before* it is decided
   (:func:`modern_request`): its ``params._meta`` gets the revision's
   protocol version and the capabilities and clientInfo of the session's
   ``initialize`` (the client's own ``_meta`` members, ``progressToken``
   among them, kept). That message is decided, recorded and forwarded, with
   the request-metadata headers made from it (``revision.upstream_headers``)
   and no session id: what the server executes is what was decided.
4. Answers on their way to the client (:meth:`Bridged.result_seen`, the
   mediator's ``on_result``): ``resultType: "complete"`` is removed (the 2025
   schema has no such member); ``ttlMs`` and ``cacheScope`` pass within
   mcpwall's bounds (``revision.bound_cache``: the cap, ``private`` when the
   answer was narrowed for the caller); tools' ``x-mcp-header`` annotations
   are learnt, so the ``Mcp-Param-*`` headers of later calls are made too.
5. What the revision removed is answered here, never sent up: ``ping`` gets
   an empty result (decided and recorded, its outcome too);
   ``logging/setLevel``, ``resources/subscribe`` and ``.../unsubscribe`` get
   -32601 recorded as a ``protocol`` deny; a second ``initialize`` -32600 the
   same way. A client notification passes the mediator and goes no further
   (the revision has no ``notifications/initialized``; cancelling is closing
   the request's connection). A GET stream is 405; DELETE ends the session
   here only.
6. An ``InputRequiredResult`` (its input requests already decided by the
   mediator, mediator rule 16) becomes what a 2025 client knows: each input
   request is sent to the client as a server-to-client request on the call's
   own event stream (id ``mcpwall-input-N``), and once the client answered
   all of them the call is retried upstream with ``inputResponses`` and the
   server's ``requestState`` (decided again as the same call, mediator rule
   16); the client sees one answer to its call. A client that cannot take
   an event stream, or does not answer within the upstream timeout, gets
   -32603 naming why; at most :data:`MAX_ROUNDS` rounds.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from firewall.gateway.front import held_http
from firewall.gateway.front.sse_response import SseResponse, end_with
from firewall.gateway.http.exchange import JSON, SSE, Exchange, refuse
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.gateway.upstream.http import Reason, UpstreamError
from firewall.protocol import jsonrpc, mcp, mrtr, revision, sse
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.jsonrpc import Kind, RequestId

if TYPE_CHECKING:
    from firewall.gateway.front.http_endpoint import HttpEndpoint, HttpSession

MAX_ROUNDS: Final = 8
_INPUT_REQUIRED_BYTES: Final = mrtr.INPUT_REQUIRED.encode()
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
SERVER_INFO_KEY: Final = "io.modelcontextprotocol/serverInfo"
# The newest handshake revision: what a client asking for another one gets.
LATEST_HANDSHAKE: Final = revision.HANDSHAKE_VERSIONS[0]
_ids: Final = itertools.count(1)


class Bridged:
    """What a bridged session keeps of its client's ``initialize`` (rule 3), and
    the client's answers to the input requests in flight (rule 6)."""

    __slots__ = ("capabilities", "info", "private", "results", "ttl_ms", "waiting")

    def __init__(self, init_params: Any, ttl_ms: int, private: bool) -> None:
        params = init_params if isinstance(init_params, dict) else {}
        caps = params.get("capabilities")
        info = params.get("clientInfo")
        self.capabilities: dict[str, Any] = caps if isinstance(caps, dict) else {}
        self.info: Any = info if isinstance(info, dict) else None
        self.ttl_ms = ttl_ms
        self.private = private
        self.results = revision.ResultView(ttl_ms)  # x-mcp-header annotations learnt
        # id of an input request sent to the client -> where its answer goes.
        self.waiting: dict[str, trio.MemorySendChannel[Any]] = {}

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {revision.META_VERSION: revision.LATEST_MODERN,
                               revision.META_CAPABILITIES: self.capabilities}
        if self.info is not None:
            out[revision.META_CLIENT_INFO] = self.info
        return out

    def result_seen(self, method: str, line: bytes, narrowed: bool) -> bytes:
        """An upstream result on its way to the client (rule 4)."""
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return line
        result = value.get("result") if isinstance(value, dict) else None
        if not isinstance(result, dict):
            return line
        seen = result
        if result.get("resultType") == "complete":
            seen = {k: v for k, v in result.items() if k != "resultType"}
        if method == mcp.TOOLS_LIST and isinstance(seen.get("tools"), list):
            self.results.learn(seen["tools"])
        if method in revision.CACHEABLE:
            bounded = revision.bound_cache(seen, self.ttl_ms, narrowed or self.private)
            if bounded is not None:
                seen = bounded
        if seen is result:
            return line
        return jsonrpc.result_response(value.get("id"), seen)


def refused_initialize(status: int, data: bytes, rid: RequestId | None) -> bool:
    """Whether an upstream's answer to ``initialize`` refuses it (rule 1): a 4xx, or
    a JSON-RPC error under its id."""
    if 400 <= status < 500:
        return True
    try:
        value = jsonrpc.decode_any(data)
    except jsonrpc.DECODE_ERRORS:
        return False
    return isinstance(value, dict) and "error" in value and value.get("id") == rid


def discovered(value: Any) -> dict[str, Any] | None:
    """The result of a ``server/discover`` answer when it names a revision of the
    stateless era (rule 1), else None."""
    result = value.get("result") if isinstance(value, dict) else None
    if not isinstance(result, dict):
        return None
    versions = result.get("supportedVersions")
    if not isinstance(versions, list) or not any(v in revision.MODERN_VERSIONS
                                                 for v in versions):
        return None
    return result


def initialize_result(requested: Any, discover: dict[str, Any], name: str) -> dict[str, Any]:
    """mcpwall's answer to a bridged ``initialize`` (rule 2)."""
    version = requested if requested in revision.HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
    caps = discover.get("capabilities")
    meta = discover.get("_meta")
    info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
    if not (isinstance(info, dict) and isinstance(info.get("name"), str)):
        info = {"name": name, "version": "unknown"}
    out: dict[str, Any] = {"protocolVersion": version,
                           "capabilities": caps if isinstance(caps, dict) else {},
                           "serverInfo": info}
    if isinstance(discover.get("instructions"), str):
        out["instructions"] = discover["instructions"]
    return out


def modern_request(rid: RequestId | None, method: str, params: Any,
                   bridged: Bridged, extra: dict[str, Any] | None = None) -> Inbound:
    """The client's request as the revision has it (rule 3), decoded once."""
    body: dict[str, Any] = dict(params) if isinstance(params, dict) else {}
    own = body.get("_meta")
    body["_meta"] = {**(own if isinstance(own, dict) else {}), **bridged.meta()}
    if extra:
        body.update(extra)
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": body}
    if rid is not None:
        message["id"] = rid
    return decode_client(msgspec.json.encode(message))


class InputRound:
    """One round of an ``InputRequiredResult`` asked of a 2025 client (rule 6),
    sans-IO: the HTTP bridge here and ``wrap_bridge.ModernChild`` (stdio) share it.

    ``messages`` are the server-to-client requests to send (ids
    ``mcpwall-input-N``, mapped to the result's keys in ``keys``), or
    ``error`` says why the round cannot be asked. :meth:`answered` takes
    each of the client's answers; :meth:`outcome` is what the retry adds
    (``inputResponses``, ``requestState``) or the error that ends the call."""

    __slots__ = ("error", "keys", "messages", "responses", "rid", "server", "state")

    def __init__(self, ir: dict[str, Any], rid: RequestId | None, server: str) -> None:
        self.rid = rid
        self.server = server
        self.keys: dict[str, str] = {}
        self.messages: list[bytes] = []
        self.responses: dict[str, Any] = {}
        self.error: bytes | None = None
        state = ir.get("requestState")
        self.state = state if isinstance(state, str) else None
        requests = ir.get("inputRequests")
        if not isinstance(requests, dict) or not requests:
            self.error = self._cannot()
            return
        for key, request in requests.items():
            if not isinstance(request, dict) or request.get("method") not in mrtr.INPUT_METHODS:
                self.error = self._cannot()
                self.keys.clear()
                self.messages.clear()
                return
            ident = f"mcpwall-input-{next(_ids)}"
            self.keys[ident] = key
            message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident,
                                       "method": request["method"]}
            if "params" in request:
                message["params"] = request["params"]
            self.messages.append(msgspec.json.encode(message))

    def _cannot(self) -> bytes:
        return jsonrpc.error_response(self.rid, jsonrpc.INTERNAL_ERROR, (
            f"server {self.server!r} asked for input mcpwall cannot pass on"))

    def answered(self, answer: Any) -> bool:
        """Take one answer of the client (a decoded response); True once every
        input request of the round has one."""
        ident = str(answer.get("id")) if isinstance(answer, dict) else ""
        if ident in self.keys:
            result = answer.get("result")
            self.responses[self.keys[ident]] = result if isinstance(result, dict) else None
        return len(self.responses) >= len(self.keys)

    def outcome(self) -> dict[str, Any] | bytes:
        """What the retry adds, or the error answering the call (unanswered, refused)."""
        if len(self.responses) < len(self.keys):
            return jsonrpc.error_response(self.rid, jsonrpc.INTERNAL_ERROR, (
                "the client did not answer the server's input requests in time"))
        if any(value is None for value in self.responses.values()):
            return jsonrpc.error_response(self.rid, jsonrpc.INTERNAL_ERROR, (
                "the client refused the server's input request"))
        extra: dict[str, Any] = {"inputResponses": dict(self.responses)}
        if self.state is not None:
            extra["requestState"] = self.state
        return extra


def input_required(answer: bytes) -> dict[str, Any] | None:
    """The result of an answer that is an ``InputRequiredResult``, else None
    (a byte test first: the value as written, or any escape, which could spell it)."""
    if answer.find(_INPUT_REQUIRED_BYTES) < 0 and answer.find(b"\\") < 0:
        return None
    try:
        value = jsonrpc.decode_any(answer)
    except jsonrpc.DECODE_ERRORS:
        return None
    result = value.get("result") if isinstance(value, dict) else None
    if isinstance(result, dict) and result.get("resultType") == mrtr.INPUT_REQUIRED:
        return result
    return None


class Bridge:
    """The bridging of one endpoint (rules 1 to 6)."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint

    # -- initialize (rules 1, 2) -------------------------------------------
    async def initialize(self, ex: Exchange, session: HttpSession, rid: RequestId | None) -> bool:
        """Answer a 2025 client's ``initialize`` for a new-revision-only upstream.

        False when the upstream's ``server/discover`` does not show such a
        server (nothing was answered then)."""
        endpoint = self.endpoint
        mediator = session.mediator
        discover = await self._discover(session)
        if discover is None:
            return False
        endpoint.legacy = False
        endpoint.modern = True
        params = session.init_params
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        result = initialize_result(requested, discover, endpoint.name)
        routed = await mediator.from_server(jsonrpc.result_response(rid, result))
        if routed.client is None:  # pragma: no cover - the mediator forwarded it just now
            routed.client = jsonrpc.error_response(rid, jsonrpc.INTERNAL_ERROR,
                                                   "mcpwall could not answer initialize")
        session.bridged = Bridged(params, int(endpoint.front.listen.max_cache_ttl_seconds * 1000),
                                  endpoint.front.table.admission.per_principal)
        mediator.on_result = session.bridged.result_seen
        await endpoint.front.start_session(session)
        session.log.info("session_started", transport="http", upstream="http",
                         bridged=revision.LATEST_MODERN)
        await ex.respond(200, routed.client, headers=[("mcp-session-id", session.id)])
        return True

    async def _discover(self, session: HttpSession) -> dict[str, Any] | None:
        """The upstream's ``server/discover``, asked as a decided request of the session."""
        ask = modern_request(f"mcpwall-discover-{next(_ids)}", revision.DISCOVER, {},
                             Bridged(None, 0, False))
        answer = await self._exchange(session.mediator, ask, None)
        if answer is None:
            return None
        try:
            return discovered(jsonrpc.decode_any(answer))
        except jsonrpc.DECODE_ERRORS:
            return None

    # -- later messages of a bridged session (rules 3 to 6) -----------------
    async def post(self, ex: Exchange, session: HttpSession, inbound: Inbound,
                   accept_sse: bool) -> None:
        bridged = session.bridged
        assert bridged is not None
        mediator = session.mediator
        msg = inbound.envelope
        if msg.method is None:  # an answer to one of the input requests (rule 6)
            waiting = bridged.waiting.pop(str(msg.request_id), None)
            if waiting is not None:
                waiting.send_nowait(inbound.value)
            else:
                await mediator.from_client(inbound)  # unmatched: dropped, recorded
            await ex.respond(202)
            return
        if msg.kind is not Kind.REQUEST:
            routed = await mediator.from_client(inbound)
            await (ex.respond(400, routed.rejected) if routed.rejected else ex.respond(202))
            return
        method = msg.method
        if method == mcp.INITIALIZE or method in revision.REMOVED_METHODS - {mcp.PING}:
            code, why = ((jsonrpc.INVALID_REQUEST, "this session is initialized already")
                         if method == mcp.INITIALIZE else
                         (jsonrpc.METHOD_NOT_FOUND,
                          f"Method not found: {method!r}: server {self.endpoint.name!r} "
                          f"speaks revision {revision.LATEST_MODERN}, which removed it"))
            await ex.respond(200, await mediator.refuse_protocol(inbound, code, why))
            return
        if method == mcp.PING:
            routed = await mediator.from_client(inbound)
            reply = routed.client
            if routed.upstream is not None:  # allowed: answered here (rule 5)
                reply = (await mediator.from_server(
                    jsonrpc.result_response(msg.request_id, {}))).client
            await (ex.respond(200, reply) if reply else ex.respond(202))
            return
        params = revision.params_of(inbound)
        ask = modern_request(msg.request_id, method, params, bridged)
        out = _Reply(ex, accept_sse, self.endpoint.keepalive)
        answer = await self._exchange(mediator, ask, out, bridged)
        rounds = 0
        while answer is not None and rounds < MAX_ROUNDS:
            ir = input_required(answer)
            if ir is None:
                break
            rounds += 1
            extra = await self._ask_client(out, bridged, ir, msg.request_id)
            if isinstance(extra, bytes):
                answer = extra
                break
            answer = await self._exchange(mediator, modern_request(
                msg.request_id, method, params, bridged, extra), out, bridged)
        if answer is not None and input_required(answer) is not None:
            answer = jsonrpc.error_response(msg.request_id, jsonrpc.INTERNAL_ERROR,
                                            f"server {self.endpoint.name!r} asked for input "
                                            f"more than {MAX_ROUNDS} times")
        if answer is not None:
            await out.answer(answer)

    async def _ask_client(self, out: _Reply, bridged: Bridged, ir: dict[str, Any],
                          rid: RequestId | None) -> dict[str, Any] | bytes:
        """Each input request to the client, as a 2025 server-to-client request on
        the call's event stream; their results by key (rule 6), or the error
        that ends the call."""
        asked = InputRound(ir, rid, self.endpoint.name)
        if asked.error is not None:
            return asked.error
        if not out.stream:
            return jsonrpc.error_response(rid, jsonrpc.INTERNAL_ERROR, (
                f"server {self.endpoint.name!r} asks for input; a client that does not "
                "accept text/event-stream cannot be asked"))
        send, receive = trio.open_memory_channel[Any](len(asked.keys))
        for ident in asked.keys:
            bridged.waiting[ident] = send.clone()
        for message in asked.messages:
            await out.event(message)
        with trio.move_on_after(self.endpoint.timeout):
            while not asked.answered(await receive.receive()):
                pass
        for ident in asked.keys:
            bridged.waiting.pop(ident, None)
        return asked.outcome()

    async def _exchange(self, mediator: Mediator, ask: Inbound, out: _Reply | None,
                        bridged: Bridged | None = None) -> bytes | None:
        """Decide ``ask``, forward it if allowed and give back the answer for the
        client (after the mediator), or None when it was answered already."""
        endpoint = self.endpoint
        msg = ask.envelope
        rid = msg.request_id
        routed = await mediator.from_client(ask, wait=False)
        if routed.held is not None and rid is not None:
            if out is None:  # mcpwall's own request is never held: nobody to ask
                routed.held.withdraw("nobody can approve mcpwall's own request")
                return None
            ex = out.ex
            routed = await held_http.hold(ex, routed.held, stream=out.stream,
                                          headers=[], keepalive=endpoint.keepalive)
            if routed.upstream is None:
                await held_http.finish(ex, rid, routed, [])
                return None
        if routed.upstream is None:
            return routed.client or (jsonrpc.error_response(
                rid, jsonrpc.INTERNAL_ERROR, "mcpwall could not forward this request"))
        params = revision.params_of(ask)
        spec = None
        if bridged is not None and msg.method == mcp.TOOLS_CALL and isinstance(params, dict):
            spec = bridged.results.headers_of(params)
        headers = revision.upstream_headers(revision.LATEST_MODERN, msg.method or "",
                                            params, spec)
        try:
            async with await endpoint.upstream.forward(
                    endpoint.prepared_stateless(headers), routed.upstream,
                    response_timeout=endpoint.timeout) as resp:
                with trio.fail_after(endpoint.timeout):
                    return await self._answer(mediator, resp, rid)
        except (UpstreamError, trio.TooSlowError) as exc:
            failure: Lost | TimedOut = TimedOut(endpoint.timeout)
            if isinstance(exc, UpstreamError) and exc.reason is not Reason.TIMEOUT:
                failure = Lost(f"failed: {exc.reason.value}", exc.code)
            mediator.log.warning("upstream_failed", failure=repr(failure))
            assert rid is not None
            [reply] = await mediator.unanswered(failure, [rid])
            return reply

    async def _answer(self, mediator: Mediator, resp: Any, rid: RequestId | None) -> bytes:
        """The answer to ``rid`` in an upstream response (JSON, or the event that
        carries it), through the mediator."""
        status, ctype = resp.status, resp.content_type
        if ctype == SSE and status < 300:
            async for event in resp.events():
                if not event.data:
                    continue
                routed = await mediator.from_server(event.data)
                if routed.answers == rid and routed.client is not None:
                    return bytes(routed.client)
            what = "ended the stream without an answer"
        else:
            data = await resp.read(MAX_ANSWER_BYTES)
            if ctype == JSON and data:
                routed = await mediator.from_server(data)
                if routed.client is not None and routed.answers == rid:
                    return bytes(routed.client)
            what = f"answered HTTP {status} with {ctype or 'no type'}"
        assert rid is not None
        [reply] = await mediator.unanswered(Lost(what), [rid])
        return reply


class _Reply:
    """The client's POST: JSON for a plain answer, an event stream once the server
    asks for input (rule 6)."""

    __slots__ = ("ex", "keepalive", "out", "stream")

    def __init__(self, ex: Exchange, stream: bool, keepalive: float) -> None:
        self.ex = ex
        self.stream = stream
        self.keepalive = keepalive
        self.out: SseResponse | None = None

    async def event(self, message: bytes) -> None:
        if self.out is None:  # (a held call's stream is open already: kept)
            self.out = SseResponse(self.ex, self.keepalive)
            await self.out.open()
        await self.out.send(sse.encode_event(message))

    async def answer(self, message: bytes) -> None:
        if self.out is not None:
            await self.out.end(sse.encode_event(message))
        elif self.ex.started:
            await end_with(self.ex, message)
        else:
            await self.ex.respond(200, message)


async def refuse_get(ex: Exchange) -> None:
    """A GET stream of a bridged session: the upstream has none (rule 5)."""
    await refuse(ex, 405, jsonrpc.INVALID_REQUEST,
                 "Method Not Allowed: this server offers no GET stream",
                 [("allow", "POST, DELETE")])
