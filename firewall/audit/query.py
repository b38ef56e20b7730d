"""The forensic queries behind ``mcpwall audit ...``, over one or many audit files.

Each query runs on every file (read-only) and the results are merged in time
order (``ts_ns``, then instance, then seq), so a fleet of instances, each with
its own database, reads as one trail. The SQL uses the views the database
carries (``calls``, ...), so what the CLI shows is what ``sqlite-utils`` and
Datasette show.

Example::

    with Sources.open([Path("gw1.db"), Path("gw2.db")]) as src:
        for call in calls(src, Filters(principal="alice", decision=["deny"])):
            print(call["ts"], call["tool"], call["rule"])
"""

from __future__ import annotations

import heapq
import itertools
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import msgspec

from firewall.audit.store import (
    REFUSALS,
    TAIL_FROM,
    TAIL_FTS,
    connect_readonly,
    expand_paths,
    has_derived,
    index_tail,
    meta_select,
)

Record = dict[str, Any]

EVENT_COLUMNS: Final = (
    "seq", "ts", "ts_ns", "instance", "kind", "call_id", "session", "principal", "grant",
    "server", "method", "direction", "tool", "uri", "prompt", "request_id", "arguments",
    "decision", "rule", "reason", "retry_after", "dry_run", "status", "error_code",
    "error_message", "latency_ns", "response_bytes", "detail", "protocol_version",
    "client_info", "client_capabilities", "prev_hash", "hash",
)


def _events_select(conn: sqlite3.Connection) -> str:
    """Every event column (NULL for the client-meta ones a file lacks)."""
    return ("SELECT seq, strftime('%Y-%m-%dT%H:%M:%fZ', ts_ns / 1e9, 'unixepoch') AS ts, "
            + meta_select(conn, EVENT_COLUMNS[2:]) + " FROM events")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class QueryError(ValueError):
    """Bad query input (a time that does not parse, ...); the message says why."""


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A point in time as ns since the epoch, UTC.

    Accepts ISO 8601 (``2025-06-01T03:12:00Z``, a date, naive means UTC),
    a relative age (``90s``, ``15m``, ``2h``, ``7d``, ``1w`` ago), ``now``, or
    integer nanoseconds.

    >>> parse_time("1970-01-01T00:00:01Z")
    1000000000
    """
    now = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t == "now":
        return now
    if t.isdigit() and len(t) > 12:
        return int(t)
    m = _RELATIVE.match(t)
    if m:
        return now - int(float(m.group(1)) * _UNIT[m.group(2)] * 1_000_000_000)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise QueryError(f"{text!r}: expected an ISO 8601 time (2025-06-01T03:12:00Z), "
                         "an age (15m, 2h, 7d) or 'now'") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def format_ts(ts_ns: int) -> str:
    """ns since the epoch as ISO 8601 UTC with microseconds."""
    dt = datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ts_ns % 1_000_000_000) // 1000:06d}Z"


class Filters(msgspec.Struct, kw_only=True):
    """What to select. Empty fields select everything."""

    since_ns: int | None = None
    until_ns: int | None = None
    principal: str | None = None
    grant: str | None = None
    session: str | None = None
    instance: str | None = None  # the writing process (host:pid)
    server: str | None = None
    method: str | None = None
    tool: str | None = None  # a glob: delete_*
    decision: list[str] = msgspec.field(default_factory=list)
    outcome: list[str] = msgspec.field(default_factory=list)  # statuses; "none": no outcome
    rule: str | None = None
    search: str | None = None  # full-text search in arguments (a phrase)
    limit: int = 0  # 0: no limit

    def where(self, *, prefix: str = "", derived: bool = True) -> tuple[str, list[Any]]:
        """The SQL WHERE clause (or "") and its parameters, for the ``calls`` view.

        ``derived``: for a file with the derived tables (see :func:`lookup`);
        False for a file of the older writer, whose indexes on events serve
        the plain column filters directly."""
        clauses: list[str] = []
        params: list[Any] = []
        p = prefix

        def add(sql: str, *values: Any) -> None:
            clauses.append(sql)
            params.extend(values)

        keyed = (lookup(p, self.principal, self.session, self.since_ns, self.until_ns)
                 if derived else None)
        if keyed is not None:
            add(keyed[0], *keyed[1])
        # With a lookup, the time range is in it: "+" keeps the planner on the
        # lookup's rowids instead of a scan of the time index.
        t = "+" if keyed is not None else ""
        if self.since_ns is not None:
            add(f"{t}{p}ts_ns >= ?", self.since_ns)
        if self.until_ns is not None:
            add(f"{t}{p}ts_ns < ?", self.until_ns)
        for col in ("principal", "grant", "session", "instance", "server", "method", "rule"):
            value = getattr(self, col)
            if value is not None:
                add(f'{p}"{col}" = ?', value)
        if self.tool is not None:
            add(f"coalesce({p}tool, {p}uri, {p}prompt) GLOB ?", self.tool)
        if self.decision:
            add(f"{p}decision IN ({', '.join('?' * len(self.decision))})", *self.decision)
        if self.outcome:
            statuses = [s for s in self.outcome if s != "none"]
            parts = []
            if statuses:
                parts.append(f"{p}status IN ({', '.join('?' * len(statuses))})")
            if "none" in self.outcome:
                parts.append(f"{p}status IS NULL")
            add("(" + " OR ".join(parts) + ")", *statuses)
        if self.search:
            phrase = '"' + self.search.replace('"', '""') + '"'
            # events_fts holds the rows the writer has indexed, the reader's
            # own tail index the rest (see firewall.audit.store, rule 3).
            add(f"({p}seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?) OR "
                f"{p}seq IN (SELECT rowid FROM temp.{TAIL_FTS} WHERE {TAIL_FTS} MATCH ?))",
                phrase, phrase)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def lookup(prefix: str, principal: str | None, session: str | None, since_ns: int | None,
           until_ns: int | None) -> tuple[str, list[int | str]] | None:
    """The rows of one session or principal (session first: it is narrower), as
    a ``seq IN (...)`` clause and its parameters, or None without either.

    The derived table holds the rows up to ``fts_progress.upto``; the rows
    after it (the tail, see :mod:`firewall.audit.store`, rule 3) are scanned
    by seq in the same statement, so the answer is complete however far the
    derived table lags. The caller still filters on the column itself.
    """
    if session is not None:
        table, col, key = "ix_session", "session", session
    elif principal is not None:
        table, col, key = "ix_principal", "principal", principal
    else:
        return None
    bounds = ""
    params: list[int | str] = [key]
    if since_ns is not None:
        bounds += " AND ts_ns >= ?"
        params.append(since_ns)
    if until_ns is not None:
        bounds += " AND ts_ns < ?"
        params.append(until_ns)
    sql = (f"{prefix}seq IN (SELECT seq FROM {table} WHERE {col} = ?{bounds} UNION ALL "
           f"SELECT seq FROM events WHERE seq > {TAIL_FROM} AND {col} = ?)")
    return sql, [*params, key]


class Sources:
    """Read-only connections to a set of audit files (segments expanded)."""

    def __init__(self, conns: list[tuple[Path, sqlite3.Connection]]) -> None:
        self.conns = conns
        # Which files keep the derived tables (the others: the older writer's).
        self.derived = {path: has_derived(conn) for path, conn in conns}

    @classmethod
    def open(cls, paths: Iterable[Path]) -> Sources:
        """Open every file; raise :class:`firewall.audit.store.StoreError` on a bad one."""
        opened: list[tuple[Path, sqlite3.Connection]] = []
        try:
            for p in expand_paths(list(paths)):
                opened.append((p, connect_readonly(p)))
        except BaseException:
            for _, c in opened:
                c.close()
            raise
        return cls(opened)

    def close(self) -> None:
        """Close every connection."""
        for _, c in self.conns:
            c.close()

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def each(self, sql: str, params: list[Any],
             older: tuple[str, list[Any]] | None = None) -> list[Iterator[Record]]:
        """Run ``sql`` on every file; one iterator of dicts per file. ``older``:
        the statement for files of the older writer (no derived tables)."""
        if TAIL_FTS in sql:
            for _, conn in self.conns:
                try:
                    index_tail(conn)
                except sqlite3.OperationalError as exc:
                    raise QueryError(f"full-text search failed: {exc}") from None
        return [_records(conn, *(older if older and not self.derived[path] else (sql, params)))
                for path, conn in self.conns]


def _records(conn: sqlite3.Connection, sql: str, params: list[Any]) -> Iterator[Record]:
    try:
        cur = conn.execute(sql, params)
    except sqlite3.OperationalError as exc:
        raise QueryError(f"query failed: {exc}") from None
    names = [d[0] for d in cur.description]
    while True:
        chunk = cur.fetchmany(1000)
        if not chunk:
            return
        for row in chunk:
            yield dict(zip(names, row, strict=True))


def _merge(iterators: list[Iterator[Record]], limit: int, *,
           reverse: bool = False) -> Iterator[Record]:
    def key(r: Record) -> tuple[int, str, int]:
        return (r["ts_ns"], r["instance"], r["seq"])

    # One file (the common case) is already in order: no merge, no key per row.
    merged = iterators[0] if len(iterators) == 1 else heapq.merge(*iterators, key=key,
                                                                   reverse=reverse)
    yield from itertools.islice(merged, limit) if limit else merged


def calls(src: Sources, filters: Filters, *, latest: bool = False) -> Iterator[Record]:
    """Calls (decision + outcome) matching ``filters``, oldest first.

    With ``latest``, the newest ``filters.limit`` calls (still printed oldest first).
    """
    order = "DESC" if latest else "ASC"
    limit = f" LIMIT {int(filters.limit)}" if filters.limit else ""

    def sql(derived: bool) -> tuple[str, list[Any]]:
        where, params = filters.where(derived=derived)
        return f"SELECT * FROM calls{where} ORDER BY ts_ns {order}, seq {order}{limit}", params

    merged = _merge(src.each(*sql(True), older=sql(False)), filters.limit, reverse=latest)
    if latest:
        return iter(list(merged)[::-1])
    return merged


def events(src: Sources, filters: Filters, *, after: dict[str, int] | None = None,
           latest: bool = False) -> Iterator[Record]:
    """Raw events (every kind) in time order; ``after`` maps a file to the last seq seen."""
    keyed = lookup("", filters.principal, filters.session, filters.since_ns, filters.until_ns)
    order = "DESC" if latest else "ASC"
    its = []
    for path, conn in src.conns:
        extra: list[str] = []
        p: list[Any] = []
        if keyed is not None and src.derived[path]:
            extra.append(keyed[0])
            p.extend(keyed[1])
            t = "+"  # the time range is in the lookup
        else:
            t = ""
        for col, op, value in ((t + "ts_ns", ">=", filters.since_ns),
                               (t + "ts_ns", "<", filters.until_ns),
                               ("session", "=", filters.session),
                               ("principal", "=", filters.principal),
                               ("server", "=", filters.server)):
            if value is not None:
                extra.append(f"{col} {op} ?")
                p.append(value)
        if after is not None and str(path) in after:
            extra.append("seq > ?")
            p.append(after[str(path)])
        where = (" WHERE " + " AND ".join(extra)) if extra else ""
        sql = f"{_events_select(conn)}{where} ORDER BY ts_ns {order}, seq {order}"
        if filters.limit:
            sql += f" LIMIT {int(filters.limit)}"
        its.append(_tagged(_records(conn, sql, p), str(path)))
    merged = _merge(its, filters.limit, reverse=latest)
    if latest:
        return iter(list(merged)[::-1])
    return merged


def _tagged(records: Iterator[Record], path: str) -> Iterator[Record]:
    for r in records:
        r["_file"] = path
        yield r


def timeline(src: Sources, filters: Filters) -> Iterator[Record]:
    """What one session (or principal) did, in order: calls with outcomes, plus
    session, approval and upstream events. Needs ``filters.session`` or ``principal``."""
    if filters.session is None and filters.principal is None:
        raise QueryError("a timeline needs --session or --principal")
    life = Filters(since_ns=filters.since_ns, until_ns=filters.until_ns,
                   session=filters.session, principal=filters.principal)

    def call_sql(derived: bool) -> tuple[str, list[Any]]:
        where, params = filters.where(derived=derived)
        return (f"SELECT seq, ts, ts_ns, instance, 'call' AS kind, session, principal, "
                f"\"grant\", server, method, tool, uri, prompt, arguments, decision, rule, "
                f"reason, status, error_code, error_message, latency_ms, NULL AS detail "
                f"FROM calls{where} ORDER BY ts_ns, seq", params)

    def life_sql(derived: bool) -> tuple[str, list[Any]]:
        where, params = life.where(derived=derived)
        return (f"SELECT seq, ts, ts_ns, instance, kind, session, principal, "
                f"NULL AS \"grant\", server, NULL AS method, NULL AS tool, NULL AS uri, "
                f"NULL AS prompt, NULL AS arguments, NULL AS decision, NULL AS rule, "
                f"NULL AS reason, NULL AS status, NULL AS error_code, NULL AS error_message, "
                f"NULL AS latency_ms, detail FROM lifecycle{where} ORDER BY ts_ns, seq", params)

    its = (src.each(*call_sql(True), older=call_sql(False))
           + src.each(*life_sql(True), older=life_sql(False)))
    return _merge(its, filters.limit)


STAT_COLUMNS: Final = ("name", "calls", "allowed", "denials", "rate_limited", "errors")
_STAT_SELECT: Final = (
    "count(*) AS calls, sum(decision = 'allow') AS allowed, "
    f"sum(decision IN ({', '.join(repr(r) for r in REFUSALS)})) AS denials, "
    "sum(decision = 'limited') AS rate_limited, "
    "sum(status IS NOT NULL AND status != 'ok') AS errors"
)


def stats(src: Sources, filters: Filters, *, top: int = 10,
          bucket_seconds: int = 3600) -> dict[str, list[Record]]:
    """Counts for the dashboard questions, summed over every file.

    Sections: ``tools``, ``principals``, ``rules`` (refusals and rate limits by
    rule), ``over_time`` (per ``bucket_seconds``, oldest first).
    """
    bucket_ns = bucket_seconds * 1_000_000_000
    groups = {
        "tools": ("coalesce(tool, uri, prompt, method)", ""),
        "principals": ("principal", ""),
        "rules": ("rule", "decision != 'allow'"),
        "over_time": (f"(ts_ns / {bucket_ns}) * {bucket_ns}", ""),
    }
    out: dict[str, list[Record]] = {}
    for section, (expr, also) in groups.items():
        totals: dict[Any, list[int]] = {}

        def sql(derived: bool, expr: str = expr, also: str = also) -> tuple[str, list[Any]]:
            where, params = filters.where(derived=derived)
            if also:
                where = _and(where, also)
            return f"SELECT {expr} AS name, {_STAT_SELECT} FROM calls{where} GROUP BY 1", params

        for it in src.each(*sql(True), older=sql(False)):
            for r in it:
                acc = totals.setdefault(r["name"], [0, 0, 0, 0, 0])
                for i, col in enumerate(STAT_COLUMNS[1:]):
                    acc[i] += r[col] or 0
        rows = [dict(zip(STAT_COLUMNS, (name, *acc), strict=True))
                for name, acc in totals.items()]
        if section == "over_time":
            rows.sort(key=lambda r: r["name"])
            for r in rows:
                r["name"] = format_ts(r["name"])
        else:
            rows.sort(key=lambda r: (-r["calls"], str(r["name"])))
            rows = rows[:top]
        out[section] = rows
    return out


def _and(where: str, clause: str) -> str:
    return f"{where} AND {clause}" if where else f" WHERE {clause}"


def last_seqs(src: Sources) -> dict[str, int]:
    """The last seq in each file (where ``tail -f`` starts)."""
    out = {}
    for path, conn in src.conns:
        seq = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        out[str(path)] = seq or 0
    return out
