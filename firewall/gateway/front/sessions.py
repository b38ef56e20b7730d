"""Client sessions of the HTTP front, and the event streams they own.

A session is mcpwall's own: its id (``Mcp-Session-Id``) is random, bound to
the caller that created it, and never the upstream's. Rules this module keeps:

1. A session id is 128 random bits (``os.urandom``, as :func:`secrets.token_urlsafe`). Looking a
   session up needs the id, the server name and the same caller (principal
   and grant); any mismatch is "not found", so a session's existence is never
   revealed to another principal.
2. The table holds at most ``max_sessions`` sessions, a principal at most its
   share (:mod:`firewall.gateway.front.admission`): a session is admitted, taking a
   slot, before anything about it is awaited, and its slot is given back when
   it leaves the table. A refused ``initialize`` is answered 429 (the
   principal's own cap, ``Retry-After`` = when its first session can expire)
   or 503 (full), logged and recorded (``session_refused``). A session with no
   HTTP request in flight for longer than its idle limit is closed by the
   reaper; afterwards its id is unknown (HTTP 404).
3. A :class:`SessionStream` keeps a bounded replay buffer (``max_events`` events
   and ``max_bytes`` bytes, oldest dropped first): what a client that lost its
   connection can get back with ``Last-Event-ID``. Publishing never blocks, so
   a slow client never stalls the upstream; a client that falls further
   behind than the buffer loses the oldest events (logged).
"""

from __future__ import annotations

import base64
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Literal

import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.config import ListenSettings
from firewall.gateway.approvals.desk import ApprovalDesk
from firewall.gateway.front.admission import PRINCIPAL_CAP, Admission, Refusal, ServerCaps, Slot
from firewall.gateway.http.exchange import Exchange, refuse
from firewall.gateway.mediator import Mediator
from firewall.gateway.mrtr import Rounds, TaskOwners
from firewall.log import get_logger
from firewall.policy.decision import Caller, PolicyPoint
from firewall.protocol import jsonrpc, sse

# Retry-After of a 503 (the front or a server is full: nothing to wait for in particular).
FULL_RETRY_AFTER: Final = 5
# Replay bound of one stream (documented in docs/operations.md).
MAX_STREAM_EVENTS: Final = 1024
MAX_STREAM_BYTES: Final = 8 * 1024 * 1024


def new_session_id() -> str:
    """A cryptographically random session id (128 bits, URL-safe): what
    ``secrets.token_urlsafe(16)`` gives, without its layers of calls (one is
    drawn per stateless request)."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


class SessionStream:
    """One SSE stream of a session: numbered messages, a bounded replay buffer.

    Event ids are ``"{stream}-{seq}"``, unique within the session, so a
    ``Last-Event-ID`` names both the stream and the position to resume from.
    A :meth:`reader` relays it to one client (an :class:`SseResponse` source).
    """

    def __init__(
        self, number: int, *, max_events: int = MAX_STREAM_EVENTS,
        max_bytes: int = MAX_STREAM_BYTES,
    ) -> None:
        self.number = number
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events: deque[tuple[int, bytes]] = deque()
        self.size = 0
        self.last_seq = 0
        self.finished = False
        # The highest seq some client has been sent: a new GET (without
        # Last-Event-ID) starts after it, so nothing published while no client
        # was connected is lost.
        self.delivered = 0
        self._changed = trio.Event()

    def event_id(self, seq: int) -> str:
        return f"{self.number}-{seq}"

    def publish(self, data: bytes) -> int:
        """Append one message; wake the readers. Returns its seq."""
        self.last_seq += 1
        self.events.append((self.last_seq, data))
        self.size += len(data)
        while self.events and (len(self.events) > self.max_events or self.size > self.max_bytes):
            _, old = self.events.popleft()
            self.size -= len(old)
        self._wake()
        return self.last_seq

    def finish(self) -> None:
        """No more events will come (the request was answered)."""
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """The buffered events after ``seq`` (oldest first)."""
        if seq >= self.last_seq:
            return []
        return [(s, d) for s, d in self.events if s > seq]

    async def wait_after(self, seq: int) -> list[tuple[int, bytes]]:
        """Wait until there is an event after ``seq`` or the stream finished."""
        while seq >= self.last_seq and not self.finished:
            await self._changed.wait()
        return self.after(seq)

    def reader(self, seq: int, log: Any) -> StreamReader:
        """A reader of the events after ``seq``, for one client."""
        return StreamReader(self, seq, log)


class StreamReader:
    """One client's position in a :class:`SessionStream` (an SSE relay's source).

    Each message goes out as an event with the session's own id; a reader
    that fell behind the replay buffer logs what it lost
    (``stream_events_dropped``) and goes on from the oldest event kept.
    """

    __slots__ = ("final", "log", "seq", "stream")

    def __init__(self, stream: SessionStream, seq: int, log: Any) -> None:
        self.stream = stream
        self.seq = seq
        self.log = log
        self.final: bytes | None = None  # the last message taken

    async def take(self, out: list[bytes]) -> None:
        stream = self.stream
        events = stream.after(self.seq)
        if events:
            if events[0][0] > self.seq + 1:
                self.log.warning("stream_events_dropped", stream=stream.number,
                                 lost=events[0][0] - self.seq - 1)
            for number, data in events:
                out.append(sse.encode_event(data, id=stream.event_id(number)))
            self.seq, self.final = events[-1]
        stream.delivered = max(stream.delivered, self.seq)

    def at_end(self) -> bool:
        return self.stream.finished and self.seq >= self.stream.last_seq

    async def receive(self) -> None:
        await self.stream.wait_after(self.seq)


def parse_event_id(value: str) -> tuple[int, int] | None:
    """``"3-17"`` -> ``(3, 17)``; None for an id mcpwall did not issue."""
    stream, sep, seq = value.partition("-")
    if not sep or not stream.isdigit() or not seq.isdigit():
        return None
    return int(stream), int(seq)


class Session:
    """State shared by every kind of session: identity, mediator, activity."""

    def __init__(self, *, sid: str, server: str, caller: Caller, mediator: Mediator,
                 idle_limit: float) -> None:
        self.id = sid
        self.server = server
        self.caller = caller
        self.mediator = mediator
        self.idle_limit = idle_limit
        self.created = trio.current_time()
        self.last_active = self.created
        self.in_flight = 0
        self.closed = False
        self.log: Any = mediator.log
        self._end_recorded = False
        # Its place in the admission counts; given back when it leaves the table.
        self.slot: Slot | None = None
        # The scopes of its open GET streams (ended on shutdown, or with it).
        self.get_scopes: set[trio.CancelScope] = set()
        self.get_open = False  # a GET stream without Last-Event-ID is running

    def busy(self) -> _Busy:
        """Count an HTTP request as in flight while the ``with`` block runs."""
        return _Busy(self)

    def idle_for(self, now: float) -> float:
        """Seconds without any request in flight (0 while one is)."""
        return 0.0 if self.in_flight else now - self.last_active

    async def close(self, reason: str) -> None:
        """Stop the session (subclasses stop their upstream binding)."""
        self.closed = True

    def end_get_streams(self) -> None:
        """End the session's open GET streams (shutdown; the session closes)."""
        for scope in self.get_scopes:
            scope.cancel()

    async def end(self, reason: str) -> None:
        """Close the session and record its end in the audit trail, once."""
        self.mediator.holds.withdraw(f"the session ended ({reason})")
        await self.close(reason)
        if self.mediator.approvals is not None:
            with trio.CancelScope(shield=True):
                await self.mediator.approvals.forget_session(self.mediator.session)
        if not self._end_recorded:
            self._end_recorded = True
            with trio.CancelScope(shield=True):
                await append_lifecycle(self.mediator.audit, "session_end", session=self.id,
                                       principal=self.caller.principal, server=self.server,
                                       detail={"reason": reason})


class _Busy:
    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __enter__(self) -> Session:
        self.session.in_flight += 1
        self.session.last_active = trio.current_time()
        return self.session

    def __exit__(self, *exc: object) -> None:
        self.session.in_flight -= 1
        self.session.last_active = trio.current_time()


class SessionTable:
    """Every open session of the front, by id, and the admission counts behind them."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    @property
    def max_sessions(self) -> int:
        return self.admission.max_sessions

    @property
    def full(self) -> bool:
        return self.admission.count() >= self.max_sessions

    def count(self, server: str) -> int:
        """Sessions of one server (admitted: open, or starting)."""
        return self.admission.count(server)

    def holds(self, session: Session) -> bool:
        return self._sessions.get(session.id) is session

    def add(self, session: Session) -> None:
        """Put an admitted session in the table (a closed one gives its slot back)."""
        if session.closed:
            self._release(session)
        else:
            self._sessions[session.id] = session

    def remove(self, session: Session) -> None:
        """Forget a session and give its slot back (idempotent)."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        self._release(session)

    @staticmethod
    def _release(session: Session) -> None:
        if session.slot is not None:
            session.slot.release()

    def retry_after(self, refusal: Refusal, principal: str, server: str, now: float) -> int:
        """Whole seconds until the first session counting against ``refusal``'s
        cap may expire for idleness (at least 1): the ``Retry-After`` of a 429."""
        waits = [s.idle_limit - s.idle_for(now) for s in self._sessions.values()
                 if s.caller.principal == principal
                 and (not refusal.server_scope or s.server == server)]
        return max(1, math.ceil(min(waits))) if waits else 1

    def find(self, sid: str, server: str, caller: Caller) -> Session | None:
        """The session with this id, if it belongs to this server and caller."""
        session = self._sessions.get(sid)
        if session is None or session.closed or session.server != server:
            return None
        if session.caller.principal != caller.principal or session.caller.grant != caller.grant:
            return None
        return session

    async def reap(self, now: float) -> int:
        """Close the sessions idle past their limit; return how many."""
        reaped = 0
        for session in self:
            if session.idle_for(now) > session.idle_limit:
                session.log.info("session_expired", idle_seconds=round(now - session.last_active))
                await session.end("idle")
                self.remove(session)
                reaped += 1
        return reaped

    async def run_reaper(self, interval: float) -> None:
        """Reap idle sessions every ``interval`` seconds, forever."""
        while True:
            await trio.sleep(interval)
            await self.reap(trio.current_time())


class FrontContext:
    """What every endpoint of the HTTP front shares: limits, sessions, policy, audit.

    Session tasks run in :attr:`nursery`, owned by the front: closing the
    front ends every session and stops every child.
    """

    def __init__(
        self,
        listen: ListenSettings,
        policy: PolicyPoint,
        audit: AuditPoint | None,
        deny_tools_call_as: Literal["tool_result", "jsonrpc_error"] = "tool_result",
        approvals: ApprovalDesk | None = None,
        *,
        per_principal: bool = False,
    ) -> None:
        self.listen = listen
        self.approvals = approvals
        self.policy = policy
        self.audit = audit
        self.deny_tools_call_as = deny_tools_call_as
        # With authentication off every caller is the same principal: no
        # per-principal caps then (admission rule 3).
        self.table = SessionTable(Admission(listen.max_sessions, listen.sessions_per_principal(),
                                            per_principal=per_principal))
        self.nursery: trio.Nursery | None = None
        self.log: Any = get_logger(component="http_front")
        # Told the tools each server offers (set by the operator plane's policy page).
        self.on_tools: Callable[[str, list[str]], None] | None = None
        # The links between the rounds of a 2026-07-28 call, per server: its
        # requests come with no session, each to a mediator of its own, and a
        # retry must find the round before it (mediator rules 16 to 18).
        self.rounds: dict[str, Rounds] = {}
        # Whose each task is, for every mediator of the front, sessions or none
        # (mrtr rule 4): a server cannot tell mcpwall's callers apart.
        self.task_owners = TaskOwners()

    def mediator(self, server: str, sid: str, caller: Caller, *,
                 sessionless: bool = False) -> Mediator:
        """A mediator for a new session of ``server``, or for one request
        without a session (``sessionless``: a 2026-07-28 POST; its ``session``
        scopes are the caller's grant, its rounds linked through the server's
        shared :class:`Rounds`)."""
        rounds = self.rounds.get(server) if sessionless else None
        if rounds is None:  # a session's own; or the server's first stateless request
            rounds = Rounds(owners=self.task_owners)
            if sessionless:
                self.rounds[server] = rounds
        # Made as ``Mediator(...)`` would, without the dictionary of keywords
        # a class call builds (CPython's type.__call__): one per stateless request.
        mediator: Mediator = object.__new__(Mediator)
        Mediator.__init__(mediator, server=server, session=sid, caller=caller,
                          policy=self.policy, audit=self.audit,
                          deny_tools_call_as=self.deny_tools_call_as, approvals=self.approvals,
                          on_tools=self.on_tools, sessionless=sessionless, rounds=rounds)
        return mediator

    def admit(self, server: str, caller: Caller, caps: ServerCaps) -> Slot | Refusal:
        """A slot for a new session of ``caller`` on ``server``, or why not.

        The slot goes on the session (``session.slot``) before
        :meth:`start_session`; the table gives it back when the session leaves.
        """
        return self.table.admission.admit(server, caller.principal, caps)

    async def refuse_session(self, ex: Exchange, refusal: Refusal, caller: Caller,
                             server: str) -> None:
        """Answer a refused ``initialize`` (429 or 503), log it and record it."""
        if refusal.status == PRINCIPAL_CAP:
            retry = self.table.retry_after(refusal, caller.principal, server,
                                           trio.current_time())
            code = jsonrpc.RATE_LIMITED
        else:
            retry, code = FULL_RETRY_AFTER, jsonrpc.UPSTREAM_UNAVAILABLE
        self.log.warning("session_refused", server=server, principal=caller.principal,
                         grant=caller.grant, reason=refusal.reason, limit=refusal.limit,
                         cap=refusal.cap, status=refusal.status, retry_after=retry)
        await append_lifecycle(self.audit, "session_refused", principal=caller.principal,
                               server=server,
                               detail={"reason": refusal.reason, "limit": refusal.limit,
                                       "cap": refusal.cap, "status": refusal.status,
                                       "grant": caller.grant, "retry_after": retry})
        await refuse(ex, refusal.status, code, refusal.message(), [("retry-after", str(retry))],
                     data={"reason": refusal.reason, "limit": refusal.limit, "cap": refusal.cap,
                           "retryAfter": retry})

    async def start_session(
        self, session: Session, run: Callable[..., Awaitable[None]] | None = None
    ) -> None:
        """Add a session to the table; run its task (if any) in the front's nursery.

        ``run`` takes ``task_status``; what it raises before ``started()``
        propagates here, the session is not added and its slot is given back
        (by :meth:`_run_session`).
        """
        if run is not None:
            assert self.nursery is not None, "the front is not running"
            await self.nursery.start(self._run_session, session, run)
        self.table.add(session)
        await append_lifecycle(self.audit, "session_start", session=session.id,
                               principal=session.caller.principal, server=session.server,
                               detail={"transport": "http", "grant": session.caller.grant,
                                       "groups": list(session.caller.groups)})

    async def end_session(self, session: Session, reason: str) -> None:
        """Close a session, forget it and record its end."""
        await session.end(reason)
        self.table.remove(session)

    async def _run_session(
        self, session: Session, run: Callable[..., Awaitable[None]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        status = _Started(task_status)
        try:
            await run(task_status=status)
        except Exception as exc:
            if not status.done:
                raise  # the session never started: its starter is told
            # One session's failure ends that session, never the front.
            session.log.error("session_failed", error=repr(exc), exc_info=exc)
        finally:
            await session.end("upstream gone")
            self.table.remove(session)


class _Started:
    """A task status that remembers whether ``started()`` was called."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._status.started(value)
