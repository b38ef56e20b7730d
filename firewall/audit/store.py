"""The audit database: schema, append-only triggers, views, full-text index, segments.

Rules this module keeps:

1. Three tables: ``events`` (one row per event, see :data:`firewall.audit.chain.COLUMNS`),
   ``checkpoints`` (signed chain heads) and ``segment`` (one row: which chain this
   file belongs to, its number, first seq and the hash it continues from).
   Triggers abort every UPDATE and DELETE on all three.
2. Views name the questions operators ask (``calls``, ``denials``,
   ``rate_limited``, ``errors``, ``sessions``, ``lifecycle``, ``approvals``), so
   ``sqlite-utils`` and Datasette answer them without mcpwall.
3. ``events`` has one secondary index, ``ts_ns`` (its keys arrive in time
   order: an append at the right edge). Everything else a query looks up by is
   DERIVED data, filled by the writer off the commit path, one ``INSERT ...
   SELECT ... ORDER BY`` per table per range of rows (:func:`index_range`):
   ``ix_session``, ``ix_principal`` (``(key, ts_ns, seq)``), ``ix_outcome``
   (``(call_id, seq)`` of outcomes, what the ``calls`` view joins on) and
   ``events_fts`` (FTS5, external content, over ``arguments``). The writer runs
   a range when it has nothing to commit, after a batch once enough rows wait,
   on rotation and on close, and (when it lags by ``fts_max_lag`` rows) with
   each commit. ``fts_progress.upto`` (the name is historical) is the last seq
   in every derived table, written in the same transaction. Rows after it are
   the TAIL, which every reader covers by a scan of ``seq > upto`` (a rowid
   range, small): the ``calls`` view joins tail outcomes from a materialised
   subquery, the query module adds ``seq > upto AND principal = ?`` to each
   ``ix_principal`` lookup, and a search indexes the tail in a temporary FTS5
   table of the reader's own (:func:`index_tail`). So every answer is
   complete however far the derived tables lag. A file from an older writer
   (``idx_events_session_ts_ns`` and the other indexes on ``events``, no
   ``ix_*`` tables, :func:`has_derived` says which) keeps its own schema and
   views; readers filter it on the columns, which its indexes serve, and a
   file without ``fts_progress`` at all is fully indexed.
4. A chain is a list of segment files: the first is the configured path
   (``audit.db``), later ones are ``audit.000002.db``, ``audit.000003.db``, ...
   beside it. The writer appends to the highest-numbered one.
5. Readers open files read-only (``mode=ro``); only the writer (the writer
   process of :mod:`firewall.audit.process`, or the writer thread) writes.
6. Columns added later, the client-meta columns (``protocol_version``,
   ``client_info``, ``client_capabilities``: see
   :mod:`firewall.audit.chain`, rule 6), are added to an older file by the
   writer when it opens it (:func:`add_meta_columns`); a reader of a file
   that does not have them selects NULL in their place (:func:`meta_select`).

Example::

    conn = connect_readonly(Path("audit.db"))
    conn.execute("select principal, count(*) from denials group by 1").fetchall()
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Final

import sqlite_utils

from firewall.audit.chain import COLUMNS, FORMAT, META_COLUMNS

EVENT_TYPES: Final = {
    "seq": int, "ts_ns": int, "instance": str, "kind": str, "call_id": str, "session": str,
    "principal": str, "grant": str, "server": str, "method": str, "direction": str,
    "tool": str, "uri": str, "prompt": str, "request_id": str, "arguments": str,
    "decision": str, "rule": str, "reason": str, "retry_after": float, "dry_run": int,
    "status": str, "error_code": int, "error_message": str, "latency_ns": int,
    "response_bytes": int, "detail": str, "protocol_version": str, "client_info": str,
    "client_capabilities": str, "prev_hash": str, "hash": str,
}
assert tuple(EVENT_TYPES) == COLUMNS

REFUSALS: Final = ("deny", "invalid_arguments", "rejected")

_TS = "strftime('%Y-%m-%dT%H:%M:%fZ', {col} / 1e9, 'unixepoch')"
# The first seq of the tail (rows not in the derived tables yet), as SQL: read
# inside the reader's statement, so in the same snapshot as the tables.
TAIL_FROM: Final = "(SELECT coalesce(max(upto), 0) FROM fts_progress)"

VIEWS: Final = {
    "calls": f"""
SELECT d.seq, {_TS.format(col="d.ts_ns")} AS ts, d.ts_ns, d.instance, d.call_id, d.session,
       d.principal, d."grant", d.server, d.method, d.direction, d.tool, d.uri, d.prompt,
       d.request_id, d.arguments, d.decision, d.rule, d.reason, d.retry_after, d.dry_run,
       d.protocol_version, d.client_info, d.client_capabilities,
       o.status, o.error_code, o.error_message, o.latency_ns / 1e6 AS latency_ms,
       o.response_bytes
FROM events d
LEFT JOIN ix_outcome x ON x.call_id = d.call_id
LEFT JOIN (SELECT call_id, seq FROM events
           WHERE seq > {TAIL_FROM} AND kind = 'outcome'
           LIMIT -1) t ON x.call_id IS NULL AND t.call_id = d.call_id
LEFT JOIN events o ON o.seq = coalesce(x.seq, t.seq)
WHERE d.kind = 'decision'""",
    "denials": "SELECT * FROM calls WHERE decision IN ('deny', 'invalid_arguments', 'rejected')",
    "rate_limited": "SELECT * FROM calls WHERE decision = 'limited'",
    "errors": "SELECT * FROM calls WHERE status IS NOT NULL AND status != 'ok'",
    "approvals": f"""
SELECT seq, {_TS.format(col="ts_ns")} AS ts, ts_ns, instance, kind, call_id, session, principal,
       server, tool, decision, rule, reason, detail
FROM events
WHERE kind = 'approval' OR decision IN ('pending', 'approved', 'rejected')""",
    "lifecycle": f"""
SELECT seq, {_TS.format(col="ts_ns")} AS ts, ts_ns, instance, kind, session, principal, server,
       detail
FROM events WHERE kind NOT IN ('decision', 'outcome')""",
    "sessions": f"""
SELECT session, max(principal) AS principal, max("grant") AS "grant",
       {_TS.format(col="min(ts_ns)")} AS started, {_TS.format(col="max(ts_ns)")} AS last_seen,
       sum(kind = 'decision') AS calls,
       sum(decision IN ('deny', 'invalid_arguments', 'rejected')) AS denials,
       sum(decision = 'limited') AS rate_limited,
       sum(kind = 'outcome' AND status != 'ok') AS errors,
       max(kind = 'session_end') AS ended
FROM events WHERE session IS NOT NULL GROUP BY session""",
}

INDEX_BATCH: Final = (
    "INSERT INTO events_fts (rowid, arguments) SELECT seq, arguments FROM events "
    "WHERE seq BETWEEN ? AND ? AND arguments IS NOT NULL"
)
# The derived lookup tables (rule 3): what each holds, and how a range of rows
# fills it. Keys sorted before the insert, so rows of the same session (or
# principal, or call) land on one B-tree leaf together, once per range, instead
# of one random leaf page per row in every commit.
DERIVED: Final = {
    "ix_session": (
        "CREATE TABLE ix_session (session TEXT NOT NULL, ts_ns INTEGER NOT NULL, "
        "seq INTEGER NOT NULL, PRIMARY KEY (session, ts_ns, seq)) WITHOUT ROWID",
        "INSERT INTO ix_session (session, ts_ns, seq) SELECT session, ts_ns, seq FROM events "
        "WHERE seq BETWEEN ? AND ? AND session IS NOT NULL ORDER BY 1, 2, 3"),
    "ix_principal": (
        "CREATE TABLE ix_principal (principal TEXT NOT NULL, ts_ns INTEGER NOT NULL, "
        "seq INTEGER NOT NULL, PRIMARY KEY (principal, ts_ns, seq)) WITHOUT ROWID",
        "INSERT INTO ix_principal (principal, ts_ns, seq) SELECT principal, ts_ns, seq "
        "FROM events WHERE seq BETWEEN ? AND ? AND principal IS NOT NULL ORDER BY 1, 2, 3"),
    "ix_outcome": (
        "CREATE TABLE ix_outcome (call_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        "PRIMARY KEY (call_id, seq)) WITHOUT ROWID",
        "INSERT INTO ix_outcome (call_id, seq) SELECT call_id, seq FROM events "
        "WHERE seq BETWEEN ? AND ? AND kind = 'outcome' AND call_id IS NOT NULL "
        "ORDER BY 1, 2"),
}
_PROGRESS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS fts_progress (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "upto INTEGER NOT NULL)"
)
_SET_PROGRESS: Final = "INSERT OR REPLACE INTO fts_progress (id, upto) VALUES (1, ?)"
# The reader's own index of the rows the writer has not indexed yet; the same
# (default) tokenizer as events_fts, so a phrase matches the same rows.
TAIL_FTS: Final = "events_fts_tail"
_TAIL_CREATE: Final = f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{TAIL_FTS} USING fts5(arguments)"
_TAIL_FILL: Final = (
    f"INSERT INTO temp.{TAIL_FTS} (rowid, arguments) SELECT seq, arguments FROM main.events "
    f"WHERE seq > {TAIL_FROM} AND arguments IS NOT NULL"
)

_APPEND_ONLY = ("events", "checkpoints", "segment", *DERIVED)
_SEGMENT_RE = re.compile(r"^(?P<stem>.+)\.(?P<n>\d{6})(?P<suffix>\.[^.]*)?$")


class StoreError(Exception):
    """An audit file that cannot be used; the message names it and says why."""


def create_schema(conn: sqlite3.Connection, *, indexed_upto: int = 0) -> None:
    """Create tables, indexes, triggers, views and the FTS index (idempotent).

    ``indexed_upto``: the seq before this file's first row (the FTS progress)."""
    db = sqlite_utils.Database(conn)
    if "events" in db.table_names():
        return
    db.table("events").create(dict(EVENT_TYPES), pk="seq",
                        not_null={"ts_ns", "instance", "kind", "prev_hash", "hash"})
    db.table("checkpoints").create(
        {"id": int, "chain": str, "segment": int, "seq": int, "hash": str, "ts_ns": int,
         "algorithm": str, "key_id": str, "signature": str},
        pk="id", not_null={"chain", "segment", "seq", "hash", "ts_ns", "algorithm", "signature"},
    )
    db.table("segment").create(
        {"number": int, "chain": str, "instance": str, "first_seq": int, "prev_hash": str,
         "created_ns": int, "format": str},
        pk="number",
    )
    events = db.table("events")
    # The one index maintained in the commit: its keys come in time order.
    # Sessions, principals and outcomes are looked up in derived tables (rule 3).
    events.create_index(["ts_ns"])
    for create, _ in DERIVED.values():
        conn.execute(create)
    events.enable_fts(["arguments"], fts_version="FTS5", create_triggers=False)
    for table in _APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: {op} on "
                f"{table} refused'); END"
            )
    for name, sql in VIEWS.items():
        db.create_view(name, sql.strip())
    conn.execute(_PROGRESS_TABLE)
    conn.execute(_SET_PROGRESS, (indexed_upto,))


def has_meta_columns(conn: sqlite3.Connection) -> bool:
    """True if ``events`` has the client-meta columns (rule 6): files written
    before them do not, and readers select NULL in their place."""
    names = {r[1] for r in conn.execute("PRAGMA main.table_info(events)")}
    return set(META_COLUMNS) <= names


def meta_select(conn: sqlite3.Connection, columns: tuple[str, ...] = COLUMNS) -> str:
    """``columns`` as a select list for this file: ``NULL AS [c]`` for a
    client-meta column the file does not have (rule 6)."""
    if has_meta_columns(conn):
        return ", ".join(f"[{c}]" for c in columns)
    return ", ".join(f"NULL AS [{c}]" if c in META_COLUMNS else f"[{c}]" for c in columns)


def add_meta_columns(conn: sqlite3.Connection) -> bool:
    """Give a file written before the client-meta columns those columns (the
    writer, on opening it: rule 6), and its ``calls`` view theirs; True if
    it changed. A file of the older writer (no derived tables) keeps its own
    views. Rows already there keep NULL, which hashes as before."""
    if has_meta_columns(conn):
        return False
    derived = has_derived(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        names = {r[1] for r in conn.execute("PRAGMA main.table_info(events)")}
        for column in META_COLUMNS:
            if column not in names:
                conn.execute(f"ALTER TABLE events ADD COLUMN [{column}] TEXT")
        if derived:
            conn.execute("DROP VIEW IF EXISTS calls")
            conn.execute(f"CREATE VIEW calls AS {VIEWS['calls'].strip()}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def indexed_upto(conn: sqlite3.Connection) -> int | None:
    """The last seq in the full-text index, None for a file that predates
    ``fts_progress`` (its writer indexed every row in the row's transaction)."""
    try:
        row = conn.execute("SELECT max(upto) FROM main.fts_progress").fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0]) if row and row[0] is not None else 0


def adopt_progress(conn: sqlite3.Connection) -> int:
    """The writer's ``indexed_upto`` for an open file; adds ``fts_progress`` to a
    file from an older writer (fully indexed: up to its last seq)."""
    upto = indexed_upto(conn)
    if upto is not None:
        return upto
    last = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_PROGRESS_TABLE)
        conn.execute(_SET_PROGRESS, (last,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return last


def has_derived(conn: sqlite3.Connection) -> bool:
    """True if the file keeps the derived lookup tables (rule 3); False for a
    file from an older writer, whose indexes on events serve the lookups."""
    return conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND "
                        "name = 'ix_outcome'").fetchone() is not None


def index_range(conn: sqlite3.Connection, first: int, last: int, *, derived: bool) -> None:
    """Add rows ``first..last`` to the full-text index and (``derived``: the
    file has them) to the derived lookup tables, and move ``fts_progress``
    (inside the caller's transaction)."""
    params = (first, last)
    if derived:
        for _, fill in DERIVED.values():
            conn.execute(fill, params)
    conn.execute(INDEX_BATCH, params)
    conn.execute(_SET_PROGRESS, (last,))


def index_tail(conn: sqlite3.Connection) -> None:
    """Give a reader connection ``temp.events_fts_tail``: the rows the writer has
    not indexed yet (one statement, so one snapshot). Once per connection."""
    if conn.execute("SELECT 1 FROM temp.sqlite_master WHERE name = ?",
                    (TAIL_FTS,)).fetchone():
        return
    conn.execute(_TAIL_CREATE)
    if indexed_upto(conn) is not None:
        conn.execute(_TAIL_FILL)


# The writer's page cache and WAL checkpoint interval. The secondary indexes
# take keys in random order (a session id, a call id that starts with one):
# each row of a batch lands on its own leaf page. With SQLite's defaults (a
# 2 MiB cache, a checkpoint every 1,000 WAL pages) those pages are read back
# from the OS for each batch and copied into the database file at nearly every
# commit; a cache that holds the indexes' hot pages and a checkpoint every
# 16,384 pages (64 MiB of WAL at most between checkpoints) measured 82 -> 44 us
# of writer CPU per event on a 1M-row file (benchmarks/README.md, audit).
# Durability is unchanged: every commit still syncs the WAL (synchronous=FULL).
# The copying itself is mostly done beside the writer, by the WAL copier of
# firewall.audit.trail (a thread with its own connection); the automatic
# checkpoint is the bound when the copier cannot keep up (or a reader holds
# the WAL), and then has only the rest to copy.
WRITER_CACHE_KIB: Final = 65_536
WAL_AUTOCHECKPOINT_PAGES: Final = 16_384


def connect_writer(path: Path, durable: bool) -> sqlite3.Connection:
    """The one write connection: WAL, fsync on commit in durable mode, a large
    page cache and a sparse WAL checkpoint (see :data:`WRITER_CACHE_KIB`)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; raise :class:`StoreError` if it is not an audit file."""
    if not path.is_file():
        raise StoreError(f"{path}: no such audit database")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not an SQLite database ({exc})") from None
    if not {"events", "segment", "checkpoints"} <= names:
        conn.close()
        raise StoreError(f"{path}: not an mcpwall audit database (no events/segment tables)")
    return conn


class SegmentInfo:
    """What a segment file says about itself."""

    __slots__ = ("chain", "created_ns", "first_seq", "format", "instance", "number", "path",
                 "prev_hash")

    def __init__(self, path: Path, number: int, chain: str, instance: str, first_seq: int,
                 prev_hash: str, created_ns: int, fmt: str) -> None:
        self.path = path
        self.number = number
        self.chain = chain
        self.instance = instance
        self.first_seq = first_seq
        self.prev_hash = prev_hash
        self.created_ns = created_ns
        self.format = fmt


def segment_info(conn: sqlite3.Connection, path: Path) -> SegmentInfo:
    """Read the ``segment`` row of an open audit file."""
    row = conn.execute(
        "SELECT number, chain, instance, first_seq, prev_hash, created_ns, format FROM segment"
    ).fetchone()
    if row is None:
        raise StoreError(f"{path}: the segment table is empty (not initialised or tampered)")
    info = SegmentInfo(path, *row)
    if info.format != FORMAT:
        raise StoreError(f"{path}: format {info.format!r}, this mcpwall reads {FORMAT!r}")
    return info


def segment_path(first: Path, number: int) -> Path:
    """Where segment ``number`` of the chain that starts at ``first`` lives."""
    if number == 1:
        return first
    return first.with_name(f"{first.stem}.{number:06d}{first.suffix}")


def chain_files(first: Path) -> list[Path]:
    """The existing segment files of the chain whose first file is ``first``, in order."""
    found: list[tuple[int, Path]] = []
    if first.is_file():
        found.append((1, first))
    if first.parent.is_dir():
        for p in first.parent.iterdir():
            m = _SEGMENT_RE.match(p.name)
            if (m and m.group("stem") == first.stem and (m.group("suffix") or "") == first.suffix
                    and p.is_file()):
                found.append((int(m.group("n")), p))
    return [p for _, p in sorted(found)]


def expand_paths(paths: list[Path]) -> list[Path]:
    """Audit files named on a command line: a file brings its later segments, a
    directory brings every ``*.db`` in it. Order: as given, duplicates removed."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.suffix == ".db" and q.is_file())
        elif _SEGMENT_RE.match(p.name):
            files = [p]
        else:
            files = chain_files(p) or [p]
        for f in files:
            if f not in out:
                out.append(f)
    return out
