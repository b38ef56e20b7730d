"""Audit events as JSON lines, CSV or CEF (ArcSight Common Event Format) for SIEMs.

Pure formatting: records in, text lines out. JSON lines carry every value
exactly; CSV cells are neutralised against formula injection unless the caller
asks for raw cells; a CEF record is always one line, escaped per the CEF
specification (:mod:`firewall.audit.escaping` keeps those rules).

Example::

    for line in cef_lines(records):
        print(line)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec

from firewall import __version__
from firewall.audit.escaping import cef_header, cef_key, cef_value, csv_cell, json_text
from firewall.audit.query import EVENT_COLUMNS, Record
from firewall.audit.store import REFUSALS

_json = msgspec.json.Encoder()

# CEF severity (0-10) by decision and by outcome status.
_SEVERITY: Final = {
    "allow": 1, "approved": 3, "pending": 4, "limited": 5, "invalid_arguments": 6,
    "deny": 7, "rejected": 7,
    "ok": 1, "cancelled": 2, "tool_error": 4, "jsonrpc_error": 4, "timeout": 5,
    "upstream_failure": 6,
}


def jsonl_lines(records: Iterable[Record]) -> Iterator[str]:
    """One JSON object per event, every column, exact (and one line, whatever splits it)."""
    for r in records:
        yield json_text(_json.encode({c: r.get(c) for c in EVENT_COLUMNS}))


def csv_text(records: Iterable[Record], columns: tuple[str, ...] = EVENT_COLUMNS,
             raw: bool = False) -> Iterator[str]:
    """CSV with a header row; yields one chunk per row.

    A string cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a
    leading ``'`` so that a spreadsheet shows it instead of evaluating it;
    ``raw=True`` writes every cell as stored.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    yield buf.getvalue()
    for r in records:
        buf.seek(0)
        buf.truncate()
        writer.writerow(["" if r.get(c) is None else (r.get(c) if raw else csv_cell(r.get(c)))
                         for c in columns])
        yield buf.getvalue()


def cef_line(r: Record) -> str:
    """One event as a CEF:0 line: never a raw CR, LF or other control character."""
    kind = r.get("kind") or "event"
    if kind == "decision":
        decision = r.get("decision") or "?"
        signature = f"decision:{decision}"
        target = r.get("tool") or r.get("uri") or r.get("prompt") or r.get("method") or ""
        verb = "refused" if decision in REFUSALS or decision == "limited" else decision
        name = f"{r.get('method')} {target} {verb}".strip()
        severity = _SEVERITY.get(decision, 5)
    elif kind == "outcome":
        status = r.get("status") or "?"
        signature, name, severity = f"outcome:{status}", f"call {status}", _SEVERITY.get(status, 3)
    else:
        signature, name, severity = f"lifecycle:{kind}", kind.replace("_", " "), 2
    target = r.get("tool") or r.get("uri") or r.get("prompt")
    latency = None if r.get("latency_ns") is None else r["latency_ns"] // 1_000_000
    plain: list[tuple[str, Any]] = [
        ("rt", (r.get("ts_ns") or 0) // 1_000_000), ("dvchost", r.get("instance")),
        ("externalId", r.get("call_id")), ("suser", r.get("principal")),
        ("request", r.get("method")), ("act", r.get("decision")), ("outcome", r.get("status")),
        ("reason", r.get("reason") or r.get("error_message")),
    ]
    labelled: list[tuple[str, str, Any]] = [
        ("cs1", "session", r.get("session")), ("cs2", "grant", r.get("grant")),
        ("cs3", "rule", r.get("rule")), ("cs4", "server", r.get("server")),
        ("cs5", "tool", target), ("cs6", "arguments", r.get("arguments")),
        ("cn1", "seq", r.get("seq")), ("cn2", "latency_ms", latency),
    ]
    parts = [f"{cef_key(k)}={cef_value(v)}" for k, v in plain if v is not None]
    for key, label, value in labelled:
        if value is not None:
            key = cef_key(key)
            parts.append(f"{key}Label={cef_value(label)} {key}={cef_value(value)}")
    ext_text = " ".join(parts)
    return (f"CEF:0|mcpwall|mcpwall|{cef_header(__version__)}|{cef_header(signature)}|"
            f"{cef_header(name)}|{severity}|{ext_text}")


def cef_lines(records: Iterable[Record]) -> Iterator[str]:
    """Every event as a CEF line."""
    for r in records:
        yield cef_line(r)
