"""Every kind of tampering with the audit trail is detected and named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from firewall.audit.chain import COLUMNS, HASH, event_row, row_hash
from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.audit.trail import Trail
from firewall.audit.verify import verify_paths
from firewall.cli.audit import audit
from firewall.settings.audit import AuditSettings

N = 60


def _events(n: int) -> list[DecisionEvent | OutcomeEvent | LifecycleEvent]:
    out: list[DecisionEvent | OutcomeEvent | LifecycleEvent] = []
    for i in range(n):
        ts = 1_700_000_000_000_000_000 + i * 1_000_000
        if i % 3 == 2:
            out.append(OutcomeEvent(ts_ns=ts, call_id=f"c{i - 1}", session="s1", server="vm",
                                    status="ok", latency_ns=1000 + i, response_bytes=10))
        elif i % 7 == 0:
            out.append(LifecycleEvent(ts_ns=ts, kind="session_start", session=f"s{i}",
                                      detail={"n": i}))
        else:
            out.append(DecisionEvent(ts_ns=ts, call_id=f"c{i}", session="s1", principal="p",
                                     grant="g", server="vm", method="tools/call", tool="t",
                                     arguments={"i": i}, decision="allow", rule="r",
                                     retry_after=0.1 * i))
    return out


@pytest.fixture
def trail_db(tmp_path: Path) -> Path:
    settings = AuditSettings(path=str(tmp_path / "audit.db"), checkpoint_every_rows=20)
    with Trail(settings, "gw-1") as trail:
        for chunk in range(0, N, 10):  # several transactions, several checkpoints
            trail.append_batch(_events(N)[chunk:chunk + 10])
    return tmp_path / "audit.db"


def _tamper(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    for table in ("events", "checkpoints", "segment"):
        conn.execute(f"DROP TRIGGER {table}_no_update")
        conn.execute(f"DROP TRIGGER {table}_no_delete")
    return conn


def _row(conn: sqlite3.Connection, seq: int) -> tuple[object, ...]:
    cols = ", ".join(f"[{c}]" for c in COLUMNS)
    row: tuple[object, ...] = conn.execute(f"SELECT {cols} FROM events WHERE seq = ?",
                                           (seq,)).fetchone()
    return row


def _put(conn: sqlite3.Connection, row: tuple[object, ...]) -> None:
    conn.execute(f"INSERT INTO events ({', '.join(f'[{c}]' for c in COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(COLUMNS))})", row)


def _problem(db: Path) -> tuple[str, int | None, str]:
    reports = verify_paths([db])
    assert len(reports) == 1
    assert not reports[0].ok, "tampering went undetected"
    p = reports[0].problems[0]
    return p.kind, p.seq, p.message


def test_intact_trail_verifies(trail_db: Path) -> None:
    [report] = verify_paths([trail_db])
    assert report.ok, report.problems
    assert report.rows == N and report.last_seq == N
    assert report.signatures_checked and report.signed_upto == N
    assert report.anchored_upto == N


def test_triggers_refuse_update_and_delete(trail_db: Path) -> None:
    conn = sqlite3.connect(trail_db)
    for sql in ("UPDATE events SET principal = 'x' WHERE seq = 3",
                "DELETE FROM events WHERE seq = 3",
                "DELETE FROM checkpoints",
                "UPDATE segment SET first_seq = 2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()
    assert verify_paths([trail_db])[0].ok


def test_edited_field(trail_db: Path) -> None:
    _tamper(trail_db).execute("UPDATE events SET principal = 'mallory' WHERE seq = 31")
    assert _problem(trail_db)[:2] == ("edited", 31)


def test_edited_with_recomputed_chain_is_caught_by_the_checkpoint(trail_db: Path) -> None:
    conn = _tamper(trail_db)
    conn.execute("UPDATE events SET decision = 'deny' WHERE seq = 25")
    prev = _row(conn, 24)[HASH]
    for seq in range(25, N + 1):  # the attacker rewrites every later hash
        row = list(_row(conn, seq))
        row[COLUMNS.index("prev_hash")] = prev
        row[HASH] = row_hash(tuple(row))
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (row[COLUMNS.index("prev_hash")], row[HASH], seq))
        prev = row[HASH]
    kind, seq, message = _problem(trail_db)
    assert kind == "edited" and seq == 40  # the first checkpoint after the edit
    assert "recomputed" in message


def test_deleted_row(trail_db: Path) -> None:
    _tamper(trail_db).execute("DELETE FROM events WHERE seq = 17")
    kind, seq, message = _problem(trail_db)
    assert (kind, seq) == ("deleted", 17)
    assert "17..17" in message


def test_deleted_row_and_renumbered(trail_db: Path) -> None:
    conn = _tamper(trail_db)
    conn.execute("DELETE FROM events WHERE seq = 17")
    conn.execute("UPDATE events SET seq = seq - 1 + 1000000 WHERE seq > 17")
    conn.execute("UPDATE events SET seq = seq - 1000000 WHERE seq > 1000000")
    kind, seq, message = _problem(trail_db)
    assert (kind, seq) == ("deleted", 17)
    assert "renumbered" in message


@pytest.mark.parametrize(("a", "b"), [(10, 11), (10, 44)])
def test_swapped_rows(trail_db: Path, a: int, b: int) -> None:
    conn = _tamper(trail_db)
    ra, rb = _row(conn, a), _row(conn, b)
    conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (a, b))
    _put(conn, (a, *rb[1:]))
    _put(conn, (b, *ra[1:]))
    kind, seq, message = _problem(trail_db)
    assert (kind, seq) == ("reordered", a)
    assert f"recorded as seq {b}" in message


def test_inserted_forged_row_with_a_valid_hash(trail_db: Path) -> None:
    conn = _tamper(trail_db)
    conn.execute("UPDATE events SET seq = seq + 1000000 WHERE seq > 20")
    conn.execute("UPDATE events SET seq = seq - 999999 WHERE seq > 1000000")
    forged = DecisionEvent(ts_ns=1_700_000_000_020_500_000, call_id="forged", session="s1",
                           principal="p", grant="g", server="vm", method="tools/call",
                           tool="t", decision="allow", rule="r")
    _put(conn, event_row(forged, seq=21, instance="gw-1", prev_hash=str(_row(conn, 20)[HASH]),
                         redactor=None))
    kind, seq, message = _problem(trail_db)
    assert (kind, seq) == ("inserted", 21)
    assert "1 row(s) were inserted" in message


def test_forged_row_at_the_tail(trail_db: Path) -> None:
    conn = _tamper(trail_db)
    row = list(_row(conn, N))
    row[0] = N + 1
    row[COLUMNS.index("principal")] = "mallory"
    _put(conn, tuple(row))
    kind, seq, _ = _problem(trail_db)
    assert (kind, seq) == ("inserted", N + 1)


def test_cut_tail_is_caught_by_the_anchor(trail_db: Path) -> None:
    conn = _tamper(trail_db)
    conn.execute("DELETE FROM events WHERE seq > 50")
    conn.execute("DELETE FROM checkpoints WHERE seq > 50")
    kind, seq, message = _problem(trail_db)
    assert (kind, seq) == ("truncated", 51)
    assert "anchor" in message


def test_cut_tail_without_anchor_is_caught_by_inner_checkpoint(trail_db: Path) -> None:
    _tamper(trail_db).execute("DELETE FROM events WHERE seq > 50")
    (trail_db.parent / "audit.db.anchor").unlink()
    kind, seq, _ = _problem(trail_db)
    assert (kind, seq) == ("truncated", 51)


def test_forged_checkpoint_signature(trail_db: Path) -> None:
    _tamper(trail_db).execute("UPDATE checkpoints SET signature = ? WHERE seq = 40",
                              ("00" * 32,))
    kind, seq, _ = _problem(trail_db)
    assert (kind, seq) == ("forged_checkpoint", 40)


def test_missing_middle_segment(tmp_path: Path) -> None:
    settings = AuditSettings(path=str(tmp_path / "a.db"), segment_max_bytes=1)
    with Trail(settings, "gw-1") as trail:
        for i in range(4):
            trail.append_batch(_events(N)[i * 5:(i + 1) * 5])
    segments = sorted(tmp_path.glob("a*.db"))
    assert len(segments) >= 3
    assert verify_paths([tmp_path / "a.db"])[0].ok
    (tmp_path / "a.000002.db").unlink()
    kind, seq, _ = _problem(tmp_path / "a.db")
    assert (kind, seq) == ("missing_segment", 6)


def test_verify_cli_exit_codes(trail_db: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(audit, ["verify", str(trail_db)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("OK ")
    _tamper(trail_db).execute("UPDATE events SET tool = 'rm' WHERE seq = 5")
    bad = runner.invoke(audit, ["verify", str(trail_db)])
    assert bad.exit_code == 1
    assert "TAMPERED" in bad.output and "edited at seq 5" in bad.output
    js = runner.invoke(audit, ["verify", "--json", str(trail_db)])
    assert js.exit_code == 1 and '"kind":"edited"' in js.output
    usage = runner.invoke(audit, ["verify", str(trail_db.parent / "missing.db")])
    assert usage.exit_code == 2


def test_sqlite_renders_honest_rows_as_msgspec_does(trail_db: Path) -> None:
    """verify's fast path: SQLite's json_array gives the canonical bytes of every
    row without a REAL (so those rows are not re-read one by one)."""
    from firewall.audit.chain import FORMAT, canonical
    from firewall.audit.verify import _LIGHT
    conn = sqlite3.connect(trail_db)
    light = conn.execute(_LIGHT, (FORMAT,)).fetchall()
    full = conn.execute(f"SELECT {', '.join(f'[{c}]' for c in COLUMNS)} FROM events "
                        "ORDER BY seq").fetchall()
    rendered = [canon for (_, _, _, canon), row in zip(light, full, strict=True)
                if row[COLUMNS.index("retry_after")] is None]
    assert len(rendered) > N // 3
    assert rendered == [canonical(row) for row in full
                        if row[COLUMNS.index("retry_after")] is None]


def test_a_float_edit_below_sqlite_print_precision(trail_db: Path) -> None:
    _tamper(trail_db).execute("UPDATE events SET retry_after = retry_after + 1e-15 "
                              "WHERE seq = 5")
    assert _problem(trail_db)[:2] == ("edited", 5)


def test_a_blob_where_text_belongs(trail_db: Path) -> None:
    _tamper(trail_db).execute("UPDATE events SET tool = CAST('t' AS BLOB) WHERE seq = 8")
    assert _problem(trail_db)[:2] == ("edited", 8)
