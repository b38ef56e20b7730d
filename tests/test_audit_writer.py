"""The writer thread, group commit, backpressure, redaction, segments, reopen."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.audit.chain import COLUMNS, GENESIS, NULL, event_row, stored, verify_row
from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.audit.redaction import Redactor
from firewall.audit.store import StoreError, chain_files
from firewall.audit.trail import Trail
from firewall.audit.verify import verify_paths
from firewall.audit.writer import AuditError, AuditWriter, open_audit
from firewall.settings.audit import DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES, AuditSettings


def _decision(i: int, **kw: object) -> DecisionEvent:
    base: dict[str, object] = dict(
        ts_ns=1_700_000_000_000_000_000 + i, call_id=f"c{i}", session=f"s{i % 4}",
        principal=f"p{i % 3}", grant="g", server="vm", method="tools/call", tool="t",
        arguments={"i": i}, decision="allow", rule="r")
    base.update(kw)
    return DecisionEvent(**base)  # type: ignore[arg-type]


@pytest.fixture(params=[pytest.param("process", marks=pytest.mark.slow), "thread"])
def writer(request: pytest.FixtureRequest) -> str:
    """Each writer: the child process (default, slow tier) and the thread."""
    return str(request.param)


def _count(db: Path) -> int:
    conn = sqlite3.connect(db)
    n: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    return n


async def test_durable_appends_are_committed_in_order(tmp_path: Path, writer: str) -> None:
    db = tmp_path / "audit.db"
    settings = AuditSettings(path=str(db), writer=writer)  # type: ignore[arg-type]
    async with open_audit(settings, instance_id="gw-1") as audit:
        async def producer(k: int) -> None:
            for i in range(50):
                receipt = await audit.append(_decision(k * 1000 + i))
                await receipt.committed()
                # committed means readable by another connection, now
                conn = sqlite3.connect(db)
                found = conn.execute("SELECT count(*) FROM events WHERE call_id = ?",
                                     (f"c{k * 1000 + i}",)).fetchone()[0]
                conn.close()
                assert found == 1

        async with trio.open_nursery() as nursery:
            for k in range(8):
                nursery.start_soon(producer, k)
    assert _count(db) == 400
    [report] = verify_paths([db])
    assert report.ok and report.signed_upto == 400


async def test_fast_mode_with_a_tiny_queue_drops_nothing(tmp_path: Path, writer: str) -> None:
    db = tmp_path / "audit.db"
    settings = AuditSettings(path=str(db), mode="fast", queue_size=3, max_batch=2,
                             writer=writer)  # type: ignore[arg-type]
    async with open_audit(settings, instance_id="gw-1") as audit:
        async with trio.open_nursery() as nursery:
            for k in range(10):
                async def burst(k: int = k) -> None:
                    for i in range(30):
                        r = await audit.append(_decision(k * 100 + i))
                        await r.committed()  # returns at once in fast mode
                nursery.start_soon(burst)
        await audit.flush()
        assert _count(db) == 300
    assert verify_paths([db])[0].ok


async def test_appends_keep_call_order_within_a_task(tmp_path: Path, writer: str) -> None:
    db = tmp_path / "audit.db"
    settings = AuditSettings(path=str(db), mode="fast", writer=writer)  # type: ignore[arg-type]
    async with open_audit(settings, instance_id="gw") as audit:
        for i in range(100):
            await audit.append(_decision(i))
    conn = sqlite3.connect(db)
    ids = [r[0] for r in conn.execute("SELECT call_id FROM events ORDER BY seq")]
    assert ids == [f"c{i}" for i in range(100)]


async def test_a_failed_commit_fails_the_receipts_and_later_appends(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    writer = AuditWriter(AuditSettings(path=str(db)), "gw")
    await writer.start()
    assert writer.trail is not None
    writer.trail.conn.execute("CREATE TRIGGER boom BEFORE INSERT ON events "
                              "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    receipt = await writer.append(_decision(1))
    with pytest.raises(AuditError):
        await receipt.committed()
    with pytest.raises(AuditError):
        await writer.append(_decision(2))
    with pytest.raises(AuditError):
        await writer.aclose()


async def test_second_writer_is_refused(tmp_path: Path, writer: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The refusal, not the grace a killed gateway's writer gets (seconds), is under test.
    monkeypatch.setattr("firewall.audit.trail._LOCK_WAIT", 0.1)
    settings = AuditSettings(path=str(tmp_path / "audit.db"), writer=writer)  # type: ignore[arg-type]
    async with open_audit(settings, instance_id="a"):
        with pytest.raises(StoreError, match="another mcpwall process"):
            async with open_audit(settings, instance_id="b"):
                pass


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    settings = AuditSettings(path=str(tmp_path / "audit.db"))
    with Trail(settings, "gw-1") as trail:
        trail.append_batch([_decision(i) for i in range(10)])
    with Trail(settings, "gw-1") as trail:
        assert trail.seq == 10
        trail.append_batch([_decision(i) for i in range(10, 15)])
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.rows == 15 and report.checkpoints == 2


def test_segments_rotate_and_the_chain_spans_them(tmp_path: Path) -> None:
    settings = AuditSettings(path=str(tmp_path / "audit.db"), segment_max_bytes=64 * 1024)
    with Trail(settings, "gw-1") as trail:
        for k in range(30):
            trail.append_batch([_decision(k * 20 + i) for i in range(20)])
    files = chain_files(tmp_path / "audit.db")
    assert len(files) > 2
    assert files[1].name == "audit.000002.db"
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.rows == 600 and len(report.files) == len(files)


def test_key_files_are_private_and_generated_once(tmp_path: Path) -> None:
    settings = AuditSettings(path=str(tmp_path / "audit.db"), checkpoint_algorithm="ed25519")
    with Trail(settings, "gw") as trail:
        trail.append_batch([_decision(1)])
    key = tmp_path / "audit.db.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "audit.db.redaction-key").stat().st_mode) == 0o600
    assert (tmp_path / "audit.db.key.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    first = key.read_bytes()
    with Trail(settings, "gw") as trail:
        trail.append_batch([_decision(2)])
    assert key.read_bytes() == first
    # a verifier needs only the public key
    key.unlink()
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.signatures_checked


def test_secrets_are_redacted_but_still_correlate(tmp_path: Path) -> None:
    settings = AuditSettings(path=str(tmp_path / "audit.db"))
    secret = "ghp_" + "a" * 36
    with Trail(settings, "gw") as trail:
        trail.append_batch([
            _decision(1, arguments={"password": "hunter2", "note": f"use {secret} please"}),
            _decision(2, arguments={"nested": [{"Api_Key": 12345}], "token": "hunter2"}),
        ])
    text = (tmp_path / "audit.db").read_bytes() + (tmp_path / "audit.db-wal").read_bytes() \
        if (tmp_path / "audit.db-wal").exists() else (tmp_path / "audit.db").read_bytes()
    assert b"hunter2" not in text and secret.encode() not in text
    conn = sqlite3.connect(tmp_path / "audit.db")
    a, b = [msgspec.json.decode(r[0]) for r in
            conn.execute("SELECT arguments FROM events ORDER BY seq")]
    assert a["password"] == b["token"]  # equal secrets, equal tokens
    assert a["password"].startswith("[redacted:")
    assert a["note"].startswith("use [redacted:") and a["note"].endswith(" please")
    assert b["nested"][0]["Api_Key"].startswith("[redacted:")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(arguments=st.dictionaries(st.text(max_size=10), _json_values, max_size=4),
       retry=st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False),
       text=st.text(max_size=30), ts=st.integers(0, 2**63 - 1))
def test_rows_read_back_from_sqlite_still_verify(arguments: dict[str, object],
                                                  retry: float | None, text: str,
                                                  ts: int) -> None:
    """The hash is over what SQLite gives back, whatever the values."""
    conn = sqlite3.connect(":memory:")
    from firewall.audit.store import create_schema
    create_schema(conn)
    redactor = Redactor.compile(DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES, b"k" * 32)
    events = [
        DecisionEvent(ts_ns=ts, call_id=text, session=text, principal=text, grant="g",
                      server="s", method="m", arguments=arguments, decision="deny",
                      reason=text, retry_after=retry, dry_run=True),
        OutcomeEvent(ts_ns=ts, call_id=text, session=text, server="s", status="timeout",
                     error_code=-32001, error_message=text, latency_ns=ts),
        LifecycleEvent(ts_ns=ts, kind="approval", detail={"who": text, "args": arguments}),
    ]
    prev = GENESIS
    for i, event in enumerate(events, 1):
        row = event_row(event, seq=i, instance="gw", prev_hash=prev, redactor=redactor)
        conn.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(COLUMNS))})", row)
        back = conn.execute("SELECT * FROM events WHERE seq = ?", (i,)).fetchone()
        assert back == stored(row)
        assert verify_row(back) and verify_row(row)
        prev = row[-1]


def test_the_null_sentinel_is_stored_as_null_and_hashed_as_null() -> None:
    """Rows are written with NULL (a NaN) for SQL NULL; both libraries must agree."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a TEXT, b INTEGER, c REAL)")
    conn.execute("INSERT INTO t VALUES (?, ?, ?)", (NULL, NULL, NULL))
    assert conn.execute("SELECT a, b, c, typeof(a) FROM t").fetchone() == (None, None, None,
                                                                           "null")
    assert msgspec.json.encode([NULL, None]) == b"[null,null]"
    row = event_row(OutcomeEvent(ts_ns=1, call_id="c", session="s", server="vm", status="ok",
                                 latency_ns=1), seq=1, instance="gw", prev_hash=GENESIS,
                    redactor=None)
    assert row[COLUMNS.index("principal")] is NULL
    assert stored(row)[COLUMNS.index("principal")] is None
    assert verify_row(stored(row))


_texts = st.text(max_size=12) | st.sampled_from(["\x00", "a\x00b", "\\u0000", "\u2028", "é😀",
                                                 "\x1f\n\t\"\\"])


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(st.tuples(
    _texts, st.none() | _texts, st.integers(-2**63, 2**63 - 1),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.dictionaries(_texts, _json_values, max_size=3)), min_size=1, max_size=8))
def test_the_writer_stores_exactly_what_it_hashed(
        tmp_path_factory: pytest.TempPathFactory,
        batch: list[tuple[str, str | None, int, float | None, dict[str, object]]]) -> None:
    """Rows written by the Trail (NULL sentinels, NUL characters, -0.0, 64-bit
    integers) read back exactly as hashed, and the trail verifies."""
    db = tmp_path_factory.mktemp("rows") / "audit.db"
    events: list[DecisionEvent | OutcomeEvent | LifecycleEvent] = []
    for text, maybe, number, retry, arguments in batch:
        events.append(DecisionEvent(ts_ns=number % 2**63, call_id=text, session=text,
                                    principal=text, grant=text, server=text, method=text,
                                    tool=maybe, arguments=arguments, decision="limited",
                                    reason=maybe, retry_after=retry))
        events.append(OutcomeEvent(ts_ns=number % 2**63, call_id=text, session=text, server=text,
                                   status="jsonrpc_error", error_code=number,
                                   error_message=maybe, latency_ns=number))
        events.append(LifecycleEvent(ts_ns=0, kind="approval", session=maybe,
                                     detail={"n": number, "text": text}))
    with Trail(AuditSettings(path=str(db)), "gw") as trail:
        rows = trail.rows(events)
        trail.append_rows(rows)
    conn = sqlite3.connect(db)
    back = conn.execute(f"SELECT {', '.join(f'[{c}]' for c in COLUMNS)} FROM events "
                        "ORDER BY seq").fetchall()
    types = conn.execute("SELECT typeof(ts_ns), typeof(error_code) FROM events "
                         "WHERE kind = 'outcome'").fetchall()
    conn.close()
    assert back == [stored(r) for r in rows]
    assert all(t == ("integer", "integer") for t in types)
    assert verify_paths([db])[0].ok


@pytest.mark.parametrize("writer", [pytest.param("process", marks=pytest.mark.slow), "thread"])
def test_an_event_that_cannot_be_stored_fails_its_own_append(tmp_path: Path,
                                                             writer: str) -> None:
    settings = AuditSettings(path=str(tmp_path / "audit.db"), writer=writer)  # type: ignore[arg-type]

    async def main() -> None:
        async with open_audit(settings, instance_id="gw") as audit:
            first = await audit.append(_decision(1))
            with pytest.raises(ValueError, match="64-bit"):
                await audit.append(OutcomeEvent(ts_ns=1, call_id="c", session="s", server="vm",
                                                status="ok", latency_ns=2**64))
            with pytest.raises(ValueError, match="64-bit"):
                await audit.append(OutcomeEvent(ts_ns=1, call_id="c", session="s", server="vm",
                                                status="ok", latency_ns=1, error_code=2**63))
            with pytest.raises(TypeError):
                await audit.append(_decision(3, arguments={"x": object()}))
            last = await audit.append(_decision(2))
            await first.committed()
            await last.committed()

    trio.run(main)
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.rows == 2


_PATTERNS = [*DEFAULT_REDACT_VALUES, r"(?i)tok(?:en)?=\w+", r"\d{4}-\d{4}", r"(?i:K)ey\d",
             r"(ab)+c", r"x(?=yz)yz", r"(?i)ſecret", r"Ab|cD", r"(?i)a(?-i:B)c"]
_FRAGMENTS = ["sk-", "ghp_", "gh", "AKIA", "ASIA", "Bearer ", "bEaReR\t", "password=",
              "PWD=", "eyJ", "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----",
              "\u212a", "\u017f", "\u0130", "tok=", "TOKEN=", "1234-5678", "Key1", "abab",
              "c", "xyz", "AbcD", "aBc", "secret", ".", " ", "_", "pa\u017f\u017fword=x1 ",
              "to\u212a="]
_fragment_text = st.lists(st.sampled_from(_FRAGMENTS) | st.text("aA0_-.=xyz", max_size=24),
                          max_size=8).map("".join)


@pytest.mark.parametrize("patterns", [DEFAULT_REDACT_VALUES, _PATTERNS], ids=["defaults", "more"])
@settings(max_examples=300, deadline=None)
@given(values=st.lists(_fragment_text, min_size=1, max_size=4))
def test_the_literal_gate_never_changes_what_is_redacted(patterns: tuple[str, ...],
                                                         values: list[str]) -> None:
    gated = Redactor.compile(["*password*"], patterns, b"k" * 32)
    assert gated._gated  # every pattern above yields a gate
    reference = Redactor(gated._names, gated._values, b"k" * 32)  # no gate: always search
    arguments = {f"a{i}": v for i, v in enumerate(values)} | {"nested": [values]}
    assert gated.apply(arguments) == reference.apply(arguments)


_NAMES = ["password", "api_token", "Authorization", "name", "zone", "set-cookie", "q"]


@pytest.mark.parametrize("patterns", [DEFAULT_REDACT_VALUES, _PATTERNS], ids=["defaults", "more"])
@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.sampled_from(_NAMES) | _fragment_text, min_size=1, max_size=4),
       values=st.lists(_fragment_text, min_size=1, max_size=4))
def test_clean_finds_every_literal_and_never_passes_a_secret(
        patterns: tuple[str, ...], keys: list[str], values: list[str]) -> None:
    """clean() (two regex searches) says what one ``in`` test per literal says,
    and text it calls clean has nothing apply() would change."""
    r = Redactor.compile(DEFAULT_REDACT_NAMES, patterns, b"k" * 32)
    arguments = dict(zip(keys, values, strict=False))
    text = msgspec.json.encode(arguments).decode()
    names, plain, folded = r._name_literals, r._plain, r._folded
    assert names is not None
    lowered = text.lower()
    expected = (text.isascii() and not any(t in lowered for t in (*names, *folded))
                and not any(t in text for t in plain))
    assert r.clean(text) == expected
    if expected:
        assert r.apply(arguments) == arguments


async def test_the_writer_indexes_for_search_when_it_has_nothing_to_commit(
        tmp_path: Path, writer: str) -> None:
    db = tmp_path / "audit.db"
    async with open_audit(AuditSettings(path=str(db), writer=writer),  # type: ignore[arg-type]
                          instance_id="gw-1") as audit:
        for i in range(3):
            await (await audit.append(_decision(i))).committed()
        with trio.fail_after(20):
            while _indexed_upto(db) < 3:  # noqa: ASYNC110 (the writer signals nothing)
                await trio.sleep(0.01)  # idle: the writer indexes after a short pause
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT rowid FROM events_fts WHERE events_fts MATCH '2'"
                            ).fetchall() == [(3,)]
        conn.close()


def _indexed_upto(db: Path) -> int:
    conn = sqlite3.connect(db)
    upto: int = conn.execute("SELECT upto FROM fts_progress").fetchone()[0]
    conn.close()
    return upto


def test_rotation_indexes_the_segment_it_closes(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    settings = AuditSettings(path=str(db), fts_max_lag=1_000_000)
    with Trail(settings, "gw") as trail:
        trail.append_batch([_decision(i) for i in range(4)])
        assert trail.unindexed() == 4
        trail.rotate()
        assert trail.unindexed() == 0 and trail.indexed == 4
        trail.append_batch([_decision(i) for i in range(4, 6)])
        assert trail.unindexed() == 2
    first, second = chain_files(db)
    for path, upto in ((first, 4), (second, 6)):
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT upto FROM fts_progress").fetchone() == (upto,)
        conn.close()
    [report] = verify_paths([db])
    assert report.ok


async def test_queue_room_waits_in_order_and_never_lets_a_newcomer_barge() -> None:
    from firewall.audit.writer import QueueRoom

    room = QueueRoom(2)
    order: list[str] = []

    async def take(name: str) -> None:
        await room.take()
        order.append(name)

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c", "d"):
            nursery.start_soon(take, name)
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b"] and room.pending == 2
        room.give(1)  # c waited first: it gets the room, d keeps waiting
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c"] and room.pending == 2
        room.give(2)  # room for two, one waiter: d, and one slot stays free
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c", "d"] and room.pending == 1


def test_the_write_connection_keeps_a_large_cache_and_syncs_every_commit(
        tmp_path: Path) -> None:
    """The writer's cache and WAL checkpoint settings (see
    firewall.audit.store.WRITER_CACHE_KIB) never trade away durability."""
    from firewall.audit.store import WAL_AUTOCHECKPOINT_PAGES, WRITER_CACHE_KIB

    db = tmp_path / "gw.db"
    with Trail(AuditSettings(path=str(db)), "gw") as trail:
        conn = trail.conn
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA cache_size").fetchone() == (-WRITER_CACHE_KIB,)
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (
            WAL_AUTOCHECKPOINT_PAGES,)
        trail.append_batch([OutcomeEvent(ts_ns=1, call_id=f"c{i}", session="s", server="vm",
                                         status="ok", latency_ns=1) for i in range(3)])
    # A reader that opens the file afterwards sees every row (the WAL was
    # checkpointed on close, or is read with the file).
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)
    conn.close()
    assert verify_paths([db])[0].ok


def test_the_wal_is_copied_beside_the_writer_and_starts_over(tmp_path: Path) -> None:
    """The WAL copier (a thread with its own connection) checkpoints after every
    WAL_COPY_ROWS committed rows; once it has copied everything, the writer's
    next transaction starts the WAL over, so it stays far below what was
    written. Rotation gives the new segment its own copier; close stops it."""
    import threading
    import time

    from firewall.audit.trail import WAL_COPY_ROWS

    db = tmp_path / "gw.db"
    settings = AuditSettings(path=str(db), anchor_log=False, segment_max_bytes=12 << 20)
    with Trail(settings, "gw") as trail:
        first = trail.wal
        for k in range(14):
            before = trail.wal.copies
            trail.append_batch([_decision(k * WAL_COPY_ROWS + i)
                                for i in range(WAL_COPY_ROWS)])
            deadline = time.monotonic() + 30
            while trail.wal is first and trail.wal.copies == before:
                assert time.monotonic() < deadline, "the WAL copier never ran"
                time.sleep(0.01)
            wal = trail.path.with_name(trail.path.name + "-wal")
            assert wal.stat().st_size < 6 << 20, (k, wal.stat().st_size)
        assert trail.segment > 1 and trail.wal is not first  # rotated: a copier per file
        copiers = [t for t in threading.enumerate() if t.name == "mcpwall-audit-wal"]
        assert len(copiers) == 1
    assert not [t for t in threading.enumerate() if t.name == "mcpwall-audit-wal"]
    files = chain_files(db)
    assert len(files) > 1 and all(not f.with_name(f.name + "-wal").exists() for f in files)
    report, = verify_paths([db])
    assert report.ok and report.rows == 14 * WAL_COPY_ROWS
