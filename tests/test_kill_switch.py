"""The kill switch file and the switchboard that keeps a process in step with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from firewall.audit.writer import open_audit
from firewall.gateway.operator.killswitch import KillSwitch, Scope, Switch
from firewall.gateway.operator.switch_store import SwitchStoreError, open_switch_store
from firewall.gateway.operator.switchboard import SwitchBoard
from firewall.settings.audit import AuditSettings
from firewall.settings.kill_switch import KillSwitchSettings

VM = Scope("server", "vm")
EVERYTHING = Scope("global")


def test_file_round_trip_and_history(tmp_path: Path) -> None:
    path = tmp_path / "ks.db"
    with open_switch_store(path) as store:
        store.turn_on(VM, by="alice", comment="INC-42", instance="gw-1")
        store.turn_on(Scope("principal", "ci-bot"), by="bob", comment=None, instance="gw-2")
        store.turn_on(EVERYTHING, by="carol", comment="stop all", instance="gw-1")
        store.turn_on(VM, by="dave", comment="still", instance="gw-2")  # newest wins
        assert [(s.scope, s.by, s.comment) for s in store.switches()] == [
            (EVERYTHING, "carol", "stop all"), (VM, "dave", "still"),
            (Scope("principal", "ci-bot"), "bob", None)]
        was = store.turn_off(VM, by="erin", comment="fixed", instance="gw-1")
        assert was is not None and was.by == "dave"
        assert store.turn_off(VM, by="erin", comment=None, instance="gw-1") is None
        history = store.history()
        assert [(h.state, h.scope, h.by, h.instance) for h in history] == [
            ("off", VM, "erin", "gw-1"), ("on", VM, "dave", "gw-2"),
            ("on", EVERYTHING, "carol", "gw-1"),
            ("on", Scope("principal", "ci-bot"), "bob", "gw-2"), ("on", VM, "alice", "gw-1")]
        last = store.last_change(VM)
        assert last is not None and (last.state, last.by, last.comment) == ("off", "erin", "fixed")
    assert path.stat().st_mode & 0o777 == 0o600
    # Another process opening the file sees the same switches.
    with open_switch_store(path) as again:
        assert [s.scope for s in again.switches()] == [EVERYTHING, Scope("principal", "ci-bot")]


def test_history_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "ks.db"
    with open_switch_store(path) as store:
        store.turn_on(VM, by="alice", comment=None, instance="gw-1")
    conn = sqlite3.connect(path)
    for sql in ("UPDATE history SET by = 'mallory'", "DELETE FROM history"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_a_file_that_is_not_a_kill_switch_file_is_refused_by_name(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all, not even close" * 100)
    with pytest.raises(SwitchStoreError, match=r"garbage\.db"):
        open_switch_store(garbage).__enter__()
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(SwitchStoreError, match=r"not an mcpwall kill switch file .*events"):
        open_switch_store(other).__enter__()
    tables = sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("events",)]  # nothing was added to it


def test_changed_sees_commits_of_other_connections_only(tmp_path: Path) -> None:
    path = tmp_path / "ks.db"
    with open_switch_store(path) as mine, open_switch_store(path) as theirs:
        assert mine.changed()  # never read
        mine.switches()
        assert not mine.changed()
        mine.turn_on(VM, by="alice", comment=None, instance="me")
        assert not mine.changed()  # its own commit: memory already has it
        theirs.turn_on(EVERYTHING, by="bob", comment=None, instance="them")
        assert mine.changed()
        assert len(mine.switches()) == 2
        assert not mine.changed()


def test_replace_reports_what_changed() -> None:
    switch = KillSwitch()
    switch.turn_on(VM, by="alice", since_ns=1)
    switch.turn_on(Scope("principal", "p"), by="bob", since_ns=2)
    on, off = switch.replace([Switch(VM, "alice", 1), Switch(EVERYTHING, "carol", 3, "all")])
    assert [s.scope for s in on] == [EVERYTHING]
    assert [s.scope for s in off] == [Scope("principal", "p")]
    denial = switch.check("any-server", "any-one")
    assert denial is not None and denial.reason == "kill switch on for the whole firewall " \
                                                   "by carol: all"
    on, off = switch.replace([Switch(VM, "dave", 4)])  # same scope, new operator
    assert [s.by for s in on] == ["dave"] and [s.scope for s in off] == [EVERYTHING]
    assert switch.check("other", "x") is None and switch.active
    on, off = switch.replace([])
    assert on == [] and [s.by for s in off] == ["dave"]
    assert not switch.active


@pytest.mark.slow
async def test_boards_sharing_a_file_follow_each_other_and_audit_it(tmp_path: Path) -> None:
    settings = KillSwitchSettings(path=str(tmp_path / "ks.db"), poll_seconds=0.05)
    audit_settings = AuditSettings(path=str(tmp_path / "audit.db"), anchor_log=False)
    async with open_audit(audit_settings, instance_id="gw-b") as audit:
        a, b = SwitchBoard(settings, "gw-a"), SwitchBoard(settings, "gw-b", audit)
        await a.open()
        await b.open()
        assert not await b.refresh()  # nothing changed since it opened
        await a.turn_on(VM, by="alice", comment="INC-7")
        assert a.switch.check("vm", "anyone") is not None  # at once where it was turned on
        assert b.switch.check("vm", "anyone") is None      # elsewhere at the next look
        assert await b.refresh()
        assert b.switch.check("vm", "anyone") is not None
        assert b.switch.check("other", "anyone") is None
        await a.turn_off(VM, by="bob", comment="resolved")
        assert await b.refresh() and not b.switch.active
        assert not await b.refresh()
        await a.aclose()
        await b.aclose()
        await audit.flush()
    conn = sqlite3.connect(tmp_path / "audit.db")
    rows = conn.execute(
        "SELECT json_extract(detail, '$.state'), json_extract(detail, '$.by'), "
        "json_extract(detail, '$.comment'), json_extract(detail, '$.via'), server "
        "FROM events WHERE kind = 'kill_switch' ORDER BY seq").fetchall()
    assert rows == [("on", "alice", "INC-7", "file", "vm"),
                    ("off", "bob", "resolved", "file", "vm")]


async def test_a_restarted_board_comes_back_with_its_switches_on(tmp_path: Path) -> None:
    settings = KillSwitchSettings(path=str(tmp_path / "ks.db"))
    first = SwitchBoard(settings, "gw")
    await first.open()
    await first.turn_on(EVERYTHING, by="alice", comment=None)
    await first.aclose()
    second = SwitchBoard(settings, "gw")
    assert [s.scope for s in await second.open()] == [EVERYTHING]
    assert second.switch.check("vm", "p") is not None
    await second.aclose()
    memory = SwitchBoard(KillSwitchSettings(persist=False, path=str(tmp_path / "none.db")), "gw")
    assert await memory.open() == []
    await memory.turn_on(VM, by="alice", comment=None)
    assert not (tmp_path / "none.db").exists()


async def test_a_failing_file_never_weakens_a_switch(tmp_path: Path) -> None:
    board = SwitchBoard(KillSwitchSettings(path=str(tmp_path / "ks.db")), "gw")
    await board.open()
    await board.turn_on(VM, by="alice", comment=None)
    assert board._store is not None
    board._store.conn.close()  # the file becomes unusable under the board
    switch, error = await board.turn_on(EVERYTHING, by="alice", comment="now")
    assert error is not None and "ks.db" in error
    assert board.switch.check("x", "y") is switch.decision  # enforced all the same
    with pytest.raises(SwitchStoreError):
        await board.turn_off(VM, by="alice", comment=None)
    assert board.switch.check("vm", "y") is not None  # still on
    assert not await board.refresh()  # a poll that fails keeps what is in force
    assert len(board.switch.switches()) == 2
