"""The bridge: clients of the stateless revision in front of a handshake-era stdio server.

A stdio server that speaks only the handshake revisions (2025-03-26 to
2025-11-25) cannot read a 2026-07-28 request. The bridge carries such requests
over a 2025 session that mcpwall opens itself, so a fleet's clients can move to
the new revision without touching its servers. Rules this module keeps:

1. One bridged session per (server, principal, grant): a child of its own,
   started on the caller's first bridged request that the policy let through
   (a refused request starts nothing), given mcpwall's own ``initialize``
   (clientInfo ``mcpwall-bridge``, no client capabilities: the bridge serves
   no server-to-client request) and ``notifications/initialized``. It is
   admitted under the server's child caps like a client session
   (``max_children``, ``max_children_per_principal``: a refusal is 503/429),
   sits in the front's session table (idle expiry with the server's
   ``idle_seconds``; its id is never given to anyone) and ends with its child:
   the requests it carried are answered with the mediator's error, and the
   caller's next request opens a new one. Two callers never share one.
2. Each request is decided by its own sessionless mediator, exactly as any
   2026-07-28 request is (its audit row keeps the client's own ``_meta``).
   What goes to the server is that decided message translated
   (:meth:`Outbound.translated`, same receipt): its id is mcpwall's own (the
   child carries many calls), and the revision's keys of ``params._meta``
   (``io.modelcontextprotocol/...``: version, client capabilities and info)
   are removed, for a 2025 server reads ``_meta`` as its own business; other
   ``_meta`` keys (``progressToken``) stay.
3. The server's answer gets its request's id back and, being a result of the
   new revision, ``resultType: "complete"``; then it goes through the
   request's mediator like any answer (tools/list filtered for the caller,
   outcome recorded, the front's cache bounds). A request the server does not
   answer within the upstream timeout is answered with the timeout error and
   cancelled at the server.
4. ``server/discover`` is decided and recorded like any request and answered
   by mcpwall from the server's ``initialize`` result: its capabilities
   (without what the bridge cannot carry: ``resources.subscribe``, the
   ``listChanged`` flags, ``logging``), its instructions, its serverInfo
   (as the revision's ``_meta`` stamp) and ``supportedVersions`` the
   stateless revision mcpwall speaks. It never reaches the server.
5. What the server sends besides answers: a request (sampling, elicitation,
   roots/list) is answered at once with an error (-32601): the bridge
   declared no client capabilities and does not turn them into MRTR input
   requests; a notification (progress, logging, list changes) is dropped.
   Notifications the client sends are decided and recorded, and go nowhere
   (the revision defines none a 2025 server would act on).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Final

import trio

from firewall import __version__
from firewall.audit.events import append_lifecycle
from firewall.config import StdioServer
from firewall.gateway.front import held_http
from firewall.gateway.front.admission import Refusal, ServerCaps
from firewall.gateway.front.sessions import FrontContext, Session, new_session_id
from firewall.gateway.front.sse_response import SseResponse
from firewall.gateway.http.exchange import Exchange
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.stdio import ChildExited, StdioChild, open_stdio_child
from firewall.policy.decision import Caller
from firewall.protocol import framing, jsonrpc, mcp, revision, sse
from firewall.protocol.inbound import Inbound
from firewall.protocol.jsonrpc import Kind, RequestId

CLIENT_INFO: Final = {"name": "mcpwall-bridge", "version": __version__}
REVISION_PREFIX: Final = "io.modelcontextprotocol/"
SERVER_INFO_META: Final = "io.modelcontextprotocol/serverInfo"
_HANDSHAKE_ID: Final = "mcpwall-bridge-initialize"
_METHOD_NOT_FOUND: Final = -32601


class BridgeFailed(Exception):
    """A bridged session could not be opened; the message says why, for a person."""


class _Waiter:
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: bytes | None = None


class BridgeSession(Session):
    """A 2025 session mcpwall holds with a stdio child, for one caller's bridged requests."""

    def __init__(self, *, sid: str, server: str, caller: Caller, mediator: Mediator,
                 idle_limit: float, settings: StdioServer, timeout: float) -> None:
        super().__init__(sid=sid, server=server, caller=caller, mediator=mediator,
                         idle_limit=idle_limit)
        self.settings = settings
        self.timeout = timeout
        self.init_result: dict[str, Any] = {}
        self._child: StdioChild | None = None
        self._scope = trio.CancelScope()
        self._waiting: dict[str, _Waiter] = {}
        self._ids = itertools.count(1)
        self._handshake = _Waiter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the child and shake hands, then serve until it exits or the session ends.

        Raises :class:`BridgeFailed` (or OSError) before ``task_status.started``
        when the child cannot be started or does not complete the handshake."""
        failure: str | None = None
        try:
            with self._scope:
                async with open_stdio_child(self.settings, server=self.server,
                                            session=self.id) as child:
                    self._child = child
                    await append_lifecycle(
                        self.mediator.audit, "upstream_start", session=self.id,
                        principal=self.caller.principal, server=self.server,
                        detail={"pid": child.pid, "attempt": 0, "bridge": True,
                                "command": self.settings.command})
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._read, child)
                        failure = await self._shake_hands(child)
                        if failure is not None:
                            nursery.cancel_scope.cancel()
                        else:
                            self.log.info("bridge_started", pid=child.pid,
                                          version=self.init_result.get("protocolVersion"))
                            task_status.started()
        finally:
            self.closed = True
            self._child = None
            for waiter in self._waiting.values():
                waiter.done.set()  # no answer: the request is answered with an error
        if failure is not None:
            raise BridgeFailed(failure)

    async def _shake_hands(self, child: StdioChild) -> str | None:
        """mcpwall's own initialize and notifications/initialized; None when done."""
        init = jsonrpc.request(mcp.INITIALIZE, {
            "protocolVersion": mcp.LATEST_PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": CLIENT_INFO}, _HANDSHAKE_ID)
        try:
            await child.send(Outbound.own(init, "bridge: mcpwall's own handshake"))
            with trio.move_on_after(self.timeout):
                await self._handshake.done.wait()
            answer = self._handshake.answer
            if answer is None:
                return "the server did not answer initialize"
            value = jsonrpc.decode_any(answer)
            result = value.get("result") if isinstance(value, dict) else None
            if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
                return "the server refused initialize"
            self.init_result = result
            await child.send(Outbound.own(jsonrpc.request("notifications/initialized"),
                                          "bridge: mcpwall's own handshake"))
        except ChildExited as exc:
            return f"the server exited during the handshake (code {exc.returncode})"
        except jsonrpc.DECODE_ERRORS:
            return "the server's answer to initialize is not JSON"
        return None

    async def _read(self, child: StdioChild) -> None:
        async for line in child.lines():
            try:
                msg = jsonrpc.decode(line)
            except jsonrpc.ProtocolError as exc:
                self.log.warning("bridge_message_dropped", reason=exc.message, size=len(line))
                continue
            if msg.kind is Kind.RESPONSE:
                rid = msg.request_id
                waiter = self._waiting.pop(rid, None) if isinstance(rid, str) else None
                if rid == _HANDSHAKE_ID and not self._handshake.done.is_set():
                    waiter = self._handshake
                if waiter is None:
                    self.log.info("bridge_response_unmatched", request_id=rid)
                    continue
                waiter.answer = line
                waiter.done.set()
            elif msg.kind is Kind.REQUEST:  # rule 5
                self.log.info("bridge_server_request_refused", method=msg.method)
                refusal = jsonrpc.error_response(
                    msg.request_id, _METHOD_NOT_FOUND,
                    f"mcpwall's bridge carries no {msg.method} to a 2026-07-28 client")
                try:
                    await child.send(Outbound.own(refusal,
                                                  "bridge: refusal of a server request"))
                except ChildExited:
                    break
            else:
                self.log.debug("bridge_notification_dropped", method=msg.method)

    async def close(self, reason: str) -> None:
        """End the session: its child is stopped, waiting requests get errors."""
        if not self.closed:
            self.log.info("session_closed", reason=reason)
        self.closed = True
        self._scope.cancel()

    async def call(self, outbound: Outbound, bid: str) -> bytes | None:
        """Send one translated request and wait for its answer (None: no answer
        within the timeout, or the child is gone); ``outbound`` carries the
        bridge id ``bid`` (:meth:`next_id`)."""
        waiter = self._waiting[bid] = _Waiter()
        child = self._child
        if child is None or self.closed:
            self._waiting.pop(bid, None)
            return None
        with self.busy():
            try:
                await child.send(outbound)
            except ChildExited:
                self._waiting.pop(bid, None)
                return None
            with trio.move_on_after(self.timeout):
                await waiter.done.wait()
        if waiter.answer is None and self._waiting.pop(bid, None) is not None \
                and self._child is not None:
            note = jsonrpc.request(mcp.CANCELLED, {"requestId": bid,
                                                   "reason": "mcpwall: timeout"})
            with contextlib.suppress(ChildExited):
                await self._child.send(Outbound.own(note, "bridge: cancellation of a "
                                                    "timed-out request"))
        return waiter.answer

    def next_id(self) -> str:
        """The id the next bridged request goes to the server with."""
        return f"mcpwall-bridge-{next(self._ids)}"

    def health(self) -> dict[str, Any]:
        child = self._child
        return {"pid": child.pid if child else None, "bridge": True,
                "pending": len(self._waiting)}


def translate_request(data: bytes, bid: str) -> bytes:
    """A decided 2026-07-28 request as a 2025 server reads it (rule 2).

    ``translate_request(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":'
    b'{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}', "b-1")``
    is ``{"jsonrpc":"2.0","id":"b-1","method":"tools/list","params":{}}``."""
    value = jsonrpc.decode_any(data)
    value["id"] = bid
    params = value.get("params")
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            kept = {k: v for k, v in meta.items() if not str(k).startswith(REVISION_PREFIX)}
            if kept:
                params["_meta"] = kept
            else:
                del params["_meta"]
    return framing.canonical(jsonrpc.encode(value))


def translate_answer(data: bytes, rid: RequestId, method: str) -> bytes:
    """A 2025 server's answer as the 2026-07-28 revision says it (rule 3): the
    request's own id, ``resultType: "complete"`` on a result, and on the
    result of a cacheable method the cache fields the revision requires
    (``ttlMs`` 0, ``cacheScope`` private: a 2025 server says nothing of
    caching, and the bridge carries no list-changed notification)."""
    value = jsonrpc.decode_any(data)
    value["id"] = rid
    result = value.get("result")
    if isinstance(result, dict):
        result.setdefault("resultType", "complete")
        if method in revision.CACHEABLE:
            result.setdefault("ttlMs", 0)
            result.setdefault("cacheScope", "private")
    return framing.canonical(jsonrpc.encode(value))


def discover_result(init: dict[str, Any]) -> dict[str, Any]:
    """The ``server/discover`` result of a bridged server, from its initialize result
    (rule 4)."""
    capabilities = init.get("capabilities")
    carried: dict[str, Any] = {}
    if isinstance(capabilities, dict):
        for name, value in capabilities.items():
            if name == "logging":
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in ("subscribe", "listChanged")}
            carried[name] = value
    result: dict[str, Any] = {"supportedVersions": list(revision.MODERN_VERSIONS),
                              "capabilities": carried, "resultType": "complete",
                              "ttlMs": 0, "cacheScope": "private"}
    if isinstance(init.get("instructions"), str):
        result["instructions"] = init["instructions"]
    if isinstance(init.get("serverInfo"), dict):
        result["_meta"] = {SERVER_INFO_META: init["serverInfo"]}
    return result


class Bridge:
    """The bridged sessions of one stdio server, one per caller (rule 1)."""

    def __init__(self, name: str, settings: StdioServer, front: FrontContext,
                 caps: ServerCaps, idle_limit: float) -> None:
        self.name = name
        self.settings = settings
        self.front = front
        self.caps = caps
        self.idle_limit = idle_limit
        self.timeout = front.listen.upstream_timeout_seconds
        self.keepalive = front.listen.keepalive_seconds
        self._sessions: dict[tuple[str, str], BridgeSession] = {}
        self._opening: dict[tuple[str, str], trio.Lock] = {}

    def sessions(self) -> list[BridgeSession]:
        return [s for s in self._sessions.values() if not s.closed]

    async def session_for(self, caller: Caller) -> BridgeSession | Refusal | str:
        """The caller's bridged session, opened if need be; a Refusal (caps) or
        why it could not be opened."""
        key = (caller.principal, caller.grant)
        lock = self._opening.setdefault(key, trio.Lock())
        async with lock:
            found = self._sessions.get(key)
            if found is not None and not found.closed:
                return found
            slot = self.front.admit(self.name, caller, self.caps)  # no await before
            if isinstance(slot, Refusal):
                return slot
            sid = new_session_id()
            session = BridgeSession(
                sid=sid, server=self.name, caller=caller,
                mediator=self.front.mediator(self.name, sid, caller),
                idle_limit=self.idle_limit, settings=self.settings, timeout=self.timeout)
            session.slot = slot
            try:
                await self.front.start_session(session, session.run)
            except (OSError, BridgeFailed) as exc:
                session.log.error("bridge_start_failed", error=str(exc))
                return str(exc)
            self._sessions[key] = session
            return session

    async def post(self, ex: Exchange, caller: Caller, mediator: Mediator, inbound: Inbound,
                   accept_sse: bool) -> None:
        """Carry one 2026-07-28 message over the caller's bridged session (rules 2 to 5)."""
        msg = inbound.envelope
        routed = await mediator.from_client(inbound, wait=False)
        if routed.held is not None and msg.request_id is not None:  # held_http's rules
            routed = await held_http.hold(ex, routed.held, stream=accept_sse, headers=[],
                                          keepalive=self.keepalive)
            if routed.upstream is None:
                await held_http.finish(ex, msg.request_id, routed, [])
                return
        if routed.rejected is not None:  # a refused id-less message
            await ex.respond(400, routed.rejected)
            return
        if routed.upstream is None:  # refused, or answered by mcpwall
            await (ex.respond(200, routed.client) if routed.client else ex.respond(202))
            return
        rid = msg.request_id
        if msg.kind is not Kind.REQUEST or rid is None:  # rule 5: goes nowhere
            await ex.respond(202)
            return
        opened = await self.session_for(caller)
        if isinstance(opened, Refusal):
            await self._answer(ex, await self._unanswered(
                mediator, rid, Lost(f"cannot be reached: {opened.message()}")), accept_sse,
                status=opened.status)
            return
        if isinstance(opened, str):
            await self._answer(ex, await self._unanswered(
                mediator, rid, Lost(f"cannot be started through the bridge: {opened}")),
                accept_sse, status=502)
            return
        if msg.method == revision.DISCOVER:  # rule 4
            await routed.upstream.ready()
            answer = jsonrpc.result_response(rid, discover_result(opened.init_result))
            await self._relay(ex, mediator, rid, framing.canonical(answer), accept_sse)
            return
        bid = opened.next_id()
        outbound = routed.upstream.translated(translate_request(routed.upstream.data, bid),
                                              "bridged")
        if accept_sse:
            out = SseResponse(ex, self.keepalive)
            await out.open()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.keep_open)
                answer_line = await opened.call(outbound, bid)
                nursery.cancel_scope.cancel()
            reply = await self._reply(mediator, msg.method or "", rid, answer_line, opened)
            await out.end(sse.encode_event(reply))
            return
        answer_line = await opened.call(outbound, bid)
        await ex.respond(200, await self._reply(mediator, msg.method or "", rid, answer_line,
                                                opened))

    async def _reply(self, mediator: Mediator, method: str, rid: RequestId,
                     answer: bytes | None, session: BridgeSession) -> bytes:
        """What the client gets for the server's answer (or its absence)."""
        if answer is None:
            failure: Lost | TimedOut = (Lost("exited") if session.closed
                                        else TimedOut(self.timeout))
            return await self._unanswered(mediator, rid, failure)
        try:
            line = translate_answer(answer, rid, method)
        except (*jsonrpc.DECODE_ERRORS, framing.NotCanonical):
            return await self._unanswered(mediator, rid, Lost("sent an answer mcpwall "
                                                              "cannot read"))
        routed = await mediator.from_server(line)
        if routed.client is None:
            return await self._unanswered(mediator, rid, Lost("sent an answer mcpwall "
                                                              "cannot relay"))
        return routed.client

    async def _relay(self, ex: Exchange, mediator: Mediator, rid: RequestId, answer: bytes,
                     accept_sse: bool) -> None:
        routed = await mediator.from_server(answer)
        reply = routed.client or await self._unanswered(mediator, rid, Lost("no answer"))
        await self._answer(ex, reply, accept_sse)

    @staticmethod
    async def _unanswered(mediator: Mediator, rid: RequestId, failure: Lost | TimedOut) -> bytes:
        [reply] = await mediator.unanswered(failure, [rid])
        return reply

    @staticmethod
    async def _answer(ex: Exchange, reply: bytes, accept_sse: bool, status: int = 200) -> None:
        if accept_sse and status == 200:
            out = SseResponse(ex, 0)
            await out.open(flush=False)
            await out.end(sse.encode_event(reply))
            return
        await ex.respond(status, reply)
