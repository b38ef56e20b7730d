"""The derived tables (``ix_session``, ``ix_principal``, ``ix_outcome``, ``events_fts``).

They are filled off the commit path (see ``firewall.audit.store``, rule 3):
every answer stays complete while they lag, a writer killed in the middle of a
catch-up step leaves them consistent, and ``verify`` reads the chain alone.
The command line runs as a real process (the installed ``mcpwall``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from firewall.audit.chain import GENESIS, chain_rows, event_row, stored, verify_row
from firewall.audit.events import DecisionEvent, Event, LifecycleEvent, OutcomeEvent
from firewall.audit.process import _events as wire_events
from firewall.audit.redaction import Redactor
from firewall.audit.trail import Trail
from firewall.audit.verify import verify_paths
from firewall.settings.audit import AuditSettings
from tests.conftest import ROOT, venv_tool

T0 = 1_750_000_000_000_000_000
S = 1_000_000_000
LAG = 10**9  # fts_max_lag: the commits never index; the test says when


def trail_events(sessions: int = 6, calls: int = 8) -> list[Event]:
    """A gateway's events: sessions interleaved, each with a principal; every
    fifth call denied (no outcome); outcomes arrive a few calls later, so a
    decision and its outcome may sit on either side of a catch-up."""
    out: list[Event] = []
    waiting: list[tuple[str, str, int]] = []
    t = T0
    for k in range(sessions):
        out.append(LifecycleEvent(ts_ns=t, kind="session_start", session=f"s{k}",
                                  principal=("alice", "bob", "carol")[k % 3]))
        t += S
    for i in range(calls):
        for k in range(sessions):
            t += S
            call = f"s{k}.{i}"
            out.append(DecisionEvent(
                ts_ns=t, call_id=call, session=f"s{k}", principal=("alice", "bob", "carol")[k % 3],
                grant="g", server="vm", method="tools/call", tool=("get_vm", "delete_vm")[i % 2],
                arguments={"name": f"vm-{k}-{i}", "zone": "eu"},
                decision="deny" if (i + k) % 5 == 0 else "allow", rule=f"r{i % 3}"))
            if (i + k) % 5:
                waiting.append((call, f"s{k}", t))
            if len(waiting) > 4:
                done, session, ts = waiting.pop(0)
                out.append(OutcomeEvent(ts_ns=t + 1, call_id=done, session=session, server="vm",
                                        status="ok" if ts % 3 else "tool_error",
                                        latency_ns=ts % 7_000_000))
    for done, session, _ in waiting:
        t += S
        out.append(OutcomeEvent(ts_ns=t, call_id=done, session=session, server="vm",
                                status="timeout", latency_ns=1))
    return out


QUERIES: tuple[tuple[str, ...], ...] = (
    ("query",),
    ("query", "--principal", "alice"),
    ("query", "--session", "s4"),
    ("query", "--principal", "bob", "--since", str(T0 + 20 * S), "--until", str(T0 + 40 * S)),
    ("query", "--session", "s1", "--outcome", "none"),
    ("query", "--principal", "carol", "--decision", "deny"),
    ("query", "--search", "vm-3-5"),
    ("timeline", "--session", "s2"),
    ("timeline", "--principal", "alice", "--since", str(T0 + 10 * S)),
    ("stats", "--principal", "bob"),
)
VIEWS = ("SELECT * FROM calls ORDER BY seq", "SELECT * FROM denials ORDER BY seq",
         "SELECT * FROM errors ORDER BY seq", "SELECT * FROM sessions ORDER BY session")


def answers(db: Path) -> dict[str, Any]:
    """What the command line (a real process per query) and the views answer."""
    mcpwall = venv_tool("mcpwall")
    out: dict[str, Any] = {}
    for q in QUERIES:
        done = subprocess.run([mcpwall, "audit", q[0], str(db), *q[1:], "--json"],
                              capture_output=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        out[" ".join(q)] = msgspec.json.decode(done.stdout)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for sql in VIEWS:
            out[sql] = conn.execute(sql).fetchall()
    finally:
        conn.close()
    return out


def _upto(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT upto FROM fts_progress").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
def test_answers_are_complete_while_the_derived_tables_lag(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    events = trail_events()
    with Trail(AuditSettings(path=str(db), fts_max_lag=LAG), "gw") as trail:
        trail.append_batch(events)
        assert _upto(db) == 0  # nothing derived yet: every answer comes from the tail
        lagging = answers(db)
        trail.index_pending(len(events) // 2)  # half: calls whose outcome is in the tail
        half = answers(db)
    assert _upto(db) == len(events)  # close caught up
    full = answers(db)
    assert lagging == half == full
    calls = full["SELECT * FROM calls ORDER BY seq"]
    decisions = [e for e in events if isinstance(e, DecisionEvent)]
    assert len(calls) == len(decisions)
    denied = sum(d.decision == "deny" for d in decisions)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        columns = [d[0] for d in conn.execute("SELECT * FROM calls LIMIT 0").description]
    finally:
        conn.close()
    status = columns.index("status")
    assert sum(row[status] is None for row in calls) == denied  # only refusals lack one
    assert len(full["query --principal alice"]) == sum(d.principal == "alice" for d in decisions)
    assert [r["call_id"] for r in full["query --search vm-3-5"]] == ["s3.5"]
    assert {r["kind"] for r in full["timeline --session s2"]} == {"session_start", "call"}


def test_the_calls_view_links_an_outcome_on_either_side_of_the_catch_up(
        tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    with Trail(AuditSettings(path=str(db), fts_max_lag=LAG), "gw") as trail:
        trail.append_batch([DecisionEvent(
            ts_ns=T0, call_id="c1", session="s", principal="p", grant="g", server="vm",
            method="tools/call", tool="t", decision="allow")])
        trail.index_pending()  # the decision is derived, its outcome will be in the tail
        trail.append_batch([OutcomeEvent(ts_ns=T0 + 1, call_id="c1", session="s", server="vm",
                                         status="tool_error", latency_ns=2_000_000)])
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        sql = "SELECT call_id, status, latency_ms FROM calls"
        assert conn.execute(sql).fetchall() == [("c1", "tool_error", 2.0)]
        trail.index_pending()
        assert conn.execute(sql).fetchall() == [("c1", "tool_error", 2.0)]
        conn.close()


WORKER = r'''
import sys
from firewall.settings.audit import AuditSettings
from firewall.audit.trail import Trail
from tests.test_audit_deferred import trail_events

db = sys.argv[1]
trail = Trail(AuditSettings(path=db, fts_max_lag=10**9, anchor_log=False), "gw")
if trail.seq == 0:
    events = trail_events(sessions=200, calls=150)
    for k in range(0, len(events), 5000):
        trail.append_batch(events[k:k + 5000])
print("indexing", trail.seq, trail.indexed, flush=True)
while trail.unindexed():
    trail.index_pending(4000)
    print("step", trail.indexed, flush=True)
print("done", flush=True)
'''


def _consistent(db: Path) -> int:
    """Each derived table holds exactly the rows up to ``fts_progress.upto``."""
    conn = sqlite3.connect(db)
    try:
        upto = int(conn.execute("SELECT upto FROM fts_progress").fetchone()[0])
        for table, where in (("ix_session", "session IS NOT NULL"),
                             ("ix_principal", "principal IS NOT NULL"),
                             ("ix_outcome", "kind = 'outcome'"),
                             ("events_fts_docsize", "arguments IS NOT NULL")):
            got = conn.execute(f"SELECT count(*), coalesce(max(seq), 0) FROM ("
                               f"SELECT {'id' if table.endswith('docsize') else 'seq'} AS seq "
                               f"FROM {table})").fetchone()
            want = conn.execute(f"SELECT count(*), coalesce(max(seq), 0) FROM events "
                                f"WHERE seq <= ? AND {where}", (upto,)).fetchone()
            assert got == want, (table, got, want, upto)
        return upto
    finally:
        conn.close()


@pytest.mark.slow
def test_a_writer_killed_during_a_catch_up_step_leaves_the_tables_consistent(
        tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    events = trail_events(sessions=200, calls=150)
    kills = 0
    for delay in (0.0, 0.05, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(db)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert line.startswith("indexing"), line
            line = proc.stdout.readline().decode()  # a step is committed, the next runs
            if line.startswith("step"):
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                kills += proc.wait() == -signal.SIGKILL
        finally:
            proc.kill()
            proc.wait()
        upto = _consistent(db)
        assert 0 < upto <= len(events)
    assert kills >= 1
    assert answers(db)["SELECT * FROM calls ORDER BY seq"]  # complete while lagging
    lagging = answers(db)
    with Trail(AuditSettings(path=str(db)), "gw") as trail:  # catches up on close
        assert trail.seq == len(events)
    assert _consistent(db) == len(events)
    assert answers(db) == lagging
    [report] = verify_paths([db])
    assert report.ok, report.problems


def test_verify_reads_the_chain_alone_and_derived_tables_are_append_only(
        tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    events = trail_events()
    with Trail(AuditSettings(path=str(db), fts_max_lag=LAG), "gw") as trail:
        trail.append_batch(events)
        trail.index_pending(len(events) // 2)
        conn = sqlite3.connect(db)
        for sql in ("DELETE FROM ix_outcome", "UPDATE ix_session SET seq = 1",
                    "DELETE FROM ix_principal WHERE seq > 3"):
            try:
                conn.execute(sql)
                raise AssertionError(f"{sql}: not refused")
            except sqlite3.DatabaseError as exc:
                assert "append-only" in str(exc)
        conn.close()
    assert verify_paths([db])[0].ok
    conn = sqlite3.connect(db)  # an edit in the rows the derived tables reached last
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET decision = 'allow' WHERE seq = ?", (len(events) - 3,))
    conn.commit()
    conn.close()
    [report] = verify_paths([db])
    assert not report.ok and report.problems[0].kind == "edited"


ARGUMENTS: tuple[dict[str, Any] | None, ...] = (
    None, {}, {"name": "vm-1", "zone": "eu"}, {"api_token": "abc"},
    {"nested": [{"password": "x"}, 1, 2.5, None, True]},
    {"q": "key sk-" + "a" * 25}, {"h": "Bearer abcdefghijkl"}, {"名前": "値", "e": "é"},
    {"big": 2**70, "neg": -(2**64), "f": 1e-7, "g": 0.1, "h": 1e300},
    {"esc": 'quote " back \\ nl \n tab \t ctl \x01'}, {"k\"ey": "v"},
)


def test_the_writer_process_builds_the_rows_the_thread_builds() -> None:
    """Arguments kept as the gateway's JSON text (WireDecision) hash like the dict."""
    settings = AuditSettings(path="unused.db")
    redactor = Redactor.compile(settings.redaction.names, settings.redaction.values, b"k" * 32)
    events = [DecisionEvent(ts_ns=T0 + i, call_id=f"c{i}", session="s", principal="p",
                            grant="g", server="vm", method="tools/call", arguments=args,
                            decision="allow") for i, args in enumerate(ARGUMENTS)]
    wire = wire_events.decode(msgspec.json.encode(events))
    for with_redaction in (redactor, None):
        head_a = head_b = GENESIS
        for i, (event, decoded) in enumerate(zip(events, wire, strict=True)):
            a = event_row(event, seq=i + 1, instance="gw", prev_hash=head_a,
                          redactor=with_redaction)
            b = event_row(decoded, seq=i + 1, instance="gw", prev_hash=head_b,
                          redactor=with_redaction)
            assert stored(a) == stored(b), event.arguments
            head_a, head_b = a[-1], b[-1]
    redacted = [stored(event_row(d, seq=1, instance="gw", prev_hash=GENESIS,
                                 redactor=redactor))[15] for d in wire]
    assert "abc" not in redacted[3] and "sk-aaaa" not in redacted[5]
    assert "abcdefghijkl" not in redacted[6] and '"x"' not in redacted[4]


def test_a_batch_chains_the_rows_event_row_gives_one_by_one() -> None:
    """chain_rows (one buffer for every row's canonical bytes) gives the rows and
    hashes event_row gives, whatever the order of long and short rows."""
    settings = AuditSettings(path="unused.db")
    redactor = Redactor.compile(settings.redaction.names, settings.redaction.values, b"k" * 32)
    events: list[Event] = [
        LifecycleEvent(ts_ns=T0, kind="session_start", session="s", detail={"x": "y" * 5000}),
        *(DecisionEvent(ts_ns=T0 + i, call_id=f"c{i}", session="s", principal="p", grant="g",
                        server="vm", method="tools/call", arguments=args, decision="allow")
          for i, args in enumerate(ARGUMENTS)),
        OutcomeEvent(ts_ns=T0 + 99, call_id="c1", session="s", server="vm", status="ok",
                     latency_ns=5),
        LifecycleEvent(ts_ns=T0 + 100, kind="session_end", session="s"),
    ]
    wire = wire_events.decode(msgspec.json.encode(events))
    for with_redaction in (redactor, None):
        rows = chain_rows(wire, seq=41, instance="gw", prev_hash="ab" * 32,
                          redactor=with_redaction)
        head = "ab" * 32
        for i, (event, row) in enumerate(zip(wire, rows, strict=True)):
            one = event_row(event, seq=42 + i, instance="gw", prev_hash=head,
                            redactor=with_redaction)
            assert stored(row) == stored(one) and verify_row(row)
            head = one[-1]


def test_clean_is_never_true_for_text_that_holds_a_secret() -> None:
    settings = AuditSettings(path="unused.db")
    r = Redactor.compile(settings.redaction.names, settings.redaction.values, b"k" * 32)
    for args in ARGUMENTS:
        if args is None:
            continue
        text = msgspec.json.encode(args).decode()
        if r.clean(text):
            assert r.apply(args) == args, args
    assert r.clean('{"name":"vm-1","zone":"eu"}')
    assert not r.clean('{"name":"\\u00e9"}'.replace("\\u00e9", "é"))  # not ASCII: unsure
    # A literal JSON would escape turns the shortcut off; redaction itself still works.
    quoted = Redactor.compile(["*token*"], [r'"sk-\w+'], b"k" * 32)
    assert not quoted.clean('{"a":"b"}')
    unsure = Redactor.compile(["*"], [], b"k" * 32)  # a glob with no literal
    assert not unsure.clean('{"a":"b"}')
    assert Redactor.compile([], [], b"k" * 32).clean('{"password":"x"}')  # nothing to redact
