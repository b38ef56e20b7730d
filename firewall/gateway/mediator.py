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
   mediator with an error when the upstream will not answer it
   (:meth:`unanswered`, the one entry point every front uses: the upstream is
   :class:`Lost` or its exchange failed, or it :class:`TimedOut`).
   Each gets one outcome event (ok, tool_error, jsonrpc_error, timeout,
   upstream_failure, cancelled).
6. Malformed input is answered (-32700/-32600/-32602) and the session lives on.
7. A client request a rule holds for approval (``pending``) goes nowhere until
   a person decides; the approvals package decides who asks whom, waits,
   and says how the call ended (:mod:`firewall.gateway.approvals.hold`,
   its rules 1 to 5: desk or client, standing approvals, progress,
   withdrawal). The mediator records that verdict as a decision event of the
   same call_id and forwards the call (through the same path as an allowed
   one) or refuses it. When nobody can decide it here, the call is refused
   at once with -32003, recorded as ``pending`` then ``rejected``.
8. A held call reaches a front as a :class:`HeldCall` (``Routed.held``):
   ``await held.wait(to_client)`` gives the Routed of its verdict,
   ``held.withdraw(reason)`` ends it unanswered when its client goes away.
9. Requests mcpwall itself sends to the client (elicitation) have ids of
   their own; their answers are consumed by the approvals package and never
   reach the upstream, and a server request reusing such an id is refused.
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
13. Counters (:mod:`firewall.policy.counters`) are reserved when the call is
   decided (a held call keeps its reservation while it waits) and settled by
   its fate: an answer with a result (a tool result with ``isError`` too: the
   tool ran) keeps them; a JSON-RPC error answer, or a refusal after the
   reservation (a shared bucket, a rejected or withdrawn approval) gives
   them back. A call whose fate is unknown (timed out, upstream lost, session
   gone) keeps them: it may have run, and a counter errs on counting.
14. Both protocol eras pass here, chosen per request
   (:mod:`firewall.protocol.meta`): a request whose ``params._meta`` carries
   ``io.modelcontextprotocol/protocolVersion`` goes by its own version,
   capabilities and clientInfo (MCP 2026-07-28); any other by what the
   session's ``initialize`` said (its version: the one the server answered
   with). Each decision event records them, bounded; who the caller is comes
   from authentication only (``caller``), never from clientInfo. A 2026-07-28
   request naming a revision mcpwall does not mediate is refused with
   UnsupportedProtocolVersionError (-32022, ``data.supported``) under its
   id, recorded as ``deny`` by rule ``protocol``. mcpwall's own results to a
   2026-07-28 request carry ``resultType: "complete"``; it never sends such a
   client a request of its own (elicitation: that revision replaced
   server requests with MRTR), so a held call there goes to the desk. A
   ``server/discover`` request is decided like any method; its result offers
   only the revisions mcpwall mediates.
15. ``session`` scopes (limits, counters) take :attr:`scope`: the session id,
   or for a mediator made ``sessionless`` (a 2026-07-28 request over HTTP)
   the caller's grant (``policy.decision.session_scope``). A sessionless
   call is never covered by a ``session`` standing approval, and an approval
   given to it with scope ``session`` covers that call only.
16. Multi round-trip requests (2026-07-28, :mod:`firewall.gateway.mrtr`):
   an ``InputRequiredResult`` answering a tools/call, prompts/get or
   resources/read has each of its ``inputRequests`` decided as the
   server-to-client request it stands for (direction ``server``, recorded
   under the call's call_id, ``request_id`` the entry's key as JSON); the
   refused ones are removed, and when every one is refused the call ends
   with the refusal (a server would only ask again). One that cannot be
   read never reaches the client (-32603). The retry that echoes the
   server's ``requestState`` with the same caller, server and arguments is
   the same call: recorded under the same call_id with the first round's
   decision, not charged (buckets, counters) again, but checked against the
   rules in force (``PolicyPoint.recheck``: a kill switch turned on or a
   reload that now refuses the call ends it, recorded as the refusal); any
   other retry is a new call, decided in full. The intermediate answer is
   an ``input_required`` lifecycle event; the call has one outcome, its
   last round's.
17. Tasks (``io.modelcontextprotocol/tasks``): a call answered with a task
   handle is recorded as a ``task`` lifecycle event, its outcome left open.
   ``tasks/get``, ``tasks/update``, ``tasks/cancel`` naming a task of this
   caller are decided by the policy (``methods``) and recorded under the
   task's call_id; their answers are part of that call (a task waiting for
   input has its ``inputRequests`` decided as in rule 16), and the call's one
   outcome is recorded when a ``tasks/get`` shows the task ended. One naming
   a task the server gave to another principal is refused (``protocol``
   deny), never forwarded.
18. A rule with ``"approval": "client"`` on a call from a 2026-07-28 client
   that offers form elicitation is asked through the call's own answer: an
   ``InputRequiredResult`` whose one input request is mcpwall's question and
   whose ``requestState`` is sealed (HMAC, a per-process key; bound to the
   caller, server and the call's digest; used once). The retry answering it
   is the verdict, recorded under the call's call_id; approved, the call is
   forwarded without mcpwall's key and state.
19. A front may take a last look at a successful answer to its client's
   request (:attr:`Mediator.on_result`: the request's method, the line to
   relay, whether mcpwall narrowed it for this caller) and return the line
   to relay instead (the 2026-07-28 revision's cache bounds and
   ``server/discover`` view). A request refused for its transport's rules
   (:meth:`Mediator.refuse_protocol`) is recorded as a ``deny`` by rule
   ``protocol`` and answered with the transport's error, under its id.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
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
from firewall.gateway.approvals.desk import ApprovalDesk
from firewall.gateway.approvals.hold import (
    CANCELLED_BY_CLIENT,
    ELICIT_FIELD,
    NO_DESK,
    Held,
    Holds,
    ToClient,
    approval_question,
)
from firewall.gateway.mrtr import APPROVAL_KEY, Ask, Link, Rounds, TaskLink
from firewall.gateway.outbound import Outbound
from firewall.log import LazyLogger
from firewall.policy import render
from firewall.policy.counters import Counted, Reservation
from firewall.policy.decision import (
    ALLOW,
    DENY,
    INVALID_ARGUMENTS,
    PENDING,
    Caller,
    Decision,
    PolicyPoint,
    session_scope,
)
from firewall.policy.limits import PendingLimit
from firewall.protocol import framing, jsonrpc, mcp, mrtr
from firewall.protocol import meta as client_meta
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.inbound import server as decode_server
from firewall.protocol.jsonrpc import Kind, RequestId

# Dropped messages recorded in the audit trail per session; later ones are
# logged only (a hostile peer must not turn its garbage into audit rows).
DROPS_RECORDED: Final = 100
NOTIFICATION_PREFIX: Final = "notifications/"


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
        held: HeldCall | None = None,
        answers: RequestId | None = None,
        rejected: bytes | None = None,
    ) -> None:
        self.answers = answers
        self.upstream = upstream
        self.client = client
        self.receipt = receipt
        self.rejected = rejected
        # Set (and nothing else) when the message waits for a person (rule 8).
        # Only from_client(wait=False) returns it.
        self.held = held


class HeldCall:
    """A client request held for approval, as a front sees it (rule 8).

    ``await held.wait(to_client)`` gives the Routed of its verdict:
    ``upstream`` when approved, ``client`` with the refusal, neither when
    withdrawn. ``to_client`` (None when the front cannot write before the
    answer) carries progress keep-alives and elicitation. The wait is the
    approvals package's; recording and forwarding stay the mediator's.

    Example (a front)::

        if routed.held is not None:
            routed = await routed.held.wait(to_client)
    """

    __slots__ = ("_held", "_line", "_mediator", "_msg", "_reservation")

    def __init__(self, mediator: Mediator, held: Held, msg: jsonrpc.Message,
                 line: bytes, reservation: Reservation | None = None) -> None:
        self._mediator = mediator
        self._held = held
        self._msg = msg
        self._line = line  # the canonical bytes that were decided
        # What the call added to its counters when decided (rule 13): kept by
        # the forwarded call when approved, given back otherwise.
        self._reservation = reservation

    def withdraw(self, reason: str) -> None:
        """End the call unanswered (its client went away), recorded with ``reason``."""
        self._held.withdraw(reason)

    async def wait(self, to_client: ToClient | None) -> Routed:
        """Wait for the verdict, record it, then forward or refuse the call."""
        mediator = self._mediator
        kept = False
        try:
            routed = await mediator._settle(self._held, self._msg, self._line, to_client)
            kept = mediator._keep(self._reservation, self._held.rid, routed)
            return routed
        finally:
            if not kept:
                await _give_back(self._reservation)


class Lost(msgspec.Struct, frozen=True):
    """The upstream is gone, or the exchange that carried the request failed.

    ``reason`` completes "upstream server 'NAME' ..." (``"exited with code 1"``,
    ``"failed: connect_refused"``); ``code`` is the JSON-RPC error the client gets.
    """

    reason: str
    code: int = jsonrpc.UPSTREAM_UNAVAILABLE


class TimedOut(msgspec.Struct, frozen=True):
    """The upstream did not answer within ``after`` seconds (answered with -32011)."""

    after: float


# Why forwarded requests will not be answered: what :meth:`Mediator.unanswered` takes.
UpstreamFailure = Lost | TimedOut


class _Pending(msgspec.Struct, gc=False):
    call_id: str
    method: str
    started_ns: int
    cancelled: bool = False
    # What the call added to its counters: kept when the answer is a result,
    # given back when it is a JSON-RPC error (rule 13).
    counters: Reservation | None = None
    # For a call that may take several rounds (MRTR) or become a task: its
    # view, the decision it went with, its round; for a tasks/* request
    # linked to a call, the task's id (rules 16 and 17).
    call: mcp.Call | None = None
    decision: Decision | None = None
    recorded_as: str | None = None
    round: int = 1
    task: str | None = None


class _AuditMeta(msgspec.Struct, frozen=True, gc=False):
    """What a decision event records of a request's client meta (bounded)."""

    version: str | None
    info: dict[str, Any] | None
    capabilities: dict[str, Any] | None


class _ResultFlags(msgspec.Struct, gc=False):
    """What the mediator reads of an answer's result, in one pass over it:
    ``resultType`` (rules 16, 17) and ``isError`` (a tools/call's outcome).
    Typed loosely so that one malformed member never hides the other."""

    resultType: Any = None
    isError: Any = False

    @property
    def kind(self) -> str | None:
        """The ``resultType`` (None: absent, i.e. ``complete``, or not a string)."""
        kind = self.resultType
        return kind if type(kind) is str else None


_flags_decoder: Final = msgspec.json.Decoder(_ResultFlags)
# The last client meta any mediator bounded for the audit trail, and its copy.
_shared_audit_meta: tuple[client_meta.ClientMeta, _AuditMeta] = (
    client_meta.LEGACY, _AuditMeta(None, None, None))
_NO_FLAGS: Final = _ResultFlags()
# A new mediator's: LEGACY bounded (nothing to record).
_NO_AUDIT_META: Final[tuple[client_meta.ClientMeta, _AuditMeta]] = (
    client_meta.LEGACY, _AuditMeta(None, None, None))
# Answers read for MRTR and tasks (rules 16, 17): only these methods' results.
_ROUND_ANSWERS: Final = mrtr.MRTR_METHODS | mrtr.TASKS_METHODS
# The resultTypes of an answer that continues its call (rules 16, 17).
_CONTINUING: Final = frozenset({mrtr.INPUT_REQUIRED, mrtr.TASK})
_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])


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
        on_tools: Callable[[str, list[str]], None] | None = None,
        sessionless: bool = False,
        rounds: Rounds | None = None,
    ) -> None:
        self.server = server
        # Rule 15: what ``session`` scopes mean here. ``session`` names these
        # calls in the audit trail either way.
        self.sessionless = sessionless
        self.scope = session_scope(None if sessionless else session, caller)
        # Told the names of the tools the server offers in each tools/list
        # answer (the console's policy page lists them).
        self.on_tools = on_tools
        self.session = session
        self.caller = caller
        self.policy = policy
        self.audit = audit
        self.deny_tools_call_as = deny_tools_call_as
        self.approvals = approvals
        self._client_pending: dict[RequestId, _Pending] = {}
        self._server_pending: dict[RequestId, _Pending] = {}
        self._tools_list_ids: set[RequestId] = set()
        self._discover_ids: set[RequestId] = set()  # server/discover results: rule 14
        self._counter = itertools.count(1)
        self._drops = 0
        # What the client said in its initialize (2025), for the session's
        # requests that carry no 2026-07-28 _meta (rule 14); and the audit
        # trail's bounded copy of it, and of the last request's _meta.
        self.client = client_meta.LEGACY
        self._audit_meta = _NO_AUDIT_META
        self._initialize_ids: set[RequestId] = set()
        # Rule 19: a front's last look at a result on its way to the client.
        self.on_result: Callable[[str, bytes, bool], bytes] | None = None
        # The logger and the held calls (:attr:`log`, :attr:`holds`) are made
        # when first used: most requests log nothing and hold nothing, and a
        # stateless request has a mediator of its own.
        self._log: LazyLogger | None = None
        self._holds: Holds | None = None
        # What links a call's rounds and its task (rules 16 to 18); a front may
        # share one between the mediators of one server.
        self.rounds = rounds if rounds is not None else Rounds()

    @property
    def log(self) -> Any:
        """This session's logger (bound to its server, session and principal)."""
        log = self._log
        if log is None:
            log = self._log = LazyLogger(server=self.server, session=self.session,
                                         principal=self.caller.principal)
        return log

    @property
    def holds(self) -> Holds:
        """The calls held for approval and mcpwall's own requests to the client."""
        holds = self._holds
        if holds is None:
            holds = self._holds = Holds(self.approvals, self.audit, server=self.server,
                                        session=self.session, caller=self.caller, log=self.log,
                                        taken=self._server_pending,
                                        sessionless=self.sessionless)
        return holds

    def awaits(self, request_id: RequestId) -> bool:
        """Whether a client request forwarded upstream still waits for its answer."""
        return request_id in self._client_pending

    def round_of(self, request_id: RequestId) -> int:
        """The round of a client request in flight (rule 16): above 1 when it was
        linked to an earlier round (decided and charged there); 1 otherwise."""
        pending = self._client_pending.get(request_id)
        return pending.round if pending is not None else 1

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
                return await routed.held.wait(None)
        except Exception as exc:  # rule 11: this message fails, nothing else
            return self._failed("client", message, inbound, exc)
        return routed

    async def _from_client(self, inbound: Inbound) -> Routed:
        if inbound.refusal is not None:
            return await self._refused(inbound, "client")
        msg = inbound.envelope
        if msg.method is not None and msg.id is not msgspec.UNSET:  # a request
            return await self._request(inbound, "client")
        data = inbound.data
        if msg.method is None:  # a response
            if self.holds.own_answer(inbound.message):  # the answer to mcpwall's own question
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

    async def refuse_protocol(self, inbound: Inbound, code: int, message: str,
                              data: dict[str, Any] | None = None) -> bytes:
        """Refuse a client message for its transport's rules (rule 19): one ``deny``
        decision event (rule ``protocol``), then the error under the message's id.

        Example: ``await mediator.refuse_protocol(inbound, -32020, "Header mismatch: ...")``.
        """
        msg = inbound.envelope
        call = inbound.call or mcp.Call(msg.method or "")
        decision = Decision(DENY, rule="protocol", reason=message)
        await self._decided(call, msg, decision, f"{self.session}.{next(self._counter)}")
        self.log.info("call_refused", method=msg.method, target=call.target, decision=DENY,
                      rule="protocol", code=code)
        return jsonrpc.error_response(msg.request_id, code, message, data)

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
            pending = self._client_pending.get(rid) if rid is not None else None
            if pending is None:
                await self._dropped("server", "response_unmatched", msg, data)
                return Routed()
            assert rid is not None
            # Rules 16, 17: only an answer that names a resultType, or belongs to
            # a task, can continue a call. Byte tests first (the hot path; find(),
            # not ``in``: framing.splittable): the name as written, or any
            # escape (a \u one could spell the name otherwise).
            flags: _ResultFlags | None = None
            if msg.has_result and pending.method in _ROUND_ANSWERS and (
                    pending.task is not None or data.find(b"resultType") >= 0
                    or data.find(b"\\") >= 0):
                if pending.task is None and pending.call is not None:
                    flags = _flags_of(msg)  # read once: its outcome needs isError too
                # Only a task's answer, or a result that asks for input or is a
                # task, continues the call (_round_answer's cases; a complete
                # result, the common one, goes straight on).
                if pending.task is not None or (flags is not None
                                                and flags.kind in _CONTINUING):
                    answered = await self._round_answer(inbound, msg, rid, pending, flags)
                    if answered is not None:
                        return Routed(client=answered, answers=rid)
            line: bytes | None = None
            narrowed = False  # mcpwall cut the list for this caller
            if rid in self._tools_list_ids:
                self._tools_list_ids.discard(rid)
                filtered = self._filter_tools_list(msg, data)
                if filtered is not data:  # mcpwall's own encoding: one line to make sure
                    line = framing.line_safe(filtered)
                narrowed = line is not None
            elif self._discover_ids and rid in self._discover_ids:
                self._discover_ids.discard(rid)
                filtered = self._filter_discover(msg, data)
                if filtered is not data:
                    line = framing.line_safe(filtered)
            elif self._initialize_ids and rid in self._initialize_ids:
                self._initialize_ids.discard(rid)
                self._negotiated(msg)
            if line is None:
                try:  # _line's work, inline: the one hot path from the server
                    line = inbound.relay_line()
                except framing.NotCanonical as exc:
                    await self._dropped("server", "not_relayable", msg, data, str(exc))
                    # Cannot be relayed: the request is answered with an error.
                    line = jsonrpc.error_response(rid, jsonrpc.INTERNAL_ERROR, (
                        f"upstream server {self.server!r} sent an answer mcpwall cannot "
                        "relay"))
            if self.on_result is not None and not msg.has_error:  # rule 19
                seen = self.on_result(pending.method, line, narrowed)
                if seen is not line:  # the hook's own bytes: one line to make sure
                    line = framing.line_safe(seen)
            await self._answered(self._client_pending, msg, len(data), flags)
            return Routed(client=line, answers=rid)
        if msg.kind is Kind.REQUEST:
            return await self._request(inbound, "server")
        assert msg.method is not None
        if msg.method not in mcp.NOTIFICATIONS:
            return await self._notification(inbound, "server")
        line = await self._line(inbound, "server")
        return Routed() if line is None else Routed(client=line)

    async def unanswered(self, failure: UpstreamFailure,
                         ids: Iterable[RequestId] | None = None) -> list[bytes]:
        """Answer client requests forwarded upstream that will not be answered (rule 5).

        ``ids``: the requests whose answers the front still owes, each answered
        here once (in order); None: every request pending, for the upstream
        itself is gone (the requests it sent the client are forgotten too).
        Each answer is the JSON-RPC error ``failure`` stands for; each pending
        request gets its outcome event (``timeout`` or ``upstream_failure``)
        and leaves the pending table, so a late answer is dropped as
        unmatched. A named id no longer pending (its outcome recorded already)
        still gets its answer, and no second outcome.

        Example: ``[reply] = await mediator.unanswered(TimedOut(30.0), [rid])``.
        """
        if isinstance(failure, TimedOut):
            code, status = jsonrpc.UPSTREAM_TIMEOUT, "timeout"
            text = f"upstream server {self.server!r} did not answer within {failure.after:g} s"
        else:
            code, status = failure.code, "upstream_failure"
            text = f"upstream server {self.server!r} {failure.reason}"
        owed: list[tuple[RequestId, _Pending | None]]
        if ids is None:
            owed = list(self._client_pending.items())
            self._client_pending.clear()
            self._server_pending.clear()
            self._tools_list_ids.clear()
            self._initialize_ids.clear()
            self._discover_ids.clear()
        else:
            owed = [(rid, self._client_pending.pop(rid, None)) for rid in ids]
            self._tools_list_ids.difference_update(rid for rid, _ in owed)
            self._discover_ids.difference_update(rid for rid, _ in owed)
        replies = []
        data = {"server": self.server}
        for rid, pending in owed:
            replies.append(jsonrpc.error_response(rid, code, text, data))
            if pending is not None:
                await self._outcome(pending, status, code, text, 0)
        return replies

    async def ended_here(self, request_id: RequestId, reason: str) -> bool:
        """A client request mcpwall itself ended upstream (a listen past its
        lifetime or at session end, or one the client cancelled whose stream
        mcpwall closed): it leaves the pending table with the outcome
        ``cancelled`` (its counters kept: it ran), so a late answer is dropped
        as unmatched and no error is owed for it. False if it was not pending."""
        pending = self._client_pending.pop(request_id, None)
        if pending is None:
            return False
        if pending.counters is not None:
            await pending.counters.commit()
        await self._outcome(pending, "cancelled", None, reason, 0)
        return True

    # -- internals -------------------------------------------------------
    async def _request(self, inbound: Inbound, direction: str) -> Routed:
        # The view and the bytes that will be forwarded if the policy allows
        # come from one decoded value, made before the decision: nothing is
        # decided that could not be forwarded as is (a refusal went to _refused).
        msg, call, line = inbound.envelope, inbound.call, inbound.line
        assert call is not None and line is not None
        rid = msg.request_id
        reply_side = "client" if direction == "client" else "upstream"
        reservation: Reservation | None = None
        meta = self._meta(inbound, call, direction)
        if meta.modern and not meta.supported() and _id_problem(msg.id) is None:  # rule 14
            return await self._unsupported(inbound, meta, direction)
        if direction == "server" and self.holds.asked(rid):
            decision = Decision(DENY, rule="protocol",
                                reason=f"request id {rid!r} is in use by mcpwall")
        elif (problem := _id_problem(msg.id)) is not None:
            decision = Decision(DENY, rule="protocol", reason=problem)
        elif rid is not None and self._in_flight(rid, direction):
            # Rule 12: two requests with one id would share one answer and one
            # outcome; the second is refused before any policy.
            decision = Decision(DENY, rule="protocol",
                                reason=f"request id {rid!r} is already in flight")
        elif direction == "client" and call.method in mrtr.TASKS_METHODS and \
                (foreign := self._foreign_task(inbound)) is not None:
            decision = Decision(DENY, rule="protocol",
                                reason=f"task {foreign!r} belongs to another caller")
        else:
            if (direction == "client" and call.method in mrtr.MRTR_METHODS
                    and (inbound.data.find(b"inputResponses") >= 0
                         or inbound.data.find(b"requestState") >= 0)):
                again = await self._round(inbound, call)  # rule 16: a later round
                if again is not None:
                    return again
            decision = self.policy.decide(call, self.caller, self.server, self.scope)
            if type(decision) is Counted:  # counters: reserved now, settled by the answer
                decision, reservation = await decision.settle()
            if type(decision) is PendingLimit:  # buckets shared in Redis: one round trip
                decision = await decision.settle()
        if direction == "client" and call.method == mcp.INITIALIZE:
            self.holds.client_elicits = mcp.offers_elicitation(inbound.message)
            self.client = meta
            if rid is not None:
                self._initialize_ids.add(rid)
        task = None
        if direction == "client" and call.method in mrtr.TASKS_METHODS:
            task = self._task_of(inbound)  # rule 17: recorded against the task's call
        call_id = task[1] if task is not None else f"{self.session}.{next(self._counter)}"
        receipt = await self._decided(call, msg, decision, call_id, meta=meta)
        # Rule 14: a 2026-07-28 client is never sent a request of mcpwall's own
        # (elicitation/create): the revision replaced them with MRTR.
        elicits = False if meta.modern else None
        if decision.action == PENDING and not decision.dry_run:
            if direction == "client" and decision.approval == "client":
                asked = await self._ask_by_round(inbound, call, decision, call_id, reservation,
                                                 receipt)
                if asked is not None:  # rule 18: the question goes in the answer
                    return asked
            if direction == "client" and self.holds.can_hold(decision, elicits):
                # A held call is rare: its payload is encoded (not decoded) back to raw.
                full = inbound.message
                held = self.holds.hold(call, full, decision, call_id, elicits)
                return Routed(held=HeldCall(self, held, full, line, reservation))
            # Nobody can decide it here: refused now, and recorded as such.
            await _give_back(reservation)
            why = f"{decision.reason.rstrip('.')}; {NO_DESK}" if decision.reason else NO_DESK
            decision = Decision(DENY, rule=decision.rule, reason=why)
            receipt = await self._decided(call, msg, decision, call_id, recorded_as="rejected")
            self.log.info("call_refused", method=call.method, target=call.target,
                          decision="rejected", rule=decision.rule, approver="none")
            refusal = self._refusal(call, rid, decision, code=jsonrpc.APPROVAL_REQUIRED,
                                    modern=meta.modern)
            if reply_side == "client":
                return Routed(client=refusal, receipt=receipt)
            return Routed(upstream=Outbound.decided(framing.line_safe(refusal), receipt, call_id),
                          receipt=receipt)
        if not decision.enforced_allow:
            await _give_back(reservation)  # a shared bucket refused after the counters
            self.log.info("call_refused", method=call.method, target=call.target,
                          decision=decision.action, rule=decision.rule)
            refusal = self._refusal(call, rid, decision, modern=meta.modern)
            if reply_side == "client":
                return Routed(client=refusal, receipt=receipt)
            return Routed(upstream=Outbound.decided(framing.line_safe(refusal), receipt, call_id),
                          receipt=receipt)
        routed = self._forwarded(call, rid, line, direction, call_id, receipt, decision)
        if task is not None and rid is not None and rid in self._client_pending:
            self._client_pending[rid].task = task[0]
        if reservation is not None and not self._keep(reservation, rid, routed, direction):
            await reservation.commit()  # no answer will come to settle it
        return routed

    def _keep(self, reservation: Reservation | None, rid: RequestId | None, routed: Routed,
              direction: str = "client") -> bool:
        """Hand a forwarded call's reservation to its pending entry (rule 13)."""
        table = self._client_pending if direction == "client" else self._server_pending
        pending = table.get(rid) if rid is not None and reservation is not None else None
        if pending is None or (routed.upstream is None and routed.client is None):
            return False
        pending.counters = reservation
        return True

    def _in_flight(self, rid: RequestId, direction: str) -> bool:
        """Whether a request of this side with id ``rid`` waits for its answer."""
        if direction == "client":
            holds = self._holds  # none made: nothing held
            return rid in self._client_pending or (holds is not None and rid in holds)
        return rid in self._server_pending

    def _forwarded(self, call: mcp.Call, rid: RequestId | None, line: bytes, direction: str,
                   call_id: str, receipt: Receipt | None, decision: Decision | None = None,
                   recorded_as: str | None = None, round: int = 1) -> Routed:
        pending = _Pending(call_id, call.method, time.perf_counter_ns())
        if call.method in mrtr.MRTR_METHODS and direction == "client":  # rules 16, 17
            pending.call, pending.decision, pending.round = call, decision, round
            pending.recorded_as = recorded_as
        if rid is not None:
            if direction == "client":
                self._client_pending[rid] = pending
                if call.method == mcp.TOOLS_LIST:
                    self._tools_list_ids.add(rid)
                elif call.method == mcp.SERVER_DISCOVER:
                    self._discover_ids.add(rid)
            else:
                self._server_pending[rid] = pending
        if direction == "client":
            return Routed(upstream=Outbound.decided(line, receipt, call_id), receipt=receipt)
        return Routed(client=line, receipt=receipt)

    async def _settle(self, held: Held, msg: jsonrpc.Message, line: bytes,
                      to_client: ToClient | None) -> Routed:
        """Wait for the verdict on a held call (rule 7), record it, forward or refuse it."""
        try:
            ended = await held.verdict(to_client)
            receipt = await self._decided(held.call, msg, ended.decision, held.call_id,
                                          recorded_as=ended.recorded_as)
            await held.end(ended)
            if ended.decision.action == ALLOW:
                return self._forwarded(held.call, held.rid, line, "client", held.call_id,
                                       receipt, ended.decision, ended.recorded_as)
        finally:
            held.release()  # after _forwarded: its id stays in flight throughout
        if not ended.answered:  # withdrawn: no answer
            return Routed()
        return Routed(client=self._refusal(held.call, held.rid, ended.decision),
                      receipt=receipt)

    async def _decided(
        self, call: mcp.Call, msg: jsonrpc.Envelope, decision: Decision, call_id: str,
        recorded_as: str | None = None, meta: client_meta.ClientMeta | None = None,
    ) -> Receipt | None:
        if self.audit is None:
            return None
        rid = msg.id
        seen = self._audit_meta_of(self.client if meta is None else meta)
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
            protocol_version=seen.version,
            client_info=seen.info,
            client_capabilities=seen.capabilities,
        )
        return await self.audit.append(event)

    def _meta(self, inbound: Inbound, call: mcp.Call, direction: str) -> client_meta.ClientMeta:
        """What this request goes by (rule 14): its own 2026-07-28 ``_meta``,
        else what the session's initialize said (an initialize: itself)."""
        if direction != "client":
            return self.client
        if call.method == mcp.INITIALIZE:
            return client_meta.of_initialize(inbound.params)
        meta = client_meta.of_params(inbound.params)
        return self.client if meta is client_meta.LEGACY else meta

    def _audit_meta_of(self, meta: client_meta.ClientMeta) -> _AuditMeta:
        """The audit trail's bounded copy of ``meta`` (kept for the next
        request that goes by the same: a session's, or a client's every
        request; and across mediators, for a stateless request has one of its
        own: the copy is a function of the meta alone)."""
        global _shared_audit_meta
        last, seen = self._audit_meta
        if meta is last or meta == last:
            return seen
        last, seen = _shared_audit_meta
        if meta != last:
            seen = _AuditMeta(client_meta.audit_version(meta.version),
                              client_meta.bounded(meta.info, client_meta.MAX_INFO_BYTES),
                              client_meta.bounded(meta.capabilities,
                                                  client_meta.MAX_CAPABILITIES_BYTES))
            _shared_audit_meta = (meta, seen)
        self._audit_meta = (meta, seen)
        return seen

    async def _unsupported(self, inbound: Inbound, meta: client_meta.ClientMeta,
                           direction: str) -> Routed:
        """A 2026-07-28-era request claiming a revision mcpwall does not
        mediate (rule 14): refused, recorded, answered with the revision's
        UnsupportedProtocolVersionError (-32022) under the request's id."""
        msg, call = inbound.envelope, inbound.call
        assert call is not None
        requested = client_meta.audit_version(meta.version)
        decision = Decision(DENY, rule="protocol", reason=(
            f"protocol version {requested!r} is not one mcpwall mediates"))
        call_id = f"{self.session}.{next(self._counter)}"
        receipt = await self._decided(call, msg, decision, call_id, meta=meta)
        self.log.info("call_refused", method=call.method, target=call.target,
                      decision=DENY, rule="protocol", protocol_version=requested)
        answer = jsonrpc.error_response(
            msg.request_id, client_meta.UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version", client_meta.unsupported_error_data(meta.version))
        if direction == "client":
            return Routed(client=answer, receipt=receipt)
        return Routed(upstream=Outbound.decided(framing.line_safe(answer), receipt, call_id),
                      receipt=receipt)

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
            decision = self.policy.decide(call, self.caller, self.server, self.scope)
            if type(decision) is Counted:  # no answer will come: kept if forwarded
                decision, reservation = await decision.settle()
                if reservation is not None:
                    await reservation.commit()
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
                 code: int | None = None, *, modern: bool = False) -> bytes:
        if call.method == mcp.TOOLS_CALL and self.deny_tools_call_as == "tool_result":
            return mcp.tool_error_result(rid, render.denial_text(decision), modern=modern)
        return jsonrpc.error_response(rid, code or render.error_code(decision),
                                      render.error_message(decision), render.denial_data(decision))

    async def _answered(
        self, table: dict[RequestId, _Pending], msg: jsonrpc.Message, size: int,
        flags: _ResultFlags | None = None,
    ) -> None:
        """Settle an answered request: its counters (rule 13) and its outcome
        (``flags``: its result's flags when read already)."""
        rid = msg.request_id
        pending = table.pop(rid, None) if rid is not None else None
        if pending is not None and pending.counters is not None:
            if msg.has_error:
                await _give_back(pending.counters)
            else:
                await pending.counters.commit()
        if pending is None or self.audit is None:
            return  # nothing to record: skip reading the result
        if msg.has_error:
            err = jsonrpc.decode_error(msg)
            code = err.code if err else None
            await self._outcome(pending, "cancelled" if pending.cancelled else "jsonrpc_error",
                                code, err.message if err else "malformed error", size)
            return
        status: Literal["ok", "tool_error"] = "ok"
        if pending.method == mcp.TOOLS_CALL and (flags or _flags_of(msg)).isError is True:
            status = "tool_error"
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
                self.holds.withdraw(CANCELLED_BY_CLIENT, rid)

    def _filter_discover(self, msg: jsonrpc.Message, data: bytes) -> bytes:
        """A server/discover result offers only the revisions mcpwall mediates
        (rule 14): a client that picked another would be refused. Keeps the
        bytes when nothing is removed."""
        result = _result_object(msg)
        if result is None:
            return data
        versions = result.get("supportedVersions")
        if not isinstance(versions, list):
            return data
        kept = [v for v in versions if v in client_meta.MODERN_VERSIONS
                or v in mcp.PROTOCOL_VERSIONS]
        if len(kept) == len(versions):
            return data
        self.log.info("discover_filtered", removed=[str(v)[:64] for v in versions
                                                    if v not in kept][:8])
        return jsonrpc.result_response(msg.request_id, {**result, "supportedVersions": kept})

    def _negotiated(self, msg: jsonrpc.Message) -> None:
        """The server's answer to initialize: the version it chose is the
        session's from now on (rule 14)."""
        result = _result_object(msg)
        version = result.get("protocolVersion") if result is not None else None
        if type(version) is str:
            self.client = msgspec.structs.replace(self.client, version=version)

    def _filter_tools_list(self, msg: jsonrpc.Message, data: bytes) -> bytes:
        """Drop the tools this caller can never call; keep the bytes if none is dropped.

        Reads the result, which the envelope's decode kept raw (not the message again)."""
        result = _result_object(msg)
        if result is None:
            return data
        tools = result.get("tools")
        if not isinstance(tools, list):
            return data
        if self.on_tools is not None:
            self.on_tools(self.server, [t["name"] for t in tools if isinstance(t, dict)
                                        and isinstance(t.get("name"), str)])
        kept = [t for t in tools if not isinstance(t, dict)
                or self.policy.tool_visible(str(t.get("name")), self.caller, self.server)]
        if len(kept) == len(tools):
            return data
        self.log.debug("tools_list_filtered", removed=len(tools) - len(kept))
        return jsonrpc.result_response(msg.request_id, {**result, "tools": kept})

    # -- MRTR and tasks (2026-07-28; rules 16 to 18) ---------------------------------
    async def _round(self, inbound: Inbound, call: mcp.Call) -> Routed | None:
        """A retry that continues a call (rule 16) or answers mcpwall's own
        approval question (rule 18); None: a new call, decided in full."""
        data = inbound.data
        if data.find(b"inputResponses") < 0 and data.find(b"requestState") < 0:
            return None
        params = inbound.message.params
        again = mrtr.retry(params)
        if again is None:
            return None
        digest = mrtr.call_digest(call)
        if again.state is not None and again.state.startswith(mrtr.StateSeal.PREFIX):
            return await self._approval_answer(inbound, call, digest, again)
        link = self.rounds.take(self.caller, self.server, digest, again.state)
        if link is None:
            return None
        msg, rid, line = inbound.envelope, inbound.envelope.request_id, inbound.line
        assert line is not None
        number = link.round + 1
        # Not charged again, but still under the rules in force: a kill switch
        # turned on, or a reload that now refuses the call, ends it here.
        now = self.policy.recheck(call, self.caller, self.server, self.scope)
        if now.action in (DENY, INVALID_ARGUMENTS) and not now.dry_run:
            refused = msgspec.structs.replace(now, reason=(
                f"round {number} of this call refused: {now.reason or now.rule}"))
            receipt = await self._decided(call, msg, refused, link.call_id)
            self.log.info("call_refused", method=call.method, target=call.target,
                          decision=refused.action, rule=refused.rule, round=number)
            return Routed(client=self._refusal(call, rid, refused, modern=True),
                          receipt=receipt)
        decision = msgspec.structs.replace(link.decision, reason=(
            f"round {number} of this call: decided in round 1 ({link.recorded_as}, rule "
            f"{link.decision.rule}); not decided or charged again"))
        receipt = await self._decided(call, msg, decision, link.call_id)
        self.log.debug("call_round", call_id=link.call_id, round=number)
        return self._forwarded(call, rid, line, "client", link.call_id, receipt, link.decision,
                               link.recorded_as, number)

    async def _ask_by_round(self, inbound: Inbound, call: mcp.Call, decision: Decision,
                            call_id: str, reservation: Reservation | None,
                            receipt: Receipt | None) -> Routed | None:
        """Ask the person in a 2026-07-28 client to approve a held call through
        the call's own answer: an InputRequiredResult carrying the question and
        a sealed requestState (rule 18). None: this client cannot be asked so."""
        if call.method not in mrtr.MRTR_METHODS:
            return None
        params = inbound.message.params
        version, caps = mrtr.revision(params)
        if version != mrtr.PROTOCOL_VERSION or not mrtr.elicits(caps):
            return None
        again = mrtr.retry(params)
        if again is not None and (set(again.responses) - {APPROVAL_KEY} or (
                again.state is not None and not again.state.startswith(mrtr.StateSeal.PREFIX))):
            return None  # it carries a server's round, which the question would lose
        digest = mrtr.call_digest(call)
        await self._unanswered_asks(self.rounds.ask(
            Ask(call_id, digest, call, decision, reservation, time.monotonic()),
            self.caller.principal))
        state = self.rounds.seal.seal(
            {"c": call_id, "d": digest, "p": self.caller.principal, "g": self.caller.grant,
             "s": self.server}, expires_ns=time.time_ns() + int(self.rounds.ttl * 1e9))
        question = {"mode": "form", **approval_question(call, decision, self.server)}
        result = {"resultType": mrtr.INPUT_REQUIRED, "requestState": state, "inputRequests": {
            APPROVAL_KEY: {"method": mcp.ELICITATION_CREATE, "params": question}}}
        self.log.warning("call_held", method=call.method, target=call.target,
                         rule=decision.rule, approval="client", via="input_required")
        rid = inbound.envelope.request_id
        return Routed(client=framing.line_safe(jsonrpc.result_response(rid, result)),
                      receipt=receipt)

    async def _approval_answer(self, inbound: Inbound, call: mcp.Call, digest: str,
                               again: mrtr.Retry) -> Routed | None:
        """The retry that answers mcpwall's approval question (rule 18): the
        verdict is recorded, then the call is forwarded without mcpwall's key
        and state, or refused. A state that does not open for this caller,
        server and call is no answer (None: a new call)."""
        await self._unanswered_asks(self.rounds.expired_asks())
        assert again.state is not None
        sealed = self.rounds.seal.open(again.state, time.time_ns())
        if sealed is None or sealed.get("d") != digest or sealed.get("s") != self.server \
                or sealed.get("p") != self.caller.principal or sealed.get("g") != self.caller.grant:
            return None
        ask = self.rounds.answer(str(sealed.get("c")))
        if ask is None or ask.digest != digest:
            return None
        msg, rid = inbound.envelope, inbound.envelope.request_id
        answer = again.responses.get(APPROVAL_KEY)
        if not isinstance(answer, dict):
            answer = {}
        content = answer.get("content")
        who = f"client:{self.caller.principal}"
        if isinstance(content, dict) and answer.get("action") == "accept" \
                and content.get(ELICIT_FIELD) is True:
            decision = Decision(ALLOW, rule=ask.decision.rule,
                                reason=f"approved by {who} in the client")
            verdict = "approved"
        else:
            action = answer.get("action")
            what = {"decline": "declined", "cancel": "cancelled",
                    "accept": "accepted without approving"}.get(str(action), "not answered")
            decision = Decision(DENY, rule=ask.decision.rule,
                                reason=f"rejected by {who} in the client ({what})")
            verdict = "rejected"
        forwarded: Inbound | None = None
        if verdict == "approved":  # the decided call, without mcpwall's key and state
            assert msg.method is not None and rid is not None
            forwarded = decode_client(jsonrpc.request(msg.method, mrtr.without(
                inbound.message.params, frozenset({APPROVAL_KEY}), drop_state=True), rid))
            if forwarded.call != call or forwarded.line is None:
                forwarded = None
                decision = Decision(DENY, rule="protocol", reason=(
                    "the approved call could not be forwarded as decided"))
                verdict = "rejected"
        receipt = await self._decided(call, msg, decision, ask.call_id, recorded_as=verdict)
        await append_lifecycle(self.audit, "approval", session=self.session,
                               principal=self.caller.principal, server=self.server, detail={
                                   "approval": None, "call_id": ask.call_id, "verdict": verdict,
                                   "by": who, "note": decision.reason, "via": "client",
                                   "scope": "call",
                                   "waited_s": round(time.monotonic() - ask.asked, 3)})
        if forwarded is None or forwarded.line is None:
            await _give_back(ask.reservation)
            return Routed(client=self._refusal(call, rid, decision), receipt=receipt)
        routed = self._forwarded(call, rid, forwarded.line, "client", ask.call_id, receipt,
                                 decision, "approved")
        if ask.reservation is not None and not self._keep(ask.reservation, rid, routed):
            await ask.reservation.commit()
        return routed

    async def _unanswered_asks(self, asks: list[Ask]) -> None:
        """Approval questions dropped unanswered (expired, or crowded out):
        recorded as expired, their counters given back (the call never ran)."""
        for ask in asks:
            await _give_back(ask.reservation)
            await append_lifecycle(self.audit, "approval", session=self.session,
                                   principal=self.caller.principal, server=self.server,
                                   detail={"approval": None, "call_id": ask.call_id,
                                           "verdict": "expired", "by": None, "via": "client",
                                           "note": "no answer in the client", "scope": "call",
                                           "waited_s": round(time.monotonic() - ask.asked, 3)})

    def _foreign_task(self, inbound: Inbound) -> str | None:
        """The task id a tasks/* request names when the server gave it to another
        principal (rule 17), else None."""
        ident = mrtr.task_id(inbound.message.params)
        if ident is None:
            return None
        owner = self.rounds.task_owner(self.server, ident)
        return ident if owner is not None and owner != self.caller.principal else None

    def _task_of(self, inbound: Inbound) -> tuple[str, str] | None:
        """(task id, call_id) when a tasks/* request names a task of this caller (rule 17)."""
        ident = mrtr.task_id(inbound.message.params)
        link = self.rounds.task_call(self.caller, self.server, ident) if ident else None
        return None if link is None or ident is None else (ident, link.call_id)

    async def _round_answer(self, inbound: Inbound, msg: jsonrpc.Message, rid: RequestId,
                            pending: _Pending, flags: _ResultFlags | None) -> bytes | None:
        """Read an answer that may continue a call (rules 16, 17): an
        InputRequiredResult, a task handle, a linked tasks/* answer. Returns
        the line for the client when it handled the answer (its pending entry
        settled), None for an ordinary answer. ``flags``: the result's, read."""
        if pending.task is not None:
            return await self._task_answer(inbound, msg, rid, pending)
        if pending.call is None:
            return None
        kind = (flags or _flags_of(msg)).kind
        if kind == mrtr.INPUT_REQUIRED:
            return await self._input_required(inbound, msg, rid, pending)
        if kind == mrtr.TASK and pending.method in mrtr.TASK_METHODS:
            handle = mrtr.task_handle(msg.result)
            if handle is None:
                return None
            await self._settled(rid, pending)
            self.rounds.task(self.caller, self.server, handle.task_id,
                             TaskLink(pending.call_id, pending.started_ns))
            await self._task_event(pending.call_id, handle, pending.method, pending.round)
            if handle.status in mrtr.TERMINAL:
                await self._task_end(handle, len(inbound.data))
            return inbound.relay_line()
        return None

    async def _settled(self, rid: RequestId, pending: _Pending, kept: bool = True) -> None:
        """Take an answered request out of the table and settle its counters (rule 13)."""
        self._client_pending.pop(rid, None)
        if pending.counters is not None:
            if kept:
                await pending.counters.commit()
            else:
                await _give_back(pending.counters)

    async def _input_required(self, inbound: Inbound, msg: jsonrpc.Message, rid: RequestId,
                              pending: _Pending) -> bytes:
        """An InputRequiredResult: each input request decided as the server's
        own request would be; the refused ones removed; all refused, the call
        ends with the refusal (rule 16)."""
        assert pending.call is not None
        ir = mrtr.input_required(msg.result)
        if ir is None:  # unreadable: never relayed unchecked
            await self._settled(rid, pending, kept=False)
            text = (f"upstream server {self.server!r} asked for input in a form mcpwall "
                    "cannot read")
            await self._outcome(pending, "upstream_failure", jsonrpc.INTERNAL_ERROR, text,
                                len(inbound.data))
            return jsonrpc.error_response(rid, jsonrpc.INTERNAL_ERROR, text)
        kept, refused = await self._decide_inputs(pending.call_id, ir.requests)
        await self._settled(rid, pending, kept=bool(kept) or not refused)
        await append_lifecycle(self.audit, "input_required", session=self.session,
                               principal=self.caller.principal, server=self.server, detail={
                                   "call_id": pending.call_id, "round": pending.round,
                                   "requests": {k: r.method for k, r in ir.requests.items()},
                                   "refused": {k: d.reason for k, d in refused.items()}})
        if refused and not kept:
            first = next(iter(refused.values()))
            await self._outcome(pending, "jsonrpc_error", render.error_code(first),
                                render.error_message(first), len(inbound.data))
            # Only a request of the 2026-07-28 revision is answered so.
            return self._refusal(pending.call, rid, first, modern=True)
        assert pending.decision is not None or pending.recorded_as is None
        self.rounds.remember(self.caller, self.server, mrtr.call_digest(pending.call), ir.state,
                             Link(pending.call_id, pending.decision or Decision(ALLOW),
                                  pending.recorded_as or (pending.decision or
                                                          Decision(ALLOW)).action,
                                  pending.round))
        if not refused:
            return inbound.relay_line()
        return framing.line_safe(jsonrpc.result_response(rid, mrtr.encode_inputs(
            mrtr.InputRequired(kept, ir.state, ir.rest))))

    async def _decide_inputs(
        self, call_id: str, requests: dict[str, mrtr.InputRequest]
    ) -> tuple[dict[str, mrtr.InputRequest], dict[str, Decision]]:
        """Decide each input request as the server-to-client request it stands
        for (direction ``server``), each recorded under ``call_id``."""
        kept: dict[str, mrtr.InputRequest] = {}
        refused: dict[str, Decision] = {}
        for key, request in requests.items():
            call = mcp.Call(request.method, "server")
            recorded: str | None = None
            if request.method not in mrtr.INPUT_METHODS:
                decision = Decision(DENY, rule="protocol", reason=(
                    f"{request.method!r} is not a request a server may ask for as input"))
            else:
                decision = self.policy.decide(call, self.caller, self.server, self.session)
                if type(decision) is Counted:  # no answer settles it: kept if it goes on
                    decision, reservation = await decision.settle()
                    if reservation is not None:
                        await reservation.commit()
                if type(decision) is PendingLimit:
                    decision = await decision.settle()
                if decision.action == PENDING and not decision.dry_run:
                    decision = Decision(DENY, rule=decision.rule, reason=(
                        f"{decision.reason.rstrip('.')}; {NO_DESK}" if decision.reason
                        else NO_DESK))
                    recorded = "rejected"
            if self.audit is not None:
                await self.audit.append(DecisionEvent(
                    ts_ns=time.time_ns(), call_id=call_id, session=self.session,
                    principal=self.caller.principal, grant=self.caller.grant,
                    server=self.server, method=request.method, direction="server",
                    request_id=jsonrpc.encode(key).decode(), decision=recorded or decision.action,
                    rule=decision.rule, reason=decision.reason,
                    retry_after=decision.retry_after, dry_run=decision.dry_run))
            if decision.enforced_allow:
                kept[key] = request
            else:
                self.log.info("input_request_refused", call_id=call_id, key=key,
                              method=request.method, rule=decision.rule)
                refused[key] = decision
        return kept, refused

    async def _task_answer(self, inbound: Inbound, msg: jsonrpc.Message, rid: RequestId,
                           pending: _Pending) -> bytes:
        """The answer to a tasks/* request of a known task (rule 17): part of
        the task's call, whose outcome is recorded once, when the task ends."""
        task = pending.task
        assert task is not None
        await self._settled(rid, pending, kept=not msg.has_error)
        if msg.has_error:
            err = jsonrpc.decode_error(msg)
            await append_lifecycle(self.audit, "task", session=self.session,
                                   principal=self.caller.principal, server=self.server,
                                   detail={"call_id": pending.call_id, "task_id": task,
                                           "method": pending.method,
                                           "error_code": err.code if err else None})
            return inbound.relay_line()
        if pending.method != mrtr.TASKS_GET:
            await append_lifecycle(self.audit, "task", session=self.session,
                                   principal=self.caller.principal, server=self.server,
                                   detail={"call_id": pending.call_id, "task_id": task,
                                           "method": pending.method})
            return inbound.relay_line()
        state = mrtr.task_state(msg.result)
        if state is None or state.task_id != task:
            return inbound.relay_line()
        if state.status in mrtr.TERMINAL:
            await self._task_event(pending.call_id, state, pending.method, None)
            await self._task_end(state, len(inbound.data))
            return inbound.relay_line()
        if state.status == mrtr.INPUT_REQUIRED:
            ir = mrtr.task_inputs(msg.result)
            return await self._task_inputs(inbound, msg, rid, pending, ir)
        return inbound.relay_line()

    async def _task_inputs(self, inbound: Inbound, msg: jsonrpc.Message, rid: RequestId,
                           pending: _Pending, ir: mrtr.InputRequired | None) -> bytes:
        """A task waiting for input: its inputRequests decided like a round's."""
        if ir is None:
            return jsonrpc.error_response(rid, jsonrpc.INTERNAL_ERROR, (
                f"upstream server {self.server!r} asked for input in a form mcpwall cannot "
                "read"))
        kept, refused = await self._decide_inputs(pending.call_id, ir.requests)
        if not refused:
            return inbound.relay_line()
        if not kept:
            first = next(iter(refused.values()))
            return jsonrpc.error_response(rid, render.error_code(first),
                                          render.error_message(first),
                                          render.denial_data(first))
        return framing.line_safe(jsonrpc.result_response(rid, mrtr.encode_inputs(
            mrtr.InputRequired(kept, ir.state, ir.rest))))

    async def _task_event(self, call_id: str, state: mrtr.TaskState, method: str,
                          round: int | None) -> None:
        await append_lifecycle(self.audit, "task", session=self.session,
                               principal=self.caller.principal, server=self.server,
                               detail={"call_id": call_id, "task_id": state.task_id,
                                       "status": state.status, "method": method,
                                       "round": round})

    async def _task_end(self, state: mrtr.TaskState, size: int) -> None:
        """A task reached a terminal state: its call's one outcome (rule 17)."""
        link = self.rounds.task_ended(self.caller, self.server, state.task_id)
        if link is None:
            return
        status = {"completed": "tool_error" if state.is_error else "ok",
                  "failed": "jsonrpc_error", "cancelled": "cancelled"}[state.status]
        await self._outcome(_Pending(link.call_id, mcp.TOOLS_CALL, link.started_ns), status,
                            state.error_code, state.error_message, size)


async def _give_back(reservation: Reservation | None) -> None:
    """Roll a reservation back, even while the call is being cancelled (the
    store bounds its own I/O)."""
    if reservation is not None:
        with trio.CancelScope(shield=True):
            await reservation.rollback()


def _flags_of(msg: jsonrpc.Message) -> _ResultFlags:
    """The flags of an answer's result (none set when it is no JSON object)."""
    if not msg.has_result:
        return _NO_FLAGS
    try:
        return _flags_decoder.decode(msg.result)
    except jsonrpc.DECODE_ERRORS:
        return _NO_FLAGS


def _result_object(msg: jsonrpc.Message) -> dict[str, Any] | None:
    """The result of an answer as a JSON object (its raw payload decoded), or None."""
    if not msg.has_result:
        return None
    try:
        return _object_decoder.decode(msg.result)
    except jsonrpc.DECODE_ERRORS:
        return None


def _id_problem(ident: object) -> str | None:
    """Why a request's id cannot be used, or None (rule 12)."""
    if ident is None:
        return "a request id must not be null"
    if isinstance(ident, int) and not -jsonrpc.MAX_SAFE_ID <= ident <= jsonrpc.MAX_SAFE_ID:
        return (f"request id {ident} is beyond 2**53 - 1, where JSON readers disagree on "
                "its value")
    return None


def _to(side: str, data: bytes) -> Routed:
    """An answer mcpwall makes itself (bad params, a malformed request)."""
    if side == "client":
        return Routed(client=data)
    return Routed(upstream=Outbound.own(framing.line_safe(data), "protocol error answer"))

