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
   clientInfo ``mcpwall-bridge``, no client capabilities, then
   ``notifications/initialized``), as the serve bridge does
   (:mod:`firewall.gateway.front.bridge`). A refused request starts nothing.
   A child that refuses that ``initialize`` (a JSON-RPC error) speaks the new
   revision itself: nothing is bridged, requests go to it as decided. A
   handshake that fails otherwise (no answer within the timeout, an answer
   that is not one, the child gone) answers each bridged request with the
   mediator's error, then and later.
2. What reaches the child is the decided message translated
   (:meth:`Outbound.translated`, its receipt kept): the revision's keys of
   ``params._meta`` (``io.modelcontextprotocol/...``) removed, nothing else
   (the id stays the client's).
3. The child's answer to a bridged request gets what the revision requires
   (:func:`bridge.translate_answer`: ``resultType``, and ``ttlMs``/
   ``cacheScope`` on cacheable methods) *before* the mediator sees it (the
   tools/list filter, the outcome, the cache bounds apply as to any answer).
4. ``server/discover`` is decided and recorded, and answered by mcpwall from
   the child's ``initialize`` result (:func:`bridge.discover_result`); it
   never reaches the child.
5. Once bridged, a request of the child (sampling, elicitation, roots) is
   answered at once with -32601 (mcpwall declared no client capabilities);
   its notifications pass the mediator to the client as before.

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
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from firewall.gateway.front.bridge import (
    CLIENT_INFO,
    REVISION_PREFIX,
    discover_result,
    translate_answer,
)
from firewall.gateway.front.bridge_modern import (
    Bridged,
    discovered,
    initialize_result,
    modern_request,
)
from firewall.gateway.mediator import Lost, Mediator
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.stdio import ChildExited, StdioChild
from firewall.protocol import framing, jsonrpc, mcp, revision
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.jsonrpc import RequestId

# mcpwall's handshake id: the client's ids reach the child unchanged, so it has
# a per-session part no client can guess, and is read only once sent (rule 1).
HANDSHAKE_PREFIX: Final = "mcpwall-bridge-initialize-"
DISCOVER_ID: Final = "mcpwall-discover-1"
_METHOD_NOT_FOUND: Final = -32601
# Client notifications a child of the stateless revision still reads over stdio.
_CARRIED_NOTIFICATIONS: Final = frozenset({mcp.CANCELLED, "notifications/progress"})


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
    """The decoded message when it claims the stateless revision in ``_meta``."""
    if revision.META_VERSION_BYTES not in data:
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


class ModernClient:
    """A 2026-07-28 client over a 2025-only child (rules 1 to 5)."""

    def __init__(self, mediator: Mediator, child: StdioChild, timeout: float) -> None:
        self.mediator = mediator
        self.child = child
        self.timeout = timeout
        self.init_result: dict[str, Any] | None = None
        self.failure: str | None = None
        self.passthrough = False  # the child refused initialize (rule 1)
        self.handshake_id = HANDSHAKE_PREFIX + secrets.token_hex(8)
        self._sent = False  # mcpwall's initialize went to the child
        self._answer: bytes | None = None
        self._answered = trio.Event()
        self._lock = trio.Lock()
        self._pending: dict[RequestId, str] = {}  # bridged request id -> its method

    async def outbound(self, messages: list[Outbound], to_client: ToClient) -> list[Outbound]:
        """What of these decided messages goes to the child, translated (rules 1 to 4);
        what mcpwall answers itself goes to the client. Raises ChildExited."""
        out: list[Outbound] = []
        replies: list[bytes] = []
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
                answer = jsonrpc.result_response(rid, discover_result(self.init_result))
                routed = await self.mediator.from_server(framing.canonical(answer))
                if routed.client is not None:
                    replies.append(routed.client)
                continue
            strip_revision_meta(value)
            if rid is not None and isinstance(method, str):
                self._pending[rid] = method
            elif method == mcp.CANCELLED:  # no answer will come for that one
                params = value.get("params")
                gone = params.get("requestId") if isinstance(params, dict) else None
                if isinstance(gone, str | int):
                    self._pending.pop(gone, None)
            out.append(message.translated(framing.canonical(jsonrpc.encode(value)),
                                          "wrap: bridged"))
        await to_client(replies)
        return out

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
            "protocolVersion": mcp.LATEST_PROTOCOL_VERSION, "capabilities": {},
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
        """The child's output ended: a handshake still waiting fails."""
        self._answered.set()

    async def from_child(self, line: bytes) -> bytes | None:
        """A line of the child as the mediator is to see it; None when it is consumed
        here (the handshake's answer, a refused server request: rules 3, 5)."""
        if self.init_result is None and self.failure is None and not self._answered.is_set():
            if self._sent and self.handshake_id.encode() in line:
                try:
                    value = jsonrpc.decode_any(line)
                except jsonrpc.DECODE_ERRORS:
                    return line
                if isinstance(value, dict) and value.get("id") == self.handshake_id \
                        and "method" not in value:
                    self._answer = line
                    self._answered.set()
                    return None
            return line
        if self.init_result is None:
            return line
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return line
        if not isinstance(value, dict):
            return line
        method, rid = value.get("method"), value.get("id")
        if isinstance(method, str) and rid is not None:  # rule 5
            self.mediator.log.info("bridge_server_request_refused", method=method)
            refusal = jsonrpc.error_response(
                rid, _METHOD_NOT_FOUND,
                f"mcpwall's bridge carries no {method} to a 2026-07-28 client")
            with contextlib.suppress(ChildExited):
                await self.child.send(Outbound.own(refusal,
                                                   "wrap bridge: refusal of a server request"))
            return None
        if method is None and isinstance(rid, str | int) and rid in self._pending:
            try:
                return translate_answer(line, rid, self._pending.pop(rid))
            except (*jsonrpc.DECODE_ERRORS, framing.NotCanonical):
                return line
        return line


class ModernChild:
    """A 2025 client over a child of the stateless revision only (rules 6, 7)."""

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

    async def to_decide(self, message: bytes | Inbound) -> Inbound | bytes | None:
        """A client message of a bridged session as it is to be decided (rule 7); an
        answer made here (bytes, empty when there is none) when it goes nowhere;
        None: decide it as it is."""
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
            return None
        if msg.request_id is None:  # a notification
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
        return modern_request(msg.request_id, method, revision.params_of(inbound), bridged)
