"""A 2025 server's own requests carried to a 2026-07-28 client as input requests.

What the two bridges of a 2026-07-28 client over a handshake-era server share
(the serve bridge, :mod:`firewall.gateway.front.bridge` rule 6, and ``wrap
--bridge``, :class:`firewall.gateway.front.wrap_bridge.ModernClient`). Their
transports differ (a child of mcpwall's own per caller with mcpwall's ids;
the client's own child with the client's ids); the rules do not:

1. A server request (elicitation in form mode, sampling, roots/list) is
   carried only for exactly one call: the call whose stream carried it
   when the transport says (the serve bridge over HTTP), else the one call
   in flight at the server; of a method that may ask for input
   (``mrtr.MRTR_METHODS``), whose request offered the matching capability
   in its ``_meta`` (``io.modelcontextprotocol/clientCapabilities``)
   (:func:`asking`, given the candidates).
2. It becomes the answer to that call: an ``InputRequiredResult`` whose one
   input request is the server's request under a key of mcpwall's
   (``mcpwall_bridge_<n>``) and whose ``requestState`` is :data:`STATE_PREFIX`
   then a :class:`~firewall.protocol.mrtr.StateSeal` (HMAC, a per-process
   key) over the bridge's scope (its session), the call, the server
   request's id and key, the call_id and the caller, expiring after the
   upstream timeout (:meth:`InputDesk.ask`). It is passed through the
   call's mediator, which decides the input request (mediator rule 16).
3. A retry continues the call only when its state opens (sealed here, not
   expired), names this scope and caller, a call still waiting for that
   very server request, and the call_id the mediator linked the retry to;
   the waiting request is taken, so a state is used once
   (:meth:`InputDesk.resume`). Its answer reaches the server as the
   response to its request (:func:`input_response`). A retry the mediator
   linked to an earlier round (not decided nor charged again) that no call
   waits for is answered with an error (:data:`NOT_WAITING`) and never
   reaches the server; any other retry is a new call, without what a retry
   adds (:func:`without_retry`).
4. A call the client will not see continued (its input request refused by
   the policy, no retry in time, a question mcpwall cannot read) is
   abandoned: the server's waiting request answered with the refusal (or an
   error), the call cancelled at the server (:func:`abandonment`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from firewall.gateway.outbound import Outbound
from firewall.policy.decision import Caller
from firewall.protocol import framing, jsonrpc, mcp, mrtr
from firewall.protocol.jsonrpc import RequestId
from firewall.protocol.mrtr import StateSeal

# The requestState of an input request a bridge made (never the mediator's own
# sealed states, which start with ``StateSeal.PREFIX``).
STATE_PREFIX: Final = "mcpwall-bridge."
# What a retry adds, which a 2025 server does not read.
RETRY_MEMBERS: Final = ("inputResponses", "requestState")
# Why a retry the mediator linked to an earlier round (decided and charged
# there) is answered with an error when no call waits for it (rule 3): it is
# never carried as a new call, which would not be charged.
NOT_WAITING: Final = ("no longer waits for this retry (its question went unanswered in "
                      "time, or was answered already); call again without requestState")


class InputCall:
    """What a bridge knows of one call in flight at the server, for its input
    requests: its method, the capabilities its request offered, its call_id,
    the server request its client was asked to answer (and under which key)
    and how many times it asked."""

    __slots__ = ("asked", "call_id", "caps", "method", "round")

    def __init__(self, method: str, caps: dict[str, Any], call_id: str | None) -> None:
        self.method = method
        self.caps = caps
        self.call_id = call_id
        self.asked: tuple[RequestId, str] | None = None
        self.round = 0

    def offers(self, method: str | None, params: Any) -> bool:
        """Whether the call's client offered, in its request's ``_meta``, the
        capability a server request of ``method`` needs (and a bridge carries)."""
        if method == mcp.ELICITATION_CREATE:
            mode = params.get("mode") if isinstance(params, dict) else None
            return mode in (None, "form") and mrtr.elicits(self.caps)
        if method == mcp.SAMPLING_CREATE:
            return isinstance(self.caps.get("sampling"), dict)
        if method == mcp.ROOTS_LIST:
            return isinstance(self.caps.get("roots"), dict)
        return False


C = TypeVar("C", bound=InputCall)


def asking(calls: Iterable[C], method: str | None, params: Any) -> C | None:
    """The call a server request belongs to (rule 1) of its candidate ``calls``
    (all in flight, or the one whose stream carried it), or None."""
    found = list(calls)
    if len(found) != 1:
        return None
    [call] = found
    if call.method not in mrtr.MRTR_METHODS:
        return None
    return call if call.offers(method, params) else None


class InputDesk:
    """The sealed states of one bridge scope (a session): made and opened here
    (rules 2, 3). ``scope`` names the session, ``timeout`` is how long a
    state opens."""

    def __init__(self, scope: str, seal: StateSeal, timeout: float) -> None:
        self.scope = scope
        self.seal = seal
        self.timeout = timeout
        self._keys = itertools.count(1)

    def ask(self, call: InputCall, ident: RequestId, server_request: bytes, caller: Caller
            ) -> tuple[str, str, RequestId] | None:
        """Make the server request the input request of ``call`` (whose id at
        the server is ``ident``): (key, sealed state, the server request's id),
        or None if it cannot be read or the call has no call_id."""
        try:
            value = jsonrpc.decode_any(server_request)
        except jsonrpc.DECODE_ERRORS:
            return None
        srid = value.get("id") if isinstance(value, dict) else None
        if not isinstance(srid, (int, str)) or isinstance(srid, bool) or call.call_id is None:
            return None
        key = f"mcpwall_bridge_{next(self._keys)}"
        call.round += 1
        call.asked = (srid, key)
        state = STATE_PREFIX + self.seal.seal(
            {"b": self.scope, "c": ident, "r": srid, "k": key, "i": call.call_id,
             "p": caller.principal, "g": caller.grant},
            expires_ns=time.time_ns() + int(self.timeout * 1e9))
        return key, state, srid

    def resume(self, state: str, caller: Caller, call_id: str | None,
               calls: Mapping[Any, C]) -> tuple[C, RequestId, str] | None:
        """The call (of ``calls``, by its id at the server) a retry's
        ``requestState`` continues, its asked server request taken (used
        once): None unless the state opens and names this scope, caller, a
        call still waiting for that request, and ``call_id``."""
        if not state.startswith(STATE_PREFIX):
            return None
        sealed = self.seal.open(state[len(STATE_PREFIX):], time.time_ns())
        if sealed is None or sealed.get("b") != self.scope \
                or sealed.get("p") != caller.principal or sealed.get("g") != caller.grant \
                or sealed.get("i") != call_id:
            return None
        ident = sealed.get("c")
        call = calls.get(ident) if isinstance(ident, (int, str)) else None
        if call is None or call.asked is None or call.call_id != call_id \
                or list(call.asked) != [sealed.get("r"), sealed.get("k")]:
            return None
        srid, key = call.asked
        call.asked = None
        return call, srid, key


def input_required(rid: RequestId, key: str, state: str, server_request: bytes) -> bytes:
    """The call's answer carrying the server's request as its one input
    request (rule 2), under the client's id ``rid``."""
    value = jsonrpc.decode_any(server_request)
    entry: dict[str, Any] = {"method": value.get("method")}
    if isinstance(value.get("params"), dict):
        entry["params"] = value["params"]
    return framing.canonical(jsonrpc.result_response(rid, {
        "resultType": mrtr.INPUT_REQUIRED, "inputRequests": {key: entry},
        "requestState": state}))


def carried(reply: bytes | None) -> bool:
    """Whether the mediator relayed the input request (else it refused the call)."""
    return reply is not None and mrtr.INPUT_REQUIRED.encode() in reply


def input_response(srid: RequestId, responses: dict[str, Any], key: str) -> bytes:
    """What the server's waiting request ``srid`` gets from a retry's
    ``inputResponses`` (rule 3): the client's answer under ``key``, or an error."""
    given = responses.get(key)
    return framing.canonical(
        jsonrpc.result_response(srid, given) if isinstance(given, dict)
        else jsonrpc.error_response(srid, jsonrpc.INTERNAL_ERROR,
                                    "the client gave no answer to this request"))


def refusal(srid: RequestId) -> bytes:
    """The server's request refused with the call (rule 4: the policy refused it)."""
    return jsonrpc.error_response(srid, jsonrpc.POLICY_DENIED,
                                  "mcpwall: the policy refused this request")


def abandonment(call: InputCall, ident: RequestId, reason: str,
                answer: bytes | None = None) -> list[Outbound]:
    """What the server gets for a call abandoned (rule 4): its waiting request
    (if any) answered with ``answer`` (or an error saying ``reason``), then
    ``notifications/cancelled`` for the call (its id at the server ``ident``)."""
    out: list[Outbound] = []
    if call.asked is not None:
        srid, _ = call.asked
        call.asked = None
        out.append(Outbound.own(framing.line_safe(answer or jsonrpc.error_response(
            srid, jsonrpc.INTERNAL_ERROR, f"mcpwall: {reason}")),
            "bridge: refusal of a server request"))
    # Ids are the peers' (any string): one line whatever they hold.
    note = jsonrpc.request(mcp.CANCELLED, {"requestId": ident, "reason": reason})
    out.append(Outbound.own(framing.line_safe(note), "bridge: cancellation of an abandoned call"))
    return out


def without_retry(params: Any) -> None:
    """Remove what a retry adds (a 2025 server reads neither) from decoded params."""
    if isinstance(params, dict):
        for member in RETRY_MEMBERS:
            params.pop(member, None)
