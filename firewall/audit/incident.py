"""A generated incident: the audit trail of one night on a virtualization fleet.

docs/audit.md investigates it ("an agent deleted a VM at 03:12: who, with
which grant, under which rule, what else did it do in that session?") and the
test suite replays that investigation. Deterministic: same events every time.

Example::

    with Trail(AuditSettings(path="incident.db"), instance_id="gw-eu-1") as trail:
        write_incident(trail)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from firewall.audit.events import DecisionEvent, Event, LifecycleEvent, OutcomeEvent
from firewall.audit.trail import Trail

START: Final = int(datetime(2025, 6, 1, 3, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
SESSION: Final = "s-7f3a"  # the session that deleted the VM
PRINCIPAL: Final = "nightly-agent"
GRANT: Final = "vm-admin"
DELETE_RULE: Final = "vm-admin-may-delete"
_S = 1_000_000_000


def _at(minute: int, second: int) -> int:
    return START + (minute * 60 + second) * _S


def _call(events: list[Event], n: int, *, ts: int, session: str, principal: str, grant: str,
          tool: str, arguments: dict[str, Any], decision: str, rule: str,
          reason: str | None = None, status: str | None = "ok", latency_ms: int = 40,
          retry_after: float | None = None, error: tuple[int, str] | None = None) -> None:
    call_id = f"{session}.{n}"
    events.append(DecisionEvent(
        ts_ns=ts, call_id=call_id, session=session, principal=principal, grant=grant,
        server="virtualization", method="tools/call", tool=tool, request_id=str(n),
        arguments=arguments, decision=decision, rule=rule, reason=reason,
        retry_after=retry_after))
    if decision == "allow" and status is not None:
        events.append(OutcomeEvent(
            ts_ns=ts + latency_ms * 1_000_000, call_id=call_id, session=session,
            server="virtualization", status=status,  # type: ignore[arg-type]
            error_code=error[0] if error else None, error_message=error[1] if error else None,
            latency_ns=latency_ms * 1_000_000, response_bytes=512))


def incident_events() -> list[Event]:
    """The night's events, in the order the gateway appended them."""
    ev: list[Event] = [
        LifecycleEvent(ts_ns=_at(0, 0), kind="policy_load", server="virtualization",
                       detail={"file": "rules/virtualization.json", "sha256": "9f2c" * 16}),
        LifecycleEvent(ts_ns=_at(0, 1), kind="upstream_start", server="virtualization",
                       detail={"pid": 4242}),
        # A harmless reader, before and during the incident.
        LifecycleEvent(ts_ns=_at(2, 0), kind="session_start", session="s-1b20",
                       principal="alice", server="virtualization"),
    ]
    _call(ev, 1, ts=_at(2, 5), session="s-1b20", principal="alice", grant="readonly",
          tool="list_vms", arguments={"zone": "eu-west-1"}, decision="allow", rule="read-only")
    _call(ev, 2, ts=_at(3, 10), session="s-1b20", principal="alice", grant="readonly",
          tool="stop_vm", arguments={"name": "vm-dev-3"}, decision="deny",
          rule="readonly-no-writes", reason="grant readonly may not call stop_vm")
    # The agent of the incident.
    ev.append(LifecycleEvent(ts_ns=_at(10, 0), kind="session_start", session=SESSION,
                             principal=PRINCIPAL, server="virtualization",
                             detail={"client": "nightly-maintenance/2.1"}))
    _call(ev, 1, ts=_at(10, 2), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="list_vms", arguments={"zone": "eu-west-1"}, decision="allow", rule="read-only")
    _call(ev, 2, ts=_at(10, 30), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="get_vm", arguments={"name": "vm-prod-7"}, decision="allow", rule="read-only")
    _call(ev, 3, ts=_at(11, 0), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="snapshot_vm", arguments={"name": "vm-prod-7", "api_token": "tok-live-51b9"},
          decision="allow", rule="vm-admin-may-snapshot", status="tool_error")
    _call(ev, 4, ts=_at(11, 45), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="stop_vm", arguments={"name": "vm-prod-7", "force": True},
          decision="allow", rule="vm-admin-may-stop")
    _call(ev, 5, ts=_at(12, 7), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="delete_vm", arguments={"name": "vm-prod-7", "purge_disks": True},
          decision="allow", rule=DELETE_RULE, latency_ms=2300)
    _call(ev, 6, ts=_at(12, 20), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="delete_vm", arguments={"name": "vm-prod-8", "purge_disks": True},
          decision="limited", rule="one-delete-per-hour",
          reason="at most 1 delete_vm per hour per principal", retry_after=3467.0)
    _call(ev, 7, ts=_at(12, 31), session=SESSION, principal=PRINCIPAL, grant=GRANT,
          tool="delete_vm", arguments={"name": "vm-prod-9", "purge_disks": True},
          decision="deny", rule="protect-tagged-prod",
          reason="vm-prod-9 is tagged protected")
    ev.append(LifecycleEvent(ts_ns=_at(13, 0), kind="session_end", session=SESSION,
                             principal=PRINCIPAL, server="virtualization",
                             detail={"reason": "client closed"}))
    _call(ev, 3, ts=_at(20, 0), session="s-1b20", principal="alice", grant="readonly",
          tool="get_vm", arguments={"name": "vm-prod-7"}, decision="allow", rule="read-only",
          status="jsonrpc_error", error=(-32602, "no such VM: vm-prod-7"))
    ev.append(LifecycleEvent(ts_ns=_at(21, 0), kind="session_end", session="s-1b20",
                             principal="alice", server="virtualization"))
    return ev


def write_incident(trail: Trail) -> int:
    """Append the incident to ``trail``; return the last seq."""
    return trail.append_batch(incident_events())
