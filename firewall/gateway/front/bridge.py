"""The bridge: clients of the stateless revision in front of a handshake-era stdio server.

A stdio server that speaks only the handshake revisions (2025-03-26 to
2025-11-25) cannot read a 2026-07-28 request. The bridge carries such requests
over a 2025 session that mcpwall opens itself, so a fleet's clients can move to
the new revision without touching its servers. Rules this module keeps:

1. One bridged session per (server, principal, grant): a child of its own,
   started on the caller's first bridged request that the policy let through
   (a refused request starts nothing), given mcpwall's own ``initialize``
   (clientInfo ``mcpwall-bridge``, client capabilities :data:`CAPABILITIES`:
   the server requests rule 6 carries) and ``notifications/initialized``. It is
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
   (without ``logging``, which the bridge cannot carry; rule 7 for the
   rest), its instructions, its serverInfo
   (as the revision's ``_meta`` stamp) and ``supportedVersions`` the
   stateless revision mcpwall speaks. It never reaches the server.
5. What the server sends besides answers and the requests of rule 6: a
   request is answered at once with an error (-32601); a progress
   notification naming the ``progressToken`` of a call in flight, and a log
   message of a call (rule 9), go through that call's mediator to the event
   stream of the client request waiting for the call (nowhere when it takes
   JSON only: a log message is then counted as dropped); the changes of
   rule 7 go to the session's listens; any other notification is dropped.
   Notifications the client sends are decided and
   recorded, and go nowhere (the revision defines none a 2025 server would
   act on).
6. A server request (elicitation in form mode, sampling, roots/list) that
   comes on the stream of one call (a link that says which request's answer
   carried it: :data:`Dispatch`, an HTTP POST's event stream), or, when the
   link does not say (stdio) or it came apart from any request (an HTTP GET
   stream), while exactly one call of the session is in flight, of a method
   that may ask for input (``mrtr.MRTR_METHODS``), whose request offered
   the matching capability in its ``_meta``, becomes the answer to that
   call: an ``InputRequiredResult`` with the server's request as its one
   input request and a ``requestState`` of the bridge (sealed over the
   session, the call, the server request's id and key, the call_id and the
   caller, expiring after the upstream timeout:
   :mod:`~firewall.gateway.front.bridge_input`, which ``wrap --bridge``
   shares), passed through the call's mediator (mediator rule 16
   decides the input request; refused, the call ends with the refusal, the
   server's request gets it too and the call is cancelled at the server).
   The retry is decided by its own mediator first; only when the state
   opens, names this caller and session, a call still waiting for that very
   request (taken once), and the mediator linked the retry to that call_id,
   is the client's answer written to the server as the response to its
   request (:meth:`Outbound.translated` of the decided retry) and the retry
   answered with what the server sends next for the call. A retry the
   mediator linked to an earlier round (so not decided nor charged again)
   that the bridge cannot resume (its question expired, or was answered) is
   answered with the mediator's error and never reaches the server. Any
   other retry is a new call (its ``inputResponses`` and ``requestState``
   removed, for a 2025 server reads neither). A call whose client does not retry within
   the upstream timeout is abandoned: its server request answered with an
   error, the call cancelled.
7. Listens (``front/bridge_listen.py``): the server's
   ``notifications/*/list_changed`` and ``notifications/resources/updated``
   go to every open listen of the session (:meth:`BridgeSession.listening`,
   a bounded channel each, the surplus dropped), and end with it; while
   there is one, the link is told (:meth:`Link.listened`: an HTTP link
   keeps a GET stream open for them). The URIs
   they follow are subscribed by :meth:`BridgeSession.own_request`, once per
   URI, and unsubscribed after the last listen of one: a request of
   mcpwall's own decided and recorded by the session's mediator and sent as
   decided (its id the bridge's); those of one listen share one upstream
   timeout (once one goes unanswered, recorded so, no more are sent).
   ``server/discover`` then keeps the
   ``listChanged`` flags and ``resources.subscribe``.
8. What the server sends for a call waits in that call's queue until the
   call's client request reads it (a call waiting for its client's retry
   has no reader): at most :data:`MAX_QUEUED` progress notifications and
   server requests; beyond that a progress notification is dropped and a
   server request answered with an error (-32601). The call's answer
   always gets through.
9. A ``notifications/message`` belongs to the call whose stream carried it,
   or (the link does not say: stdio) to the one call in flight; one sent
   apart from any request (an HTTP GET stream) belongs to none. It is queued
   for that call only when the call's request asked for log messages
   (``io.modelcontextprotocol/logLevel`` in its ``_meta``, the
   2026-07-28 way, which the server never sees) at a level at or below the
   message's; any other is dropped and counted (per session, and per
   bridge in the server's ``/healthz`` entry: :class:`Tally`).
   ``server/discover`` then keeps ``logging``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import trio

from firewall import __version__
from firewall.audit.events import append_lifecycle
from firewall.config import StdioServer
from firewall.gateway.front import held_http
from firewall.gateway.front.admission import Refusal, ServerCaps
from firewall.gateway.front.bridge_input import (
    NOT_WAITING,
    RETRY_MEMBERS,
    InputCall,
    InputDesk,
    abandonment,
    asking,
    carried,
    input_required,
    input_response,
    refusal,
)
from firewall.gateway.front.sessions import FrontContext, Session, new_session_id
from firewall.gateway.front.sse_response import SseResponse
from firewall.gateway.http.exchange import Exchange
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.stdio import ChildExited, StdioChild, open_stdio_child
from firewall.policy.decision import Caller
from firewall.protocol import framing, jsonrpc, mcp, meta, mrtr, revision, sse
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.jsonrpc import Kind, RequestId
from firewall.protocol.mrtr import StateSeal

CLIENT_INFO: Final = {"name": "mcpwall-bridge", "version": __version__}
REVISION_PREFIX: Final = "io.modelcontextprotocol/"
SERVER_INFO_META: Final = "io.modelcontextprotocol/serverInfo"
_HANDSHAKE_ID: Final = "mcpwall-bridge-initialize"
# What mcpwall's own initialize offers: the server requests the bridge carries
# to a 2026-07-28 client as input requests (rule 6).
CAPABILITIES: Final[dict[str, Any]] = {"elicitation": {"form": {}}, "sampling": {}, "roots": {}}
_METHOD_NOT_FOUND: Final = -32601
# The server's notifications the bridged listens carry (rule 7), and how many
# of them may wait for one listen before more are dropped.
LISTENED: Final = frozenset({"notifications/tools/list_changed",
                             "notifications/prompts/list_changed",
                             "notifications/resources/list_changed",
                             "notifications/resources/updated"})
LISTEN_BUFFER: Final = 64
# What the server may have queued for one call that nobody reads yet (rule 8).
MAX_QUEUED: Final = 64


class BridgeFailed(Exception):
    """A bridged session could not be opened; the message says why, for a person."""


class LinkLost(Exception):
    """The server can no longer be written to; the message says why."""


# What a link says of the stream a message of the server came on: the id (at
# the server) of the bridge's request whose answer carried it, :data:`APART`
# for a stream of no request (an HTTP GET stream), None when the link cannot
# say (stdio: one pipe for everything).
APART: Final = ""
Dispatch = Callable[[bytes, str | None], Awaitable[bool]]


class Link(Protocol):
    """How a bridged session reaches its server: a stdio child (:func:`stdio_link`)
    or a 2025 session over Streamable HTTP (``http_endpoint``)."""

    async def send(self, outbound: Outbound) -> None:
        """Write one message (raises :class:`LinkLost`)."""

    async def serve(self, dispatch: Dispatch) -> None:
        """Hand each message of the server to ``dispatch``, with the stream it
        came on, until the link ends (or ``dispatch`` returns False)."""

    def negotiated(self, version: str) -> None:
        """The protocol version the server answered ``initialize`` with."""

    def listened(self, on: bool) -> None:
        """Whether the session has open listens (rule 7): a link whose server
        sends notifications apart from answers only when asked (an HTTP GET
        stream) asks while it has."""

    def health(self) -> dict[str, Any]:
        """What the health report shows of the link."""


Connect = Callable[["BridgeSession"], AbstractAsyncContextManager[Link]]


class StdioLink:
    """A stdio child as a :class:`Link`."""

    def __init__(self, child: StdioChild) -> None:
        self.child = child

    async def send(self, outbound: Outbound) -> None:
        try:
            await self.child.send(outbound)
        except ChildExited as exc:
            raise LinkLost(f"exited with code {exc.returncode}") from None

    async def serve(self, dispatch: Dispatch) -> None:
        async for line in self.child.lines():
            if not await dispatch(line, None):
                return

    def negotiated(self, version: str) -> None:
        """A stdio child needs no version header."""

    def listened(self, on: bool) -> None:
        """A stdio child writes its notifications on the one pipe."""

    def health(self) -> dict[str, Any]:
        return {"pid": self.child.pid}


def stdio_link(settings: StdioServer) -> Connect:
    """The :data:`Connect` of a stdio server: a child of its own per session."""

    @contextlib.asynccontextmanager
    async def connect(session: BridgeSession) -> AsyncIterator[Link]:
        async with open_stdio_child(settings, server=session.server,
                                    session=session.id) as child:
            await append_lifecycle(
                session.mediator.audit, "upstream_start", session=session.id,
                principal=session.caller.principal, server=session.server,
                detail={"pid": child.pid, "attempt": 0, "bridge": True,
                        "command": settings.command})
            yield StdioLink(child)

    return connect


class _Waiter:
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: bytes | None = None


def _room(call: BridgedCall) -> bool:
    """Whether the server may queue one more progress or request for ``call``
    (rule 8); its answer always may (one per call)."""
    return call.receive.statistics().current_buffer_used < MAX_QUEUED


class BridgedCall(InputCall):
    """One bridged request in flight at the server (rules 5 and 6): what the
    server sends for it arrives on ``events`` as (kind, line): ``answer`` (its
    response; ``b""`` when the child is gone), ``request`` (a server request
    the call's client may answer), ``progress`` or ``log`` (rule 9: at or
    above ``log_level``, the rank its request asked for)."""

    __slots__ = ("bid", "events", "log_level", "receive", "token")

    def __init__(self, bid: str, method: str, caps: dict[str, Any], call_id: str | None,
                 token: int | str | None, log_level: int | None = None) -> None:
        super().__init__(method, caps, call_id)
        self.bid = bid
        self.token = token
        self.log_level = log_level
        self.events, self.receive = trio.open_memory_channel[tuple[str, bytes]](math.inf)


class Tally:
    """What the sessions of one bridge counted: log messages no client got (rule 9)."""

    __slots__ = ("logs_dropped",)

    def __init__(self) -> None:
        self.logs_dropped = 0


class BridgeSession(Session):
    """A 2025 session mcpwall holds with a stdio child, for one caller's bridged requests."""

    def __init__(self, *, sid: str, server: str, caller: Caller, mediator: Mediator,
                 idle_limit: float, connect: Connect, timeout: float,
                 seal: StateSeal | None = None, tally: Tally | None = None) -> None:
        super().__init__(sid=sid, server=server, caller=caller, mediator=mediator,
                         idle_limit=idle_limit)
        self.tally = tally or Tally()
        self.connect = connect
        self.timeout = timeout
        self.seal = seal or StateSeal()
        self.desk = InputDesk(sid, self.seal, timeout)  # rule 6: the sealed states
        self.init_result: dict[str, Any] = {}
        self._link: Link | None = None
        self._scope = trio.CancelScope()
        self._calls: dict[str, BridgedCall] = {}
        self._ids = itertools.count(1)
        self._handshake = _Waiter()
        self._nursery: trio.Nursery | None = None
        # Rule 7: the open listens' channels, and the URIs followed (how many
        # listens follow each) with the lock that orders subscribe/unsubscribe.
        self._listeners: set[trio.MemorySendChannel[bytes]] = set()
        self._followed: dict[str, int] = {}
        self._following = trio.Lock()
        self.logs_dropped = 0  # rule 9: log messages no client got

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the child and shake hands, then serve until it exits or the session ends.

        Raises :class:`BridgeFailed` (or OSError) before ``task_status.started``
        when the child cannot be started or does not complete the handshake."""
        failure: str | None = None
        try:
            with self._scope:
                async with self.connect(self) as link:
                    self._link = link
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._serve, link, nursery.cancel_scope)
                        failure = await self._shake_hands(link)
                        if failure is not None:
                            nursery.cancel_scope.cancel()
                        else:
                            self.log.info("bridge_started", **link.health(),
                                          version=self.init_result.get("protocolVersion"))
                            task_status.started()
        finally:
            self.closed = True
            self._link = None
            self._nursery = None
            for call in self._calls.values():  # no answer: the request gets an error
                call.events.send_nowait(("answer", b""))
            self._calls.clear()
            for listener in self._listeners:  # the listens end with the session
                listener.close()
            self._listeners.clear()
        if failure is not None:
            raise BridgeFailed(failure)

    async def _serve(self, link: Link, scope: trio.CancelScope) -> None:
        """Take what the server sends until the link ends; then the session ends."""
        await link.serve(self._dispatch)
        scope.cancel()

    async def _shake_hands(self, link: Link) -> str | None:
        """mcpwall's own initialize and notifications/initialized; None when done."""
        init = jsonrpc.request(mcp.INITIALIZE, {
            "protocolVersion": mcp.LATEST_PROTOCOL_VERSION, "capabilities": CAPABILITIES,
            "clientInfo": CLIENT_INFO}, _HANDSHAKE_ID)
        try:
            await link.send(Outbound.own(init, "bridge: mcpwall's own handshake"))
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
            link.negotiated(result["protocolVersion"])
            await link.send(Outbound.own(jsonrpc.request("notifications/initialized"),
                                          "bridge: mcpwall's own handshake"))
        except LinkLost as exc:
            return f"the server was lost during the handshake ({exc})"
        except jsonrpc.DECODE_ERRORS:
            return "the server's answer to initialize is not JSON"
        return None

    async def _dispatch(self, line: bytes, on: str | None = None) -> bool:
        """One message from the server, and the stream it came on
        (:data:`Dispatch`); False when the link is gone."""
        try:
            msg = jsonrpc.decode(line)
        except jsonrpc.ProtocolError as exc:
            self.log.warning("bridge_message_dropped", reason=exc.message, size=len(line))
            return True
        if msg.kind is Kind.RESPONSE:
            rid = msg.request_id
            call = self._calls.pop(rid, None) if isinstance(rid, str) else None
            if call is not None:
                call.events.send_nowait(("answer", line))
            elif rid == _HANDSHAKE_ID and not self._handshake.done.is_set():
                self._handshake.answer = line
                self._handshake.done.set()
            else:
                self.log.info("bridge_response_unmatched", request_id=rid)
        elif msg.kind is Kind.REQUEST:  # rule 6
            call = self._asking(msg, on)
            if call is not None and _room(call):
                call.events.send_nowait(("request", line))
                return True
            self.log.info("bridge_server_request_refused", method=msg.method)
            refusal = framing.line_safe(jsonrpc.error_response(  # the server's id and
                msg.request_id, _METHOD_NOT_FOUND,                # method: any string
                f"mcpwall's bridge carries no {msg.method} to a 2026-07-28 client here"))
            return await self.send(Outbound.own(refusal,
                                                "bridge: refusal of a server request"))
        elif msg.method == mcp.PROGRESS and (call := self._progress_of(msg)) is not None:
            if _room(call):
                call.events.send_nowait(("progress", line))
            else:  # nobody reads them (the call waits for its client's retry)
                self.log.debug("bridge_progress_dropped", bid=call.bid)
        elif msg.method == mcp.LOG_MESSAGE:  # rule 9
            call = self._logged(msg, on)
            if call is not None and _room(call):
                call.events.send_nowait(("log", line))
            else:
                self.dropped_log(on)
        elif msg.method in LISTENED and self._listeners:  # rule 7
            for listener in list(self._listeners):
                try:
                    listener.send_nowait(line)
                except trio.WouldBlock:  # level triggers: one waiting says as much
                    self.log.info("bridge_listen_notification_dropped", method=msg.method)
        else:
            self.log.debug("bridge_notification_dropped", method=msg.method)
        return True

    def _asking(self, msg: jsonrpc.Message, on: str | None) -> BridgedCall | None:
        """The call a server request belongs to (rule 6): the call whose stream
        carried it, else the one call in flight; of a method that may ask for
        input, whose client offered what it needs."""
        if on:
            found = self._calls.get(on)
            calls = [found] if found is not None else []
        else:
            calls = list(self._calls.values())
        if len(calls) != 1:
            return None
        try:
            params = jsonrpc.decode_any(msg.params) if len(msg.params) else None
        except jsonrpc.DECODE_ERRORS:
            return None
        return asking(calls, msg.method, params)

    def _logged(self, msg: jsonrpc.Message, on: str | None) -> BridgedCall | None:
        """The call a log message goes to (rule 9): the call whose stream carried
        it (else, the link not saying, the one call in flight), if its request
        asked for messages of that level."""
        if on:
            call = self._calls.get(on)
        elif on is None and len(self._calls) == 1:
            [call] = self._calls.values()
        else:
            return None
        if call is None or call.log_level is None:
            return None
        try:
            params = jsonrpc.decode_any(msg.params) if len(msg.params) else None
        except jsonrpc.DECODE_ERRORS:
            return None
        level = meta.message_level(params)
        return call if level is not None and level >= call.log_level else None

    def dropped_log(self, on: str | None = None) -> None:
        """Count a log message no client gets (rule 9)."""
        self.logs_dropped += 1
        self.tally.logs_dropped += 1
        self.log.debug("bridge_log_message_dropped", bid=on or None,
                       dropped=self.logs_dropped)

    def _progress_of(self, msg: jsonrpc.Message) -> BridgedCall | None:
        try:
            params = jsonrpc.decode_any(msg.params) if len(msg.params) else None
        except jsonrpc.DECODE_ERRORS:
            return None
        token = params.get("progressToken") if isinstance(params, dict) else None
        if token is None:
            return None
        return next((c for c in self._calls.values() if c.token == token), None)

    async def close(self, reason: str) -> None:
        """End the session: its child is stopped, waiting requests get errors."""
        if not self.closed:
            self.log.info("session_closed", reason=reason, logs_dropped=self.logs_dropped)
        self.closed = True
        self._scope.cancel()

    def open_call(self, bid: str, method: str, caps: dict[str, Any], call_id: str | None,
                  token: int | str | None, log_level: int | None = None) -> BridgedCall:
        """Register a call before its request goes out (its answer may come at once)."""
        call = self._calls[bid] = BridgedCall(bid, method, caps, call_id, token, log_level)
        return call

    async def send(self, outbound: Outbound) -> bool:
        """Write one message to the server; False when it is gone."""
        link = self._link
        if link is None or self.closed:
            return False
        try:
            await link.send(outbound)
        except LinkLost:
            return False
        return True

    async def next_event(self, call: BridgedCall, deadline: float) -> tuple[str, bytes] | None:
        """What the server sends next for ``call``; None when nothing came by
        ``deadline`` (the call is then cancelled at the server and forgotten)."""
        with self.busy():
            with trio.move_on_at(deadline):
                return await call.receive.receive()
        await self.abandon(call, "mcpwall: timeout")
        return None

    def forget(self, call: BridgedCall) -> None:
        """The call's request could not be written: it is answered as the child's loss."""
        self._calls.pop(call.bid, None)
        call.events.send_nowait(("answer", b""))

    async def abandon(self, call: BridgedCall, reason: str,
                      refusal: bytes | None = None) -> None:
        """Forget a call the client will not see answered: the server request it
        asked (if any) is answered with ``refusal`` (or an error), the call is
        cancelled at the server."""
        if self._calls.pop(call.bid, None) is None:
            return
        for message in abandonment(call, call.bid, reason, refusal):
            await self.send(message)

    def ask(self, call: BridgedCall, server_request: bytes, caller: Caller
            ) -> tuple[str, str, RequestId] | None:
        """Make the server request the input request of ``call``'s answer (rule 6):
        (key, sealed state, the server request's id), or None if it cannot be read."""
        self.desk.timeout = self.timeout
        return self.desk.ask(call, call.bid, server_request, caller)

    def park(self, call: BridgedCall) -> None:
        """The client has the input request: the call waits for its retry at most
        the upstream timeout, then is abandoned."""
        if self._nursery is not None:
            self._nursery.start_soon(self._expire, call, call.round)

    async def _expire(self, call: BridgedCall, number: int) -> None:
        await trio.sleep(self.timeout)
        if call.asked is not None and call.round == number:
            self.log.info("bridge_input_unanswered", bid=call.bid)
            await self.abandon(call, "the client did not answer the server's request in time")

    def resume(self, state: str, caller: Caller, call_id: str | None
               ) -> tuple[BridgedCall, RequestId, str] | None:
        """The call a retry's ``requestState`` continues (rule 6), its asked server
        request taken (used once): None unless the state opens (sealed here,
        not expired), names this caller and session, a call still waiting for
        that request, and ``call_id`` (the mediator linked the retry to it)."""
        return self.desk.resume(state, caller, call_id, self._calls)

    @contextlib.contextmanager
    def listening(self) -> Iterator[trio.MemoryReceiveChannel[bytes]]:
        """The server's change notifications while the block runs (rule 7); the
        session counts as busy meanwhile (no idle expiry under an open listen)."""
        send, receive = trio.open_memory_channel[bytes](LISTEN_BUFFER)
        with self.busy():
            if self.closed:
                send.close()
            else:
                self._listeners.add(send)
                if len(self._listeners) == 1 and self._link is not None:
                    self._link.listened(True)
            try:
                yield receive
            finally:
                if send in self._listeners:
                    self._listeners.discard(send)
                    if not self._listeners and self._link is not None:
                        self._link.listened(False)
                send.close()

    async def follow(self, uris: frozenset[str]) -> frozenset[str]:
        """Those of ``uris`` the server now sends updates of for this session (rule 7):
        each not followed yet is asked with a ``resources/subscribe`` of mcpwall's
        own (:meth:`own_request`); each taken counts until :meth:`unfollow`. All
        of them within one upstream timeout: a server that leaves one unanswered
        is asked no more (the rest are not carried)."""
        got: set[str] = set()
        deadline = trio.current_time() + self.timeout
        async with self._following:
            for uri in sorted(uris):
                if not self._followed.get(uri, 0):
                    if trio.current_time() >= deadline:
                        continue  # asked no more (a URI followed already still counts)
                    if not await self.own_request(mcp.RESOURCES_SUBSCRIBE, {"uri": uri},
                                                  deadline):
                        continue
                self._followed[uri] = self._followed.get(uri, 0) + 1
                got.add(uri)
        return frozenset(got)

    async def unfollow(self, uris: frozenset[str]) -> None:
        """A listen no longer follows ``uris``: the last one's end unsubscribes (rule 7).
        The counts drop at once (a cancelled unfollow leaves none behind); the
        unsubscribes, within one upstream timeout, skip a URI followed again
        meanwhile."""
        gone = []
        for uri in sorted(uris):
            left = self._followed.get(uri, 0) - 1
            if left > 0:
                self._followed[uri] = left
            elif self._followed.pop(uri, None) is not None:
                gone.append(uri)
        if not gone:
            return
        deadline = trio.current_time() + self.timeout
        async with self._following:
            for uri in gone:
                if self.closed or trio.current_time() >= deadline:
                    return
                if not self._followed.get(uri, 0):
                    await self.own_request(mcp.RESOURCES_UNSUBSCRIBE, {"uri": uri}, deadline)

    async def own_request(self, method: str, params: dict[str, Any],
                          deadline: float | None = None) -> bool:
        """A request of mcpwall's own on this session (rule 7), decided and
        recorded by the session's mediator and sent as decided; its answer goes
        through the mediator too. True when the server answered with a result
        (by ``deadline``, else within the upstream timeout)."""
        bid = self.next_id()
        ask = decode_client(jsonrpc.request(method, params, bid))
        routed = await self.mediator.from_client(ask, wait=False)
        if routed.held is not None:
            routed.held.withdraw("nobody can approve mcpwall's own request")
            return False
        if routed.upstream is None:
            self.log.info("bridge_own_request_refused", method=method)
            return False
        call = self.open_call(bid, method, {}, routed.upstream.call_id, None)
        if not await self.send(routed.upstream):
            self.forget(call)
        if deadline is None:
            deadline = trio.current_time() + self.timeout
        event = await self.next_event(call, deadline)
        while event is not None and event[0] != "answer":  # nothing else is its own
            event = await self.next_event(call, deadline)
        if event is None or not event[1]:  # recorded unanswered, not left pending
            await self.mediator.unanswered(
                TimedOut(self.timeout) if event is None else Lost("exited"), [bid])
            return False
        await self.mediator.from_server(event[1])
        try:
            value = jsonrpc.decode_any(event[1])
        except jsonrpc.DECODE_ERRORS:
            return False
        return isinstance(value, dict) and isinstance(value.get("result"), dict)

    def next_id(self) -> str:
        """The id the next bridged request goes to the server with."""
        return f"mcpwall-bridge-{next(self._ids)}"

    def health(self) -> dict[str, Any]:
        link = self._link
        return {**(link.health() if link else {}), "bridge": True, "pending": len(self._calls),
                "logs_dropped": self.logs_dropped}


def translate_request(data: bytes, bid: str) -> bytes:
    """A decided 2026-07-28 request as a 2025 server reads it (rule 2).

    ``translate_request(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":'
    b'{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}', "b-1")``
    is ``{"jsonrpc":"2.0","id":"b-1","method":"tools/list","params":{}}``."""
    value = jsonrpc.decode_any(data)
    value["id"] = bid
    params = value.get("params")
    if isinstance(params, dict):
        for member in RETRY_MEMBERS:
            params.pop(member, None)
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


def discover_result(init: dict[str, Any], listens: bool = False,
                    logs: bool = False) -> dict[str, Any]:
    """The ``server/discover`` result of a bridged server, from its initialize result
    (rule 4): with ``listens`` (mcpwall answers its listens, rule 7) the
    ``listChanged`` flags and ``resources.subscribe`` are kept, else left out;
    with ``logs`` (a call's log messages are carried, rule 9) ``logging`` is
    kept, else left out."""
    capabilities = init.get("capabilities")
    carried: dict[str, Any] = {}
    dropped = () if listens else ("subscribe", "listChanged")
    if isinstance(capabilities, dict):
        for name, value in capabilities.items():
            if name == "logging" and not logs:
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in dropped}
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

    def __init__(self, name: str, connect: Connect, front: FrontContext,
                 caps: ServerCaps, idle_limit: float) -> None:
        self.name = name
        self.connect = connect
        self.front = front
        self.caps = caps
        self.idle_limit = idle_limit
        self.timeout = front.listen.upstream_timeout_seconds
        self.keepalive = front.listen.keepalive_seconds
        self._sessions: dict[tuple[str, str], BridgeSession] = {}
        self.seal = StateSeal()  # the requestState of the bridge's input requests
        self.tally = Tally()
        self._opening: dict[tuple[str, str], trio.Lock] = {}

    def sessions(self) -> list[BridgeSession]:
        return [s for s in self._sessions.values() if not s.closed]

    def health(self) -> dict[str, Any]:
        """The bridge's entry in its server's health report."""
        return {"sessions": len(self.sessions()), "logs_dropped": self.tally.logs_dropped}

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
                idle_limit=self.idle_limit, connect=self.connect, timeout=self.timeout,
                seal=self.seal, tally=self.tally)
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
            answer = jsonrpc.result_response(rid, discover_result(
                opened.init_result, listens=True, logs=True))
            await self._relay(ex, mediator, rid, framing.canonical(answer), accept_sse)
            return
        if msg.method in mrtr.MRTR_METHODS:
            again = mrtr.retry(inbound.message.params)
            if again is not None and again.state is not None:  # rule 6: a later round?
                resumed = opened.resume(again.state, caller, routed.upstream.call_id)
                if resumed is not None:
                    call, srid, key = resumed
                    delivered = routed.upstream.translated(
                        input_response(srid, again.responses, key), "bridged input response")
                    if not await opened.send(delivered):
                        opened.forget(call)
                    await self._carry(ex, opened, mediator, call, rid, accept_sse)
                    return
                if mediator.round_of(rid) > 1:  # linked, not charged: never a new call
                    await self._answer(ex, await self._unanswered(
                        mediator, rid, Lost(NOT_WAITING)), accept_sse)
                    return
        bid = opened.next_id()
        outbound = routed.upstream.translated(translate_request(routed.upstream.data, bid),
                                              "bridged")
        _, caps = mrtr.revision(inbound.message.params)
        call = opened.open_call(bid, msg.method or "", caps, routed.upstream.call_id,
                                mcp.progress_token(inbound.message),
                                meta.log_level(inbound.params))
        if not await opened.send(outbound):
            opened.forget(call)
        await self._carry(ex, opened, mediator, call, rid, accept_sse)

    async def _carry(self, ex: Exchange, session: BridgeSession, mediator: Mediator,
                     call: BridgedCall, rid: RequestId, accept_sse: bool) -> None:
        """Answer the client's request with what the server sends for ``call``: its
        answer, or an input request (rule 6); its progress relayed on the
        event stream meanwhile."""
        out = SseResponse(ex, self.keepalive) if accept_sse else None
        if out is not None:
            await out.open()
        async with trio.open_nursery() as nursery:
            if out is not None:
                nursery.start_soon(out.keep_open)
            reply = await self._next_answer(session, mediator, call, rid, out)
            nursery.cancel_scope.cancel()
        if out is not None:
            await out.end(sse.encode_event(reply))
        else:
            await ex.respond(200, reply)

    async def _next_answer(self, session: BridgeSession, mediator: Mediator,
                           call: BridgedCall, rid: RequestId, out: SseResponse | None) -> bytes:
        deadline = trio.current_time() + self.timeout
        while True:
            event = await session.next_event(call, deadline)
            if event is None:
                return await self._unanswered(mediator, rid, TimedOut(self.timeout))
            kind, line = event
            if kind in ("progress", "log"):
                routed = await mediator.from_server(line)
                if out is not None and routed.client is not None:
                    await out.send(sse.encode_event(routed.client))
                elif kind == "log":  # rule 9: the client takes JSON only
                    session.dropped_log(call.bid)
                continue
            if kind == "request":
                return await self._input_request(session, mediator, call, rid, line)
            return await self._reply(mediator, call.method, rid, line or None, session)

    async def _input_request(self, session: BridgeSession, mediator: Mediator,
                             call: BridgedCall, rid: RequestId, line: bytes) -> bytes:
        """The server asked the call's client something (rule 6): the call is
        answered with an InputRequiredResult carrying that request and a sealed
        state, through the mediator (which decides the input request)."""
        asked = session.ask(call, line, mediator.caller)
        value = jsonrpc.decode_any(line)
        if asked is None:
            srid = value.get("id") if isinstance(value, dict) else None
            if isinstance(srid, (int, str)):
                call.asked = (srid, "")
            await session.abandon(call, "mcpwall cannot read the server's request")
            return await self._unanswered(mediator, rid, Lost("asked for input mcpwall "
                                                              "cannot read"))
        key, state, srid = asked
        try:  # nested one level deeper than the server wrote it: may be too deep
            answer = input_required(rid, key, state, line)
        except framing.NotCanonical:
            await session.abandon(call, "mcpwall cannot carry the server's request")
            return await self._unanswered(mediator, rid, Lost("asked for input mcpwall "
                                                              "cannot carry"))
        routed = await mediator.from_server(answer)
        reply = routed.client
        if carried(reply):
            session.park(call)
            assert reply is not None
            return reply
        # Refused by the policy (mediator rule 16): the call ended with the refusal.
        await session.abandon(call, "the policy refused this request", refusal(srid))
        return reply or await self._unanswered(mediator, rid, Lost("asked for input mcpwall "
                                                                   "cannot relay"))

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
