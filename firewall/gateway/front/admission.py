"""Session admission: how many sessions the front, a server and a principal may hold.

Pure accounting, no I/O: :class:`Admission` counts the sessions that hold a
:class:`Slot` and decides whether one more may start. Rules it keeps:

1. A slot is taken synchronously, before anything is awaited (a child started,
   an upstream asked), so concurrent ``initialize`` requests can never overshoot
   a cap. A slot is held from :meth:`Admission.admit` until
   :meth:`Slot.release`, which the session table calls when the session leaves
   it (or the front calls when the attempt failed); releasing twice is a no-op.
2. A principal's own caps are checked first: a principal at its cap is refused
   with HTTP 429 (its own doing; it may close sessions or wait for one to go
   idle), whatever else is full. A front or server at capacity is HTTP 503,
   the same for everyone. So one principal can hold at most its cap of a
   server's children and of the front's sessions, never all of them.
3. Per-principal caps count sessions by ``principal`` (all of its grants
   together). With authentication off every caller is the same anonymous
   principal, so the per-principal caps do not apply (``per_principal=False``);
   the front's and servers' caps still do.
4. A refused attempt takes nothing: the counts change only through slots.

Example::

    admission = Admission(max_sessions=1024, sessions_per_principal=256)
    got = admission.admit("vm", "ci-bot", ServerCaps(32, 8, "servers.vm"))
    if isinstance(got, Refusal): ...  # got.status is 429 or 503
    else: ...; got.release()
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal

import msgspec

PRINCIPAL_CAP: Final = 429
FULL: Final = 503

RefusalReason = Literal[
    "principal_sessions", "principal_children", "sessions_full", "children_full",
]


class ServerCaps(msgspec.Struct, frozen=True):
    """The caps of one server: all sessions (``total``), and per principal.

    ``key`` is the server's config key path (``servers.vm``), for messages.
    ``None`` means no cap of that kind (an HTTP server has no child cap).
    """

    total: int | None
    per_principal: int | None
    key: str


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """Why a session may not start: an HTTP status, the cap and its config key."""

    status: int  # PRINCIPAL_CAP (429) or FULL (503)
    reason: RefusalReason
    limit: str  # the config key path of the cap that was hit
    cap: int
    # Whose sessions count against the cap: a principal's on one server, a
    # principal's on the whole front, one server's, or the front's.
    server_scope: bool

    def message(self) -> str:
        """The human text of the refusal (the JSON-RPC error message)."""
        what = {
            "principal_sessions": f"this principal has {self.cap} sessions open",
            "principal_children": f"this principal runs {self.cap} children of this server",
            "sessions_full": f"{self.cap} sessions open",
            "children_full": f"this server runs {self.cap} children already",
        }[self.reason]
        head = "Too Many Requests" if self.status == PRINCIPAL_CAP else "Service Unavailable"
        return f"{head}: {what} ({self.limit})"


class Slot:
    """One admitted session's place in the counts, held until :meth:`release`."""

    __slots__ = ("_admission", "principal", "released", "server")

    def __init__(self, admission: Admission, server: str, principal: str) -> None:
        self._admission = admission
        self.server = server
        self.principal = principal
        self.released = False

    def release(self) -> None:
        """Give the place back (idempotent)."""
        if not self.released:
            self.released = True
            self._admission._give_back(self)


class Admission:
    """The session counts of one front, by server and by principal."""

    def __init__(self, max_sessions: int, sessions_per_principal: int,
                 *, per_principal: bool = True) -> None:
        self.max_sessions = max_sessions
        self.sessions_per_principal = sessions_per_principal
        self.per_principal = per_principal
        self.total = 0
        self._by_server: Counter[str] = Counter()
        self._by_principal: Counter[str] = Counter()
        self._by_pair: Counter[tuple[str, str]] = Counter()

    def count(self, server: str | None = None, principal: str | None = None) -> int:
        """Slots held: all, of one server, of one principal, or of both."""
        if server is None and principal is None:
            return self.total
        if principal is None:
            return self._by_server[server or ""]
        if server is None:
            return self._by_principal[principal]
        return self._by_pair[(server, principal)]

    def check(self, server: str, principal: str, caps: ServerCaps) -> Refusal | None:
        """The refusal a new session of ``principal`` on ``server`` would get, if any."""
        if self.per_principal:
            if caps.per_principal is not None \
                    and self._by_pair[(server, principal)] >= caps.per_principal:
                return Refusal(status=PRINCIPAL_CAP, reason="principal_children",
                               limit=f"{caps.key}.max_children_per_principal",
                               cap=caps.per_principal, server_scope=True)
            if self._by_principal[principal] >= self.sessions_per_principal:
                return Refusal(status=PRINCIPAL_CAP, reason="principal_sessions",
                               limit="listen.max_sessions_per_principal",
                               cap=self.sessions_per_principal, server_scope=False)
        if self.total >= self.max_sessions:
            return Refusal(status=FULL, reason="sessions_full", limit="listen.max_sessions",
                           cap=self.max_sessions, server_scope=False)
        if caps.total is not None and self._by_server[server] >= caps.total:
            return Refusal(status=FULL, reason="children_full", limit=f"{caps.key}.max_children",
                           cap=caps.total, server_scope=True)
        return None

    def admit(self, server: str, principal: str, caps: ServerCaps) -> Slot | Refusal:
        """Take a slot for a new session now, or say why not (rule 1: no await between)."""
        refusal = self.check(server, principal, caps)
        if refusal is not None:
            return refusal
        self.total += 1
        self._by_server[server] += 1
        self._by_principal[principal] += 1
        self._by_pair[(server, principal)] += 1
        return Slot(self, server, principal)

    def _give_back(self, slot: Slot) -> None:
        self.total -= 1
        for counter, key in ((self._by_server, slot.server),
                             (self._by_principal, slot.principal)):
            counter[key] -= 1
            if not counter[key]:
                del counter[key]
        pair = (slot.server, slot.principal)
        self._by_pair[pair] -= 1
        if not self._by_pair[pair]:
            del self._by_pair[pair]


__all__ = ["FULL", "PRINCIPAL_CAP", "Admission", "Refusal", "ServerCaps", "Slot"]
