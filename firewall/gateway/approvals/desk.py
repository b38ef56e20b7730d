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
5. An approval covers one call unless the approver gives it a scope: the
   rest of that client session (``session``) or N minutes for that principal
   (``minutes:N``), always for the same server, tool and rule. The poller
   keeps the standing approvals in memory, so a held call consults a dict and
   an allowed call never touches this file. When a session ends, the front
   calls :meth:`ApprovalDesk.forget_session`: its session-scoped approvals end
   with it, in memory and in the file, and no poll reads them again. A call
   without a session (MCP 2026-07-28 over HTTP) is covered only by approvals
   for N minutes; one given to it with scope ``session`` covers it alone.
6. Pending requests do not survive their process. Each request names its
   owner (host, boot id, pid and the pid's start time); a desk that opens marks
   the pending requests of owners that are gone ``abandoned`` and returns them
   so that the audit trail says so. Live processes sharing the file are never
   touched; owners on other hosts cannot be checked and their requests simply
   expire at their deadline.

Example::

    async with open_desk(settings, instance="gw-1") as desk:
        verdict = await desk.ask(request)      # waits for a person, or the deadline
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import trio

from firewall.audit.events import AuditPoint, DecisionEvent, append_lifecycle
from firewall.audit.redaction import Redactor
from firewall.gateway.background import polled
from firewall.log import get_logger
from firewall.settings.approvals import ApprovalSettings
from firewall.settings.audit import DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES

Status = Literal["pending", "approved", "rejected", "expired", "abandoned"]
ScopeKind = Literal["call", "session", "minutes"]

RESTARTED: Final = "mcpwall restarted while the call was held"
STOPPED: Final = "mcpwall stopped while the call was held"

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
    note TEXT,
    scope TEXT NOT NULL DEFAULT 'call',
    scope_until_ns INTEGER,
    owner TEXT,
    call_id TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires_ns);
"""

# Columns added after the first release (also in _SCHEMA): an older file gets
# them on open.
_ADDED_COLUMNS: Final = (
    ("scope", "TEXT NOT NULL DEFAULT 'call'"),
    ("scope_until_ns", "INTEGER"),
    ("owner", "TEXT"),
    ("call_id", "TEXT"),
)
_STANDING_INDEX: Final = ("CREATE INDEX IF NOT EXISTS approvals_standing "
                          "ON approvals (scope, status, scope_until_ns)")


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
    scope: ScopeKind = "call"
    scope_until_ns: int | None = None
    owner: str | None = None
    call_id: str | None = None


class Verdict(msgspec.Struct, frozen=True):
    """How a held call ended (``scope``: what else the approval covers)."""

    status: Status
    by: str | None = None
    note: str | None = None
    scope: ScopeKind = "call"
    scope_until_ns: int | None = None


class Standing(msgspec.Struct, frozen=True, kw_only=True):
    """An approval that covers more than its own call (scope session or minutes)."""

    id: str
    scope: ScopeKind
    session: str
    principal: str
    server: str
    target: str | None
    rule: str | None
    until_ns: int | None  # None: until the session ends
    by: str | None = None

    def covers(self, *, session: str | None, principal: str, server: str, target: str | None,
               rule: str | None, now_ns: int) -> bool:
        """True when a call with these particulars passes on this approval now
        (``session`` None: a call without a session, which no session approval covers)."""
        if self.server != server or self.target != target or self.rule != rule:
            return False
        if self.scope == "session":
            return session is not None and self.session == session
        return self.principal == principal and (self.until_ns or 0) > now_ns

    def describe(self) -> str:
        """``"for the rest of the session"`` or ``"for 30 min"``, for reasons and notes."""
        if self.scope == "session":
            return "for the rest of the session"
        return "until " + _clock_text(self.until_ns)


def _clock_text(ns: int | None) -> str:
    if ns is None:
        return "?"
    return time.strftime("%H:%M:%S UTC", time.gmtime(ns / 1e9))


def parse_scope(text: str) -> tuple[ScopeKind, float | None]:
    """``"call"``, ``"session"`` or ``"minutes:N"`` -> (kind, minutes); ApprovalError if bad.

    Example: ``parse_scope("minutes:30") == ("minutes", 30.0)``.
    """
    kind, sep, rest = text.strip().partition(":")
    if kind in ("call", "session") and not sep:
        return kind, None  # type: ignore[return-value]
    if kind == "minutes" and sep:
        try:
            minutes = float(rest)
        except ValueError:
            minutes = -1.0
        if 0 < minutes <= 7 * 24 * 60:
            return "minutes", minutes
    raise ApprovalError(f"scope {text!r}: expected call, session or minutes:N "
                        "(N minutes, more than 0, at most a week)")


class Withdrawal:
    """How a request whose call went away is closed: ``expired`` "the call was
    withdrawn" (cancelled, client gone), or ``abandoned`` when mcpwall stops."""

    __slots__ = ("note", "status")

    def __init__(self) -> None:
        self.status: Status = "expired"
        self.note = "the call was withdrawn"


class ApprovalError(Exception):
    """An approvals database that cannot be used, or a verdict that cannot be given."""


def _connect(path: Path) -> sqlite3.Connection:
    new = not path.exists()
    try:
        # The desk's lock serialises use; trio may run each call on another
        # worker thread.
        conn = sqlite3.connect(path, timeout=10, isolation_level=None,
                               check_same_thread=False)
        if new:
            os.chmod(path, 0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        have = {row[1] for row in conn.execute("PRAGMA table_info(approvals)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                try:
                    conn.execute(f"ALTER TABLE approvals ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise  # else another process added it first
        conn.execute(_STANDING_INDEX)
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
                f"SELECT id, status, expires_ns, decided_by, note, scope, scope_until_ns "
                f"FROM approvals WHERE id IN ({marks})", chunk)
            for row in rows:
                if row["status"] != "pending":
                    out[row["id"]] = Verdict(row["status"], row["decided_by"], row["note"],
                                             row["scope"] or "call", row["scope_until_ns"])
                elif row["expires_ns"] <= now_ns:
                    self._expire(row["id"], now_ns)
                    out[row["id"]] = Verdict("expired")
        return out

    def withdraw(self, ident: str, now_ns: int, why: Withdrawal | None = None) -> None:
        """Close a request whose call is gone (client disconnected or cancelled,
        or the gateway stopping: see :class:`Withdrawal`)."""
        why = why or Withdrawal()
        self.conn.execute("UPDATE approvals SET status = ?, decided_ns = ?, note = ? "
                          "WHERE id = ? AND status = 'pending'",
                          (why.status, now_ns, why.note, ident))

    def _expire(self, ident: str, now_ns: int) -> None:
        self.conn.execute("UPDATE approvals SET status = 'expired', decided_ns = ? "
                          "WHERE id = ? AND status = 'pending'", (now_ns, ident))

    def decide(self, ident: str, status: Literal["approved", "rejected"], by: str,
               note: str | None = None, now_ns: int | None = None, *,
               scope: str = "call") -> ApprovalRequest:
        """Give a verdict; raise ApprovalError if the request is unknown or closed.

        ``scope`` (approvals only): ``"call"``, ``"session"`` (the rest of the
        call's client session) or ``"minutes:N"`` (N minutes for that
        principal), always for the same server, tool and rule.
        """
        now = time.time_ns() if now_ns is None else now_ns
        kind, minutes = parse_scope(scope)
        if kind != "call" and status != "approved":
            raise ApprovalError("only an approval can have a scope; a rejection covers one call")
        until = None if minutes is None else now + int(minutes * 60e9)
        cur = self.conn.execute(
            "UPDATE approvals SET status = ?, decided_ns = ?, decided_by = ?, note = ?, "
            "scope = ?, scope_until_ns = ? "
            "WHERE id = ? AND status = 'pending' AND expires_ns > ?",
            (status, now, by, note, kind, until, ident, now))
        request = self.get(ident)
        if cur.rowcount != 1:
            if request is None:
                raise ApprovalError(f"no approval request {ident!r}")
            state = "expired" if request.status == "pending" else request.status
            why = (f" ({request.note})" if request.status in ("expired", "abandoned")
                   and request.note else "")
            raise ApprovalError(f"approval request {ident!r} is already {state}{why}")
        assert request is not None
        return request

    def standing(self, instance: str, now_ns: int) -> list[Standing]:
        """Approvals in force beyond their call: minutes not yet over (any
        instance), and session scopes given to this instance's sessions."""
        rows = self.conn.execute(
            "SELECT id, scope, session, principal, server, target, rule, scope_until_ns, "
            "decided_by FROM approvals WHERE status = 'approved' AND ("
            "(scope = 'minutes' AND scope_until_ns > ?) OR "
            "(scope = 'session' AND instance = ? AND scope_until_ns IS NULL))", (now_ns, instance))
        return [Standing(id=r["id"], scope=r["scope"], session=r["session"],
                         principal=r["principal"], server=r["server"], target=r["target"],
                         rule=r["rule"], until_ns=r["scope_until_ns"], by=r["decided_by"])
                for r in rows]

    def end_session_scopes(self, ids: list[str], now_ns: int) -> None:
        """Session-scoped approvals whose session ended: their scope ends now, so
        :meth:`standing` never returns them again."""
        self.conn.executemany(
            "UPDATE approvals SET scope_until_ns = ? "
            "WHERE id = ? AND scope = 'session' AND scope_until_ns IS NULL",
            [(now_ns, ident) for ident in ids])

    def abandon_orphans(self, now_ns: int, alive: Callable[[str], bool] | None = None
                        ) -> list[ApprovalRequest]:
        """Mark the pending requests of owners that are gone ``abandoned``; return them."""
        alive = owner_alive if alive is None else alive
        rows = self.conn.execute("SELECT id, owner FROM approvals WHERE status = 'pending' "
                                 "AND owner IS NOT NULL").fetchall()
        out = []
        for row in rows:
            if alive(row["owner"]):
                continue
            cur = self.conn.execute(
                "UPDATE approvals SET status = 'abandoned', decided_ns = ?, note = ? "
                "WHERE id = ? AND status = 'pending'", (now_ns, RESTARTED, row["id"]))
            if cur.rowcount == 1:
                request = self.get(row["id"])
                if request is not None:
                    out.append(request)
        return out

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


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count fields after its ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def process_owner(pid: int | None = None) -> str:
    """This process as an owner of requests: ``host|boot id|pid|start ticks``."""
    pid = os.getpid() if pid is None else pid
    return f"{os.uname().nodename}|{_boot_id()}|{pid}|{_start_ticks(pid) or ''}"


def owner_alive(owner: str) -> bool:
    """False when the process that filed a request is certainly gone.

    Another host's processes cannot be checked from here: they count as alive.
    """
    host, _, rest = owner.partition("|")
    boot, _, rest = rest.partition("|")
    pid_text, _, start = rest.partition("|")
    if host != os.uname().nodename:
        return True
    if boot and boot != _boot_id():
        return False  # the machine rebooted since
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    now_start = _start_ticks(pid)
    return not (start and now_start is not None and now_start != start)  # pid reused?


_shared_redactor: Redactor | None = None


def redact_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` as an approver may see them: secrets replaced (audit rules)."""
    global _shared_redactor
    if _shared_redactor is None:
        _shared_redactor = Redactor.compile(DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES,
                                            secrets.token_bytes(32))
    return _shared_redactor.apply(arguments)


class ApprovalDesk:
    """The gateway side: files requests and wakes each caller on its verdict."""

    def __init__(self, settings: ApprovalSettings, path: Path, instance: str,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self.path = path
        self.instance = instance
        self.clock = clock
        self.owner = process_owner()
        self._waiting: dict[str, tuple[trio.Event, list[Verdict]]] = {}
        # Approvals in force beyond their own call, refreshed by every poll
        # and at once when one of ours is given a scope.
        self._standing: dict[str, Standing] = {}
        self._lock = trio.Lock()  # one thread at a time on the one connection
        self._conn: sqlite3.Connection | None = None
        self.log = get_logger(component="approvals")

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def open(self) -> list[ApprovalRequest]:
        """Open the database; return the requests abandoned by processes that are gone."""
        self._conn = await trio.to_thread.run_sync(_connect, self.path)
        store = ApprovalStore(self._conn)
        abandoned: list[ApprovalRequest] = await self._run(store.abandon_orphans, self.clock())
        for request in abandoned:
            self.log.warning("approval_abandoned", id=request.id, owner=request.owner,
                             principal=request.principal, target=request.target)
        await self.refresh_standing()
        return abandoned

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None

    def new_request(self, *, session: str, principal: str, grant: str, server: str,
                    method: str, target: str | None, arguments: dict[str, Any] | None,
                    rule: str | None, reason: str | None,
                    call_id: str | None = None) -> ApprovalRequest:
        """An approval request for one held call (arguments redacted)."""
        now = self.clock()
        return ApprovalRequest(
            id=secrets.token_hex(4), created_ns=now,
            expires_ns=now + int(self.settings.timeout_seconds * 1e9),
            instance=self.instance, session=session, principal=principal, grant=grant,
            server=server, method=method, target=target,
            arguments=None if arguments is None else redact_arguments(arguments),
            rule=rule, reason=reason, owner=self.owner, call_id=call_id)

    def standing_for(self, *, session: str | None, principal: str, server: str,
                     target: str | None, rule: str | None) -> Standing | None:
        """A standing approval that lets this held call through now, if any (no I/O).

        ``session`` None: the call has no session (MCP 2026-07-28 over HTTP);
        only an approval for N minutes can cover it (rule 5)."""
        if not self._standing:
            return None
        now = self.clock()
        for standing in self._standing.values():
            if standing.covers(session=session, principal=principal, server=server,
                               target=target, rule=rule, now_ns=now):
                return standing
        return None

    async def forget_session(self, session: str) -> None:
        """Drop the session-scoped approvals of a session that ended, here and in
        the file (their ``scope_until_ns`` becomes the end), so that no poll
        reads them again. A session that was given none costs a dict scan."""
        ended = [ident for ident, standing in self._standing.items()
                 if standing.scope == "session" and standing.session == session]
        if not ended:
            return
        for ident in ended:
            del self._standing[ident]
        if self._conn is not None:
            await self._run(ApprovalStore(self._conn).end_session_scopes, ended, self.clock())

    async def refresh_standing(self) -> None:
        """Reload the approvals in force beyond their call (one query)."""
        if self._conn is None:
            return
        store = ApprovalStore(self._conn)
        found: list[Standing] = await self._run(store.standing, self.instance, self.clock())
        self._standing = {s.id: s for s in found}

    async def ask(self, request: ApprovalRequest, why: Withdrawal | None = None, *,
                  sessionless: bool = False) -> Verdict:
        """File ``request`` and wait for its verdict (``expired`` at the deadline).

        Cancelled, the request is withdrawn as ``why`` says (read at that moment).
        ``sessionless``: the call has no session, so an approval with scope
        ``session`` covers it alone and is not kept (rule 5).
        """
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
                    await self._run(store.withdraw, request.id, self.clock(), why)
        verdict = box[0]
        keep = verdict.scope == "minutes" or (verdict.scope == "session" and not sessionless)
        if verdict.status == "approved" and verdict.scope == "session" and sessionless:
            # Ended at once in the file too: no poll brings it back.
            await self._run(store.end_session_scopes, [request.id], self.clock())
        if verdict.status == "approved" and keep:
            self._standing[request.id] = Standing(
                id=request.id, scope=verdict.scope, session=request.session,
                principal=request.principal, server=request.server, target=request.target,
                rule=request.rule, until_ns=verdict.scope_until_ns, by=verdict.by)
        return verdict

    async def poll(self) -> None:
        """Check every open request once; wake the callers whose request ended;
        reload the standing approvals (other processes may have given some)."""
        if self._conn is None:
            return
        await self.refresh_standing()
        if not self._waiting:
            return
        store = ApprovalStore(self._conn)
        verdicts: dict[str, Verdict] = await self._run(
            store.verdicts, list(self._waiting), self.clock())
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


async def record_abandoned(audit: AuditPoint | None, requests: list[ApprovalRequest]) -> None:
    """Say in the audit trail that these held calls ended with their process."""
    if audit is None:
        return
    for r in requests:
        if r.call_id is not None:
            await audit.append(DecisionEvent(
                ts_ns=time.time_ns(), call_id=r.call_id, session=r.session,
                principal=r.principal, grant=r.grant, server=r.server, method=r.method,
                tool=r.target if r.method == "tools/call" else None, arguments=r.arguments,
                decision="rejected", rule=r.rule, reason=RESTARTED))
        await append_lifecycle(audit, "approval", session=r.session, principal=r.principal,
                               server=r.server, detail={
                                   "approval": r.id, "call_id": r.call_id,
                                   "verdict": "abandoned", "by": None, "note": RESTARTED,
                                   "instance": r.instance})


@asynccontextmanager
async def open_desk(settings: ApprovalSettings, *, instance: str,
                    audit: AuditPoint | None = None) -> AsyncIterator[ApprovalDesk | None]:
    """The approval desk of one gateway process (None when approvals are disabled).

    Requests left pending by processes that are gone are marked abandoned on
    open, and ``audit`` (if given) records that.
    """
    if not settings.enabled:
        yield None
        return
    desk = ApprovalDesk(settings, Path(settings.path), instance)
    await record_abandoned(audit, await desk.open())
    async with polled(desk.run_poller, desk.close):
        yield desk
