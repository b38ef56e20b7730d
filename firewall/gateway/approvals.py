"""Hold for human approval: calls a rule marks ``require_approval`` wait for a person.

Rules this module keeps:

1. The approvals database (SQLite, WAL) is the only channel between the
   gateway and the people who decide: the gateway inserts a request and
   polls for its verdict; ``mcpwall approvals approve|reject ID`` writes the
   verdict. File permissions (0600) decide who may approve. Several gateway
   processes may share one file.
2. A verdict is written once: only a request still ``pending`` and not past
   its deadline can be approved or rejected (one UPDATE ... WHERE status =
   'pending' AND expires_ns > now). A request nobody decided in time expires
   and the call is refused.
3. Arguments shown to the approver are redacted with the audit trail's rules;
   secrets never reach this file.
4. SQLite work runs in worker threads (``trio.to_thread``); one poller per
   process checks every open request in one query.

Example::

    async with open_desk(settings, instance="gw-1") as desk:
        verdict = await desk.ask(request)      # waits for a person, or the deadline
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

from firewall.audit.redaction import Redactor
from firewall.audit.settings import DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES
from firewall.log import get_logger

Status = Literal["pending", "approved", "rejected", "expired"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    instance TEXT NOT NULL,
    session TEXT NOT NULL,
    principal TEXT NOT NULL,
    "grant" TEXT NOT NULL,
    server TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT,
    arguments TEXT,
    rule TEXT,
    reason TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    decided_ns INTEGER,
    decided_by TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires_ns);
"""


class ApprovalSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[approvals]`` table: where held calls wait and for how long."""

    # false: a require_approval rule refuses at once (JSON-RPC error -32003).
    enabled: bool = True
    path: str = "mcpwall-approvals.db"
    timeout_seconds: float = 300.0
    poll_seconds: float = 0.5


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One held call, as the approver sees it."""

    id: str
    created_ns: int
    expires_ns: int
    instance: str
    session: str
    principal: str
    grant: str
    server: str
    method: str
    target: str | None = None
    arguments: dict[str, Any] | None = None
    rule: str | None = None
    reason: str | None = None
    status: Status = "pending"
    decided_ns: int | None = None
    decided_by: str | None = None
    note: str | None = None


class Verdict(msgspec.Struct, frozen=True):
    """How a held call ended."""

    status: Status
    by: str | None = None
    note: str | None = None


class ApprovalError(Exception):
    """An approvals database that cannot be used, or a verdict that cannot be given."""


def _connect(path: Path) -> sqlite3.Connection:
    new = not path.exists()
    try:
        # The desk uses its connection from whichever worker thread trio picks
        # (one at a time, under its lock): not tied to the opening thread.
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        if new:
            os.chmod(path, 0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
    except (sqlite3.Error, OSError) as exc:
        raise ApprovalError(f"{path}: cannot open the approvals database: {exc}") from None
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def open_store(path: Path) -> Iterator[ApprovalStore]:
    """The approvals database at ``path`` (created 0600 if missing)."""
    store = ApprovalStore(_connect(path))
    try:
        yield store
    finally:
        store.conn.close()


class ApprovalStore:
    """Synchronous access to the approvals table (for threads and the CLI)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, request: ApprovalRequest) -> None:
        fields = msgspec.structs.asdict(request)
        fields["arguments"] = (None if request.arguments is None
                               else msgspec.json.encode(request.arguments).decode())
        names = ", ".join(f'"{k}"' for k in fields)
        marks = ", ".join("?" for _ in fields)
        self.conn.execute(f"INSERT INTO approvals ({names}) VALUES ({marks})",
                          list(fields.values()))

    def verdicts(self, ids: list[str], now_ns: int) -> dict[str, Verdict]:
        """The decided (or now expired) requests among ``ids``."""
        out: dict[str, Verdict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = self.conn.execute(
                f"SELECT id, status, expires_ns, decided_by, note FROM approvals "
                f"WHERE id IN ({marks})", chunk)
            for row in rows:
                if row["status"] != "pending":
                    out[row["id"]] = Verdict(row["status"], row["decided_by"], row["note"])
                elif row["expires_ns"] <= now_ns:
                    self._expire(row["id"], now_ns)
                    out[row["id"]] = Verdict("expired")
        return out

    def withdraw(self, ident: str, now_ns: int) -> None:
        """Close a request whose call is gone (client disconnected or cancelled)."""
        self.conn.execute("UPDATE approvals SET status = 'expired', decided_ns = ?, "
                          "note = 'the call was withdrawn' WHERE id = ? AND status = 'pending'",
                          (now_ns, ident))

    def _expire(self, ident: str, now_ns: int) -> None:
        self.conn.execute("UPDATE approvals SET status = 'expired', decided_ns = ? "
                          "WHERE id = ? AND status = 'pending'", (now_ns, ident))

    def decide(self, ident: str, status: Literal["approved", "rejected"], by: str,
               note: str | None = None, now_ns: int | None = None) -> ApprovalRequest:
        """Give a verdict; raise ApprovalError if the request is unknown or closed."""
        now = time.time_ns() if now_ns is None else now_ns
        cur = self.conn.execute(
            "UPDATE approvals SET status = ?, decided_ns = ?, decided_by = ?, note = ? "
            "WHERE id = ? AND status = 'pending' AND expires_ns > ?",
            (status, now, by, note, ident, now))
        request = self.get(ident)
        if cur.rowcount != 1:
            if request is None:
                raise ApprovalError(f"no approval request {ident!r}")
            state = "expired" if request.status == "pending" else request.status
            raise ApprovalError(f"approval request {ident!r} is already {state}")
        assert request is not None
        return request

    def get(self, ident: str) -> ApprovalRequest | None:
        row = self.conn.execute("SELECT * FROM approvals WHERE id = ?", (ident,)).fetchone()
        return None if row is None else _request(row)

    def list(self, status: Status | None = "pending", limit: int = 200) -> list[ApprovalRequest]:
        """Requests, newest first; ``status=None`` lists every one."""
        if status is None:
            rows = self.conn.execute("SELECT * FROM approvals ORDER BY created_ns DESC LIMIT ?",
                                     (limit,))
        else:
            rows = self.conn.execute("SELECT * FROM approvals WHERE status = ? "
                                     "ORDER BY created_ns DESC LIMIT ?", (status, limit))
        return [_request(r) for r in rows]


def _request(row: sqlite3.Row) -> ApprovalRequest:
    data = dict(row)
    if data["arguments"] is not None:
        data["arguments"] = msgspec.json.decode(data["arguments"])
    return msgspec.convert(data, ApprovalRequest)


class ApprovalDesk:
    """The gateway side: files requests and wakes each caller on its verdict."""

    def __init__(self, settings: ApprovalSettings, path: Path, instance: str) -> None:
        self.settings = settings
        self.path = path
        self.instance = instance
        self._waiting: dict[str, tuple[trio.Event, list[Verdict]]] = {}
        self._lock = trio.Lock()  # one thread at a time on the one connection
        self._conn: sqlite3.Connection | None = None
        self._redactor = Redactor.compile(DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES,
                                          secrets.token_bytes(32))
        self.log = get_logger(component="approvals")

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def open(self) -> None:
        self._conn = await trio.to_thread.run_sync(_connect, self.path)

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None

    def new_request(self, *, session: str, principal: str, grant: str, server: str,
                    method: str, target: str | None, arguments: dict[str, Any] | None,
                    rule: str | None, reason: str | None) -> ApprovalRequest:
        """An approval request for one held call (arguments redacted)."""
        now = time.time_ns()
        return ApprovalRequest(
            id=secrets.token_hex(4), created_ns=now,
            expires_ns=now + int(self.settings.timeout_seconds * 1e9),
            instance=self.instance, session=session, principal=principal, grant=grant,
            server=server, method=method, target=target,
            arguments=None if arguments is None else self._redactor.apply(arguments),
            rule=rule, reason=reason)

    async def ask(self, request: ApprovalRequest) -> Verdict:
        """File ``request`` and wait for its verdict (``expired`` at the deadline)."""
        assert self._conn is not None, "the desk is not open"
        store = ApprovalStore(self._conn)
        await self._run(store.add, request)
        self.log.warning("approval_requested", id=request.id, principal=request.principal,
                         server=request.server, target=request.target, rule=request.rule)
        event, box = trio.Event(), list[Verdict]()
        self._waiting[request.id] = (event, box)
        try:
            await event.wait()
        finally:
            self._waiting.pop(request.id, None)
            if not box:  # the caller went away (cancelled): nobody may approve it now
                with trio.CancelScope(shield=True):
                    await self._run(store.withdraw, request.id, time.time_ns())
        return box[0]

    async def poll(self) -> None:
        """Check every open request once; wake the callers whose request ended."""
        if not self._waiting or self._conn is None:
            return
        store = ApprovalStore(self._conn)
        verdicts: dict[str, Verdict] = await self._run(
            store.verdicts, list(self._waiting), time.time_ns())
        for ident, verdict in verdicts.items():
            entry = self._waiting.get(ident)
            if entry is not None:
                entry[1].append(verdict)
                entry[0].set()

    async def run_poller(self) -> None:
        """Poll every ``poll_seconds``, forever (run it in the owner's nursery)."""
        while True:
            await trio.sleep(self.settings.poll_seconds)
            try:
                await self.poll()
            except sqlite3.Error as exc:
                self.log.error("approvals_poll_failed", error=str(exc))


@asynccontextmanager
async def open_desk(settings: ApprovalSettings, *, instance: str
                    ) -> AsyncIterator[ApprovalDesk | None]:
    """The approval desk of one gateway process (None when approvals are disabled)."""
    if not settings.enabled:
        yield None
        return
    desk = ApprovalDesk(settings, Path(settings.path), instance)
    await desk.open()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(desk.run_poller)
            yield desk
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await desk.close()
