"""The per-session flow every message takes: decide -> audit -> forward -> observe.

One :class:`Mediator` serves one client session against one upstream server,
whatever the transports (HTTP or stdio front, HTTP or stdio upstream). The
fronts own the I/O; the mediator owns the rules. Invariants it keeps:

1. Every request, in either direction, gets exactly one decision from the
   policy point and one decision event in the audit trail before anything
   else happens to it. A message with a method and no id is relayed without
   a decision only when it is one of the notifications MCP defines
   (``mcp.NOTIFICATIONS``: they carry no operation). Another
   ``notifications/...`` method is decided by the policy and recorded like a
   request (a server may act on it); it cannot be held. Any other id-less
   method is a request that could not be answered: it is refused, with a
   ``deny`` decision event (rule ``protocol``), and never forwarded.
2. Every message is decoded once, into an :class:`Inbound`
   (``protocol/inbound.py``; a front hands one over, or the bytes, which
   ``from_client`` decodes the same way): nothing here decodes the message
   again. What is forwarded is the message that was decided, in its canonical
   one-line form (``inbound.line``: the compact encoding of the very value the
   policy view was made from, with only the members JSON-RPC defines at the
   top, as ``framing.canonical`` makes it): what the SDKs send is its own
   canonical form, so their bytes pass unchanged; whitespace, duplicate member
   names or line separators are never passed on for a reader to split or read
   another way. Every message from the client goes on in that form, responses
   and MCP notifications too. The server's responses and MCP notifications
   get a new envelope (each member once, ``jsonrpc.reencode``) around their
   payload as received, unless a line reader could split it (then the
   canonical form, ``line_safe``). A tools/list result from which tools the
   caller can never call were removed is re-encoded. An Inbound that carries
   a ``refusal`` (a request with bad params, a payload no reader takes) is
   answered if it is a request, else dropped and recorded (rule 10).
3. What goes to the upstream is an :class:`Outbound` (``gateway/outbound.py``),
   the only thing the transports write: it carries the receipt of the
   decision event and the transport awaits it, so in durable audit mode no
   call reaches an upstream unaudited.
4. A refused request never reaches the other side; its sender gets an answer
   (a tool result with ``isError`` for tools/call, else a JSON-RPC error with a
   stable code and ``data: {rule, reason, retry_after}``).
5. Every forwarded request is answered exactly once: by its peer, or by the
   mediator with an error when the upstream is lost (:meth:`upstream_lost`).
   Each gets one outcome event (ok, tool_error, jsonrpc_error, timeout,
   upstream_failure, cancelled).
6. Malformed input is answered (-32700/-32600/-32602) and the session lives on.
7. A client request a rule holds for approval (``pending``) goes nowhere until
   a person decides: approved, it is forwarded as if allowed; rejected or
   expired, it is refused. Both verdicts are decision events of the same
   call_id, plus an ``approval`` lifecycle event. Without an approval desk,
   ``pending`` is refused at once with -32003 (unless the person in the client
   can be asked, rule 9), recorded as ``pending`` then ``rejected`` with the
   reason that nobody can approve it here; the client is told that it is
   refused and why, never that it is held. A
   standing approval (an earlier one given for the session or for N minutes)
   lets a held call through at once, recorded as
   ``approved`` with a reason naming it. While a call is held and its request
   carried ``_meta.progressToken``, the client gets ``notifications/progress``
   every ``progress_seconds`` so that it keeps waiting.
8. A held call ends exactly once: by its verdict, or withdrawn (the client
   cancelled it or went away), recorded as ``rejected`` with the reason and
   never answered.
9. A rule with ``"approval": "client"`` asks the person in the client
   (``elicitation/create``) when the client advertised elicitation in its
   ``initialize``; otherwise the desk decides. Requests mcpwall itself sends
   to the client have ids of their own (``mcpwall-<random>-<n>``); their
   answers are consumed here and never reach the upstream, and a server
   request reusing such an id is refused.
10. A response is relayed only if it answers a request this mediator
   forwarded (same id, same direction), once. Any other response (an id
   mcpwall never forwarded, or answered already) is dropped, logged
   (``response_unmatched``) and recorded as a ``message_dropped`` lifecycle
   event, as is a message from the upstream that cannot be decoded. At most
   :data:`DROPS_RECORDED` drops per session reach the audit trail; the rest
   are logged.
11. A message whose handling raises anything but a cancellation fails alone:
   it is logged (``message_failed``, with the traceback), never forwarded, and
   a client request gets an internal error (-32603). The session and the
   process go on.
12. A request whose id is the id of a request of the same side still in
   flight (forwarded and not answered, or held), is null, or is an integer
   beyond 2**53 - 1 (JSON readers disagree on its value) is refused, recorded
   as a ``deny`` by rule ``protocol``: each request has its own answer and
   outcome, and its answer comes back under the id it went out with.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import msgspec
import trio

from firewall.audit.events import (
    AuditPoint,
    DecisionEvent,
    OutcomeEvent,
    Receipt,
    append_lifecycle,
)
from firewall.gateway.approvals.desk import (
    STOPPED,
    ApprovalDesk,
    Verdict,
    Withdrawal,
    redact_arguments,
)
from firewall.gateway.outbound import Outbound
from firewall.log import get_logger
from firewall.policy import render
from firewall.policy.decision import ALLOW, DENY, PENDING, Caller, Decision, PolicyPoint
from firewall.policy.limits import PendingLimit
from firewall.protocol import framing, jsonrpc, mcp
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.inbound import server as decode_server
from firewall.protocol.jsonrpc import Kind, RequestId
from firewall.settings.approvals import ApprovalSettings

# Sends one message to the client now (a front's writer); for held calls.
ToClient = Callable[[bytes], Awaitable[None]]
_DEFAULTS: Final = ApprovalSettings()
# Dropped messages recorded in the audit trail per session; later ones are
# logged only (a hostile peer must not turn its garbage into audit rows).
DROPS_RECORDED: Final = 100
NOTIFICATION_PREFIX: Final = "notifications/"
NO_DESK: Final = ("held for approval, but nobody can approve it here: there is no "
                  "approval desk, and the person in the client cannot be asked")


class Routed:
    """Where the bytes of one message go.

    ``upstream``: the :class:`Outbound` for the server (the transport awaits
    its receipt); ``client``: bytes for the client. Either may be None.
    ``answers``: for a response from the server, the id of the request it
    answers. ``rejected``: for a refused client notification, the JSON-RPC
    error (id null) a transport that can carry one answers with (HTTP 400);
    a stdio client gets nothing, as notifications get no answer.
    """

    __slots__ = ("answers", "client", "held", "receipt", "rejected", "upstream")

    def __init__(
        self,
        *,
        upstream: Outbound | None = None,
        client: bytes | None = None,
        receipt: Receipt | None = None,
        held: Callable[[ToClient | None], Awaitable[Routed]] | None = None,
        answers: RequestId | None = None,
        rejected: bytes | None = None,
    ) -> None:
        self.answers = answers
        self.upstream = upstream
        self.client = client
        self.receipt = receipt
        self.rejected = rejected
        # Set (and nothing else) when the message waits for a person: awaiting
        # ``held(to_client)`` gives the Routed of the verdict; ``to_client``
        # (None if the front cannot send before the answer) carries progress
        # keep-alives and elicitation. Only from_client(wait=False) returns it.
        self.held = held



class _Pending(msgspec.Struct):
    call_id: str
    method: str
    started_ns: int
    cancelled: bool = False


class _Hold:
    """One held call: its cancel scope, why it ended early, what progress says."""

    __slots__ = ("answer", "approval", "label", "reason", "scope", "withdrawal")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.reason = "cancelled by the client"
        self.label = "waiting for approval"
        self.approval: str | None = None
        self.answer = False  # ended early: refuse with ``reason`` (else no answer)
        self.withdrawal = Withdrawal()


class _Answer(msgspec.Struct, frozen=True):
    """How a held call was decided: the verdict, the reason recorded, by what means."""

    verdict: Verdict
    reason: str
    via: Literal["desk", "standing", "client", "none"]
    approval: str | None = None


class _ElicitResult(msgspec.Struct):
    action: str = "cancel"
    content: dict[str, Any] | None = None


_elicit_decoder: Final = msgspec.json.Decoder(_ElicitResult)
ELICIT_FIELD: Final = "approve"


class _ToolResultFlag(msgspec.Struct):
    isError: bool = False


_tool_flag_decoder: Final = msgspec.json.Decoder(_ToolResultFlag)
_tools_list_decoder: Final = msgspec.json.Decoder(dict[str, Any])


class Mediator:
    """Decides, audits and routes the messages of one session.

    Example (a front's loop)::

        routed = await mediator.from_client(line)
        if routed.client: await to_client(routed.client)
        if routed.upstream: await child.send(routed.upstream)  # awaits the receipt
    """

    def __init__(
        self,
        *,
        server: str,
        session: str,
        caller: Caller,
        policy: PolicyPoint,
        audit: AuditPoint | None,
        deny_tools_call_as: Literal["tool_result", "jsonrpc_error"] = "tool_result",
        approvals: ApprovalDesk | None = None,
    ) -> None:
        self.server = server
        self.session = session
        self.caller = caller
        self.policy = policy
        self.audit = audit
        self.deny_tools_call_as = deny_tools_call_as
        self.approvals = approvals
        self._client_pending: dict[RequestId, _Pending] = {}
        self._server_pending: dict[RequestId, _Pending] = {}
        self._tools_list_ids: set[RequestId] = set()
        self._held_calls: dict[RequestId, _Hold] = {}
        self._held_ids: set[RequestId] = set()  # held, from decision to verdict
        self._counter = itertools.count(1)
        # Set from the client's initialize: may mcpwall ask the person there?
        self.client_elicits = False
        # Requests mcpwall sent to the client, by id: (answered, answer).
        self._own: dict[RequestId, tuple[trio.Event, list[jsonrpc.Message]]] = {}
        self._own_prefix = f"mcpwall-{secrets.token_hex(6)}-"
        self._own_counter = itertools.count(1)
        self._drops = 0
        self.log = get_logger(server=server, session=session, principal=caller.principal)

    @property
    def pending_count(self) -> int:
        """Requests forwarded to the upstream and not answered yet."""
        return len(self._client_pending)

    # -- client -> server ------------------------------------------------
    async def from_client(self, message: bytes | Inbound, *, wait: bool = True) -> Routed:
        """Route one message the client sent: its bytes, or the :class:`Inbound`
        a front decoded them into (``inbound.client``: nothing decodes it again).

        A call held for approval is waited for here, unless ``wait`` is False:
        then the Routed has only ``held``, which the caller awaits (in its own
        task, so that the session's other messages keep flowing).
        """
        inbound: Inbound | None = None
        try:
            if isinstance(message, Inbound):
                inbound = message
            else:
                try:
                    inbound = decode_client(message)
                except jsonrpc.ProtocolError as exc:  # rule 6
                    self.log.warning("client_message_rejected", code=exc.code,
                                     reason=exc.message)
                    return Routed(client=exc.response())
            routed = await self._from_client(inbound)
            if wait and routed.held is not None:
                return await routed.held(None)
        except Exception as exc:  # rule 11: this message fails, nothing else
            return self._failed("client", message, inbound, exc)
        return routed

    def withdraw_held(self, reason: str, request_id: RequestId | None = None) -> int:
        """Withdraw the held calls (all, or the one of ``request_id``): the client
        is gone. Each is recorded as rejected with ``reason`` and gets no answer."""
        holds = (list(self._held_calls.values()) if request_id is None
                 else [h for h in (self._held_calls.get(request_id),) if h is not None])
        for hold in holds:
            hold.reason = reason
            hold.scope.cancel()
        return len(holds)

    def refuse_held(self, reason: str) -> int:
        """End every held call with a refusal naming ``reason`` (mcpwall stops):
        recorded as rejected, the request marked abandoned, the client answered."""
        for hold in self._held_calls.values():
            hold.reason = reason
            hold.answer = True
            hold.withdrawal.status = "abandoned"
            hold.withdrawal.note = STOPPED
            hold.scope.cancel()
        return len(self._held_calls)

    async def _from_client(self, inbound: Inbound) -> Routed:
        if inbound.refusal is not None:
            return await self._refused(inbound, "client")
        msg = inbound.envelope
        if msg.method is not None and msg.id is not msgspec.UNSET:  # a request
            return await self._request(inbound, "client")
        data = inbound.data
        if msg.method is None:  # a response
            if self._own:
                own = self._own.get(msg.request_id) if msg.request_id is not None else None
                if own is not None:  # the answer to mcpwall's own question
                    own[1].append(inbound.message)
                    own[0].set()
                    return Routed()
            pending = self._server_pending.get(msg.request_id)  # type: ignore[arg-type]
            if pending is None:
                await self._dropped("client", "response_unmatched", msg, data)
                return Routed()
            line = await self._line(inbound, "client")
            if line is None:
                return Routed()
            await self._answered(self._server_pending, inbound.message, len(data))
            return Routed(upstream=Outbound.decided(line, None, pending.call_id))
        assert msg.method is not None
        if msg.method not in mcp.NOTIFICATIONS:
            return await self._notification(inbound, "client")
        line = await self._line(inbound, "client")
        if line is None:
            return Routed()
        if msg.method == mcp.CANCELLED:
            self._note_cancelled(inbound.message)
        return Routed(upstream=Outbound.decided(line, None, None))

    async def _refused(self, inbound: Inbound, direction: str) -> Routed:
        """A message that decoded but cannot go on (``inbound.refusal``): a
        request is answered (bad params -32602, an unwritable payload -32600);
        anything else is dropped and recorded (rule 10)."""
        refusal = inbound.refusal
        assert refusal is not None
        msg = inbound.envelope
        if msg.kind is Kind.REQUEST:
            if refusal.code != jsonrpc.INVALID_PARAMS:
                self.log.warning(f"{direction}_message_rejected", code=refusal.code,
                                 reason=refusal.message)
            return _to("client" if direction == "client" else "upstream", refusal.response())
        await self._dropped(direction, "not_relayable", msg, inbound.data, refusal.message)
        return Routed()

    # -- server -> client ------------------------------------------------
    async def from_server(self, data: bytes) -> Routed:
        """Route one message the upstream sent."""
        try:
            return await self._from_server(data)
        except Exception as exc:  # rule 11: this message fails, nothing else
            return self._failed("server", data, None, exc)

    def _failed(self, direction: str, message: bytes | Inbound, inbound: Inbound | None,
                exc: Exception) -> Routed:
        """A message whose handling raised: logged with its traceback and
        answered with an internal error (a request of the client, if it was
        decoded: its id is known) or dropped."""
        size = len(message.data if isinstance(message, Inbound) else message)
        self.log.error("message_failed", direction=direction, size=size,
                       error=repr(exc), exc_info=exc)
        rid = inbound.envelope.request_id if inbound is not None else None
        if direction != "client" or rid is None:
            return Routed()
        return Routed(client=jsonrpc.error_response(
            rid, jsonrpc.INTERNAL_ERROR, "mcpwall could not handle this message; it was not "
            "forwarded"))

    async def _from_server(self, data: bytes) -> Routed:
        try:
            inbound = decode_server(data)
        except jsonrpc.ProtocolError as exc:
            # Nothing sensible can reach the client: log it, keep the session.
            self.log.warning("upstream_message_rejected", code=exc.code, reason=exc.message,
                             size=len(data))
            await self._record_drop("server", "malformed", None, None, len(data), exc.message)
            return Routed()
        if inbound.refusal is not None:
            return await self._refused(inbound, "server")
        msg = inbound.envelope
        if msg.method is None:  # a response (jsonrpc.decode made sure)
            assert isinstance(msg, jsonrpc.Message)  # relayed as received (inbound rule 5)
            rid = msg.request_id
            if rid is None or rid not in self._client_pending:
                await self._dropped("server", "response_unmatched", msg, data)
                return Routed()
            line: bytes | None = None
            if rid in self._tools_list_ids:
                self._tools_list_ids.discard(rid)
                filtered = self._filter_tools_list(msg, data)
                if filtered is not data:  # mcpwall's own encoding: one line to make sure
                    line = framing.line_safe(filtered)
            if line is None:
                try:  # _line's work, inline: the one hot path from the server
                    line = inbound.relay_line()
                except framing.NotCanonical as exc:
                    await self._dropped("server", "not_relayable", msg, data, str(exc))
                    # Cannot be relayed: the request is answered with an error.
                    line = jsonrpc.error_response(rid, jsonrpc.INTERNAL_ERROR, (
                        f"upstream server {self.server!r} sent an answer mcpwall cannot "
                        "relay"))
            await self._answered(self._client_pending, msg, len(data))
            return Routed(client=line, answers=rid)
        if msg.kind is Kind.REQUEST:
            return await self._request(inbound, "server")
        assert msg.method is not None
        if msg.method not in mcp.NOTIFICATIONS:
            return await self._notification(inbound, "server")
        line = await self._line(inbound, "server")
        return Routed() if line is None else Routed(client=line)

    async def upstream_lost(self, reason: str) -> list[bytes]:
        """Answer every pending client request with an error; the upstream is gone."""
        replies = []
        for rid, pending in list(self._client_pending.items()):
            replies.append(jsonrpc.error_response(
                rid, jsonrpc.UPSTREAM_UNAVAILABLE, f"upstream server {self.server!r} {reason}",
                {"server": self.server}))
            await self._outcome(pending, "upstream_failure", jsonrpc.UPSTREAM_UNAVAILABLE,
                                reason, 0)
        self._client_pending.clear()
        self._server_pending.clear()
        self._tools_list_ids.clear()
        return replies

    async def timed_out(self, request_id: RequestId, after: float) -> bytes | None:
        """Answer a client request the upstream did not answer in time."""
        pending = self._client_pending.pop(request_id, None)
        if pending is None:
            return None
        text = f"upstream server {self.server!r} did not answer within {after:g} s"
        await self._outcome(pending, "timeout", jsonrpc.UPSTREAM_TIMEOUT, text, 0)
        return jsonrpc.error_response(request_id, jsonrpc.UPSTREAM_TIMEOUT, text)

    # -- internals -------------------------------------------------------
    async def _request(self, inbound: Inbound, direction: str) -> Routed:
        # The view and the bytes that will be forwarded if the policy allows
        # come from one decoded value, made before the decision: nothing is
        # decided that could not be forwarded as is (a refusal went to _refused).
        msg, call, line = inbound.envelope, inbound.call, inbound.line
        assert call is not None and line is not None
        rid = msg.request_id
        reply_side = "client" if direction == "client" else "upstream"
        if direction == "server" and self._own and rid in self._own:
            decision = Decision(DENY, rule="protocol",
                                reason=f"request id {rid!r} is in use by mcpwall")
        elif (problem := _id_problem(msg.id)) is not None:
            decision = Decision(DENY, rule="protocol", reason=problem)
        elif rid is not None and self._in_flight(rid, direction):
            # Rule 12: two requests with one id would share one answer and one
            # outcome; the second is refused before any policy.
            decision = Decision(DENY, rule="protocol",
                                reason=f"request id {rid!r} is already in flight")
        else:
            decision = self.policy.decide(call, self.caller, self.server, self.session)
            if type(decision) is PendingLimit:  # buckets shared in Redis: one round trip
                decision = await decision.settle()
        if direction == "client" and call.method == mcp.INITIALIZE:
            self.client_elicits = mcp.offers_elicitation(inbound.message)
        call_id = f"{self.session}.{next(self._counter)}"
        receipt = await self._decided(call, msg, decision, call_id)
        if decision.action == PENDING and not decision.dry_run:
            if direction == "client" and (
                    self.approvals is not None
                    or (decision.approval == "client" and self.client_elicits)):
                # A held call is rare: its payload is encoded (not decoded) back to raw.
                full = inbound.message
                held_call = call

                if rid is not None:
                    self._held_ids.add(rid)

                async def verdict(to_client: ToClient | None) -> Routed:
                    try:
                        return await self._held(held_call, full, line, decision, call_id,
                                                to_client)
                    finally:
                        if rid is not None:
                            self._held_ids.discard(rid)

                return Routed(held=verdict)
            # Nobody can decide it here: refused now, and recorded as such.
            why = f"{decision.reason.rstrip('.')}; {NO_DESK}" if decision.reason else NO_DESK
            decision = Decision(DENY, rule=decision.rule, reason=why)
            receipt = await self._decided(call, msg, decision, call_id, recorded_as="rejected")
            self.log.info("call_refused", method=call.method, target=call.target,
                          decision="rejected", rule=decision.rule, approver="none")
            refusal = self._refusal(call, rid, decision, code=jsonrpc.APPROVAL_REQUIRED)
            if reply_side == "client":
                return Routed(client=refusal, receipt=receipt)
            return Routed(upstream=Outbound.decided(framing.line_safe(refusal), receipt, call_id),
                          receipt=receipt)
        if not decision.enforced_allow:
            self.log.info("call_refused", method=call.method, target=call.target,
                          decision=decision.action, rule=decision.rule)
            refusal = self._refusal(call, rid, decision)
            if reply_side == "client":
                return Routed(client=refusal, receipt=receipt)
            return Routed(upstream=Outbound.decided(framing.line_safe(refusal), receipt, call_id),
                          receipt=receipt)
        return self._forwarded(call, rid, line, direction, call_id, receipt)

    def _in_flight(self, rid: RequestId, direction: str) -> bool:
        """Whether a request of this side with id ``rid`` waits for its answer."""
        if direction == "client":
            return rid in self._client_pending or rid in self._held_ids
        return rid in self._server_pending

    def _forwarded(self, call: mcp.Call, rid: RequestId | None, line: bytes, direction: str,
                   call_id: str, receipt: Receipt | None) -> Routed:
        pending = _Pending(call_id, call.method, time.perf_counter_ns())
        if rid is not None:
            if direction == "client":
                self._client_pending[rid] = pending
                if call.method == mcp.TOOLS_LIST:
                    self._tools_list_ids.add(rid)
            else:
                self._server_pending[rid] = pending
        if direction == "client":
            return Routed(upstream=Outbound.decided(line, receipt, call_id), receipt=receipt)
        return Routed(client=line, receipt=receipt)

    async def _held(self, call: mcp.Call, msg: jsonrpc.Message, line: bytes,
                    decision: Decision, call_id: str, to_client: ToClient | None) -> Routed:
        """Wait for the verdict on a held call, then forward or refuse it."""
        started = time.monotonic()
        rid = msg.request_id
        hold = _Hold()
        answer: _Answer | None = None
        with hold.scope:
            if rid is not None:
                self._held_calls[rid] = hold
            try:
                async with trio.open_nursery() as nursery:
                    token = mcp.progress_token(msg) if to_client is not None else None
                    if token is not None and to_client is not None and self._progress_every > 0:
                        nursery.start_soon(self._keep_alive, to_client, token, hold)
                    answer = await self._approve(call, decision, call_id, to_client, hold)
                    nursery.cancel_scope.cancel()
            finally:
                if rid is not None:
                    self._held_calls.pop(rid, None)
        if answer is None:
            # Withdrawn: the client cancelled the request (notifications/cancelled)
            # or went away, and gets no answer; or mcpwall stops, and the client
            # is told. The desk closed the request.
            refusal = Decision(DENY, rule=decision.rule, reason=hold.reason)
            receipt = await self._decided(call, msg, refusal, call_id, recorded_as="rejected")
            ended = "abandoned" if hold.answer else "withdrawn"
            await self._approval_event(call_id, hold.approval, ended, None, hold.reason,
                                       started, via="desk" if hold.approval else "client")
            self.log.info("call_approval_ended", approval=hold.approval, verdict=ended,
                          reason=hold.reason)
            if hold.answer:
                return Routed(client=self._refusal(call, rid, refusal), receipt=receipt)
            return Routed()
        verdict = answer.verdict
        outcome = "approved" if verdict.status == "approved" else "rejected"
        final = Decision(ALLOW if outcome == "approved" else DENY, rule=decision.rule,
                         reason=answer.reason)
        receipt = await self._decided(call, msg, final, call_id, recorded_as=outcome)
        await self._approval_event(call_id, answer.approval, verdict.status, verdict.by,
                                   verdict.note, started, via=answer.via, scope=verdict.scope)
        self.log.info("call_approval_ended", approval=answer.approval, verdict=verdict.status,
                      by=verdict.by, via=answer.via)
        if outcome == "approved":
            return self._forwarded(call, msg.request_id, line, "client", call_id, receipt)
        return Routed(client=self._refusal(call, msg.request_id, final), receipt=receipt)

    @property
    def _settings(self) -> ApprovalSettings:
        return self.approvals.settings if self.approvals is not None else _DEFAULTS

    @property
    def _progress_every(self) -> float:
        return self._settings.progress_seconds

    async def _approve(self, call: mcp.Call, decision: Decision, call_id: str,
                       to_client: ToClient | None, hold: _Hold) -> _Answer:
        """Who decides a held call, and what they decided."""
        desk = self.approvals
        if desk is not None:
            standing = desk.standing_for(session=self.session, principal=self.caller.principal,
                                         server=self.server, target=call.target,
                                         rule=decision.rule)
            if standing is not None:
                return _Answer(Verdict("approved", standing.by, f"standing approval {standing.id}",
                                       standing.scope, standing.until_ns),
                               f"approved by standing approval {standing.id} "
                               f"({standing.by or 'someone'}, {standing.describe()})",
                               "standing", standing.id)
        if decision.approval == "client" and self.client_elicits and to_client is not None:
            return await self._elicit(call, decision, to_client, hold)
        if desk is None:
            return _Answer(Verdict("rejected"), "approval in the client is not possible here "
                           "(the client cannot be asked on this connection) and there is no "
                           "approval desk", "none")
        request = desk.new_request(
            session=self.session, principal=self.caller.principal, grant=self.caller.grant,
            server=self.server, method=call.method, target=call.target,
            arguments=call.arguments, rule=decision.rule, reason=decision.reason,
            call_id=call_id)
        hold.approval = request.id
        hold.label = f"waiting for approval (request {request.id})"
        self.log.warning("call_held", method=call.method, target=call.target,
                         rule=decision.rule, approval=request.id)
        verdict = await desk.ask(request, hold.withdrawal)
        by = verdict.by or "nobody"
        note = f": {verdict.note}" if verdict.note else ""
        if verdict.status == "approved":
            reason = f"approved by {by}{note}"
            if verdict.scope == "session":
                reason += " (for the rest of the session)"
            elif verdict.scope == "minutes":
                reason += f" (until {_utc(verdict.scope_until_ns)} for this principal)"
        elif verdict.status == "expired":
            reason = f"no one approved it within {desk.settings.timeout_seconds:g} s"
        else:
            reason = f"rejected by {by}{note}"
        return _Answer(verdict, reason, "desk", request.id)

    async def _elicit(self, call: mcp.Call, decision: Decision, to_client: ToClient,
                      hold: _Hold) -> _Answer:
        """Ask the person in the client (elicitation/create) and wait for the answer."""
        ident = self._own_id()
        answered, box = trio.Event(), list[jsonrpc.Message]()
        self._own[ident] = (answered, box)
        hold.label = "waiting for your answer in the client"
        timeout = self._settings.timeout_seconds
        self.log.warning("call_held", method=call.method, target=call.target,
                         rule=decision.rule, approval="client", elicitation=ident)
        try:
            await to_client(jsonrpc.request(mcp.ELICITATION_CREATE,
                                            self._question(call, decision), ident))
            with trio.move_on_after(timeout):
                await answered.wait()
        finally:
            self._own.pop(ident, None)
            if not box:  # withdrawn or no answer: the client may drop the question
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await to_client(jsonrpc.request(mcp.CANCELLED, {
                        "requestId": ident, "reason": "mcpwall: the call no longer waits"}))
        who = f"client:{self.caller.principal}"
        if not box:
            return _Answer(Verdict("expired"), f"no answer in the client within {timeout:g} s",
                           "client")
        result = None
        if box[0].has_result:
            with contextlib.suppress(*jsonrpc.DECODE_ERRORS):
                result = _elicit_decoder.decode(box[0].result)
        if result is None:
            return _Answer(Verdict("rejected", who, "the client answered with an error"),
                           f"rejected: the client could not ask ({who})", "client")
        if result.action == "accept" and (result.content or {}).get(ELICIT_FIELD) is True:
            return _Answer(Verdict("approved", who, "accepted in the client"),
                           f"approved by {who} in the client", "client")
        what = "declined" if result.action != "accept" else "accepted without approving"
        if result.action == "cancel":
            what = "cancelled"
        return _Answer(Verdict("rejected", who, f"{what} in the client"),
                       f"rejected by {who} in the client ({what})", "client")

    def _question(self, call: mcp.Call, decision: Decision) -> dict[str, Any]:
        args = json.dumps(redact_arguments(call.arguments or {}), sort_keys=True)
        if len(args) > 500:
            args = args[:497] + "..."
        why = f" ({decision.reason})" if decision.reason else ""
        return {
            "message": f"mcpwall holds a call for your approval: {call.target or call.method} "
                       f"on server {self.server!r} with arguments {args}. "
                       f"Rule {decision.rule}{why}. Approve this call?",
            "requestedSchema": {
                "type": "object",
                "properties": {ELICIT_FIELD: {"type": "boolean", "title": "Approve this call",
                                              "default": False}},
                "required": [ELICIT_FIELD],
            },
        }

    def _own_id(self) -> str:
        while True:
            ident = f"{self._own_prefix}{next(self._own_counter)}"
            if ident not in self._server_pending:  # never an id the client may answer twice
                return ident

    async def _keep_alive(self, to_client: ToClient, token: int | str, hold: _Hold) -> None:
        """Progress notifications while a call is held, so the client keeps waiting."""
        count = 0
        while True:
            await trio.sleep(self._progress_every)
            count += 1
            await to_client(mcp.progress(token, count, hold.label))

    async def _approval_event(self, call_id: str, approval: str | None, verdict: str,
                              by: str | None, note: str | None, started: float, *,
                              via: str, scope: str = "call") -> None:
        await append_lifecycle(self.audit, "approval", session=self.session,
                               principal=self.caller.principal, server=self.server, detail={
                                   "approval": approval, "call_id": call_id,
                                   "verdict": verdict, "by": by, "note": note, "via": via,
                                   "scope": scope,
                                   "waited_s": round(time.monotonic() - started, 3)})

    async def _decided(
        self, call: mcp.Call, msg: jsonrpc.Envelope, decision: Decision, call_id: str,
        recorded_as: str | None = None,
    ) -> Receipt | None:
        if self.audit is None:
            return None
        rid = msg.id
        event = DecisionEvent(
            ts_ns=time.time_ns(),
            call_id=call_id,
            session=self.session,
            principal=self.caller.principal,
            grant=self.caller.grant,
            server=self.server,
            method=call.method,
            direction=call.direction,
            tool=call.tool,
            uri=call.uri,
            prompt=call.prompt,
            request_id=None if rid is msgspec.UNSET else jsonrpc.encode(rid).decode(),
            arguments=call.arguments,
            decision=recorded_as or decision.action,
            rule=decision.rule,
            reason=decision.reason,
            retry_after=decision.retry_after,
            dry_run=decision.dry_run,
        )
        return await self.audit.append(event)

    async def _line(self, inbound: Inbound, direction: str) -> bytes | None:
        """The bytes to relay for an undecided message (rule 2), or None when
        it cannot be put on one line (then it is dropped and recorded).

        A client's message and a server's decided one: its canonical line.
        A server's response or notification: its envelope written anew (each
        member once: the reader cannot take it for another kind of message)
        around its payload as received, unless a line reader could split it."""
        try:
            return inbound.relay_line()
        except framing.NotCanonical as exc:
            await self._dropped(direction, "not_relayable", inbound.envelope, inbound.data,
                                str(exc))
            return None

    async def _notification(self, inbound: Inbound, direction: str) -> Routed:
        """Decide a message without an id that is not one of MCP's notifications
        (rule 1): a method that is no notification is refused; an unknown
        ``notifications/...`` one is decided by the policy and recorded."""
        msg, call, line = inbound.envelope, inbound.call, inbound.line
        method = msg.method
        assert method is not None and call is not None and line is not None
        call_id = f"{self.session}.{next(self._counter)}"
        if not method.startswith(NOTIFICATION_PREFIX):
            decision = Decision(DENY, rule="protocol", reason=(
                f"{method!r} without an id is not a notification: a request needs an id"))
            recorded = None
        else:
            decision = self.policy.decide(call, self.caller, self.server, self.session)
            if type(decision) is PendingLimit:
                decision = await decision.settle()
            recorded = None
            if decision.action == PENDING and not decision.dry_run:
                decision = Decision(DENY, rule=decision.rule, reason=(
                    "a notification cannot wait for approval (it has no answer)"))
                recorded = "rejected"
        receipt = await self._decided(call, msg, decision, call_id, recorded_as=recorded)
        if decision.enforced_allow:
            if direction == "client":
                return Routed(upstream=Outbound.decided(line, receipt, call_id), receipt=receipt)
            return Routed(client=line, receipt=receipt)
        self.log.warning("call_refused", method=method, target=call.target,
                         decision=decision.action, rule=decision.rule, direction=direction,
                         idless=True)
        return Routed(receipt=receipt, rejected=jsonrpc.error_response(
            None, jsonrpc.INVALID_REQUEST if decision.rule == "protocol"
            else render.error_code(decision), f"refused: {decision.reason}",
            render.denial_data(decision)))

    async def _dropped(self, direction: str, reason: str, msg: jsonrpc.Envelope, data: bytes,
                       detail: str | None = None) -> None:
        """Drop a message that cannot go on (rule 10): log it and record it."""
        self.log.warning(reason, direction=direction, method=msg.method,
                         id=msg.request_id, size=len(data), detail=detail)
        await self._record_drop(direction, reason, msg.method, msg.request_id, len(data), detail)

    async def _record_drop(self, direction: str, reason: str, method: str | None,
                           rid: RequestId | None, size: int, detail: str | None) -> None:
        self._drops += 1
        if self._drops > DROPS_RECORDED:
            return
        note = detail
        if self._drops == DROPS_RECORDED:
            note = (f"{detail or ''} (the last drop of this session recorded: later ones "
                    "are logged only)").strip()
        await append_lifecycle(self.audit, "message_dropped", session=self.session,
                               principal=self.caller.principal, server=self.server, detail={
                                   "from": direction, "reason": reason, "method": method,
                                   "id": rid, "size": size, "detail": note})

    def _refusal(self, call: mcp.Call, rid: RequestId | None, decision: Decision,
                 code: int | None = None) -> bytes:
        if call.method == mcp.TOOLS_CALL and self.deny_tools_call_as == "tool_result":
            return mcp.tool_error_result(rid, render.denial_text(decision))
        return jsonrpc.error_response(rid, code or render.error_code(decision),
                                      render.error_message(decision), render.denial_data(decision))

    async def _answered(
        self, table: dict[RequestId, _Pending], msg: jsonrpc.Message, size: int
    ) -> None:
        rid = msg.request_id
        pending = table.pop(rid, None) if rid is not None else None
        if pending is None or self.audit is None:
            return  # nothing to record: skip reading the result
        if msg.has_error:
            err = jsonrpc.decode_error(msg)
            code = err.code if err else None
            await self._outcome(pending, "cancelled" if pending.cancelled else "jsonrpc_error",
                                code, err.message if err else "malformed error", size)
            return
        status: Literal["ok", "tool_error"] = "ok"
        if pending.method == mcp.TOOLS_CALL:
            try:
                if _tool_flag_decoder.decode(msg.result).isError:
                    status = "tool_error"
            except jsonrpc.DECODE_ERRORS:
                pass
        await self._outcome(pending, status, None, None, size)

    async def _outcome(
        self, pending: _Pending, status: Any, code: int | None, message: str | None, size: int
    ) -> None:
        if self.audit is None:
            return
        await self.audit.append(OutcomeEvent(
            ts_ns=time.time_ns(),
            call_id=pending.call_id,
            session=self.session,
            server=self.server,
            status=status,
            error_code=code,
            error_message=message,
            latency_ns=time.perf_counter_ns() - pending.started_ns,
            response_bytes=size,
        ))

    def _note_cancelled(self, msg: jsonrpc.Message) -> None:
        try:
            params = jsonrpc.decode_any(msg.params) if len(msg.params) else None
        except jsonrpc.DECODE_ERRORS:
            return
        if isinstance(params, dict):
            rid = params.get("requestId")
            if isinstance(rid, (int, str)):
                if rid in self._client_pending:
                    self._client_pending[rid].cancelled = True
                held = self._held_calls.get(rid)
                if held is not None:
                    held.scope.cancel()

    def _filter_tools_list(self, msg: jsonrpc.Message, data: bytes) -> bytes:
        """Drop the tools this caller can never call; keep the bytes if none is dropped.

        Reads the result, which the envelope's decode kept raw (not the message again)."""
        if not msg.has_result:
            return data
        try:
            result = _tools_list_decoder.decode(msg.result)
        except jsonrpc.DECODE_ERRORS:
            return data
        tools = result.get("tools")
        if not isinstance(tools, list):
            return data
        kept = [t for t in tools if not isinstance(t, dict)
                or self.policy.tool_visible(str(t.get("name")), self.caller, self.server)]
        if len(kept) == len(tools):
            return data
        self.log.debug("tools_list_filtered", removed=len(tools) - len(kept))
        return jsonrpc.result_response(msg.request_id, {**result, "tools": kept})


def _id_problem(ident: object) -> str | None:
    """Why a request's id cannot be used, or None (rule 12)."""
    if ident is None:
        return "a request id must not be null"
    if isinstance(ident, int) and not -jsonrpc.MAX_SAFE_ID <= ident <= jsonrpc.MAX_SAFE_ID:
        return (f"request id {ident} is beyond 2**53 - 1, where JSON readers disagree on "
                "its value")
    return None


def _utc(ns: int | None) -> str:
    return "?" if ns is None else time.strftime("%H:%M:%S UTC", time.gmtime(ns / 1e9))


def _to(side: str, data: bytes) -> Routed:
    """An answer mcpwall makes itself (bad params, a malformed request)."""
    if side == "client":
        return Routed(client=data)
    return Routed(upstream=Outbound.own(framing.line_safe(data), "protocol error answer"))

