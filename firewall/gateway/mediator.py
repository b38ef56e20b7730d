"""The per-session flow every message takes: decide -> audit -> forward -> observe.

One :class:`Mediator` serves one client session against one upstream server,
whatever the transports (HTTP or stdio front, HTTP or stdio upstream). The
fronts own the I/O; the mediator owns the rules. Invariants it keeps:

1. Every request, in either direction, gets exactly one decision from the
   policy point and one decision event in the audit trail before anything
   else happens to it. Notifications and responses are not decided (there is
   nothing to refuse: a response answers a request that was decided).
2. An allowed message is forwarded as the ORIGINAL bytes. The one exception is
   a tools/list result from which tools the caller can never call are removed.
3. Forwarding waits for :meth:`Routed.ready`: in durable audit mode that is the
   commit of the decision event, so no call reaches an upstream unaudited.
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
   ``pending`` is refused at once with -32003.
"""

from __future__ import annotations

import itertools
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
from firewall.gateway.approvals import ApprovalDesk
from firewall.log import get_logger
from firewall.policy import render
from firewall.policy.decision import ALLOW, DENY, PENDING, Caller, Decision, PolicyPoint
from firewall.protocol import jsonrpc, mcp
from firewall.protocol.jsonrpc import Kind, RequestId


class Routed:
    """Where the bytes of one message go.

    ``upstream``: bytes for the server; ``client``: bytes for the client. Either
    may be None. Send ``upstream`` only after ``await ready()``.
    """

    __slots__ = ("client", "held", "receipt", "upstream")

    def __init__(
        self,
        *,
        upstream: bytes | None = None,
        client: bytes | None = None,
        receipt: Receipt | None = None,
        held: Callable[[], Awaitable[Routed]] | None = None,
    ) -> None:
        self.upstream = upstream
        self.client = client
        self.receipt = receipt
        # Set (and nothing else) when the message waits for a person: awaiting
        # it gives the Routed of the verdict. Only from_client(wait=False) returns it.
        self.held = held

    async def ready(self) -> None:
        """Wait until the message may be forwarded (its decision is durable)."""
        if self.receipt is not None:
            await self.receipt.committed()


class _Pending(msgspec.Struct):
    call_id: str
    method: str
    started_ns: int
    cancelled: bool = False


class _ToolResultFlag(msgspec.Struct):
    isError: bool = False


class _Envelope(msgspec.Struct):
    result: dict[str, Any]


_tool_flag_decoder: Final = msgspec.json.Decoder(_ToolResultFlag)
_tools_list_decoder: Final = msgspec.json.Decoder(_Envelope)


class Mediator:
    """Decides, audits and routes the messages of one session.

    Example (a front's loop)::

        routed = await mediator.from_client(line)
        if routed.client: await to_client(routed.client)
        if routed.upstream: await routed.ready(); await to_upstream(routed.upstream)
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
        self._held_calls: dict[RequestId, trio.CancelScope] = {}
        self._counter = itertools.count(1)
        self.log = get_logger(server=server, session=session, principal=caller.principal)

    @property
    def pending_count(self) -> int:
        """Requests forwarded to the upstream and not answered yet."""
        return len(self._client_pending)

    # -- client -> server ------------------------------------------------
    async def from_client(self, data: bytes, *, wait: bool = True) -> Routed:
        """Route one message the client sent.

        A call held for approval is waited for here, unless ``wait`` is False:
        then the Routed has only ``held``, which the caller awaits (in its own
        task, so that the session's other messages keep flowing).
        """
        routed = await self._from_client(data)
        if wait and routed.held is not None:
            return await routed.held()
        return routed

    async def _from_client(self, data: bytes) -> Routed:
        try:
            # One decode gives the envelope and, for a request, the policy view.
            envelope, call = mcp.decode(data, "client")
        except jsonrpc.ProtocolError as exc:
            if exc.code == jsonrpc.INVALID_PARAMS:  # a request with bad params
                return Routed(client=exc.response())
            self.log.warning("client_message_rejected", code=exc.code, reason=exc.message)
            return Routed(client=exc.response())
        if call is not None:
            return await self._request(envelope, data, "client", call)
        assert isinstance(envelope, jsonrpc.Message)  # only a request may come back lighter
        msg = envelope
        kind = msg.kind
        if kind is Kind.RESPONSE:
            await self._answered(self._server_pending, msg, len(data))
            return Routed(upstream=data)
        if msg.method == mcp.CANCELLED:
            self._note_cancelled(msg)
        return Routed(upstream=data)

    # -- server -> client ------------------------------------------------
    async def from_server(self, data: bytes) -> Routed:
        """Route one message the upstream sent."""
        try:
            msg = jsonrpc.decode(data)
        except jsonrpc.ProtocolError as exc:
            # Nothing sensible can reach the client: log it, keep the session.
            self.log.warning("upstream_message_rejected", code=exc.code, reason=exc.message,
                             size=len(data))
            return Routed()
        kind = msg.kind
        if kind is Kind.RESPONSE:
            rid = msg.request_id
            if rid is not None and rid in self._tools_list_ids:
                self._tools_list_ids.discard(rid)
                data = self._filter_tools_list(msg, data)
            await self._answered(self._client_pending, msg, len(data))
            return Routed(client=data)
        if kind is Kind.REQUEST:
            return await self._request(msg, data, "server")
        return Routed(client=data)

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
    async def _request(self, msg: jsonrpc.Envelope, data: bytes, direction: str,
                       call: mcp.Call | None = None) -> Routed:
        rid = msg.request_id
        reply_side = "client" if direction == "client" else "upstream"
        if call is None:
            assert isinstance(msg, jsonrpc.Message)
            try:
                call = mcp.view(msg, direction)
            except jsonrpc.ProtocolError as exc:
                return _to(reply_side, exc.response())
        decision = self.policy.decide(call, self.caller, self.server, self.session)
        call_id = f"{self.session}.{next(self._counter)}"
        receipt = await self._decided(call, msg, decision, call_id)
        if (decision.action == PENDING and not decision.dry_run and direction == "client"
                and self.approvals is not None):
            desk = self.approvals
            # A held call is rare: it gets the full envelope (raw params) back.
            full = msg if isinstance(msg, jsonrpc.Message) else jsonrpc.decode(data)
            held_call = call

            async def verdict() -> Routed:
                return await self._held(desk, held_call, full, data, decision, call_id)

            return Routed(held=verdict)
        if not decision.enforced_allow:
            self.log.info("call_refused", method=call.method, target=call.target,
                          decision=decision.action, rule=decision.rule)
            return _to(reply_side, self._refusal(call, rid, decision), receipt)
        return self._forwarded(call, rid, data, direction, call_id, receipt)

    def _forwarded(self, call: mcp.Call, rid: RequestId | None, data: bytes, direction: str,
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
            return Routed(upstream=data, receipt=receipt)
        return Routed(client=data, receipt=receipt)

    async def _held(self, desk: ApprovalDesk, call: mcp.Call, msg: jsonrpc.Message,
                    data: bytes, decision: Decision, call_id: str) -> Routed:
        """Wait for a person's verdict on a held call, then forward or refuse it."""
        request = desk.new_request(
            session=self.session, principal=self.caller.principal, grant=self.caller.grant,
            server=self.server, method=call.method, target=call.target,
            arguments=call.arguments, rule=decision.rule, reason=decision.reason)
        self.log.warning("call_held", method=call.method, target=call.target,
                         rule=decision.rule, approval=request.id)
        started = time.monotonic()
        rid = msg.request_id
        with trio.CancelScope() as scope:
            if rid is not None:
                self._held_calls[rid] = scope
            try:
                verdict = await desk.ask(request)
            finally:
                if rid is not None:
                    self._held_calls.pop(rid, None)
        if scope.cancelled_caught:
            # The client cancelled the request (notifications/cancelled): the
            # desk withdrew it, and a cancelled request gets no answer.
            await self._decided(call, msg, Decision(DENY, rule=decision.rule,
                                                    reason="cancelled by the client"),
                                call_id, recorded_as="rejected")
            return Routed()
        by = verdict.by or "nobody"
        if verdict.status == "approved":
            reason = f"approved by {by}" + (f": {verdict.note}" if verdict.note else "")
        elif verdict.status == "expired":
            reason = f"no one approved it within {desk.settings.timeout_seconds:g} s"
        else:
            reason = f"rejected by {by}" + (f": {verdict.note}" if verdict.note else "")
        outcome = "approved" if verdict.status == "approved" else "rejected"
        final = Decision(ALLOW if outcome == "approved" else DENY, rule=decision.rule,
                         reason=reason)
        receipt = await self._decided(call, msg, final, call_id, recorded_as=outcome)
        await append_lifecycle(self.audit, "approval", session=self.session,
                               principal=self.caller.principal, server=self.server, detail={
                                   "approval": request.id, "call_id": call_id,
                                   "verdict": verdict.status, "by": verdict.by,
                                   "note": verdict.note,
                                   "waited_s": round(time.monotonic() - started, 3)})
        self.log.info("call_approval_ended", approval=request.id, verdict=verdict.status, by=by)
        if outcome == "approved":
            return self._forwarded(call, msg.request_id, data, "client", call_id, receipt)
        return Routed(client=self._refusal(call, msg.request_id, final), receipt=receipt)

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

    def _refusal(self, call: mcp.Call, rid: RequestId | None, decision: Decision) -> bytes:
        if call.method == mcp.TOOLS_CALL and self.deny_tools_call_as == "tool_result":
            return mcp.tool_error_result(rid, render.denial_text(decision))
        return jsonrpc.error_response(rid, render.error_code(decision),
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
                    held.cancel()

    def _filter_tools_list(self, msg: jsonrpc.Message, data: bytes) -> bytes:
        """Drop the tools this caller can never call; keep the bytes if none is dropped."""
        if not msg.has_result:
            return data
        try:
            result = _tools_list_decoder.decode(data).result
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


def _to(side: str, data: bytes, receipt: Receipt | None = None) -> Routed:
    if side == "client":
        return Routed(client=data, receipt=receipt)
    return Routed(upstream=data, receipt=receipt)

