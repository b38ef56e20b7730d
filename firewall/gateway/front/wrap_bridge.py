"""Bridging in ``mcpwall wrap``: one client and one stdio child of different eras.

Two converse cases, one client and one child each (so a client's request
keeps its own id on both sides):

:class:`ModernClient` (``mcpwall wrap --bridge``): a client of the stateless
revision (2026-07-28) in front of a child that speaks only the handshake
revisions. Rules it keeps:

1. Nothing changes until the first decided request of the new revision (its
   ``params._meta`` names it), nor ever once the client sent ``initialize``
   itself (a 2025 session it keeps): then, before anything of that batch reaches the
   child, mcpwall shakes hands with the child itself (its own ``initialize``,
   under an id of its own no client can guess nor answer for,
   clientInfo ``mcpwall-bridge``, client capabilities
   :data:`bridge.CAPABILITIES`: the server requests rule 5 carries, then
   ``notifications/initialized``), as the serve bridge does
   (:mod:`firewall.gateway.front.bridge`). A refused request starts nothing.
   A child that refuses that ``initialize`` (a JSON-RPC error) speaks the new
   revision itself: nothing is bridged, requests go to it as decided. A
   handshake that fails otherwise (no answer within the timeout, an answer
   that is not one, the child gone) answers each bridged request with the
   mediator's error, then and later.
2. What reaches the child is the decided message translated
   (:meth:`Outbound.translated`, its receipt kept): the revision's keys of
   ``params._meta`` (``io.modelcontextprotocol/...``) and what a retry adds
   (``inputResponses``, ``requestState``) removed, nothing else (the id
   stays the client's; a request whose id is still that of a call carried
   on under a later id, rule 5, is answered with the mediator's error and
   never reaches the child).
3. The child's answer to a bridged request gets what the revision requires
   (:func:`bridge.translate_answer`: ``resultType``, and ``ttlMs``/
   ``cacheScope`` on cacheable methods) *before* the mediator sees it (the
   tools/list filter, the outcome, the cache bounds apply as to any answer).
4. ``server/discover`` is decided and recorded, and answered by mcpwall from
   the child's ``initialize`` result (:func:`bridge.discover_result`); it
   never reaches the child.
5. Once bridged, a request of the child (elicitation in form mode,
   sampling, roots/list) is carried as the serve bridge carries it
   (:mod:`firewall.gateway.front.bridge_input`): while exactly one bridged
   request is in flight, of a method that may ask for input, whose
   ``_meta`` offered the capability, and that has no other request of the
   child waiting, it becomes that call's answer, an ``InputRequiredResult``
   with a sealed ``requestState`` (scope: the wrap session), passed through
   the mediator (which decides the input request: refused, the call ends
   with the refusal, the child's request gets it and the call is cancelled
   at the child). The client's retry, once the mediator linked it to the
   call and the state opens (used once, within the upstream timeout), is
   written to the child as the response to its waiting request (the decided
   retry translated), and the child's answer to the call goes to the client
   under the retry's id. A retry the mediator linked (not charged again)
   that no call waits for is answered with the mediator's error and never
   reaches the child. A client that does not retry in time: the child's
   request gets an error and the call is cancelled. Any other request of
   the child is answered at once with -32601; its notifications pass the
   mediator to the client as before.
9. Once bridged, a decided ``subscriptions/listen`` (narrowed by the policy,
   ``listen.StdioListens``) is answered by mcpwall, as behind ``serve``
   (``bridge_listen``): its honoured types within the child's ``initialize``
   capabilities (:func:`bridge_listen.carried`), each URI followed with a
   ``resources/subscribe`` of mcpwall's own (decided and recorded by the
   session's mediator, once per URI, its answer kept here), then the
   acknowledgement (through the mediator). Each ``list_changed`` or
   ``resources/updated`` of the child goes to the client once per open
   listen whose acknowledgement covers it, tagged with that listen's id
   (:meth:`ModernClient.tagged`; ``StdioListens`` then admits it). The
   client's ``notifications/cancelled`` of a listen (decided) ends it here,
   never reaches the child, and the last listen of a URI unsubscribes it. A
   listen the session's ``StdioListens`` no longer holds open (cancelled
   however spelt, its id answered by the child) ends here too. The
   subscribes of one listen share one upstream timeout: once one goes
   unanswered (recorded so and cancelled) no more are sent.
10. Once bridged, a log message of the child (``notifications/message``)
   reaches the client only as the revision has a server send one: while
   exactly one bridged request is in flight and its ``_meta`` asked for log
   messages (``io.modelcontextprotocol/logLevel``) at the message's level or
   below; any other is dropped here (and counted: :attr:`ModernClient.logs_dropped`),
   those sent while mcpwall's handshake is under way (no call is at the child) too.

:class:`ModernChild` (automatic): a 2025 client in front of a child that
speaks only the stateless revision, in ``wrap`` and in each session of a
stdio server behind ``serve`` (:mod:`~firewall.gateway.front.stdio_endpoint`
rule 5). Rules it keeps:

6. The client's ``initialize`` is decided and forwarded as always. When the
   child refuses it (a JSON-RPC error under its id), mcpwall asks the child
   ``server/discover`` (the probe the revision prescribes for stdio), as a
   request decided and recorded in the session (id ``mcpwall-discover-1``).
   A result naming a stateless revision makes the session bridged and the
   client's ``initialize`` is answered from it
   (:func:`bridge_modern.initialize_result`); anything else relays the
   child's refusal as it was.
7. Once bridged, each client request is rewritten *before* it is decided
   (:func:`bridge_modern.modern_request`: the revision's ``_meta`` made of
   the client's ``initialize``); ``ping`` is answered here (decided and
   recorded); ``logging/setLevel``, ``resources/(un)subscribe`` and a second
   ``initialize`` are refused as a ``protocol`` deny; client notifications are
   decided and go nowhere but ``notifications/cancelled`` and
   ``notifications/progress``, which the child reads. Results lose
   ``resultType: "complete"`` and keep cache fields within bounds
   (:meth:`bridge_modern.Bridged.result_seen`, the mediator's ``on_result``).
8. An ``InputRequiredResult`` answering a bridged call (``tools/call``,
   ``prompts/get``, ``resources/read``), once through the mediator (which
   decides each input request as a server-to-client request and removes the
   refused ones), becomes server-to-client requests of the 2025 session
   (:class:`bridge_modern.InputRound`, as over HTTP: ids
   ``mcpwall-input-N``; :meth:`ModernChild.to_client`). The client's
   answers to them are consumed here; with the last one the call is retried
   (:class:`Retry`: the client's request again, with ``inputResponses`` and
   the server's ``requestState``, decided again like any request), up to
   :data:`~firewall.gateway.front.bridge_modern.MAX_ROUNDS` rounds. A call
   is kept for its rounds only once the mediator forwarded (or held) it, and
   forgotten when the mediator neither awaits nor holds it any more. A client
   that refuses one (an error) gets an error for the call; one that does not
   answer keeps the call waiting until it cancels it, the session ends, or
   (behind ``serve``) the request's timeout answers it (:meth:`forget`).
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Awaitable, Callable, Container
from typing import Any, Final

import trio

from firewall.gateway.front import bridge_listen
from firewall.gateway.front.bridge import (
    CAPABILITIES,
    CLIENT_INFO,
    LISTENED,
    REVISION_PREFIX,
    discover_result,
    translate_answer,
)
from firewall.gateway.front.bridge_input import (
    NOT_WAITING,
    InputCall,
    InputDesk,
    abandonment,
    asking,
    carried,
    input_required,
    input_response,
    refusal,
    without_retry,
)
from firewall.gateway.front.bridge_modern import (
    MAX_ROUNDS,
    Bridged,
    InputRound,
    discovered,
    initialize_result,
    modern_request,
)
from firewall.gateway.front.bridge_modern import input_required as input_required_result
from firewall.gateway.front.listen import LISTEN, Honoured, acknowledgement
from firewall.gateway.front.listen import tagged as tag
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.stdio import ChildExited, StdioChild
from firewall.protocol import framing, jsonrpc, mcp, mrtr, revision
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.jsonrpc import RequestId
from firewall.protocol.meta import log_level, message_level
from firewall.protocol.mrtr import StateSeal

# mcpwall's handshake id: the client's ids reach the child unchanged, so it has
# a per-session part no client can guess, and is read only once sent (rule 1).
HANDSHAKE_PREFIX: Final = "mcpwall-bridge-initialize-"
DISCOVER_ID: Final = "mcpwall-discover-1"
_METHOD_NOT_FOUND: Final = -32601
_LISTENED_BYTES: Final = tuple(m.encode() for m in sorted(LISTENED))
# Client notifications a child of the stateless revision still reads over stdio.
_CARRIED_NOTIFICATIONS: Final = frozenset({mcp.CANCELLED, "notifications/progress"})


def _is_log(line: bytes) -> bool:
    """Whether a line of the child is a log message (``notifications/message``)."""
    if _LOG_BYTES not in line and b"\\" not in line:
        return False
    try:
        value = jsonrpc.decode_any(line)
    except jsonrpc.DECODE_ERRORS:
        return False
    return isinstance(value, dict) and value.get("method") == mcp.LOG_MESSAGE


_LOG_BYTES: Final = mcp.LOG_MESSAGE.encode()


def _key(rid: Any) -> str:
    return jsonrpc.encode(rid).decode()


def strip_revision_meta(value: dict[str, Any]) -> bool:
    """Remove the revision's keys from ``params._meta`` (rule 2); True if any was there."""
    params = value.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(params, dict) or not isinstance(meta, dict):
        return False
    kept = {k: v for k, v in meta.items() if not str(k).startswith(REVISION_PREFIX)}
    if len(kept) == len(meta):
        return False
    if kept:
        params["_meta"] = kept
    else:
        del params["_meta"]
    return True


def modern_message(data: bytes) -> dict[str, Any] | None:
    """The decoded message when it claims the stateless revision in ``_meta``
    (spelt out, or behind a JSON escape: a line with a backslash is decoded)."""
    if data.find(revision.META_VERSION_BYTES) < 0 and data.find(b"\\") < 0:
        return None
    try:
        value = jsonrpc.decode_any(data)
    except jsonrpc.DECODE_ERRORS:
        return None
    if not isinstance(value, dict):
        return None
    return value if revision.body_version(value.get("params")) in revision.MODERN_VERSIONS \
        else None


ToClient = Callable[[list[bytes]], Awaitable[None]]


class _Call(InputCall):
    """A bridged request in flight at the child (kept under its id there, the
    client's id of its first round): ``rid`` is the client's id its answer
    goes to (a later round's, rule 5)."""

    __slots__ = ("log_level", "rid")

    def __init__(self, rid: RequestId, method: str, caps: dict[str, Any],
                 call_id: str | None, log_level: int | None = None) -> None:
        super().__init__(method, caps, call_id)
        self.rid = rid
        self.log_level = log_level  # the rank its _meta asked log messages at (rule 10)


class _Answer:
    """The child's answer to a request of mcpwall's own (rule 9)."""

    __slots__ = ("done", "line")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.line: bytes | None = None


class ModernClient:
    """A 2026-07-28 client over a 2025-only child (rules 1 to 5, 9)."""

    def __init__(self, mediator: Mediator, child: StdioChild, timeout: float) -> None:
        self.mediator = mediator
        self.child = child
        self.timeout = timeout
        self.init_result: dict[str, Any] | None = None
        self.failure: str | None = None
        self.passthrough = False  # the child refused initialize (rule 1)
        # Where a call waiting for its client's retry is timed (rule 5); set
        # by the session, whose end cancels the timers (:meth:`close`).
        self.nursery: trio.Nursery | None = None
        self.handshake_id = HANDSHAKE_PREFIX + secrets.token_hex(8)
        self._sent = False  # mcpwall's initialize went to the child
        self._answer: bytes | None = None
        self._answered = trio.Event()
        self._lock = trio.Lock()
        self._pending: dict[RequestId, _Call] = {}  # by the id the child knows
        self.logs_dropped = 0  # log messages of the child no request asked for (rule 10)
        self._desk = InputDesk(mediator.session, StateSeal(), timeout)
        self._timers: set[trio.CancelScope] = set()
        self._closed = False
        # Rule 9: the open listens (by id as JSON: the id, what was acknowledged),
        # the URIs followed (by how many listens), mcpwall's own requests.
        self._listens: dict[str, tuple[RequestId, Honoured]] = {}
        self._followed: dict[str, int] = {}
        self._own: dict[str, _Answer] = {}
        self._own_ids = itertools.count(1)
        # The listens the session's ``StdioListens`` holds open (by the same
        # key), set by the session: a listen it ended (the client cancelled it,
        # however spelt; the child answered its id) ends here too (rule 9).
        self.open_listens: Container[str] | None = None

    async def outbound(self, messages: list[Outbound], to_client: ToClient) -> list[Outbound]:
        """What of these decided messages goes to the child, translated (rules 1 to 4);
        what mcpwall answers itself goes to the client. Raises ChildExited."""
        out: list[Outbound] = []
        replies: list[bytes] = []
        ended = await self._prune()
        for message in messages:
            value = None if self.passthrough else modern_message(message.data)
            if value is None:
                out.append(message)
                continue
            rid, method = value.get("id"), value.get("method")
            shaken = await self._shake_hands()
            if self.passthrough:
                out.append(message)
                continue
            if not shaken:
                if rid is not None and method is not None:
                    replies.extend(await self.mediator.unanswered(
                        Lost(f"cannot be started through the bridge: {self.failure}"), [rid]))
                continue
            assert self.init_result is not None
            if method == revision.DISCOVER and rid is not None:  # rule 4
                answer = jsonrpc.result_response(rid, discover_result(self.init_result,
                                                                      listens=True))
                routed = await self.mediator.from_server(framing.canonical(answer))
                if routed.client is not None:
                    replies.append(routed.client)
                continue
            caps = _caps_of(value)
            level = log_level(value.get("params"))  # rule 10, before the strip
            if method == LISTEN and rid is not None:  # rule 9: answered here
                ack = await self._listen(rid, value.get("params"))
                if ack is not None:
                    replies.append(ack)
                continue
            if method == mcp.CANCELLED and self._listens:
                params = value.get("params")
                gone = params.get("requestId") if isinstance(params, dict) else None
                if _key(gone) in self._listens:  # rule 9: the listen ends here
                    await self._unlisten(_key(gone))
                    continue
                if _key(gone) in ended:  # ended here already: goes no further
                    continue
            strip_revision_meta(value)
            if rid is not None and isinstance(method, str):
                params = value.get("params")
                if method in mrtr.MRTR_METHODS and isinstance(params, dict):
                    resumed = self._resumed(rid, params, message)
                    if resumed is not None:  # rule 5: the answer to the child's request
                        out.append(resumed)
                        continue
                    if self.mediator.round_of(rid) > 1:  # linked, not charged: never
                        replies.extend(await self.mediator.unanswered(  # a new call
                            Lost(NOT_WAITING), [rid]))
                        continue
                    without_retry(params)
                if self._in_use(rid):
                    replies.extend(await self.mediator.unanswered(Lost(
                        "cannot take this request: its id is still that of an earlier "
                        "call in flight at the server"), [rid]))
                    continue
                self._pending[rid] = _Call(rid, method, caps, message.call_id, level)
            elif method == mcp.CANCELLED:  # no answer will come for that one
                self._cancelled(value)
            out.append(message.translated(framing.canonical(jsonrpc.encode(value)),
                                          "wrap: bridged"))
        await to_client(replies)
        return out

    def _resumed(self, rid: RequestId, params: dict[str, Any],
                 message: Outbound) -> Outbound | None:
        """A retry that continues a call waiting for its client (rule 5): the
        response to the child's request, made of the decided retry; None: a
        new call."""
        state = params.get("requestState")
        responses = params.get("inputResponses")
        if not isinstance(state, str):
            return None
        resumed = self._desk.resume(state, self.mediator.caller, message.call_id,
                                    self._pending)
        if resumed is None:
            return None
        call, srid, key = resumed
        call.rid = rid
        self.mediator.log.debug("bridge_input_answered", call_id=call.call_id)
        return message.translated(
            input_response(srid, responses if isinstance(responses, dict) else {}, key),
            "wrap bridge: input response")

    def _in_use(self, rid: RequestId) -> bool:
        """Whether ``rid`` is still the child's id of a call the client now knows
        under another id, or waits to retry (rule 2)."""
        call = self._pending.get(rid)
        return call is not None and (call.rid != rid or call.asked is not None)

    def _cancelled(self, value: dict[str, Any]) -> None:
        """A client's cancellation: its request forgotten, and named as the child
        knows it (a later round's id is the first round's there)."""
        params = value.get("params")
        gone = params.get("requestId") if isinstance(params, dict) else None
        if not isinstance(gone, str | int) or not isinstance(params, dict):
            return
        for ident, call in list(self._pending.items()):
            if call.rid == gone and call.asked is None:
                del self._pending[ident]
                params["requestId"] = ident
                return

    async def _listen(self, rid: RequestId, params: Any) -> bytes | None:
        """Open a listen the policy let through (rule 9): its acknowledgement, for
        the client (None if the mediator withheld it)."""
        assert self.init_result is not None
        asked = Honoured.of(params.get("notifications") if isinstance(params, dict) else None)
        within, _ = bridge_listen.carried(asked, self.init_result.get("capabilities"))
        if _key(rid) in self._listens:  # an earlier listen under this id ended there
            await self._unlisten(_key(rid))
        followed: set[str] = set()
        deadline = trio.current_time() + self.timeout  # all of them, one timeout
        for uri in sorted(within.uris):
            if not self._followed.get(uri, 0):
                if trio.current_time() >= deadline:
                    continue  # asked no more (a URI followed already still counts)
                if not await self._own_request(mcp.RESOURCES_SUBSCRIBE, {"uri": uri},
                                               deadline):
                    continue
            self._followed[uri] = self._followed.get(uri, 0) + 1
            followed.add(uri)
        honoured = Honoured(within.flags, frozenset(followed))
        self._listens[_key(rid)] = (rid, honoured)
        ack = acknowledgement(honoured, rid)
        return (await self.mediator.from_server(ack)).client

    async def _prune(self) -> set[str]:
        """End the listens the session no longer holds open (rule 9); their keys."""
        if self.open_listens is None or not self._listens:
            return set()
        ended = {key for key in self._listens if key not in self.open_listens}
        for key in sorted(ended):
            await self._unlisten(key)
        return ended

    async def end_listen(self, rid: RequestId) -> bool:
        """mcpwall ends a listen it answers here (its lifetime, rule 9): as if the
        client cancelled it; False when it is not one of them (it went to the child)."""
        if _key(rid) not in self._listens:
            return False
        await self._unlisten(_key(rid))
        return True

    async def _unlisten(self, key: str) -> None:
        """A listen (by its key) ended (rule 9): the URIs no listen follows any
        more are unsubscribed."""
        _, honoured = self._listens.pop(key)
        deadline = trio.current_time() + self.timeout  # all of them, one timeout
        for uri in sorted(honoured.uris):
            left = self._followed.get(uri, 0) - 1
            if left > 0:
                self._followed[uri] = left
                continue
            self._followed.pop(uri, None)
            if trio.current_time() < deadline:
                await self._own_request(mcp.RESOURCES_UNSUBSCRIBE, {"uri": uri}, deadline)

    async def _own_request(self, method: str, params: dict[str, Any],
                           deadline: float) -> bool:
        """A request of mcpwall's own to the child (rule 9), decided and recorded by
        the mediator, sent as decided; True when the child answered with a result
        by ``deadline`` (else it is recorded unanswered and cancelled at the child)."""
        oid = f"mcpwall-bridge-own-{next(self._own_ids)}"
        routed = await self.mediator.from_client(
            decode_client(jsonrpc.request(method, params, oid)), wait=False)
        if routed.held is not None:
            routed.held.withdraw("nobody can approve mcpwall's own request")
            return False
        if routed.upstream is None:
            return False
        answer = self._own[oid] = _Answer()
        try:
            await self.child.send(routed.upstream)
            with trio.move_on_at(deadline):
                await answer.done.wait()
        except ChildExited:
            return False
        finally:
            self._own.pop(oid, None)
        if answer.line is None:
            await self.mediator.unanswered(TimedOut(self.timeout), [oid])
            await self._to_child(abandonment(InputCall(method, {}, None), oid,
                                             "mcpwall: timeout"))
            return False
        try:
            value = jsonrpc.decode_any(answer.line)
        except jsonrpc.DECODE_ERRORS:
            return False
        return isinstance(value, dict) and isinstance(value.get("result"), dict)

    def tagged(self, line: bytes) -> list[bytes]:
        """A line of the child as the client is to get it (rule 9): a change
        notification once for each open listen that acknowledged it, tagged
        with its id (none when no listen did); anything else as it is."""
        if not self._listens or (line.find(b"\\") < 0  # an escape may spell one
                                 and not any(line.find(m) >= 0 for m in _LISTENED_BYTES)):
            return [line]
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return [line]
        method = value.get("method") if isinstance(value, dict) else None
        if not isinstance(method, str) or "id" in value or method not in LISTENED:
            return [line]  # the mediator reads (or drops) it: a list raised TypeError here
        params = value.get("params")
        still = self.open_listens
        return [tag(line, rid) for key, (rid, honoured) in self._listens.items()
                if (still is None or key in still) and honoured.admits(method, params)]

    async def _shake_hands(self) -> bool:
        """mcpwall's own handshake with the child, once (rule 1); False if it failed."""
        async with self._lock:
            if self.init_result is None and self.failure is None and not self.passthrough:
                self.failure = await self._handshake()
                if self.passthrough:
                    self.failure = None
                    self.mediator.log.info("bridge_not_needed",
                                           reason="the server refused initialize")
                elif self.failure is not None:
                    self.mediator.log.error("bridge_start_failed", error=self.failure)
                else:
                    started: dict[str, Any] = self.init_result or {}
                    self.mediator.log.info("bridge_started",
                                           version=started.get("protocolVersion"))
        return self.failure is None

    async def _handshake(self) -> str | None:
        init = jsonrpc.request(mcp.INITIALIZE, {
            "protocolVersion": mcp.LATEST_PROTOCOL_VERSION, "capabilities": CAPABILITIES,
            "clientInfo": CLIENT_INFO}, self.handshake_id)
        try:
            self._sent = True
            await self.child.send(Outbound.own(init, "wrap bridge: mcpwall's own handshake"))
            with trio.move_on_after(self.timeout):
                await self._answered.wait()
            if self._answer is None:
                return "the server did not answer initialize"
            value = jsonrpc.decode_any(self._answer)
            result = value.get("result") if isinstance(value, dict) else None
            if isinstance(value, dict) and isinstance(value.get("error"), dict):
                self.passthrough = True
                return "the server refused initialize"
            if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
                return "the server's answer to initialize is not a result"
            await self.child.send(Outbound.own(jsonrpc.request("notifications/initialized"),
                                               "wrap bridge: mcpwall's own handshake"))
        except jsonrpc.DECODE_ERRORS:
            return "the server's answer to initialize is not JSON"
        self.init_result = result
        return None

    def child_gone(self) -> None:
        """The child's output ended: a handshake still waiting fails; calls
        waiting for their client's retry are forgotten."""
        self._answered.set()
        self._pending.clear()
        self.close()

    def close(self) -> None:
        """The session ends: no call waits for a retry any more (rule 5)."""
        self._closed = True
        for timer in self._timers:
            timer.cancel()

    async def from_child(self, line: bytes) -> tuple[bytes | None, bytes | None]:
        """A line of the child: (what the mediator is to see instead, None when
        it is consumed here: the handshake's answer, a server request; what
        goes to the client, made here: the input request of rule 5)."""
        if self.init_result is None and self.failure is None and \
                not self._answered.is_set() and self._sent and \
                self.handshake_id.encode() in line:
            try:
                value = jsonrpc.decode_any(line)
            except jsonrpc.DECODE_ERRORS:
                return line, None
            if isinstance(value, dict) and value.get("id") == self.handshake_id \
                    and "method" not in value:
                self._answer = line
                self._answered.set()
                return None, None
        if self.init_result is None:
            if self._sent and self.failure is None and not self.passthrough \
                    and _is_log(line):  # rule 10: the handshake is under way, no call
                self.logs_dropped += 1
                return None, None
            return line, None
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return line, None
        if not isinstance(value, dict):
            return line, None
        method, rid = value.get("method"), value.get("id")
        if isinstance(method, str) and rid is not None:  # rule 5
            return None, await self._server_request(line, method, rid, value.get("params"))
        if method == mcp.LOG_MESSAGE and rid is None and not self._logged(value):  # rule 10
            self.logs_dropped += 1
            return None, None
        if method is None and isinstance(rid, str) and rid in self._own:  # rule 9
            self._own[rid].line = line
            self._own[rid].done.set()
            await self.mediator.from_server(line)  # its outcome recorded; kept here
            return None, None
        if method is None and isinstance(rid, str | int) and rid in self._pending:
            call = self._pending.pop(rid)
            if call.asked is not None:  # answered without its input: nobody waits
                call.asked = None  # for it (the mediator drops it, unmatched)
                return line, None
            try:
                return translate_answer(line, call.rid, call.method), None
            except (*jsonrpc.DECODE_ERRORS, framing.NotCanonical):
                return line, None
        return line, None

    def _logged(self, value: dict[str, Any]) -> bool:
        """Whether a log message of the child goes on to the client (rule 10)."""
        if len(self._pending) != 1:
            return False
        [call] = self._pending.values()
        level = message_level(value.get("params"))
        return call.log_level is not None and level is not None and level >= call.log_level

    async def _server_request(self, line: bytes, method: str, srid: Any,
                              params: Any) -> bytes | None:
        """A request of the child: carried as the input request of the one call
        in flight (rule 5), or refused at once (-32601)."""
        call = asking(self._pending.values(), method, params)
        if call is None or call.asked is not None:
            self.mediator.log.info("bridge_server_request_refused", method=method)
            await self._to_child([Outbound.own(framing.line_safe(jsonrpc.error_response(
                srid, _METHOD_NOT_FOUND,
                f"mcpwall's bridge carries no {method} to a 2026-07-28 client here")),
                "wrap bridge: refusal of a server request")])
            return None
        ident = next(i for i, c in self._pending.items() if c is call)
        asked = self._desk.ask(call, ident, line, self.mediator.caller)
        if asked is None:
            if isinstance(srid, int | str):
                call.asked = (srid, "")
            await self._abandon(ident, call, "mcpwall cannot read the server's request")
            [reply] = await self.mediator.unanswered(
                Lost("asked for input mcpwall cannot read"), [call.rid])
            return reply
        key, state, srid = asked
        try:  # nested one level deeper than the child wrote it: may be too deep
            answer = input_required(call.rid, key, state, line)
        except framing.NotCanonical:
            await self._abandon(ident, call, "mcpwall cannot carry the server's request")
            [reply] = await self.mediator.unanswered(
                Lost("asked for input mcpwall cannot carry"), [call.rid])
            return reply
        routed = await self.mediator.from_server(answer)
        if carried(routed.client):
            self._park(ident, call)
            return routed.client
        # Refused by the policy (mediator rule 16): the call ended with the refusal.
        await self._abandon(ident, call, "the policy refused this request", refusal(srid))
        if routed.client is not None:
            return routed.client
        [reply] = await self.mediator.unanswered(
            Lost("asked for input mcpwall cannot relay"), [call.rid])
        return reply

    async def _abandon(self, ident: RequestId, call: _Call, reason: str,
                       answer: bytes | None = None) -> None:
        if self._pending.get(ident) is call:
            del self._pending[ident]
            await self._to_child(abandonment(call, ident, reason, answer))

    async def _to_child(self, messages: list[Outbound]) -> None:
        with contextlib.suppress(ChildExited):
            await self.child.send_many(messages)

    def _park(self, ident: RequestId, call: _Call) -> None:
        """The client has the input request: the call waits for its retry at most
        the upstream timeout, then is abandoned."""
        if self.nursery is not None:
            self.nursery.start_soon(self._expire, ident, call, call.round)

    async def _expire(self, ident: RequestId, call: _Call, number: int) -> None:
        with trio.CancelScope() as timer:
            if self._closed:
                return
            self._timers.add(timer)
            try:
                await trio.sleep(self.timeout)
            finally:
                self._timers.discard(timer)
        if timer.cancelled_caught or call.asked is None or call.round != number:
            return
        self.mediator.log.info("bridge_input_unanswered", call_id=call.call_id)
        await self._abandon(ident, call,
                            "the client did not answer the server's request in time")


def _caps_of(value: dict[str, Any]) -> dict[str, Any]:
    """The client capabilities a request of the revision offered in its ``_meta``."""
    params = value.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    caps = meta.get(revision.META_CAPABILITIES) if isinstance(meta, dict) else None
    return caps if isinstance(caps, dict) else {}


class Retry:
    """A bridged call to be sent again, its input requests answered (rule 8)."""

    __slots__ = ("inbound",)

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound


class _ChildCall:
    """A bridged call that may ask for input (rule 8): the client's request, its
    rounds so far, the round whose answers are awaited; ``request`` is the
    message the mediator is deciding, ``decided`` once it was forwarded (or
    held for a person)."""

    __slots__ = ("asked", "decided", "method", "params", "request", "rid", "rounds")

    def __init__(self, rid: RequestId, method: str, params: Any, request: Inbound) -> None:
        self.rid = rid
        self.method = method
        self.params = params
        self.request = request
        self.decided = False
        self.rounds = 0
        self.asked: InputRound | None = None


class ModernChild:
    """A 2025 client over a child of the stateless revision only (rules 6 to 8)."""

    def __init__(self, mediator: Mediator, send: Callable[[Outbound], Awaitable[bool]],
                 ttl_ms: int) -> None:
        self.mediator = mediator
        self.send = send  # a write to the child; False when it is gone
        self.ttl_ms = ttl_ms
        self.bridged: Bridged | None = None
        self._init_id: RequestId | None = None
        self._init_params: Any = None
        self._refusal: bytes | None = None
        self._watching = True  # until the client's initialize is answered
        # Rule 8: the bridged calls that may ask for input (by their id as JSON),
        # and the input requests awaiting the client's answer (by their id).
        self._calls: dict[str, _ChildCall] = {}
        self._waiting: dict[str, _ChildCall] = {}

    @property
    def client_initialized(self) -> bool:
        """Whether the client opened a 2025 session itself (then nothing is bridged
        for a client of the new revision: rule 1)."""
        return self._init_id is not None

    def saw_initialize(self, messages: list[Outbound]) -> None:
        """Note the client's decided ``initialize`` among the messages forwarded."""
        if not self._watching or self._init_id is not None:
            return
        for message in messages:
            if b'"initialize"' not in message.data:
                continue
            try:
                value = jsonrpc.decode_any(message.data)
            except jsonrpc.DECODE_ERRORS:
                continue
            if isinstance(value, dict) and value.get("method") == mcp.INITIALIZE \
                    and value.get("id") is not None:
                self._init_id = value["id"]
                self._init_params = value.get("params")
                return

    async def from_child(self, line: bytes) -> tuple[bytes | None, bytes | None]:
        """A line of the child: (what the mediator sees instead, or None when handled
        here; a message for the client made here). Rule 6."""
        if not self._watching or self._init_id is None:
            return line, None
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return line, None
        if not isinstance(value, dict) or "method" in value:
            return line, None
        rid = value.get("id")
        if self._refusal is None and rid == self._init_id:
            if "error" not in value:
                self._watching = False  # a 2025 child: nothing to bridge
                return line, None
            return await self._probe(line)
        if self._refusal is not None and rid == DISCOVER_ID:
            return None, await self._discovered(line, value)
        return line, None

    async def _probe(self, refusal: bytes) -> tuple[bytes | None, bytes | None]:
        ask = modern_request(DISCOVER_ID, revision.DISCOVER, {}, Bridged(None, 0, False))
        routed = await self.mediator.from_client(ask, wait=False)
        if routed.held is not None:  # mcpwall's own request: nobody to ask
            routed.held.withdraw("nobody can approve mcpwall's own request")
            routed.upstream = None
        if routed.upstream is None:  # refused by the policy: the child's refusal stands
            self._watching = False
            return refusal, None
        self._refusal = refusal
        await routed.upstream.ready()
        if not await self.send(routed.upstream):
            self._watching, self._refusal = False, None
            return refusal, None
        return None, None

    async def _discovered(self, line: bytes, value: dict[str, Any]) -> bytes | None:
        self._watching = False
        await self.mediator.from_server(line)  # the probe's own answer: recorded, kept here
        refusal, self._refusal = self._refusal, None
        assert refusal is not None
        result = discovered(value)
        if result is None:
            return (await self.mediator.from_server(refusal)).client
        params = self._init_params
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        answer = initialize_result(requested, result, self.mediator.server)
        self.bridged = Bridged(params, self.ttl_ms, False)
        self.mediator.on_result = self.bridged.result_seen
        self.mediator.log.info("session_bridged", bridged=revision.LATEST_MODERN)
        return (await self.mediator.from_server(
            jsonrpc.result_response(self._init_id, answer))).client

    async def to_decide(self, message: bytes | Inbound) -> Inbound | Retry | bytes | None:
        """A client message of a bridged session as it is to be decided (rule 7); an
        answer made here (bytes, empty when there is none) when it goes nowhere;
        a :class:`Retry` to decide and send when it completed a round of input
        requests (rule 8); None: decide it as it is."""
        bridged = self.bridged
        if bridged is None:
            return None
        try:
            inbound = message if isinstance(message, Inbound) else decode_client(message)
        except jsonrpc.ProtocolError:
            return None  # the mediator refuses it
        msg = inbound.envelope
        method = msg.method
        if method is None:
            call = self._waiting.pop(_key(msg.request_id), None)
            if call is None:
                return None  # decided (and dropped) by the mediator
            answer = inbound.value
            if not isinstance(answer, dict):
                try:
                    answer = jsonrpc.decode_any(inbound.data)
                except jsonrpc.DECODE_ERRORS:
                    answer = None
            return self._answered(call, answer, bridged)
        if msg.request_id is None:  # a notification
            if method == mcp.CANCELLED:
                self._cancelled(inbound.params)
            if method in _CARRIED_NOTIFICATIONS:
                return None
            await self.mediator.from_client(inbound)  # decided, recorded, goes nowhere
            return b""
        if method == mcp.INITIALIZE or method in revision.REMOVED_METHODS - {mcp.PING}:
            code, why = ((jsonrpc.INVALID_REQUEST, "this session is initialized already")
                         if method == mcp.INITIALIZE else
                         (jsonrpc.METHOD_NOT_FOUND,
                          f"Method not found: {method!r}: server {self.mediator.server!r} "
                          f"speaks revision {revision.LATEST_MODERN}, which removed it"))
            return await self.mediator.refuse_protocol(inbound, code, why)
        if method == mcp.PING:
            routed = await self.mediator.from_client(inbound)
            if routed.upstream is None:
                return routed.client or b""
            return (await self.mediator.from_server(
                jsonrpc.result_response(msg.request_id, {}))).client or b""
        params = revision.params_of(inbound)
        request = modern_request(msg.request_id, method, params, bridged)
        if method in mrtr.MRTR_METHODS:  # rule 8: it may ask for input
            self._prune()
            key = _key(msg.request_id)
            if key not in self._calls:  # (an id in use: the mediator refuses it)
                self._calls[key] = _ChildCall(msg.request_id, method, params, request)
        return request

    def decided(self, request: Inbound, forwarded: bool) -> None:
        """The mediator decided a request :meth:`to_decide` made (or a
        :class:`Retry`'s): forwarded (or held for a person), its call is kept
        for its rounds while the mediator awaits or holds it; refused, it is
        forgotten (rule 8)."""
        if not self._calls:  # (every request of a session that is not bridged)
            return
        key = _key(request.envelope.request_id)
        call = self._calls.get(key)
        if call is None or call.request is not request:
            return
        if forwarded:
            call.decided = True
        else:
            del self._calls[key]

    def _prune(self) -> None:
        """Forget the calls the mediator no longer awaits nor holds (a held call
        refused, an answer it dropped), none waiting for its client's answers."""
        mediator = self.mediator
        for key, call in list(self._calls.items()):
            if call.decided and call.asked is None and not mediator.awaits(call.rid) \
                    and call.rid not in mediator.holds:
                del self._calls[key]

    def to_client(self, line: bytes) -> tuple[RequestId, list[bytes]] | bytes | None:
        """A mediated line of the child on its way to the client (rule 8): None to
        send it as it is; else the call it answers and the round's input
        requests the client gets instead, or the error that answers the call."""
        if self.bridged is None or not self._calls or b'"id"' not in line:
            return None
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return None
        if not isinstance(value, dict) or "method" in value:
            return None
        call = self._calls.get(_key(value.get("id")))
        if call is None:
            return None
        ir = input_required_result(line)
        if ir is None:  # the call's answer
            del self._calls[_key(call.rid)]
            return None
        call.rounds += 1
        asked = InputRound(ir, call.rid, self.mediator.server)
        error = asked.error
        if error is None and call.rounds > MAX_ROUNDS:
            error = jsonrpc.error_response(call.rid, jsonrpc.INTERNAL_ERROR, (
                f"server {self.mediator.server!r} asked for input more than "
                f"{MAX_ROUNDS} times"))
        if error is not None:
            del self._calls[_key(call.rid)]
            return error
        call.asked = asked
        for ident in asked.keys:
            self._waiting[_key(ident)] = call
        return call.rid, list(asked.messages)

    def forget(self, rid: RequestId) -> None:
        """The call cannot be asked for input (its client takes JSON only): its
        round is dropped (rule 8)."""
        call = self._calls.pop(_key(rid), None)
        if call is not None and call.asked is not None:
            for ident in call.asked.keys:
                self._waiting.pop(_key(ident), None)

    def _answered(self, call: _ChildCall, answer: Any, bridged: Bridged) -> Retry | bytes:
        """One answer of the client to an input request of ``call``'s round."""
        asked = call.asked
        assert asked is not None
        if not asked.answered(answer):
            return b""  # the round waits for its other answers
        call.asked = None
        extra = asked.outcome()
        if isinstance(extra, bytes):
            self._calls.pop(_key(call.rid), None)
            return extra
        call.request = modern_request(call.rid, call.method, call.params, bridged, extra)
        call.decided = False  # until the mediator decided the retry (:meth:`decided`)
        return Retry(call.request)

    def _cancelled(self, params: Any) -> None:
        if isinstance(params, dict) and "requestId" in params:
            self.forget(params["requestId"])
