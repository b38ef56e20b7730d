"""The hash chain: how an event becomes a row, and how a row is hashed. Pure.

Rules this module keeps (the verifier depends on every one of them):

1. A row is the tuple of :data:`COLUMNS`, in that order, exactly as SQLite
   stores it: integers stay integers, ``dry_run`` is 0/1 (NULL outside
   decisions), ``arguments`` and ``detail`` are JSON *text*.
2. The canonical encoding of a row is the compact JSON array
   ``[FORMAT, seq, ts_ns, ..., prev_hash]`` (every column but ``hash``, in
   column order; rule 6 for the client-meta columns) as msgspec encodes it:
   no whitespace, floats in shortest round-trip form, strings UTF-8 with only the mandatory escapes.
3. ``hash = sha256(canonical).hexdigest()``. The first row of a chain has
   ``prev_hash = GENESIS``; every later row has its predecessor's ``hash``, also
   across segment files.
4. ``seq`` starts at 1 and increases by exactly one per row.
5. Rows built here for writing carry :data:`NULL` (a NaN) where SQLite will
   store NULL: CPython's sqlite3 binds a float without the adaptation step a
   ``None`` goes through (about 0.5 us per column, most of an insert), SQLite
   stores a bound NaN as NULL, and msgspec encodes a NaN as ``null``, so the
   hash is the one the row read back (with ``None``) gives. Both behaviours
   are pinned by tests. Rows read from SQLite carry ``None``; both verify.
6. The client-meta columns (:data:`META_COLUMNS`: the protocol revision,
   clientInfo and capabilities a decision went by, added with MCP
   2026-07-28) take part in the canonical encoding only when one of them is
   set: a row whose three are NULL (every outcome and lifecycle row, every
   row of a file written before them, which has no such columns) is encoded
   exactly as before, so old files and old rows verify unchanged; a row with
   any of them set is encoded with all three, before ``prev_hash``. The two
   forms differ in length, so no row has both encodings.

Example::

    row = event_row(event, seq=1, instance="gw-1", prev_hash=GENESIS, redactor=None)
    assert verify_row(row)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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
    "error_message", "latency_ns", "response_bytes", "detail",
    "protocol_version", "client_info", "client_capabilities", "prev_hash", "hash",
)
# Columns added after format 1's first files (rule 6): hashed only when set.
META_COLUMNS: Final = ("protocol_version", "client_info", "client_capabilities")
INDEX: Final = {name: i for i, name in enumerate(COLUMNS)}
SEQ: Final = INDEX["seq"]
PREV: Final = INDEX["prev_hash"]
HASH: Final = INDEX["hash"]
META: Final = INDEX["protocol_version"]
assert COLUMNS[META:PREV] == META_COLUMNS

Row = tuple[Any, ...]

# Stands for SQL NULL in rows built for writing (rule 5). Compare with
# ``is NULL`` or :func:`stored`, never with ``==`` (a NaN equals nothing).
NULL: Final[float] = float("nan")

_json = msgspec.json.Encoder()
_sha256 = hashlib.sha256
_PREFIX: Final = _json.encode([FORMAT])[:-1] + b","  # b'["mcpwall-audit/1",'


def hashed(row: Row) -> Row:
    """The values of ``row`` the canonical encoding holds (rule 6): every
    column but ``hash``, less the client-meta columns when none is set."""
    a, b, c = row[META], row[META + 1], row[META + 2]
    if (a is None or a is NULL) and (b is None or b is NULL) and (c is None or c is NULL):
        return row[:META] + row[PREV:HASH]
    return row[:HASH]


def canonical(row: Row) -> bytes:
    """The bytes hashed for ``row`` (a full row; its ``hash`` is left out)."""
    return _PREFIX + _json.encode(hashed(row))[1:]


def row_hash(row: Row) -> str:
    """The chain hash ``row`` should carry."""
    return _sha256(_PREFIX + _json.encode(hashed(row))[1:]).hexdigest()


def verify_row(row: Row) -> bool:
    """True if the row's ``hash`` matches its content."""
    return bool(row_hash(row) == row[HASH])


def stored(row: Row) -> Row:
    """``row`` as SQLite gives it back: :data:`NULL` becomes ``None``."""
    return tuple(None if v is NULL else v for v in row)


def with_seq(row: Row, seq: int) -> Row:
    """The same row claiming another position (the verifier uses it to explain a break)."""
    return (seq, *row[1:])


class WireDecision(DecisionEvent, frozen=True, tag="decision", kw_only=True):
    """A :class:`DecisionEvent` as the writer process decodes it: ``arguments``
    stays the JSON text the gateway encoded (msgspec, as :func:`event_row`
    would encode the dict), so arguments with nothing to redact are stored as
    they came, without being decoded, walked and encoded again."""

    arguments: msgspec.Raw = msgspec.Raw(b"null")  # type: ignore[assignment]


_arguments = msgspec.json.Decoder(dict[str, Any])


def _args_text(arguments: Any, redactor: Redactor | None) -> Any:
    if isinstance(arguments, msgspec.Raw):  # a WireDecision's: JSON text
        text = bytes(arguments).decode()
        if text == "null":
            return NULL
        if redactor is None or redactor.clean(text):
            return text  # what encoding the decoded dict gives (rule 2)
        arguments = _arguments.decode(text)
    if arguments is None:
        return NULL
    if redactor is not None and arguments:
        arguments = redactor.apply(arguments)
    return _json.encode(arguments).decode()


def _meta_text(value: Any, redactor: Redactor | None) -> Any:
    """clientInfo or capabilities as stored: JSON text, redacted like arguments."""
    if value is None:
        return NULL
    if redactor is not None and isinstance(value, dict) and value:
        value = redactor.apply(value)
    return _json.encode(value).decode()


def _opt(value: Any) -> Any:
    return NULL if value is None else value


_I64: Final = 2**63


def _int64(value: Any, name: str) -> int:
    number = int(value)
    if -_I64 <= number < _I64:
        return number
    raise ValueError(f"{name}: {number} does not fit in a 64-bit SQLite integer")


def _base(event: Event, seq: int, instance: str, prev_hash: str,
          redactor: Redactor | None) -> tuple[Any, ...]:
    N = NULL
    # ``x if type(x) is int and ...`` and ``N if x is None else x`` inline
    # what _int64 and _opt do: the writer process builds every row here, and
    # the calls were a tenth of it.
    ts = event.ts_ns
    if type(ts) is not int or not -_I64 <= ts < _I64:
        ts = _int64(ts, "ts_ns")
    if isinstance(event, DecisionEvent):
        retry = event.retry_after
        if retry is not None:
            # + 0.0 turns -0.0 into 0.0: SQLite reads a stored -0.0 back as 0.0,
            # and the hash must be the one of what it gives back.
            retry = float(retry) + 0.0
        tool, uri, prompt, rid = event.tool, event.uri, event.prompt, event.request_id
        rule, reason = event.rule, event.reason
        version = event.protocol_version
        return (
            seq, ts, instance, "decision", event.call_id,
            event.session, event.principal, event.grant, event.server, event.method,
            event.direction, N if tool is None else tool, N if uri is None else uri,
            N if prompt is None else prompt, N if rid is None else rid,
            _args_text(event.arguments, redactor), event.decision,
            N if rule is None else rule, N if reason is None else reason,
            N if retry is None else retry, 1 if event.dry_run else 0, N, N, N, N, N, N,
            N if version is None else version, _meta_text(event.client_info, redactor),
            _meta_text(event.client_capabilities, redactor), prev_hash,
        )
    if isinstance(event, OutcomeEvent):
        code, message = event.error_code, event.error_message
        latency, size = event.latency_ns, event.response_bytes
        if type(latency) is not int or not -_I64 <= latency < _I64:
            latency = _int64(latency, "latency_ns")
        if type(size) is not int or not -_I64 <= size < _I64:
            size = _int64(size, "response_bytes")
        return (
            seq, ts, instance, "outcome", event.call_id,
            event.session, N, N, event.server, N, N, N, N, N, N, N, N, N, N, N,
            N, event.status, N if code is None else _int64(code, "error_code"),
            N if message is None else message, latency, size, N, N, N, N,
            prev_hash,
        )
    if isinstance(event, LifecycleEvent):
        detail = _json.encode(event.detail).decode() if event.detail else N
        return (
            seq, ts, instance, event.kind, N, _opt(event.session),
            _opt(event.principal), N, _opt(event.server), N, N, N, N, N, N, N, N, N, N, N,
            N, N, N, N, N, N, detail, N, N, N, prev_hash,
        )
    raise TypeError(f"not an audit event: {type(event).__name__}")


def event_row(event: Event, *, seq: int, instance: str, prev_hash: str,
              redactor: Redactor | None) -> Row:
    """The full row (hash included) for ``event`` at position ``seq``.

    NULL columns hold :data:`NULL` (rule 5); :func:`stored` gives the row as read back.
    Raises ``ValueError``/``TypeError`` (and msgspec's ``EncodeError``) for an
    event that cannot be stored: an integer beyond 64 bits, a value JSON cannot hold.
    """
    base = _base(event, seq, instance, prev_hash, redactor)
    return (*base, _sha256(_PREFIX + _json.encode(hashed(base))[1:]).hexdigest())


# Where a row's encoding starts in the canonical bytes: the row's own "[" is
# overwritten with the "," that follows FORMAT.
_AT: Final = len(_PREFIX) - 1


def chain_rows(events: Iterable[Event], *, seq: int, instance: str, prev_hash: str,
               redactor: Redactor | None) -> list[Row]:
    """The rows of ``events`` chained after ``seq`` / ``prev_hash``: what
    :func:`event_row` gives for each, in one loop (the writer's per-batch path).

    Each row is encoded into one buffer that already holds the canonical
    prefix, and hashed there, instead of joining new bytes per row.
    """
    rows: list[Row] = []
    buf = bytearray(_PREFIX)
    encode_into, sha256, at, comma = _json.encode_into, _sha256, _AT, 44  # ord(",")
    head = prev_hash
    N, meta = NULL, META
    for event in events:
        seq += 1
        base = _base(event, seq, instance, head, redactor)
        # Rule 6 inline (hashed()): outcome and lifecycle rows never set them.
        if base[meta] is N and base[meta + 1] is N and base[meta + 2] is N:
            encode_into(base[:meta] + (head,), buf, at)  # noqa: RUF005
        else:
            encode_into(base, buf, at)
        buf[at] = comma
        head = sha256(buf).hexdigest()
        # Concatenation copies the tuple once; unpacking builds a list first.
        rows.append(base + (head,))  # noqa: RUF005
    return rows
