"""The hash chain: how an event becomes a row, and how a row is hashed. Pure.

Rules this module keeps (the verifier depends on every one of them):

1. A row is the tuple of :data:`COLUMNS`, in that order, exactly as SQLite
   stores it: integers stay integers, ``dry_run`` is 0/1 (NULL outside
   decisions), ``arguments`` and ``detail`` are JSON *text*.
2. The canonical encoding of a row is the compact JSON array
   ``[FORMAT, seq, ts_ns, ..., prev_hash]`` (every column but ``hash``, in
   column order) as msgspec encodes it: no whitespace, floats in shortest
   round-trip form, strings UTF-8 with only the mandatory escapes.
3. ``hash = sha256(canonical).hexdigest()``. The first row of a chain has
   ``prev_hash = GENESIS``; every later row has its predecessor's ``hash``, also
   across segment files.
4. ``seq`` starts at 1 and increases by exactly one per row.

Example::

    row = event_row(event, seq=1, instance="gw-1", prev_hash=GENESIS, redactor=None)
    assert verify_row(row)
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from firewall.audit.events import DecisionEvent, Event, LifecycleEvent, OutcomeEvent
from firewall.audit.redaction import Redactor

FORMAT: Final = "mcpwall-audit/1"
GENESIS: Final = "0" * 64

COLUMNS: Final = (
    "seq", "ts_ns", "instance", "kind", "call_id", "session", "principal", "grant",
    "server", "method", "direction", "tool", "uri", "prompt", "request_id", "arguments",
    "decision", "rule", "reason", "retry_after", "dry_run", "status", "error_code",
    "error_message", "latency_ns", "response_bytes", "detail", "prev_hash", "hash",
)
INDEX: Final = {name: i for i, name in enumerate(COLUMNS)}
SEQ: Final = INDEX["seq"]
PREV: Final = INDEX["prev_hash"]
HASH: Final = INDEX["hash"]

Row = tuple[Any, ...]

_json = msgspec.json.Encoder()
_sha256 = hashlib.sha256


def canonical(row: Row) -> bytes:
    """The bytes hashed for ``row`` (a full row; its ``hash`` is left out)."""
    return _json.encode((FORMAT, *row[:HASH]))


def row_hash(row: Row) -> str:
    """The chain hash ``row`` should carry."""
    return _sha256(_json.encode((FORMAT, *row[:HASH]))).hexdigest()


def verify_row(row: Row) -> bool:
    """True if the row's ``hash`` matches its content."""
    return bool(row_hash(row) == row[HASH])


def with_seq(row: Row, seq: int) -> Row:
    """The same row claiming another position (the verifier uses it to explain a break)."""
    return (seq, *row[1:])


def _args_text(arguments: dict[str, Any] | None, redactor: Redactor | None) -> str | None:
    if arguments is None:
        return None
    if redactor is not None:
        arguments = redactor.apply(arguments)
    return _json.encode(arguments).decode()


def event_row(event: Event, *, seq: int, instance: str, prev_hash: str,
              redactor: Redactor | None) -> Row:
    """The full row (hash included) for ``event`` at position ``seq``."""
    base: tuple[Any, ...]
    if isinstance(event, DecisionEvent):
        base = (
            seq, int(event.ts_ns), instance, "decision", event.call_id, event.session,
            event.principal, event.grant, event.server, event.method, event.direction,
            event.tool, event.uri, event.prompt, event.request_id,
            _args_text(event.arguments, redactor), event.decision, event.rule, event.reason,
            None if event.retry_after is None else float(event.retry_after),
            1 if event.dry_run else 0, None, None, None, None, None, None,
            prev_hash,
        )
    elif isinstance(event, OutcomeEvent):
        base = (
            seq, int(event.ts_ns), instance, "outcome", event.call_id, event.session, None,
            None, event.server, None, None, None, None, None, None, None, None, None, None, None,
            None, event.status, None if event.error_code is None else int(event.error_code),
            event.error_message, int(event.latency_ns), int(event.response_bytes), None,
            prev_hash,
        )
    elif isinstance(event, LifecycleEvent):
        detail = _json.encode(event.detail).decode() if event.detail else None
        base = (
            seq, int(event.ts_ns), instance, event.kind, None, event.session, event.principal, None,
            event.server, None, None, None, None, None, None, None, None, None, None, None,
            None, None, None, None, None, None, detail, prev_hash,
        )
    else:  # pragma: no cover - the Event union is closed
        raise TypeError(f"not an audit event: {type(event).__name__}")
    return (*base, _sha256(_json.encode((FORMAT, *base))).hexdigest())
