"""Where kill switches persist: an SQLite file every instance naming it shares.

Rules this module keeps:

1. The file is the truth. ``switches`` holds the switches that are on, one row
   per scope (``kind``, ``name``; the global switch has name ``''``);
   ``history`` records every change (on or off, who, when, why, from which
   instance) and is append-only: triggers abort UPDATE and DELETE on it.
2. Each change is one transaction (``BEGIN IMMEDIATE``): the ``switches``
   row and its ``history`` row land together or not at all.
3. An instance reads the file before it takes traffic, so a restart comes
   back with its switches on (fail closed): a file that cannot be read stops
   the start with an error naming it. It then polls the file; ``PRAGMA
   data_version`` says whether another connection committed since the last
   look, so an idle poll reads no table.
4. This module is synchronous (plain ``sqlite3``); the gateway runs it in a
   worker thread (see :class:`firewall.gateway.operator.killswitch.SwitchBoard`).

Example::

    with open_switch_store(Path("mcpwall-kill-switch.db")) as store:
        store.turn_on(Scope("server", "vm"), by="alice", comment="INC-42", instance="gw-1")
        [s.scope for s in store.switches()]   # [Scope(kind='server', name='vm')]
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import msgspec

from firewall.gateway.operator.killswitch import Scope, Switch

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS switches (kind TEXT NOT NULL, name TEXT NOT NULL, "
    "by TEXT NOT NULL, since_ns INTEGER NOT NULL, comment TEXT, PRIMARY KEY (kind, name))",
    "CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, "
    "state TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, by TEXT NOT NULL, "
    "comment TEXT, instance TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS history_no_update BEFORE UPDATE ON history BEGIN "
    "SELECT RAISE(ABORT, 'kill switch history is append-only: UPDATE refused'); END",
    "CREATE TRIGGER IF NOT EXISTS history_no_delete BEFORE DELETE ON history BEGIN "
    "SELECT RAISE(ABORT, 'kill switch history is append-only: DELETE refused'); END",
)


class SwitchStoreError(Exception):
    """The kill switch file cannot be opened, read or written; the message names it."""


class HistoryEntry(msgspec.Struct, frozen=True):
    """One change of one switch, as ``history`` records it."""

    ts_ns: int
    state: str
    scope: Scope
    by: str
    comment: str | None
    instance: str


def _key(scope: Scope) -> tuple[str, str]:
    return scope.kind, scope.name or ""


def _scope(kind: str, name: str) -> Scope:
    return Scope(kind, name or None)  # type: ignore[arg-type]


class SwitchStore:
    """One connection to a kill switch file (use :func:`open_switch_store`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._seen: int | None = None  # data_version at the last read

    def _fail(self, exc: sqlite3.Error) -> SwitchStoreError:
        return SwitchStoreError(f"{self.path}: kill switch file: {exc}")

    def changed(self) -> bool:
        """True when someone committed since the last :meth:`switches` (or never read)."""
        try:
            version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return version != self._seen

    def switches(self) -> list[Switch]:
        """The switches that are on, global first, then servers, then principals."""
        try:
            version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
            rows = self.conn.execute(
                "SELECT kind, name, by, since_ns, comment FROM switches "
                "ORDER BY CASE kind WHEN 'global' THEN 0 WHEN 'server' THEN 1 ELSE 2 END, name"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        self._seen = version
        return [Switch(_scope(kind, name), by, since, comment)
                for kind, name, by, since, comment in rows]

    def turn_on(self, scope: Scope, *, by: str, comment: str | None, instance: str,
                now_ns: int | None = None) -> Switch:
        """Record ``scope`` as on (again: the newest operator and comment win)."""
        now = time.time_ns() if now_ns is None else now_ns
        kind, name = _key(scope)
        self._write(
            ("INSERT OR REPLACE INTO switches (kind, name, by, since_ns, comment) "
             "VALUES (?, ?, ?, ?, ?)", (kind, name, by, now, comment)),
            ("INSERT INTO history (ts_ns, state, kind, name, by, comment, instance) "
             "VALUES (?, 'on', ?, ?, ?, ?, ?)", (now, kind, name, by, comment, instance)),
        )
        return Switch(scope, by, now, comment)

    def turn_off(self, scope: Scope, *, by: str, comment: str | None,
                 instance: str) -> Switch | None:
        """Record ``scope`` as off; the switch that was on, or None (nothing written)."""
        kind, name = _key(scope)
        with self._transaction() as conn:
            row = conn.execute("SELECT by, since_ns, comment FROM switches "
                               "WHERE kind = ? AND name = ?", (kind, name)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM switches WHERE kind = ? AND name = ?", (kind, name))
                conn.execute(
                    "INSERT INTO history (ts_ns, state, kind, name, by, comment, instance) "
                    "VALUES (?, 'off', ?, ?, ?, ?, ?)",
                    (time.time_ns(), kind, name, by, comment, instance))
        return None if row is None else Switch(scope, row[0], row[1], row[2])

    def history(self, limit: int = 100) -> list[HistoryEntry]:
        """The newest ``limit`` changes, newest first."""
        try:
            rows = self.conn.execute(
                "SELECT ts_ns, state, kind, name, by, comment, instance FROM history "
                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return [HistoryEntry(ts, state, _scope(kind, name), by, comment, instance)
                for ts, state, kind, name, by, comment, instance in rows]

    def last_change(self, scope: Scope) -> HistoryEntry | None:
        """The newest change of ``scope`` (who turned it off, say), or None."""
        kind, name = _key(scope)
        try:
            row = self.conn.execute(
                "SELECT ts_ns, state, by, comment, instance FROM history "
                "WHERE kind = ? AND name = ? ORDER BY id DESC LIMIT 1", (kind, name)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        if row is None:
            return None
        ts, state, by, comment, instance = row
        return HistoryEntry(ts, state, scope, by, comment, instance)

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        with self._transaction() as conn:
            for sql, args in statements:
                conn.execute(sql, args)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (rule 2); any SQLite error names the file."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def close(self) -> None:
        self.conn.close()


def connect_switch_store(path: Path) -> SwitchStore:
    """Open (creating, mode 0600) the kill switch file at ``path``."""
    new = not path.exists()
    try:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        if new:
            os.chmod(path, 0o600)
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "switches" not in tables:
            # Another application's database (the audit trail, say): never add to it.
            conn.close()
            raise SwitchStoreError(f"{path}: not an mcpwall kill switch file (it holds "
                                   f"{', '.join(sorted(tables)[:5])})")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            conn.execute(statement)
    except (sqlite3.Error, OSError) as exc:
        raise SwitchStoreError(f"{path}: cannot open the kill switch file: {exc}") from None
    return SwitchStore(conn, path)


@contextmanager
def open_switch_store(path: Path) -> Iterator[SwitchStore]:
    """The kill switch file at ``path``, closed on exit."""
    store = connect_switch_store(path)
    try:
        yield store
    finally:
        store.close()


__all__ = ["HistoryEntry", "SwitchStore", "SwitchStoreError", "connect_switch_store",
           "open_switch_store"]
