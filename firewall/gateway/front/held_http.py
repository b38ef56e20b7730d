"""A call held for approval on the HTTP front: what the client's POST sees meanwhile.

Both kinds of HTTP endpoint (stdio and HTTP upstreams) hold calls the same
way. Rules this module keeps:

1. A client whose ``Accept`` admits SSE gets its event stream started at
   once: progress keep-alives and mcpwall's own requests (elicitation) travel
   on it as events, keepalive comments fill the silences, and the answer (a
   refusal, or the upstream's answer once approved) follows on the same
   stream. A JSON-only client waits for the JSON answer; nothing reaches it
   before, so neither progress nor elicitation is possible for it.
2. The client disconnecting withdraws the held call: nobody can approve it
   afterwards, and it is recorded as rejected ("the client disconnected").
3. A held call withdrawn while its client is still there (it sent
   ``notifications/cancelled``) ends its POST with a -32013 error, as a
   cancelled forwarded request does.

Example::

    routed = await hold(ex, routed.held, stream=accept_sse, headers=headers,
                        keepalive=15)
"""

from __future__ import annotations

import trio

from firewall.gateway.front.sse_response import SseResponse, end_with
from firewall.gateway.http.exchange import Exchange
from firewall.gateway.mediator import HeldCall, Routed
from firewall.protocol import jsonrpc, sse
from firewall.protocol.jsonrpc import RequestId


async def hold(ex: Exchange, held: HeldCall, *, stream: bool,
               headers: list[tuple[str, str]], keepalive: float) -> Routed:
    """Wait for the verdict on a held call while its POST stays open.

    With ``stream`` the response is started as SSE here (rule 1). Returns the
    verdict's Routed: ``upstream`` set when approved, else ``client`` with the
    refusal, or neither when the call was withdrawn.
    """
    out = SseResponse(ex, keepalive)
    if stream:
        await out.open(headers, prime=True)  # head out now: the client knows we are here

    async def to_client(data: bytes) -> None:
        await out.send(sse.encode_event(data))

    async def watch() -> None:
        await ex.wait_disconnect()
        held.withdraw("the client disconnected")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        if stream:
            nursery.start_soon(out.keep_open)
        routed = await held.wait(to_client if stream else None)
        nursery.cancel_scope.cancel()
    return routed


async def finish(ex: Exchange, rid: RequestId, routed: Routed,
                 headers: list[tuple[str, str]]) -> bytes | None:
    """Answer a held call that was refused or withdrawn; return the answer sent."""
    if ex.disconnected:
        return None
    final = routed.client or jsonrpc.error_response(
        rid, jsonrpc.REQUEST_CANCELLED, "request cancelled by the client")
    if ex.started:
        await end_with(ex, final)
    else:
        await ex.respond(200, final, headers=headers)
    return final
