"""Chain, checkpoint and anchor verification: what ``mcpwall audit verify`` runs.

For each chain (the segment files that share a chain id) the verifier:

1. checks the segments are numbered 1, 2, ... without a gap and that each
   continues the previous one (``first_seq`` and ``prev_hash``);
2. walks every row in seq order: ``seq`` is the previous plus one,
   ``prev_hash`` is the previous row's hash, ``hash`` matches the content;
3. checks every checkpoint (in the database and in the anchor file): its
   signature, and that the row at its seq carries the hash it signed;
4. checks no checkpoint (anchor included) names a seq beyond the last row
   (a cut-off tail).

It stops a chain at the first bad row and says what is wrong with it:
``edited``, ``deleted``, ``reordered``, ``inserted`` or ``truncated`` (also
``forged_checkpoint``, ``missing_segment``, ``broken_segment``). Read-only.

Example::

    reports = verify_paths([Path("audit.db")])
    assert all(r.ok for r in reports)
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from firewall.audit.chain import (
    COLUMNS,
    FORMAT,
    HASH,
    META,
    META_COLUMNS,
    PREV,
    SEQ,
    Row,
    row_hash,
    with_seq,
)
from firewall.audit.checkpoint import (
    Anchor,
    AuditKeyError,
    Checkpoint,
    Ed25519PublicVerifier,
    HmacKey,
    load_verifier,
)
from firewall.audit.store import (
    SegmentInfo,
    StoreError,
    connect_readonly,
    expand_paths,
    has_meta_columns,
    meta_select,
    segment_info,
)

ProblemKind = Literal[
    "edited", "deleted", "reordered", "inserted", "truncated", "forged_checkpoint",
    "missing_segment", "broken_segment", "unreadable",
]

def _select_one(conn: sqlite3.Connection) -> str:
    """Every column of a row, NULL for the client-meta ones a file lacks."""
    return f"SELECT {meta_select(conn)} FROM events"


def _cols(names: tuple[str, ...]) -> str:
    return ", ".join(f"[{c}]" for c in names)


# seq, prev_hash, hash and the canonical bytes as SQLite renders them: for
# integers, NULL and text, json_array writes what msgspec writes (and when it
# does not, the reference check below decides, so a difference costs time,
# never a verdict). Two encoders' outputs that are equal decode to equal
# values, so a rendering that hashes right proves the row unchanged; REALs
# are left to Python, as SQLite prints 15 digits, not the shortest exact form.
# The client-meta columns are rendered only when one is set (chain rule 6).
_BEFORE_META = _cols(COLUMNS[:META])
_LIGHT_OLD = (
    "SELECT seq, prev_hash, hash, CASE WHEN typeof(retry_after) = 'real' THEN NULL ELSE "
    f"CAST(json_array(?, {_BEFORE_META}, [prev_hash]) AS BLOB) END "
    "FROM events ORDER BY seq"
)
_LIGHT = (
    "SELECT seq, prev_hash, hash, CASE WHEN typeof(retry_after) = 'real' THEN NULL "
    "WHEN " + " AND ".join(f"[{c}] IS NULL" for c in META_COLUMNS) + " THEN "
    f"CAST(json_array(?1, {_BEFORE_META}, [prev_hash]) AS BLOB) ELSE "
    f"CAST(json_array(?1, {_cols(COLUMNS[:HASH])}) AS BLOB) END "
    "FROM events ORDER BY seq"
)
assert COLUMNS[META + len(META_COLUMNS)] == "prev_hash"
_PROBE = 100_000  # how far the verifier looks for where a misplaced row came from


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing found wrong."""

    kind: ProblemKind
    file: str
    seq: int | None
    message: str


class ChainReport(msgspec.Struct, kw_only=True):
    """The verdict on one chain."""

    chain: str
    instance: str
    files: list[str]
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    checkpoints: int = 0
    signatures_checked: bool = False
    signed_upto: int = 0
    anchor: str | None = None
    anchored_upto: int = 0
    problems: list[Problem] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


Verifier = HmacKey | Ed25519PublicVerifier
Progress = Callable[[int], None]


def count_rows(paths: list[Path]) -> int:
    """How many rows the files hold (for a progress bar)."""
    total = 0
    for p in paths:
        try:
            conn = connect_readonly(p)
        except StoreError:
            continue
        with conn:
            lo, hi = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        conn.close()
        if lo is not None:
            total += hi - lo + 1
    return total


def default_key(first: Path) -> Path | None:
    """The key file written beside a database, if any (public key preferred)."""
    for candidate in (first.with_name(first.name + ".key.pub"),
                      first.with_name(first.name + ".key")):
        if candidate.is_file():
            return candidate
    return None


def verify_paths(paths: list[Path], *, keys: list[Path] | None = None,
                 anchors: list[Path] | None = None,
                 progress: Progress | None = None) -> list[ChainReport]:
    """Verify every chain found in ``paths`` (files of one or more chains; a file
    brings its later segments, see :func:`firewall.audit.store.expand_paths`).

    ``keys``: verification key files (default: the ``.key.pub``/``.key`` beside
    each chain's first file). ``anchors``: anchor files (default: the
    ``.anchor`` beside each chain's first file).
    """
    chains: dict[str, list[SegmentInfo]] = {}
    reports: list[ChainReport] = []
    for p in expand_paths(paths):
        try:
            conn = connect_readonly(p)
            info = segment_info(conn, p)
            conn.close()
        except (StoreError, sqlite3.DatabaseError) as exc:
            reports.append(ChainReport(chain="?", instance="?", files=[str(p)], problems=[
                Problem(kind="unreadable", file=str(p), seq=None, message=str(exc))]))
            continue
        chains.setdefault(info.chain, []).append(info)
    loaded_keys: list[Verifier] = []
    key_errors: list[str] = []
    for k in keys or []:
        try:
            loaded_keys.append(load_verifier(k))
        except AuditKeyError as exc:
            key_errors.append(str(exc))
    for chain, segments in chains.items():
        segments.sort(key=lambda s: s.number)
        report = _verify_chain(chain, segments, loaded_keys, key_errors, anchors, progress)
        reports.append(report)
    return reports


def _verify_chain(chain: str, segments: list[SegmentInfo], keys: list[Verifier],
                  key_errors: list[str], anchors: list[Path] | None,
                  progress: Progress | None) -> ChainReport:
    first = segments[0].path
    report = ChainReport(chain=chain, instance=segments[0].instance,
                         files=[str(s.path) for s in segments])
    report.warnings.extend(key_errors)
    verifiers = {v.key_id: v for v in keys}
    if not keys:
        default = default_key(first)
        if default is not None:
            try:
                v = load_verifier(default)
                verifiers[v.key_id] = v
            except AuditKeyError as exc:
                report.warnings.append(str(exc))
    # Checkpoints to check against the rows: from the anchor(s) and the tables.
    expected: dict[int, list[tuple[str, Checkpoint]]] = {}
    anchor_paths = anchors if anchors is not None else [first.with_name(first.name + ".anchor")]
    anchor_found = False
    for ap in anchor_paths:
        if not ap.exists():
            continue
        anchor_found = True
        report.anchor = str(ap)
        cps, problems = Anchor(ap).read()
        report.warnings.extend(problems)
        for cp in cps:
            if cp.chain == chain:
                expected.setdefault(cp.seq, []).append((f"anchor {ap.name}", cp))
                report.anchored_upto = max(report.anchored_upto, cp.seq)
    if not anchor_found:
        report.warnings.append("no anchor file found: a cut-off tail cannot be detected "
                               "beyond the checkpoints inside the database")
    checked_any = False
    for seg in segments:
        conn = connect_readonly(seg.path)
        try:
            for row in conn.execute("SELECT chain, segment, seq, hash, ts_ns, algorithm, key_id, "
                                    "signature FROM checkpoints ORDER BY id"):
                cp = Checkpoint(chain=row[0], segment=row[1], seq=row[2], hash=row[3],
                                ts_ns=row[4], algorithm=row[5], key_id=row[6], signature=row[7])
                report.checkpoints += 1
                expected.setdefault(cp.seq, []).append((f"checkpoint in {seg.path.name}", cp))
        finally:
            conn.close()
    for seq_cps in expected.values():
        for where, cp in seq_cps:
            found = verifiers.get(cp.key_id)
            if found is None:
                continue
            checked_any = True
            if not found.verify(cp.message(), cp.signature):
                report.problems.append(Problem(
                    kind="forged_checkpoint", file=where, seq=cp.seq,
                    message=f"the {where} for seq {cp.seq} has a bad signature: it was forged "
                            "or altered"))
                return report
    report.signatures_checked = checked_any
    if expected and not checked_any:
        report.warnings.append("checkpoint signatures not checked: no matching key "
                               "(pass --key; HMAC needs the secret, Ed25519 the .pub file)")
    _walk(report, segments, expected, progress)
    return report


def _walk(report: ChainReport, segments: list[SegmentInfo],
          expected: dict[int, list[tuple[str, Checkpoint]]], progress: Progress | None) -> None:
    seq_expected = segments[0].first_seq
    head = segments[0].prev_hash
    for number, seg in enumerate(segments, 1):
        fname = str(seg.path)
        if seg.number != number:
            report.problems.append(Problem(
                kind="missing_segment", file=fname, seq=seq_expected,
                message=f"segment {number} of this chain is missing (found {seg.number} next): "
                        f"rows from seq {seq_expected} were deleted with it"))
            return
        if number == 1 and (seg.first_seq != 1 or seg.prev_hash != "0" * 64):
            report.problems.append(Problem(
                kind="broken_segment", file=fname, seq=seg.first_seq,
                message="the first segment does not start the chain (first_seq 1, genesis "
                        "hash): earlier segments were removed"))
            return
        if seg.first_seq != seq_expected or seg.prev_hash != head:
            report.problems.append(Problem(
                kind="broken_segment", file=fname, seq=seg.first_seq,
                message=f"segment {seg.number} does not continue segment {seg.number - 1} "
                        f"(starts at seq {seg.first_seq} after {head[:12]}..., expected seq "
                        f"{seq_expected})"))
            return
        conn = connect_readonly(seg.path)
        try:
            bad = _walk_segment(report, conn, seg, seq_expected, head, expected, progress)
        finally:
            conn.close()
        if bad:
            return
        seq_expected = (report.last_seq or 0) + 1
        head = report.head or head
    last = report.last_seq or 0
    beyond = [cp for s, cps in expected.items() if s > last for _, cp in cps]
    if beyond:
        top = max(beyond, key=lambda c: c.seq)
        where = next(w for w, c in expected[top.seq] if c is top)
        report.problems.append(Problem(
            kind="truncated", file=str(segments[-1].path), seq=last + 1,
            message=f"the {where} records seq {top.seq} (hash {top.hash[:12]}...) but the "
                    f"trail ends at seq {last}: {top.seq - last} or more rows were cut off"))
        return
    report.signed_upto = max(expected) if expected else 0
    if last > report.signed_upto:
        report.warnings.append(
            f"rows {report.signed_upto + 1}..{last} are chained but not yet covered by a "
            "signed checkpoint (normal after a crash; the next checkpoint covers them)")


def _rows(conn: sqlite3.Connection) -> Iterator[Row]:
    cur = conn.execute(f"{_select_one(conn)} ORDER BY seq")
    while True:
        chunk = cur.fetchmany(10_000)
        if not chunk:
            return
        yield from chunk


def _light_rows(conn: sqlite3.Connection) -> Iterator[tuple[int, str, str, bytes | None]]:
    if has_meta_columns(conn):
        cur = conn.execute(_LIGHT, (FORMAT,))
    else:
        cur = conn.execute(_LIGHT_OLD, (FORMAT,))
    while True:
        chunk = cur.fetchmany(10_000)
        if not chunk:
            return
        yield from chunk


def _full_row(conn: sqlite3.Connection, after: int, *, inclusive: bool = True) -> Row | None:
    """The row at ``after`` (or the first one past it), every column."""
    op = ">=" if inclusive else ">"
    row: Row | None = conn.execute(f"{_select_one(conn)} WHERE seq {op} ? ORDER BY seq LIMIT 1",
                                   (after,)).fetchone()
    return row


def _walk_segment(report: ChainReport, conn: sqlite3.Connection, seg: SegmentInfo,
                  seq_expected: int, head: str,
                  expected: dict[int, list[tuple[str, Checkpoint]]],
                  progress: Progress | None) -> bool:
    """Walk one file; return True if a problem was found (and recorded).

    SQLite renders each row's canonical bytes (:data:`_LIGHT`), so only four
    values per row cross into Python. A row whose rendering is not trusted or
    does not hash to its ``hash`` is read in full and checked the reference
    way (:func:`firewall.audit.chain.row_hash`) before anything is reported.
    A file SQLite cannot render (a BLOB where text belongs) is walked the
    reference way throughout.
    """
    try:
        return _walk_rows(report, conn, seg, seq_expected, head, expected, progress, light=True)
    except sqlite3.OperationalError:
        return _walk_rows(report, conn, seg, seq_expected, head, expected, progress,
                          light=False)


def _walk_rows(report: ChainReport, conn: sqlite3.Connection, seg: SegmentInfo,
          seq_expected: int, head: str,
          expected: dict[int, list[tuple[str, Checkpoint]]],
          progress: Progress | None, *, light: bool) -> bool:
    fname = str(seg.path)
    n = 0
    first: int | None = None
    last: tuple[int, str] | None = None
    sha256 = hashlib.sha256
    rows: Iterator[Any] = _light_rows(conn) if light else _rows(conn)
    for item in rows:
        if light:
            seq, prev, digest, canon = item
            good = canon is not None and sha256(canon).hexdigest() == digest
            if not good:  # the reference check decides
                full = _full_row(conn, seq)
                good = full is not None and row_hash(full) == digest
        else:
            seq, prev, digest = item[SEQ], item[PREV], item[HASH]
            good = row_hash(item) == digest
        if seq != seq_expected or prev != head or not good:
            row = _full_row(conn, seq) if light else item
            assert row is not None
            nxt = _full_row(conn, seq, inclusive=False)
            report.problems.append(_diagnose(fname, row, nxt, seq_expected, head))
            return True
        if seq in expected:
            for where, cp in expected[seq]:
                if cp.hash != digest:
                    report.problems.append(Problem(
                        kind="edited", file=fname, seq=seq,
                        message=f"the {where} signed hash {cp.hash[:12]}... for seq {seq}, the "
                                f"row now has {digest[:12]}...: rows up to {seq} were "
                                "rewritten and their hashes recomputed"))
                    return True
        head = digest
        seq_expected = seq + 1
        last = (seq, digest)
        n += 1
        if first is None:
            first = seq
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(n % 10_000)
    report.rows += n
    if report.first_seq is None and first is not None:
        report.first_seq = first
    if last is not None:
        report.last_seq, report.head = last
    else:
        report.last_seq, report.head = seg.first_seq - 1, seg.prev_hash
    return False


def _original_seq(row: Row, around: int) -> int | None:
    """The seq this row's hash was computed for, looking outward from ``around``."""
    h = row[HASH]
    for d in range(1, _PROBE):
        for cand in (around + d, around - d):
            if cand >= 1 and row_hash(with_seq(row, cand)) == h:
                return cand
    return None


def _diagnose(fname: str, row: Row, nxt: Row | None, seq_expected: int, head: str) -> Problem:
    seq = row[SEQ]
    if seq > seq_expected:
        missing = seq - seq_expected
        return Problem(kind="deleted", file=fname, seq=seq_expected,
                       message=f"rows {seq_expected}..{seq - 1} are missing: {missing} row(s) "
                               "deleted")
    self_ok = row_hash(row) == row[HASH]
    if row[PREV] == head:
        return Problem(kind="edited", file=fname, seq=seq,
                       message=f"row {seq} was edited: its content no longer matches its hash")
    if self_ok:
        p = seq - 1
        return Problem(kind="edited", file=fname, seq=p,
                       message=f"row {p} was replaced (edited or forged, with a recomputed "
                               f"hash): row {seq} no longer links to it")
    original = _original_seq(row, seq)
    if original is None:
        return Problem(kind="inserted", file=fname, seq=seq,
                       message=f"row {seq} does not belong to the chain: it was forged or "
                               "inserted (its hash matches no position and it links to no "
                               "predecessor)")
    if original < seq:
        k = seq - original
        return Problem(kind="inserted", file=fname, seq=original,
                       message=f"{k} row(s) were inserted at seq {original}..{seq - 1}: the "
                               f"event now at seq {seq} was recorded as seq {original}")
    if nxt is not None and row_hash(with_seq(nxt, original + 1)) == nxt[HASH]:
        k = original - seq
        return Problem(kind="deleted", file=fname, seq=seq,
                       message=f"{k} row(s) before seq {seq} were deleted and the later rows "
                               f"renumbered: the event now at seq {seq} was recorded as seq "
                               f"{original}")
    return Problem(kind="reordered", file=fname, seq=seq,
                   message=f"rows were reordered: seq {seq} holds the event recorded as seq "
                           f"{original}")
