"""Audit events: what the gateway hands to the audit trail.

The gateway builds these and passes them to an :class:`firewall.gateway.mediator.AuditPoint`;
the audit writer adds the sequence number, instance id and chain hash, applies
redaction to ``arguments``, and appends them. ``call_id`` links a decision to
its outcome (unique within one mcpwall instance).
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

import msgspec

OutcomeStatus = Literal[
    "ok", "tool_error", "jsonrpc_error", "timeout", "upstream_failure", "cancelled"
]

LifecycleKind = Literal[
    "session_start", "session_end", "session_refused",
    "policy_load", "policy_reload", "policy_reload_failed", "policy_edit",
    "upstream_start", "upstream_exit", "upstream_restart",
    "approval", "kill_switch", "operator_login_throttled",
    "message_dropped", "input_required", "task", "listen_start", "listen_end",
]


class DecisionEvent(msgspec.Struct, frozen=True, tag="decision", kw_only=True):
    """One decision on one request (client->server or server->client)."""

    ts_ns: int
    call_id: str
    session: str
    principal: str
    grant: str
    server: str
    method: str
    direction: str = "client"
    tool: str | None = None
    uri: str | None = None
    prompt: str | None = None
    request_id: str | None = None  # the JSON-RPC id, as JSON text (1 and "1" differ)
    arguments: dict[str, Any] | None = None
    decision: str
    rule: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    dry_run: bool = False
    # What the request went by (MCP 2026-07-28 says it in each request's
    # ``_meta``; a 2025 session in its ``initialize``): bounded by the
    # mediator, redacted by the writer like ``arguments``. What the client
    # claims about itself; who the caller is comes from ``principal`` alone.
    protocol_version: str | None = None
    client_info: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] | None = None


class OutcomeEvent(msgspec.Struct, frozen=True, tag="outcome", kw_only=True):
    """What happened to a forwarded request."""

    ts_ns: int
    call_id: str
    session: str
    server: str
    status: OutcomeStatus
    error_code: int | None = None
    error_message: str | None = None
    latency_ns: int
    response_bytes: int = 0


class LifecycleEvent(msgspec.Struct, frozen=True, tag="lifecycle", kw_only=True):
    """Session, policy, upstream and approval events."""

    ts_ns: int
    kind: LifecycleKind
    session: str | None = None
    principal: str | None = None
    server: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


Event = DecisionEvent | OutcomeEvent | LifecycleEvent


class Receipt(Protocol):
    """Handed back for each appended event."""

    async def committed(self) -> None:
        """Return once the event is durable (``durable`` mode: committed with fsync).

        In ``fast`` mode it returns at once. Raises if the writer failed.
        """
        ...


class AuditPoint(Protocol):
    """Where the gateway appends events. Implemented by the audit writer."""

    async def append(self, event: Event) -> Receipt:
        """Queue one event; waits only while the bounded queue is full (backpressure)."""
        ...


async def append_lifecycle(
    audit: AuditPoint | None, kind: LifecycleKind, *, session: str | None = None,
    principal: str | None = None, server: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append a lifecycle event now (no-op without an audit point)."""
    if audit is not None:
        await audit.append(LifecycleEvent(ts_ns=time.time_ns(), kind=kind, session=session,
                                          principal=principal, server=server,
                                          detail=detail or {}))
