"""A session's calls held for approval: who decides, the wait, how each ends.

The mediator decides a client request ``pending`` and records that; then it
hands the call here (:meth:`Holds.hold`) and gets a :class:`Held` back, whose
:meth:`Held.verdict` waits for a person and says how the call ended
(:class:`Ended`: the decision to record). The mediator records that decision
and forwards or refuses the call itself: nothing leaves from here but
mcpwall's own messages to the client (progress, elicitation), so nothing
reaches a server without its decision and receipt. Rules this module keeps
(the mediator's rules 7 to 9 point here):

1. A held call goes nowhere until a person decides: approved, it is
   forwarded as if allowed; rejected or expired, it is refused. Both verdicts
   are decisions of the same call_id (recorded by the mediator), then an
   ``approval`` lifecycle event (:meth:`Held.end`). Without a desk, a call is
   held only when the person in the client can be asked (rule 3):
   :meth:`Holds.can_hold` is False otherwise, and the mediator refuses it at
   once with -32003, recorded as ``pending`` then ``rejected`` with
   :data:`NO_DESK`; the client is told it is refused and why, never that it
   is held.
2. A standing approval (an earlier one given for the session or for N
   minutes) lets a held call through at once (a call without a session,
   ``sessionless``, only one given for N minutes: a ``session`` one given to
   it covers that call alone), recorded as ``approved`` with a
   reason naming it; only a held call consults them (a dict, no I/O). While a
   call is held and its request carried ``_meta.progressToken``, the client
   gets ``notifications/progress`` every ``progress_seconds`` so that it
   keeps waiting.
3. A rule with ``"approval": "client"`` asks the person in the client
   (``elicitation/create``) when the client advertised elicitation in its
   ``initialize`` and the front can write to it before the answer;
   otherwise the desk decides. Requests mcpwall itself sends to the client
   have ids of their own (``mcpwall-<random>-<n>``, never an id of a server
   request in flight); their answers are consumed here
   (:meth:`Holds.own_answer`) and never reach the upstream, and a server
   request reusing such an id is refused (:meth:`Holds.asked`). Unanswered
   in time, the call expires and the question is cancelled.
4. A held call ends exactly once: by its verdict, or withdrawn (the client
   cancelled it or went away: :meth:`Held.withdraw`, :meth:`Holds.withdraw`),
   recorded as ``rejected`` with the reason and never answered, or refused
   because mcpwall stops (:meth:`Holds.refuse`: answered, the desk's request
   marked ``abandoned``). A withdrawal that comes before the wait starts
   ends the call when it starts, before anyone is asked.
5. From its decision until the mediator has recorded its verdict (and, if
   approved, tracks it as forwarded), a held call's request id is in use
   (``rid in holds``): a second request with that id is refused.

Example (the mediator's side)::

    held = holds.hold(call, msg, decision, call_id)   # after the pending decision
    ended = await held.verdict(to_client)             # a person, the deadline, or withdrawn
    ...record ended.decision as ended.recorded_as, forward or refuse...
    await held.end(ended)                             # the approval lifecycle event
    held.release()                                    # its id is free again
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Container
from typing import Any, Final, Literal

import msgspec
import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.gateway.approvals.desk import (
    STOPPED,
    ApprovalDesk,
    Verdict,
    Withdrawal,
    redact_arguments,
)
from firewall.policy.decision import ALLOW, DENY, Action, Caller, Decision
from firewall.protocol import jsonrpc, mcp
from firewall.protocol.jsonrpc import RequestId
from firewall.settings.approvals import ApprovalSettings

# Sends one message to the client now (a front's writer); for held calls.
ToClient = Callable[[bytes], Awaitable[None]]
Via = Literal["desk", "standing", "client", "none"]

ELICIT_FIELD: Final = "approve"
NO_DESK: Final = ("held for approval, but nobody can approve it here: there is no "
                  "approval desk, and the person in the client cannot be asked")
CANCELLED_BY_CLIENT: Final = "cancelled by the client"
_DEFAULTS: Final = ApprovalSettings()


class Ended(msgspec.Struct, frozen=True, kw_only=True):
    """How a held call ended.

    ``decision``: what the mediator records and enforces (``allow`` when
    approved, else ``deny``; the held rule; the reason). ``answered``: False
    when the call was withdrawn (its client gets no answer). The rest is the
    ``approval`` lifecycle event: ``verdict`` (approved, rejected, expired,
    withdrawn, abandoned), who decided, by what means, how far it goes.
    """

    decision: Decision
    verdict: str
    via: Via
    answered: bool = True
    by: str | None = None
    note: str | None = None
    scope: str = "call"
    approval: str | None = None

    @property
    def recorded_as(self) -> Literal["approved", "rejected"]:
        """The decision event's ``decision``."""
        return "approved" if self.decision.action == ALLOW else "rejected"


class _ElicitResult(msgspec.Struct):
    action: str = "cancel"
    content: dict[str, Any] | None = None


_elicit_decoder: Final = msgspec.json.Decoder(_ElicitResult)


class Holds:
    """The calls of one client session held for approval, and mcpwall's own
    requests to that client.

    Example::

        holds = Holds(desk, audit, server="vm", session=sid, caller=caller, log=log,
                      taken=server_requests_in_flight)
        if holds.can_hold(decision):
            held = holds.hold(call, msg, decision, call_id)
    """

    def __init__(self, desk: ApprovalDesk | None, audit: AuditPoint | None, *, server: str,
                 session: str, caller: Caller, log: Any,
                 taken: Container[RequestId] = (), sessionless: bool = False) -> None:
        self.desk = desk
        # No session (a 2026-07-28 request over HTTP): ``session`` approvals
        # neither cover its calls nor are kept from them (rule 2).
        self.sessionless = sessionless
        self.audit = audit
        self.server = server
        self.session = session
        self.caller = caller
        self.log = log
        # Set from the client's initialize: may mcpwall ask the person there?
        self.client_elicits = False
        self._calls: dict[RequestId, Held] = {}
        # Requests mcpwall sent to the client, by id: (answered, answer).
        self._asked: dict[RequestId, tuple[trio.Event, list[jsonrpc.Message]]] = {}
        self._taken = taken  # ids of server requests in flight: never ours too
        self._prefix = ""  # mcpwall-<random>-, drawn when first needed
        self._counter = itertools.count(1)

    @property
    def settings(self) -> ApprovalSettings:
        """The ``[approvals]`` settings (the defaults without a desk)."""
        return self.desk.settings if self.desk is not None else _DEFAULTS

    def can_hold(self, decision: Decision, elicits: bool | None = None) -> bool:
        """Whether someone here can decide a call ``decision`` holds (rule 1).

        ``elicits``: whether this call's client may be asked, when the call
        says so itself (a 2026-07-28 request); None: as its initialize said."""
        asks = self.client_elicits if elicits is None else elicits
        return self.desk is not None or (decision.approval == "client" and asks)

    def hold(self, call: mcp.Call, msg: jsonrpc.Message, decision: Decision,
             call_id: str, elicits: bool | None = None) -> Held:
        """Hold the client request ``msg`` (decided ``pending``, recorded as
        ``call_id``; ``elicits`` as in :meth:`can_hold`)."""
        held = Held(self, call, msg, decision, call_id,
                    self.client_elicits if elicits is None else elicits)
        if held.rid is not None:
            self._calls[held.rid] = held
        return held

    def __contains__(self, rid: object) -> bool:
        """Whether a held request has the id ``rid`` (rule 5)."""
        return rid in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def withdraw(self, reason: str, request_id: RequestId | None = None) -> int:
        """Withdraw the held calls (all, or the one of ``request_id``): the client
        is gone. Each is recorded as rejected with ``reason`` and gets no answer."""
        if request_id is None:
            holds = list(self._calls.values())
        else:
            holds = [h for h in (self._calls.get(request_id),) if h is not None]
        for held in holds:
            held.withdraw(reason)
        return len(holds)

    def refuse(self, reason: str) -> int:
        """End every held call with a refusal naming ``reason`` (mcpwall stops):
        recorded as rejected, the desk's request marked abandoned, the client
        answered."""
        for held in self._calls.values():
            held.refuse(reason)
        return len(self._calls)

    def asked(self, rid: RequestId | None) -> bool:
        """Whether ``rid`` is the id of a request mcpwall sent the client (rule 3)."""
        return bool(self._asked) and rid in self._asked

    def own_answer(self, msg: jsonrpc.Message) -> bool:
        """Take ``msg`` if it answers a request of mcpwall's own (True: consumed)."""
        if not self._asked or msg.request_id is None:
            return False
        waiting = self._asked.get(msg.request_id)
        if waiting is None:
            return False
        waiting[1].append(msg)
        waiting[0].set()
        return True

    def _own_id(self) -> str:
        if not self._prefix:
            self._prefix = f"mcpwall-{secrets.token_hex(6)}-"
        while True:
            ident = f"{self._prefix}{next(self._counter)}"
            if ident not in self._taken:  # never an id the client may answer twice
                return ident


class Held:
    """One client request held for approval, from its decision to its verdict."""

    __slots__ = ("_answer", "_approval", "_elicits", "_holds", "_label", "_reason", "_scope",
                 "_started", "_token", "_withdrawal", "call", "call_id", "decision", "rid")

    def __init__(self, holds: Holds, call: mcp.Call, msg: jsonrpc.Message,
                 decision: Decision, call_id: str, elicits: bool = False) -> None:
        self.call = call
        self._elicits = elicits  # may its client be asked (rule 3)?
        self.decision = decision
        self.call_id = call_id
        self.rid = msg.request_id
        self._holds = holds
        self._token = mcp.progress_token(msg)
        self._scope = trio.CancelScope()  # cancelled: withdrawn (or refused)
        self._reason = CANCELLED_BY_CLIENT
        self._answer = False  # ended early: refuse with ``_reason`` (else no answer)
        self._withdrawal = Withdrawal()  # how the desk closes its request then
        self._label = "waiting for approval"  # what progress notifications say
        self._approval: str | None = None  # the desk's request id, once filed
        self._started = time.monotonic()

    def withdraw(self, reason: str) -> None:
        """End the call unanswered: its client cancelled it or went away (rule 4)."""
        self._reason = reason
        self._scope.cancel()

    def refuse(self, reason: str) -> None:
        """End the call with a refusal naming ``reason``: mcpwall stops (rule 4)."""
        self._reason = reason
        self._answer = True
        self._withdrawal.status = "abandoned"
        self._withdrawal.note = STOPPED
        self._scope.cancel()

    async def verdict(self, to_client: ToClient | None) -> Ended:
        """Wait until a person decides, the deadline passes or the call is withdrawn.

        ``to_client`` (None when the front cannot write before the answer)
        carries progress keep-alives and elicitation.
        """
        ended: Ended | None = None
        self._started = time.monotonic()
        every = self._holds.settings.progress_seconds
        with self._scope:
            await trio.lowlevel.checkpoint_if_cancelled()  # withdrawn already: nobody asked
            async with trio.open_nursery() as nursery:
                if to_client is not None and self._token is not None and every > 0:
                    nursery.start_soon(self._keep_alive, to_client, self._token, every)
                ended = await self._ask(to_client)
                nursery.cancel_scope.cancel()
        if ended is not None:
            return ended
        # Withdrawn: the client cancelled the request or went away, and gets
        # no answer; or mcpwall stops, and the client is told. The desk
        # closed its request (``ask`` was cancelled).
        return Ended(decision=Decision(DENY, rule=self.decision.rule, reason=self._reason),
                     verdict="abandoned" if self._answer else "withdrawn",
                     answered=self._answer, note=self._reason, approval=self._approval,
                     via="desk" if self._approval else "client")

    async def end(self, ended: Ended) -> None:
        """Record the ``approval`` lifecycle event (after the verdict's decision event)."""
        holds = self._holds
        await append_lifecycle(holds.audit, "approval", session=holds.session,
                               principal=holds.caller.principal, server=holds.server,
                               detail={"approval": ended.approval, "call_id": self.call_id,
                                       "verdict": ended.verdict, "by": ended.by,
                                       "note": ended.note, "via": ended.via,
                                       "scope": ended.scope,
                                       "waited_s": round(time.monotonic() - self._started, 3)})
        holds.log.info("call_approval_ended", approval=ended.approval, verdict=ended.verdict,
                       by=ended.by, via=ended.via, note=ended.note)

    def release(self) -> None:
        """Its id is free again: the mediator recorded the verdict (rule 5)."""
        calls = self._holds._calls
        if self.rid is not None and calls.get(self.rid) is self:
            del calls[self.rid]

    def _ended(self, verdict: Verdict, reason: str, via: Via,
               approval: str | None = None) -> Ended:
        action: Action = ALLOW if verdict.status == "approved" else DENY
        return Ended(decision=Decision(action, rule=self.decision.rule, reason=reason),
                     verdict=verdict.status, via=via, by=verdict.by, note=verdict.note,
                     scope=verdict.scope, approval=approval)

    async def _ask(self, to_client: ToClient | None) -> Ended:
        """Who decides this call, and what they decided (rules 1 to 3)."""
        holds, call, decision = self._holds, self.call, self.decision
        desk = holds.desk
        if desk is not None:
            standing = desk.standing_for(session=None if holds.sessionless else holds.session,
                                         principal=holds.caller.principal,
                                         server=holds.server, target=call.target,
                                         rule=decision.rule)
            if standing is not None:
                return self._ended(
                    Verdict("approved", standing.by, f"standing approval {standing.id}",
                            standing.scope, standing.until_ns),
                    f"approved by standing approval {standing.id} "
                    f"({standing.by or 'someone'}, {standing.describe()})",
                    "standing", standing.id)
        if decision.approval == "client" and self._elicits and to_client is not None:
            return await self._elicit(to_client)
        if desk is None:
            return self._ended(Verdict("rejected"), "approval in the client is not possible "
                               "here (the client cannot be asked on this connection) and there "
                               "is no approval desk", "none")
        request = desk.new_request(
            session=holds.session, principal=holds.caller.principal, grant=holds.caller.grant,
            server=holds.server, method=call.method, target=call.target,
            arguments=call.arguments, rule=decision.rule, reason=decision.reason,
            call_id=self.call_id)
        self._approval = request.id
        self._label = f"waiting for approval (request {request.id})"
        holds.log.warning("call_held", method=call.method, target=call.target,
                          rule=decision.rule, approval=request.id)
        verdict = await desk.ask(request, self._withdrawal, sessionless=holds.sessionless)
        by = verdict.by or "nobody"
        note = f": {verdict.note}" if verdict.note else ""
        if verdict.status == "approved":
            reason = f"approved by {by}{note}"
            if verdict.scope == "session" and holds.sessionless:
                reason += " (scope session: this call only, as it has no session)"
            elif verdict.scope == "session":
                reason += " (for the rest of the session)"
            elif verdict.scope == "minutes":
                reason += f" (until {_utc(verdict.scope_until_ns)} for this principal)"
        elif verdict.status == "expired":
            reason = f"no one approved it within {desk.settings.timeout_seconds:g} s"
        else:
            reason = f"rejected by {by}{note}"
        return self._ended(verdict, reason, "desk", request.id)

    async def _elicit(self, to_client: ToClient) -> Ended:
        """Ask the person in the client (elicitation/create) and wait for the answer."""
        holds = self._holds
        ident = holds._own_id()
        answered, box = trio.Event(), list[jsonrpc.Message]()
        holds._asked[ident] = (answered, box)
        self._label = "waiting for your answer in the client"
        timeout = holds.settings.timeout_seconds
        holds.log.warning("call_held", method=self.call.method, target=self.call.target,
                          rule=self.decision.rule, approval="client", elicitation=ident)
        try:
            await to_client(jsonrpc.request(mcp.ELICITATION_CREATE, self._question(), ident))
            with trio.move_on_after(timeout):
                await answered.wait()
        finally:
            holds._asked.pop(ident, None)
            if not box:  # withdrawn or no answer: the client may drop the question
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await to_client(jsonrpc.request(mcp.CANCELLED, {
                        "requestId": ident, "reason": "mcpwall: the call no longer waits"}))
        who = f"client:{holds.caller.principal}"
        if not box:
            return self._ended(Verdict("expired"),
                               f"no answer in the client within {timeout:g} s", "client")
        result = None
        if box[0].has_result:
            with contextlib.suppress(*jsonrpc.DECODE_ERRORS):
                result = _elicit_decoder.decode(box[0].result)
        if result is None:
            return self._ended(Verdict("rejected", who, "the client answered with an error"),
                               f"rejected: the client could not ask ({who})", "client")
        if result.action == "accept" and (result.content or {}).get(ELICIT_FIELD) is True:
            return self._ended(Verdict("approved", who, "accepted in the client"),
                               f"approved by {who} in the client", "client")
        what = "declined" if result.action != "accept" else "accepted without approving"
        if result.action == "cancel":
            what = "cancelled"
        return self._ended(Verdict("rejected", who, f"{what} in the client"),
                           f"rejected by {who} in the client ({what})", "client")

    def _question(self) -> dict[str, Any]:
        return approval_question(self.call, self.decision, self._holds.server)

    async def _keep_alive(self, to_client: ToClient, token: int | str, every: float) -> None:
        """Progress notifications while the call is held, so the client keeps waiting."""
        count = 0
        while True:
            await trio.sleep(every)
            count += 1
            await to_client(mcp.progress(token, count, self._label))


def approval_question(call: mcp.Call, decision: Decision, server: str) -> dict[str, Any]:
    """The ``elicitation/create`` params that ask the person in the client to
    approve ``call`` (arguments redacted and cut to 500 characters)."""
    args = json.dumps(redact_arguments(call.arguments or {}), sort_keys=True)
    if len(args) > 500:
        args = args[:497] + "..."
    why = f" ({decision.reason})" if decision.reason else ""
    return {
        "message": f"mcpwall holds a call for your approval: {call.target or call.method} "
                   f"on server {server!r} with arguments {args}. "
                   f"Rule {decision.rule}{why}. Approve this call?",
        "requestedSchema": {
            "type": "object",
            "properties": {ELICIT_FIELD: {"type": "boolean", "title": "Approve this call",
                                          "default": False}},
            "required": [ELICIT_FIELD],
        },
    }


def _utc(ns: int | None) -> str:
    return "?" if ns is None else time.strftime("%H:%M:%S UTC", time.gmtime(ns / 1e9))
