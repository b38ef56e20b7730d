"""``subscriptions/listen`` streams of the 2026-07-28 revision, relayed under policy.

In that revision a client opts in to change notifications with a
``subscriptions/listen`` request whose response is a long-lived event stream
(its first event acknowledges the subset honoured; every frame is tagged
``_meta["io.modelcontextprotocol/subscriptionId"]`` with the request's id; a
graceful end is the request's result). Rules this module keeps:

1. Each type the request asks for is decided for the caller before anything
   else (:func:`narrow`), with ``PolicyPoint.recheck`` (nothing is debited):
   ``toolsListChanged``, ``promptsListChanged`` and ``resourcesListChanged``
   as the methods ``subscriptions/listen/toolsListChanged`` (and so on:
   ``methods`` entries, globs such as ``subscriptions/listen*``; unlisted:
   ``other_methods``; the notifications' own names always pass, as MCP's
   notifications do, so they cannot name a type),
   each URI of ``resourceSubscriptions`` as a ``resources/read`` of that
   URI (a caller follows only what it may read). Keys mcpwall does not know
   are dropped. The request with the narrowed filter is what the mediator
   decides (the ``subscriptions/listen`` method: ``methods`` entry, limits,
   audit) and what goes upstream; the refused types are recorded at open
   (``listen_start``).
2. Only the acknowledgement, the notifications of the honoured filter (the
   four listen-stream methods) and the request's answer reach the client,
   each through the mediator and with the upstream's ``_meta`` tag and
   event fields unchanged; any other message on the stream is dropped and
   counted (a server->client request before the mediator sees it: it is
   never decided nor recorded as relayed).
3. Bounds: at most ``listen.max_listen_streams_per_principal`` streams per
   principal (then 429, -32002, recorded as a ``protocol`` deny), each for at
   most ``listen.listen_stream_max_seconds``; the upstream's stream runs on
   the endpoint's pool of long-lived connections, as GET streams do. Silences
   longer than ``listen.keepalive_seconds`` are filled with comments.
4. A stream ends when the client goes away (the upstream stream is closed),
   the upstream ends it (its answer, if any, is relayed; without one the
   client's stream ends as abruptly), or mcpwall ends it
   (its lifetime, shutdown): then with a graceful ``SubscriptionsListenResult``
   under the request's id, so the client may listen again. Each end is
   recorded once (``listen_end``: why, notifications relayed and dropped).
5. A policy reload that changed the table re-decides every open stream's
   honoured types (a type now refused stops, none is added) and sends
   ``notifications/tools/list_changed`` (tagged as the stream's) on each
   stream still subscribed to it, so a client refetches its tool list under
   the new policy instead of keeping a stale cache.
6. Over stdio (``mcpwall wrap``), where listen streams share the session's
   pipe, :class:`StdioListens` keeps rules 1, 2 and 5: the request is
   narrowed before the mediator sees it (a line is read as the mediator
   reads it, whatever escapes spell its method), and once a listen is open,
   a listen-stream notification reaches the client only when tagged with an
   open listen's id, within its honoured filter and allowed by the rules in
   force; a reload re-decides the open listens and pushes
   ``notifications/tools/list_changed`` to those that follow tools. At most
   ``listen.max_listen_streams_per_principal`` listens are open or held for
   approval in a session (a wrap session is one principal's): past it, the
   request is refused as
   on the HTTP front and never forwarded. Each lives at most
   ``listen.listen_stream_max_seconds`` (rule 3): the session ends it
   (:meth:`StdioListens.end`: the client gets the graceful end of rule 4, the
   upstream is told, the tagged notifications that still come are dropped).
   A session with no listen open or ended by mcpwall (the 2025 revisions,
   whose list_changed notifications need none) is left as it is.
7. A server whose listens mcpwall answers itself (:class:`ListenSource`: a
   bridged 2025 server, ``front/bridge_listen.py``) keeps rules 1 and 3 to 5
   here; after the decision (its receipt durable) the source is attached,
   narrowing the honoured types to what it can deliver (the rest named in
   ``listen_start``'s ``not_carried``), the acknowledgement is mcpwall's own,
   and each notification the source gives is tagged with the request's id
   and passes rule 2. When the source ends, so does the stream, gracefully.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol, runtime_checkable

import msgspec
import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.config import ListenSettings
from firewall.gateway.front.sse_response import SseResponse
from firewall.gateway.http.exchange import JSON, SSE, ClientGone, Exchange
from firewall.gateway.mediator import Lost, Mediator
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.http import Response, UpstreamError
from firewall.log import get_logger
from firewall.policy.decision import Caller, PolicyPoint, session_scope
from firewall.protocol import jsonrpc, mcp, sse
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.jsonrpc import RequestId

LISTEN: Final = "subscriptions/listen"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
TOOLS_CHANGED: Final = "notifications/tools/list_changed"
RESOURCE_UPDATED: Final = "notifications/resources/updated"
# The filter's flags and the notification each stands for (rule 1).
FLAGS: Final = {
    "toolsListChanged": TOOLS_CHANGED,
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
RESOURCES: Final = "resourceSubscriptions"
_FLAG_OF: Final = {method: flag for flag, method in FLAGS.items()}
MAX_MAX_URIS: Final = 256  # URIs of one filter beyond this are refused


def notification(method: str, rid: RequestId) -> bytes:
    """mcpwall's own notification on the listen ``rid``, tagged with its id."""
    return jsonrpc.encode({"jsonrpc": "2.0", "method": method,
                           "params": {"_meta": {SUBSCRIPTION_ID: rid}}})


def acknowledgement(honoured: Honoured, rid: RequestId) -> bytes:
    """mcpwall's acknowledgement of the listen ``rid``: the types it honours."""
    return jsonrpc.encode({"jsonrpc": "2.0", "method": ACKNOWLEDGED, "params": {
        "notifications": honoured.wire(), "_meta": {SUBSCRIPTION_ID: rid}}})


def graceful_end(rid: RequestId) -> bytes:
    """The revision's graceful end of the listen ``rid`` (rule 4): its result."""
    return jsonrpc.result_response(rid, {"_meta": {SUBSCRIPTION_ID: rid},
                                         "resultType": "complete"})


class Honoured(msgspec.Struct, frozen=True):
    """What one listen stream may carry: flags (by wire name) and resource URIs."""

    flags: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()

    @classmethod
    def of(cls, wire: Any) -> Honoured:
        """What a ``SubscriptionFilter`` (already decided) asks for, as it says it."""
        if not isinstance(wire, dict):
            return cls()
        uris = wire.get(RESOURCES)
        return cls(frozenset(f for f in FLAGS if wire.get(f) is True),
                   frozenset(u for u in uris if isinstance(u, str))
                   if isinstance(uris, list) else frozenset())

    def wire(self) -> dict[str, Any]:
        """The ``SubscriptionFilter`` that says it."""
        out: dict[str, Any] = {flag: True for flag in sorted(self.flags)}
        if self.uris:
            out[RESOURCES] = sorted(self.uris)
        return out

    def admits(self, method: str, params: Any) -> bool:
        """Whether a notification ``method`` (with ``params``) is within it (rule 2)."""
        flag = _FLAG_OF.get(method)
        if flag is not None:
            return flag in self.flags
        if method == RESOURCE_UPDATED and isinstance(params, dict):
            uri = params.get("uri")  # a server's: may be anything, unhashable too
            return isinstance(uri, str) and uri in self.uris
        return False


def narrow(policy: PolicyPoint, caller: Caller, server: str,
           requested: Any) -> tuple[Honoured, list[str]]:
    """The types of ``requested`` (a SubscriptionFilter) the policy lets ``caller``
    follow on ``server``, and the refused ones, named (rule 1)."""
    honoured_flags: set[str] = set()
    uris: set[str] = set()
    refused: list[str] = []
    if not isinstance(requested, dict):
        return Honoured(), refused
    scope = session_scope(None, caller)
    for key, value in requested.items():
        if key in FLAGS:
            if value is not True:
                continue
            call = mcp.Call(f"{LISTEN}/{key}", "server")
            if policy.recheck(call, caller, server, scope).enforced_allow:
                honoured_flags.add(key)
            else:
                refused.append(key)
        elif key == RESOURCES and isinstance(value, list):
            for n, uri in enumerate(value):
                if not isinstance(uri, str) or n >= MAX_MAX_URIS:
                    refused.append(f"{RESOURCES}[{n}]")
                    continue
                call = mcp.Call(mcp.RESOURCES_READ, "client", None, uri)
                if policy.recheck(call, caller, server, scope).enforced_allow:
                    uris.add(uri)
                else:
                    refused.append(uri)
        else:
            refused.append(key)  # a type mcpwall cannot decide
    return Honoured(frozenset(honoured_flags), frozenset(uris)), refused


@runtime_checkable
class ListenUpstream(Protocol):
    """An endpoint that can carry a listen stream upstream (Streamable HTTP)."""

    name: str

    def open_listen(self, headers: list[tuple[str, str]],
                    message: Outbound) -> AbstractAsyncContextManager[Response]:
        """POST the decided listen request; the response may last for hours."""
        ...


class Unreachable:
    """Why a :class:`ListenSource` cannot carry a listen: the HTTP status and the
    failure the mediator answers the request with."""

    __slots__ = ("failure", "status")

    def __init__(self, status: int, failure: Lost) -> None:
        self.status = status
        self.failure = failure


class Feed:
    """What a :class:`ListenSource` carries for one listen (rule 7): the types it
    honours (within the policy's), the ones it cannot (named, for the audit
    trail), and the server's notifications as they come (2025 notifications,
    untagged; the channel ends when the source does)."""

    __slots__ = ("honoured", "not_carried", "notifications")

    def __init__(self, honoured: Honoured, not_carried: list[str],
                 notifications: trio.MemoryReceiveChannel[bytes]) -> None:
        self.honoured = honoured
        self.not_carried = not_carried
        self.notifications = notifications


@runtime_checkable
class ListenSource(Protocol):
    """A server whose listens mcpwall answers itself (rule 7): a bridged 2025 server."""

    name: str

    def attach(self, caller: Caller, honoured: Honoured
               ) -> AbstractAsyncContextManager[Feed | Unreachable]:
        """Follow ``honoured`` (the policy's narrowing) for ``caller`` while the
        ``async with`` block runs."""
        ...


@runtime_checkable
class BridgesListens(Protocol):
    """An endpoint that may answer listens itself (:class:`ListenSource`)."""

    def listen_source(self) -> ListenSource | None:
        """The source of this endpoint's listens now, or None (they go upstream)."""
        ...


class ListenStream:
    """One open listen stream (its client's side and its counts)."""

    def __init__(self, caller: Caller, server: str, rid: RequestId,
                 honoured: Honoured) -> None:
        self.caller = caller
        self.server = server
        self.rid = rid
        self.honoured = honoured
        self.relayed = 0
        self.dropped = 0
        self.ended_by: str | None = None  # set when mcpwall ends it (rule 4)
        self.scope = trio.CancelScope()
        self.pushes, self.pushed = trio.open_memory_channel[bytes](16)

    def tagged(self, method: str) -> bytes:
        """A notification of this stream, tagged with its subscription id."""
        return notification(method, self.rid)

    def end(self, why: str) -> None:
        self.ended_by = self.ended_by or why
        self.scope.cancel()


class ListenDesk:
    """Every listen stream of the front: admission, relay, reloads, shutdown."""

    def __init__(self, listen: ListenSettings, policy: PolicyPoint,
                 audit: AuditPoint | None) -> None:
        self.listen = listen
        self.policy = policy
        self.audit = audit
        self.streams: set[ListenStream] = set()
        self.log: Any = get_logger(component="listen")

    def per_principal(self, principal: str) -> int:
        return sum(1 for s in self.streams if s.caller.principal == principal)

    def end_all(self, why: str) -> None:
        """End every stream (shutdown): each with its graceful result."""
        for stream in list(self.streams):
            stream.end(why)

    def policy_changed(self) -> None:
        """A reload changed the table (rule 5): re-decide, then tell who follows tools."""
        for stream in list(self.streams):
            honoured, _ = narrow(self.policy, stream.caller, stream.server,
                                 stream.honoured.wire())
            stream.honoured = honoured
            if "toolsListChanged" in honoured.flags:
                # A full queue has one waiting already: list_changed is a level trigger.
                with contextlib.suppress(trio.WouldBlock):
                    stream.pushes.send_nowait(stream.tagged(TOOLS_CHANGED))

    async def serve(self, ex: Exchange, endpoint: ListenUpstream, mediator: Mediator,
                    inbound: Inbound, headers: list[tuple[str, str]]) -> None:
        """Answer one ``subscriptions/listen`` request carried upstream (rules 1 to 4)."""

        async def relay(outbound: Outbound, stream: ListenStream, refused: list[str]) -> None:
            async with self._recorded(mediator, stream, refused) as end:
                end.why = await self._relay(ex, endpoint, mediator, outbound, headers, stream)

        await self._serve(ex, endpoint.name, mediator, inbound, relay)

    async def serve_local(self, ex: Exchange, source: ListenSource, mediator: Mediator,
                          inbound: Inbound) -> None:
        """Answer one ``subscriptions/listen`` request of a server whose listens
        mcpwall answers itself (rules 1 to 5 and 7)."""

        async def relay(outbound: Outbound, stream: ListenStream, refused: list[str]) -> None:
            await outbound.ready()  # its decision is durable before anything follows
            async with source.attach(stream.caller, stream.honoured) as feed:
                if isinstance(feed, Unreachable):
                    [reply] = await mediator.unanswered(feed.failure, [stream.rid])
                    await ex.respond(feed.status, reply)
                    return
                stream.honoured = feed.honoured
                async with self._recorded(mediator, stream, refused, feed.not_carried) as end:
                    end.why = await self._relay_local(ex, mediator, feed, stream)

        await self._serve(ex, source.name, mediator, inbound, relay)

    async def _serve(self, ex: Exchange, server: str, mediator: Mediator, inbound: Inbound,
                     relay: Callable[[Outbound, ListenStream, list[str]], Awaitable[None]]
                     ) -> None:
        """The cap (rule 3), then :meth:`_open`."""
        msg = inbound.envelope
        caller = mediator.caller
        rid = msg.request_id
        assert rid is not None
        cap = self.listen.max_listen_streams_per_principal
        if self.per_principal(caller.principal) >= cap:
            reply = await mediator.refuse_protocol(
                inbound, jsonrpc.RATE_LIMITED,
                f"Too Many Requests: {cap} listen streams open for this caller "
                "(listen.max_listen_streams_per_principal)", {"cap": cap})
            await ex.respond(429, reply, headers=[("retry-after", "5")])
            return
        stream = ListenStream(caller, server, rid, Honoured())
        self.streams.add(stream)  # counted from here: no await since the check
        try:
            await self._open(ex, mediator, inbound, stream, relay)
        finally:
            self.streams.discard(stream)

    async def _open(self, ex: Exchange, mediator: Mediator, inbound: Inbound,
                    stream: ListenStream,
                    relay: Callable[[Outbound, ListenStream, list[str]], Awaitable[None]]
                    ) -> None:
        """Narrow and decide one listen (rule 1), then ``relay`` it."""
        caller, rid = stream.caller, stream.rid
        try:
            value = jsonrpc.decode_any(inbound.data)
        except jsonrpc.DECODE_ERRORS:
            value = None
        params = value.get("params") if isinstance(value, dict) else None
        requested = params.get("notifications") if isinstance(params, dict) else None
        honoured, refused = narrow(self.policy, caller, stream.server, requested)
        params = dict(params) if isinstance(params, dict) else {}
        params["notifications"] = honoured.wire()
        narrowed = decode_client(jsonrpc.encode({"jsonrpc": "2.0", "id": rid,
                                                 "method": LISTEN, "params": params}))
        routed = await mediator.from_client(narrowed, wait=False)
        if routed.held is not None:  # recorded as rejected, its reservation given back
            routed.held.withdraw("a listen stream cannot wait for approval")
            with trio.move_on_after(5):
                await routed.held.wait(None)
            await ex.respond(200, jsonrpc.error_response(
                rid, jsonrpc.INVALID_REQUEST,
                "subscriptions/listen cannot wait for approval: the policy requires one"))
            return
        if routed.upstream is None:
            await (ex.respond(200, routed.client) if routed.client else ex.respond(202))
            return
        stream.honoured = honoured
        await relay(routed.upstream, stream, refused)

    @contextlib.asynccontextmanager
    async def _recorded(self, mediator: Mediator, stream: ListenStream, refused: list[str],
                        not_carried: list[str] | None = None) -> AsyncIterator[_End]:
        """``listen_start`` now, ``listen_end`` (with why the block ended) after."""
        caller = stream.caller
        detail: dict[str, Any] = {"request_id": stream.rid, "honoured": stream.honoured.wire(),
                                  "refused": refused, "grant": caller.grant}
        if not_carried is not None:
            detail["not_carried"] = not_carried
        await append_lifecycle(self.audit, "listen_start", session=mediator.session,
                               principal=caller.principal, server=stream.server,
                               detail=detail)
        started = time.monotonic()
        end = _End()
        try:
            yield end
        finally:
            with trio.CancelScope(shield=True):
                await append_lifecycle(
                    self.audit, "listen_end", session=mediator.session,
                    principal=caller.principal, server=stream.server,
                    detail={"request_id": stream.rid, "reason": end.why,
                            "relayed": stream.relayed, "dropped": stream.dropped,
                            "seconds": round(time.monotonic() - started, 3)})

    async def _relay(self, ex: Exchange, endpoint: ListenUpstream, mediator: Mediator,
                     outbound: Outbound, headers: list[tuple[str, str]],
                     stream: ListenStream) -> str:
        """Relay the upstream's stream until one side ends it; why it ended."""
        rid = stream.rid
        out = SseResponse(ex, self.listen.keepalive_seconds)
        why = "upstream ended"
        answered = False
        try:
            with stream.scope:
                stream.scope.deadline = trio.current_time() + \
                    self.listen.listen_stream_max_seconds
                async with endpoint.open_listen(headers, outbound) as resp:
                    if resp.status >= 300 or resp.content_type != SSE:
                        await self._not_a_stream(ex, resp, mediator, rid)
                        return f"upstream answered HTTP {resp.status}"
                    await out.open(prime=True)
                    answered = await _alongside(ex, out, stream,
                                                self._events(out, resp, mediator, stream))
        except UpstreamError as exc:
            mediator.log.warning("listen_upstream_failed", reason=exc.reason.value,
                                 detail=exc.detail)
            why = f"upstream failed: {exc.reason.value}"
            if not ex.started:
                [reply] = await mediator.unanswered(Lost(why, exc.code), [rid])
                await ex.respond(502, reply)
                return why
        return await _finish(ex, out, stream, answered, why)

    async def _relay_local(self, ex: Exchange, mediator: Mediator, feed: Feed,
                           stream: ListenStream) -> str:
        """Answer a listen from a :class:`Feed` (rule 7) until one side ends it; why."""
        rid = stream.rid
        out = SseResponse(ex, self.listen.keepalive_seconds)
        with stream.scope:
            stream.scope.deadline = trio.current_time() + self.listen.listen_stream_max_seconds
            await out.open()
            ack = acknowledgement(stream.honoured, rid)
            routed = await mediator.from_server(ack)
            if routed.client is not None:
                await out.send(sse.encode_event(routed.client))
            await _alongside(ex, out, stream, _fed(out, feed, mediator, stream))
            # The source ended (the bridged session did): mcpwall ends the
            # stream, gracefully, and a new listen may start another.
            stream.ended_by = stream.ended_by or "upstream ended"
        return await _finish(ex, out, stream, False, "upstream ended")

    async def _events(self, out: SseResponse, resp: Response, mediator: Mediator,
                      stream: ListenStream) -> bool:
        """Relay the upstream's events (rule 2) until it ends; True if it answered."""
        events = resp.events(keep_dataless=True)
        while True:
            for event in events.ready():
                if not event.data:
                    continue  # priming events: a listen stream is not resumable
                if _is_request(event.data):  # none rides a listen stream: never
                    stream.dropped += 1      # decided as if relayed (rule 2)
                    continue
                routed = await mediator.from_server(event.data)
                line = routed.client
                if line is None:
                    stream.dropped += 1
                    continue
                if routed.answers == stream.rid:
                    await out.send(sse.encode_event(line, event=event.event))
                    return True
                carried = _carried(line, stream.honoured)
                if carried is None:
                    stream.dropped += 1
                    continue
                await out.send(sse.encode_event(line, event=event.event))
                stream.relayed += carried
            if events.at_end():
                return False
            await events.receive()

    async def _not_a_stream(self, ex: Exchange, resp: Response, mediator: Mediator,
                            rid: RequestId) -> None:
        """The upstream answered the listen with no stream: its JSON-RPC answer
        (through the mediator), or mcpwall's own error."""
        data = await resp.read(4 * 1024 * 1024)
        if resp.content_type == JSON and data:
            routed = await mediator.from_server(data)
            if routed.client is not None:
                await ex.respond(resp.status if resp.status < 500 else 502, routed.client)
                return
        [reply] = await mediator.unanswered(
            Lost(f"answered HTTP {resp.status} with {resp.content_type or 'no type'}"), [rid])
        await ex.respond(502, reply)


class _End:
    """Why a recorded listen ended (set by the block :meth:`ListenDesk._recorded` wraps)."""

    __slots__ = ("why",)

    def __init__(self) -> None:
        self.why = "upstream ended"


async def _alongside(ex: Exchange, out: SseResponse, stream: ListenStream,
                     events: Awaitable[bool]) -> bool:
    """Run ``events`` (the relay of a stream's notifications; True if it saw the
    request answered) with the keepalives, mcpwall's pushes and the watch on
    the client (rules 3 to 5)."""
    failed: UpstreamError | None = None
    answered = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_disconnect, ex, stream)
        nursery.start_soon(out.keep_open)
        nursery.start_soon(_pushes, out, stream)
        try:  # raised out of the nursery, it would come in a group
            answered = await events
        except UpstreamError as exc:
            failed = exc
        nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return answered


async def _finish(ex: Exchange, out: SseResponse, stream: ListenStream, answered: bool,
                  why: str) -> str:
    """End the client's stream (rule 4); why it ended."""
    if stream.scope.cancelled_caught and stream.ended_by is None:
        stream.ended_by = "lifetime"
    if stream.ended_by == "client gone" or ex.disconnected:
        return "client gone"
    if stream.ended_by is not None:
        why = stream.ended_by
    if not ex.started:
        return why
    last = b""
    if not answered and stream.ended_by is not None:
        # mcpwall ends it (lifetime, shutdown), gracefully: the client may
        # listen again. An upstream that ended or failed without an answer
        # is passed on as it is: an abrupt end.
        last = sse.encode_event(graceful_end(stream.rid))
    with trio.CancelScope(shield=True), trio.move_on_after(5), \
            contextlib.suppress(ClientGone):  # the client went away meanwhile
        await out.end(last)
    return why


async def _fed(out: SseResponse, feed: Feed, mediator: Mediator, stream: ListenStream) -> bool:
    """Relay a :class:`Feed`'s notifications (rule 7), each tagged as the stream's
    and within its honoured filter, until the feed ends; never answered."""
    async for line in feed.notifications:
        routed = await mediator.from_server(tagged(line, stream.rid))
        carried = None if routed.client is None else _carried(routed.client, stream.honoured)
        if carried is None or routed.client is None:
            stream.dropped += 1
            continue
        await out.send(sse.encode_event(routed.client))
        stream.relayed += carried
    return False


def tagged(line: bytes, rid: RequestId) -> bytes:
    """A server's notification with the listen's tag in ``params._meta`` (rule 7)."""
    try:
        value = jsonrpc.decode_any(line)
    except jsonrpc.DECODE_ERRORS:
        return line
    if not isinstance(value, dict):
        return line
    params = value.get("params")
    params = dict(params) if isinstance(params, dict) else {}
    meta = params.get("_meta")
    params["_meta"] = {**(meta if isinstance(meta, dict) else {}), SUBSCRIPTION_ID: rid}
    value["params"] = params
    return jsonrpc.encode(value)


def _is_request(data: bytes) -> bool:
    """Whether an event of the upstream's listen stream is a server->client request."""
    try:
        return jsonrpc.decode(data).kind is jsonrpc.Kind.REQUEST
    except jsonrpc.ProtocolError:
        return False  # the mediator records what it cannot read


def _carried(line: bytes, honoured: Honoured) -> int | None:
    """Whether a mediated message of a listen stream goes on to the client (rule 2):
    None if not, else how many notifications it counts for (the acknowledgement: 0)."""
    try:
        value = jsonrpc.decode_any(line)
    except jsonrpc.DECODE_ERRORS:
        return None
    if not isinstance(value, dict) or "id" in value:
        return None  # a server->client request: none rides a listen stream
    method = value.get("method")
    if method == ACKNOWLEDGED:
        return 0
    if isinstance(method, str) and honoured.admits(method, value.get("params")):
        return 1
    return None


async def _cancel_on_disconnect(ex: Exchange, stream: ListenStream) -> None:
    await ex.wait_disconnect()
    stream.end("client gone")


async def _pushes(out: SseResponse, stream: ListenStream) -> None:
    """mcpwall's own notifications for this stream (rule 5)."""
    async for block in stream.pushed:
        await out.send(sse.encode_event(block))
        stream.relayed += 1


class _StdioListen:
    """One listen of a stdio session: what it honours and what it carried."""

    __slots__ = ("dropped", "due", "honoured", "relayed", "rid", "started")

    def __init__(self, rid: Any, honoured: Honoured) -> None:
        self.rid = rid
        self.honoured = honoured
        self.relayed = 0
        self.dropped = 0
        self.started = time.monotonic()
        self.due = math.inf  # when its lifetime ends (trio's clock), set once open


# A listen request seen, not yet forwarded: its key, what it honours, what it refused.
PendingListen = tuple[str, _StdioListen, list[str]]


class StdioListens:
    """The listen streams of one stdio session (rule 6); sans-IO but for the audit.

    The session calls :meth:`incoming` on each client line before the
    mediator, :meth:`decided` after it when :attr:`pending` (or :meth:`held`,
    then :meth:`released` once a held listen is decided), :meth:`admits` on each mediated
    server line, :meth:`flush` after each batch and :meth:`close` at its end;
    :meth:`end` when it ends a listen itself (:meth:`due`: those past their
    lifetime), :meth:`take_cancelled` for the listens the client cancelled.
    """

    __slots__ = ("_cancelled_keys", "_closed", "_ended", "_held", "_pending", "cap",
                 "lifetime", "mediator", "open", "over_cap")

    def __init__(self, mediator: Mediator, cap: int = 16, lifetime: float = 3600.0) -> None:
        self.mediator = mediator
        self.cap = cap
        self.lifetime = lifetime
        self.open: dict[str, _StdioListen] = {}  # by the listen's id, as JSON text
        self.over_cap = False  # the last line was a listen past the cap (rule 6)
        self._pending: PendingListen | None = None
        self._ended: list[tuple[_StdioListen, str]] = []
        # The listens mcpwall ended (newest last, bounded): their tagged
        # notifications still coming are dropped.
        self._closed: dict[str, None] = {}
        self._cancelled_keys: list[str] = []
        self._held = 0  # listens held for approval: counted against the cap

    @property
    def pending(self) -> bool:
        """True when the last line :meth:`incoming` saw was a listen request."""
        return self._pending is not None

    def incoming(self, line: bytes) -> bytes:
        """A client line, with a listen request's filter narrowed (rule 1).

        A listen past the cap is left as it is, with :attr:`over_cap` set:
        the session refuses it (:meth:`refuse`) instead of deciding it.
        """
        self._pending = None
        self.over_cap = False
        # JSON may spell a method with escapes ("subscriptions\\/listen"): a
        # line with a backslash is read as the mediator will read it.
        escaped = _ESCAPE_BYTES in line
        if _LISTEN_BYTES not in line and not escaped:
            if self.open and _CANCELLED_BYTES in line:
                self._cancelled(line)
            return line
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return line
        if self.open and isinstance(value, dict) and value.get("method") == mcp.CANCELLED:
            self._cancelled_value(value)
            return line
        if not isinstance(value, dict) or value.get("method") != LISTEN or \
                value.get("id") is None or not isinstance(value.get("params"), dict):
            return line
        if len(self.open) + self._held >= self.cap:
            self.over_cap = True
            return line
        mediator = self.mediator
        honoured, refused = narrow(mediator.policy, mediator.caller, mediator.server,
                                   value["params"].get("notifications"))
        rid = value["id"]
        self._pending = (_key(rid), _StdioListen(rid, honoured), refused)
        value["params"] = dict(value["params"], notifications=honoured.wire())
        return jsonrpc.encode(value)

    async def decided(self, forwarded: bool) -> str | None:
        """After the mediator: a listen it forwarded is open (and recorded); its key."""
        pending, self._pending = self._pending, None
        return await self._opened(pending, forwarded)

    def held(self) -> PendingListen | None:
        """After the mediator held the listen for approval: what
        :meth:`released` opens once a person decided."""
        pending, self._pending = self._pending, None
        if pending is not None:  # holds its place under the cap until released
            self._held += 1
        return pending

    async def released(self, pending: PendingListen | None, forwarded: bool) -> str | None:
        """A held listen, once a person decided: open (see :meth:`decided`) if
        the mediator forwarded it; either way its place under the cap is freed."""
        if pending is not None:
            self._held -= 1
        return await self._opened(pending, forwarded)

    async def _opened(self, pending: PendingListen | None, forwarded: bool) -> str | None:
        """A listen the mediator forwarded (at once or once approved) is open, and
        recorded, before it reaches the server; its key (None: none opened)."""
        if pending is None or not forwarded:
            return None
        key, listen, refused = pending
        listen.due = trio.current_time() + self.lifetime
        self.open[key] = listen
        mediator = self.mediator
        await append_lifecycle(mediator.audit, "listen_start", session=mediator.session,
                               principal=mediator.caller.principal, server=mediator.server,
                               detail={"request_id": listen.rid,
                                       "honoured": listen.honoured.wire(),
                                       "refused": refused, "grant": mediator.caller.grant})
        return key

    def next_due(self) -> float:
        """When the first open listen's lifetime ends (trio's clock; inf: none open)."""
        return min((listen.due for listen in self.open.values()), default=math.inf)

    def due(self, now: float) -> list[str]:
        """The keys of the open listens whose lifetime ended by ``now``."""
        return [key for key, listen in self.open.items() if listen.due <= now]

    def end(self, key: str, why: str) -> tuple[Any, bytes] | None:
        """mcpwall ends an open listen (rule 6, ``why``: ``lifetime``, ``session
        ended``...): its id and the graceful end the client gets (rule 4); None
        if it is not open. Recorded at the next :meth:`flush`; what the server
        still sends tagged with it is dropped from now on."""
        listen = self.open.pop(key, None)
        if listen is None:
            return None
        self._ended.append((listen, why))
        self._closed[key] = None
        while len(self._closed) > _MAX_CLOSED:
            del self._closed[next(iter(self._closed))]
        return listen.rid, graceful_end(listen.rid)

    def take_cancelled(self) -> list[str]:
        """The keys of the listens the client cancelled since the last call."""
        keys, self._cancelled_keys = self._cancelled_keys, []
        return keys

    async def refuse(self, line: bytes) -> bytes:
        """The answer to a listen past the cap (rule 6): recorded as a ``protocol``
        deny, -32002 under its id, as the HTTP front answers with a 429."""
        self.over_cap = False
        return await self.mediator.refuse_protocol(
            decode_client(line), jsonrpc.RATE_LIMITED,
            f"Too Many Requests: {self.cap} listen streams open in this session "
            "(listen.max_listen_streams_per_principal)", {"cap": self.cap})

    def policy_changed(self) -> list[bytes]:
        """A reload changed the table (rule 5): re-decide each open listen's
        honoured types; the ``tools/list_changed`` to push to the client."""
        mediator = self.mediator
        pushes = []
        for listen in self.open.values():
            listen.honoured, _ = narrow(mediator.policy, mediator.caller, mediator.server,
                                        listen.honoured.wire())
            if "toolsListChanged" in listen.honoured.flags:
                listen.relayed += 1
                pushes.append(notification(TOOLS_CHANGED, listen.rid))
        return pushes

    def _cancelled(self, line: bytes) -> None:
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return
        if isinstance(value, dict) and value.get("method") == mcp.CANCELLED:
            self._cancelled_value(value)

    def _cancelled_value(self, value: dict[str, Any]) -> None:
        params = value.get("params")
        if isinstance(params, dict) and "requestId" in params:
            key = _key(params["requestId"])
            listen = self.open.pop(key, None)
            if listen is not None:
                self._ended.append((listen, "client gone"))
                self._cancelled_keys.append(key)

    def admits(self, line: bytes) -> bool:
        """Whether a mediated server line goes on to the client (rule 6)."""
        if (not self.open and not self._closed) or (
                _NOTIFICATIONS_BYTES not in line and _ID_BYTES not in line
                and _ESCAPE_BYTES not in line):
            return True
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return True
        if not isinstance(value, dict):
            return True
        method = value.get("method")
        if method is None:  # an answer: the end of a listen it answers
            if "id" in value:
                ended = self.open.pop(_key(value["id"]), None)
                if ended is not None:
                    self._ended.append((ended, "upstream ended"))
            return True
        if method not in _STREAM_METHODS:
            return True
        params = value.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        tag = meta.get(SUBSCRIPTION_ID) if isinstance(meta, dict) else None
        key = _key(tag) if tag is not None else None
        listen = self.open.get(key) if key is not None else None
        if listen is None:  # no open listen of this session asked for it
            # (one mcpwall ended: dropped; none open at all: left as it is)
            return not self.open and (key is None or key not in self._closed)
        if method == ACKNOWLEDGED:
            return True
        if listen.honoured.admits(method, params) and self._still(listen, method, params):
            listen.relayed += 1
            return True
        listen.dropped += 1
        return False

    def _still(self, listen: _StdioListen, method: str, params: Any) -> bool:
        """Whether the rules in force still let the caller follow this type (rule 5:
        after a reload that refuses it, the listen stops carrying it)."""
        flag = _FLAG_OF.get(method)
        one: dict[str, Any] = ({flag: True} if flag is not None
                               else {RESOURCES: [params.get("uri")]})
        mediator = self.mediator
        still, _ = narrow(mediator.policy, mediator.caller, mediator.server, one)
        if still.flags or still.uris:
            return True
        now = listen.honoured
        listen.honoured = (Honoured(now.flags - {flag}, now.uris) if flag is not None
                           else Honoured(now.flags, now.uris - {params.get("uri")}))
        return False

    async def flush(self) -> None:
        """Record the listens that ended since the last call (``listen_end``)."""
        while self._ended:
            listen, why = self._ended.pop(0)
            await self._record_end(listen, why)

    async def close(self, why: str) -> None:
        """The session ends: so do its listens."""
        await self.flush()
        for listen in list(self.open.values()):
            await self._record_end(listen, why)
        self.open.clear()

    async def _record_end(self, listen: _StdioListen, why: str) -> None:
        mediator = self.mediator
        await append_lifecycle(mediator.audit, "listen_end", session=mediator.session,
                               principal=mediator.caller.principal, server=mediator.server,
                               detail={"request_id": listen.rid, "reason": why,
                                       "relayed": listen.relayed, "dropped": listen.dropped,
                                       "seconds": round(time.monotonic() - listen.started, 3)})


def _key(rid: Any) -> str:
    return jsonrpc.encode(rid).decode()


_MAX_CLOSED: Final = 64  # the ended listens whose late notifications are told apart
_LISTEN_BYTES: Final = LISTEN.encode()
_NOTIFICATIONS_BYTES: Final = b"notifications/"
_CANCELLED_BYTES: Final = mcp.CANCELLED.encode()
_ESCAPE_BYTES: Final = b"\\"
_ID_BYTES: Final = b'"id"'
_STREAM_METHODS: Final = frozenset({*FLAGS.values(), RESOURCE_UPDATED, ACKNOWLEDGED})


__all__ = [
    "LISTEN",
    "BridgesListens",
    "Feed",
    "Honoured",
    "ListenDesk",
    "ListenSource",
    "ListenStream",
    "ListenUpstream",
    "PendingListen",
    "StdioListens",
    "Unreachable",
    "acknowledgement",
    "graceful_end",
    "narrow",
    "notification",
    "tagged",
]

