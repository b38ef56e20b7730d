"""``mcpwall audit``: filters, several files merged in time order, formats, bad input."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from firewall import __version__
from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.audit.export import cef_line
from firewall.audit.query import parse_time
from firewall.audit.trail import Trail
from firewall.cli.audit import audit
from firewall.settings.audit import AuditSettings

T0 = 1_750_000_000_000_000_000
S = 1_000_000_000


def _fleet(tmp: Path) -> tuple[Path, Path]:
    """Two instances; their calls interleave in time."""
    paths = []
    for k, name in enumerate(("gw-a", "gw-b")):
        db = tmp / f"{name}.db"
        events: list[DecisionEvent | OutcomeEvent | LifecycleEvent] = [
            LifecycleEvent(ts_ns=T0 + k, kind="session_start", session=f"{name}-s",
                           principal="alice")]
        for i in range(5):
            ts = T0 + (2 * i + k + 1) * S
            cid = f"{name}.{i}"
            events.append(DecisionEvent(
                ts_ns=ts, call_id=cid, session=f"{name}-s", principal="alice" if i % 2 else "bob",
                grant="g", server="vm", method="tools/call", tool=f"tool_{i}",
                arguments={"target": f"host-{k}-{i}", "note": "hello|world=1"},
                decision="deny" if i == 3 else "allow", rule=f"r{i}"))
            if i != 3:
                events.append(OutcomeEvent(ts_ns=ts + 1000, call_id=cid, session=f"{name}-s",
                                           server="vm", status="timeout" if i == 4 else "ok",
                                           latency_ns=1000))
        with Trail(AuditSettings(path=str(db)), name) as trail:
            trail.append_batch(events)
        paths.append(db)
    return paths[0], paths[1]


def _json(args: list[str]) -> list[dict[str, object]]:
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    out: list[dict[str, object]] = msgspec.json.decode(result.output)
    return out


def test_query_merges_files_in_time_order(tmp_path: Path) -> None:
    a, b = _fleet(tmp_path)
    rows = _json(["query", str(a), str(b), "--json"])
    assert [r["call_id"] for r in rows] == [f"gw-{x}.{i}" for i in range(5) for x in "ab"]
    assert [r["ts_ns"] for r in rows] == sorted(r["ts_ns"] for r in rows)  # type: ignore[type-var]


def test_query_filters(tmp_path: Path) -> None:
    a, b = _fleet(tmp_path)
    files = [str(a), str(b)]
    assert {r["call_id"] for r in _json(["query", *files, "--decision", "deny", "--json"])} == {
        "gw-a.3", "gw-b.3"}
    alice = _json(["query", *files, "--principal", "alice", "--json"])
    assert {r["principal"] for r in alice} == {"alice"} and len(alice) == 4
    assert [r["call_id"] for r in _json(["query", *files, "--outcome", "timeout", "--json"])
            ] == ["gw-a.4", "gw-b.4"]
    assert len(_json(["query", *files, "--outcome", "none", "--json"])) == 2
    assert [r["call_id"] for r in _json(["query", *files, "--search", "host-1-2", "--json"])
            ] == ["gw-b.2"]
    assert len(_json(["query", *files, "--tool", "tool_[12]", "--json"])) == 4
    assert len(_json(["query", *files, "--since", str(T0 + 5 * S), "--json"])) == 6
    assert [r["call_id"] for r in _json(["query", *files, "--limit", "3", "--latest",
                                         "--json"])] == ["gw-b.3", "gw-a.4", "gw-b.4"]
    assert [r["call_id"] for r in _json(["query", *files, "--rule", "r1", "--json"])] == [
        "gw-a.1", "gw-b.1"]


def test_csv_and_table_output(tmp_path: Path) -> None:
    a, _ = _fleet(tmp_path)
    result = CliRunner().invoke(audit, ["query", str(a), "--csv"])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 5 and rows[3]["decision"] == "deny"
    table = CliRunner().invoke(audit, ["query", str(a)]).output
    assert table.splitlines()[0].split()[:3] == ["ts", "instance", "session"]


def test_timeline_stats_tail_export(tmp_path: Path) -> None:
    a, b = _fleet(tmp_path)
    tl = _json(["timeline", str(a), "--session", "gw-a-s", "--json"])
    assert tl[0]["kind"] == "session_start" and len(tl) == 6
    stats = msgspec.json.decode(CliRunner().invoke(audit, ["stats", str(a), str(b),
                                                           "--json"]).output)
    assert {r["name"]: r["calls"] for r in stats["principals"]} == {"bob": 6, "alice": 4}
    assert sum(r["denials"] for r in stats["tools"]) == 2
    assert sum(r["errors"] for r in stats["over_time"]) == 2
    tail = CliRunner().invoke(audit, ["tail", str(a), str(b), "-n", "2", "--nl"]).output
    last = [msgspec.json.decode(line) for line in tail.splitlines()]
    assert [r["kind"] for r in last] == ["decision", "outcome"] and last[1]["call_id"] == "gw-b.4"
    jsonl = CliRunner().invoke(audit, ["export", str(a), str(b)]).output.splitlines()
    assert len(jsonl) == 2 * 10
    assert msgspec.json.decode(jsonl[0])["kind"] == "session_start"
    cef = CliRunner().invoke(audit, ["export", str(a), "--format", "cef"]).output.splitlines()
    assert all(line.startswith("CEF:0|mcpwall|mcpwall|") for line in cef)
    assert any("act=deny" in line and "|7|" in line for line in cef)
    exported = CliRunner().invoke(audit, ["export", str(a), "--format", "csv"]).output
    assert len(list(csv.DictReader(io.StringIO(exported)))) == 10


def test_tail_follow_sees_new_events_and_new_segments(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    settings = AuditSettings(path=str(db))
    with Trail(settings, "gw") as trail:
        trail.append_batch([LifecycleEvent(ts_ns=T0, kind="upstream_start", server="vm")])
        # A follower started now polls once; the event appended before it is not repeated.
    result = CliRunner().invoke(audit, ["tail", str(db), "-n", "0", "-f", "--polls", "1",
                                        "--interval", "0.05", "--nl"])
    assert result.exit_code == 0 and result.output == ""


def test_cef_escaping() -> None:
    line = cef_line({"kind": "decision", "decision": "deny", "method": "tools/call",
                     "tool": "a|b", "reason": "x=1\nnext", "ts_ns": 5_000_000, "seq": 1})
    assert line.startswith(f"CEF:0|mcpwall|mcpwall|{__version__}|decision:deny|"
                           "tools/call a\\|b refused|7|")
    assert " reason=x\\=1\\nnext " in line
    assert "\n" not in line


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    a, _ = _fleet(tmp_path)
    runner = CliRunner()
    bad_time = runner.invoke(audit, ["query", str(a), "--since", "yesterday-ish"])
    assert bad_time.exit_code == 2 and "ISO 8601" in bad_time.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)")
    not_audit = runner.invoke(audit, ["query", str(other)])
    assert not_audit.exit_code == 1 and "not an mcpwall audit database" in not_audit.output
    assert runner.invoke(audit, ["timeline", str(a)]).exit_code == 2
    assert runner.invoke(audit, ["stats", str(a), "--every", "soon"]).exit_code == 2
    verify_other = runner.invoke(audit, ["verify", str(other)])
    assert verify_other.exit_code == 1 and "unreadable" in verify_other.output


@pytest.mark.parametrize(("text", "expected"), [
    ("1970-01-01T00:00:01Z", S),
    ("1970-01-01T00:00:01.5+00:00", S + S // 2),
    ("1970-01-02", 86400 * S),
    ("15m", 10**18 - 900 * S),
    ("now", 10**18),
])
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=10**18) == expected


def test_every_command_has_help_with_an_example() -> None:
    for name in ("query", "timeline", "stats", "tail", "export", "verify"):
        out = CliRunner().invoke(audit, [name, "--help"]).output
        assert "mcpwall audit " + name in out, name


def _fts_rows(db: Path) -> tuple[int, int]:
    """(rows in events_fts, fts_progress.upto) of a file."""
    conn = sqlite3.connect(db)
    [upto] = conn.execute("SELECT upto FROM fts_progress").fetchone()
    indexed = conn.execute("SELECT count(*) FROM events_fts WHERE events_fts MATCH 'host'"
                           ).fetchone()[0]
    conn.close()
    return indexed, upto


def test_search_covers_rows_the_writer_has_not_indexed_yet(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    trail = Trail(AuditSettings(path=str(db), fts_max_lag=1_000_000), "gw")
    try:
        trail.append_batch([DecisionEvent(
            ts_ns=T0 + i * S, call_id=f"c{i}", session="s", principal="alice", grant="g",
            server="vm", method="tools/call", tool="t",
            arguments={"target": f"host-{i}", "note": "vm-prod-7" if i % 2 else "vm-prod-8"},
            decision="allow") for i in range(6)])
        assert _fts_rows(db) == (0, 0)  # nothing indexed: the commit path skips it
        found = _json(["query", str(db), "--search", "vm-prod-7", "--json"])
        assert [r["call_id"] for r in found] == ["c1", "c3", "c5"]
        assert trail.index_pending(4) == 4  # half indexed: events_fts + the reader's tail
        assert _fts_rows(db) == (4, 4)
        found = _json(["query", str(db), "--search", "vm-prod-7", "--json"])
        assert [r["call_id"] for r in found] == ["c1", "c3", "c5"]
        assert [r["call_id"] for r in _json(["query", str(db), "--search", "host-4", "--json"])
                ] == ["c4"]
    finally:
        trail.close()  # indexes the rest
    assert _fts_rows(db) == (6, 6)
    found = _json(["query", str(db), "--search", "vm-prod-7", "--json"])
    assert [r["call_id"] for r in found] == ["c1", "c3", "c5"]


def test_a_writer_that_lags_indexes_with_each_commit(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    with Trail(AuditSettings(path=str(db), fts_max_lag=3), "gw") as trail:
        for i in range(5):
            trail.append_batch([DecisionEvent(
                ts_ns=T0 + i, call_id=f"c{i}", session="s", principal="p", grant="g",
                server="vm", method="tools/call", arguments={"target": f"host-{i}"},
                decision="allow")])
            assert trail.unindexed() == min(i + 1, 3)
        assert _fts_rows(db)[1] == 2
    with Trail(AuditSettings(path=str(db), fts_max_lag=0), "gw") as trail:
        assert trail.indexed == 5  # close indexed the rest
        trail.append_batch([DecisionEvent(
            ts_ns=T0 + 9, call_id="c9", session="s", principal="p", grant="g", server="vm",
            method="tools/call", arguments={"target": "host-9"}, decision="allow")])
        assert trail.unindexed() == 0 and _fts_rows(db) == (6, 6)


def as_older_writer(db: Path, *, progress: bool) -> None:
    """Turn a file into what the writer before the derived tables wrote: the
    session, principal and outcome call_id indexes on events, the ``calls`` view
    joining on call_id, no ``ix_*`` tables; without ``progress``, also no
    ``fts_progress`` (from before full-text indexing left the commit)."""
    conn = sqlite3.connect(db)
    for table in ("ix_session", "ix_principal", "ix_outcome"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("CREATE INDEX idx_events_session_ts_ns ON events (session, ts_ns)")
    conn.execute("CREATE INDEX idx_events_outcome_call_id ON events (call_id) "
                 "WHERE kind = 'outcome'")
    conn.execute("CREATE INDEX idx_events_principal_ts_ns ON events (principal, ts_ns) "
                 "WHERE principal IS NOT NULL")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'calls'").fetchone()[0]
    head, _, _ = sql.partition("FROM events d")
    conn.execute("DROP VIEW calls")
    conn.execute(head + "FROM events d LEFT JOIN events o ON o.call_id = d.call_id "
                 "AND o.kind = 'outcome' WHERE d.kind = 'decision'")
    if not progress:
        conn.execute("DROP TABLE fts_progress")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("progress", [False, True])
def test_a_file_from_an_older_writer_reads_and_grows_as_before(tmp_path: Path,
                                                               progress: bool) -> None:
    a, _ = _fleet(tmp_path)
    expect = {args: _json(["query", str(a), *args, "--json"]) for args in (
        (), ("--principal", "alice"), ("--session", "gw-a-s"), ("--search", "hello"))}
    as_older_writer(a, progress=progress)
    for args, rows in expect.items():
        assert _json(["query", str(a), *args, "--json"]) == rows, args
    assert len(_json(["timeline", str(a), "--session", "gw-a-s", "--json"])) == 6
    with Trail(AuditSettings(path=str(a), fts_max_lag=0), "gw-a") as trail:
        assert trail.indexed == trail.seq == 10 and not trail.derived
        trail.append_batch([
            DecisionEvent(ts_ns=T0 + 99 * S, call_id="gw-a.9", session="gw-a-s",
                          principal="alice", grant="g", server="vm", method="tools/call",
                          tool="late", arguments={"note": "hello"}, decision="allow"),
            OutcomeEvent(ts_ns=T0 + 99 * S + 1, call_id="gw-a.9", session="gw-a-s",
                         server="vm", status="ok", latency_ns=5)])
    assert _fts_rows(a)[1] == 12
    late = _json(["query", str(a), "--principal", "alice", "--tool", "late", "--json"])
    assert [(r["call_id"], r["status"]) for r in late] == [("gw-a.9", "ok")]
    assert len(_json(["query", str(a), "--search", "hello", "--json"])) == 6
