"""What links the rounds of one call, and a task to its call (2026-07-28).

A multi round-trip request (MRTR) is one call over several requests: the
first, answered with an ``InputRequiredResult``, then retries carrying
``inputResponses`` and the echoed ``requestState``. A call answered with a
task handle goes on through ``tasks/get``/``tasks/update``/``tasks/cancel``.
The mediator decides and records; this module only remembers, in memory,
what it needs to treat those requests as the call they belong to. Rules it
keeps (the mediator's MRTR rules point here):

1. A link is keyed by who asked (principal and grant), the server, the
   call's digest (method, target, arguments: ``mrtr.call_digest``) and the
   ``requestState`` the server gave: a retry from another caller, with other
   arguments, or echoing another state finds no link and is a new call,
   decided in full. A link is used once (:meth:`Rounds.take` removes it): a
   replayed retry is a new call too.
2. Everything here is bounded: at most ``max_links`` links, ``max_tasks``
   tasks and ``max_asks`` approval questions, the oldest dropped first, and
   each expires (links and questions after ``ttl`` seconds, tasks after
   ``task_ttl``). One caller (principal) holds at most a tenth of each
   (:data:`OWNER_SHARE`), its own oldest dropped first: the stores are shared
   by a server's callers, and one caller's flood of rounds, tasks or
   questions cannot crowd out another's. A call may be linked over at most
   ``max_rounds`` rounds; after that its retry is a new call.
3. A question mcpwall asks through an ``InputRequiredResult`` (approval in
   the client) is answered once: :meth:`Rounds.answer` removes it. Its
   ``requestState`` is sealed (``mrtr.StateSeal``) with this store's key;
   a state that does not open, names another caller, server or call, or has
   expired is not an answer.
4. A task id a server gave to one caller (principal) belongs to it: a
   ``tasks/*`` request of another caller naming it is refused by the
   mediator, never forwarded (the server sees every caller as mcpwall and
   cannot tell them apart). Kept for ``task_ttl``, bounded as in rule 2, in
   a :class:`TaskOwners` a front shares across its mediators.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import msgspec

from firewall.policy.counters import Reservation
from firewall.policy.decision import Caller, Decision
from firewall.protocol import mcp
from firewall.protocol.mrtr import StateSeal

ROUND_TTL: Final = 600.0
TASK_TTL: Final = 24 * 3600.0
MAX_ROUNDS: Final = 10
# One caller (principal) holds at most this fraction of each store (rule 2).
OWNER_SHARE: Final = 10
# The inputRequests key of mcpwall's own approval question.
APPROVAL_KEY: Final = "mcpwall_approval"

K = TypeVar("K")
V = TypeVar("V")


class Link(msgspec.Struct, frozen=True):
    """A call whose next round may come: its call_id, the decision of its first
    round (carried to the next), and the number of the round that answered."""

    call_id: str
    decision: Decision
    recorded_as: str
    round: int


class TaskLink(msgspec.Struct, frozen=True):
    """The call a task belongs to."""

    call_id: str
    started_ns: int


class Ask(msgspec.Struct, frozen=True):
    """A held call whose approval mcpwall asked the client for (rule 3)."""

    call_id: str
    digest: str
    call: mcp.Call
    decision: Decision
    reservation: Reservation | None
    asked: float


class _Bounded(Generic[K, V]):
    """An insertion-ordered map with a size bound, a per-owner bound and a
    per-entry expiry (rule 2): an owner over its share loses its own oldest."""

    def __init__(self, limit: int, ttl: float, clock: Callable[[], float],
                 per_owner: int | None = None) -> None:
        self._items: OrderedDict[K, tuple[float, V, str]] = OrderedDict()
        self._owned: dict[str, OrderedDict[K, None]] = {}
        self._limit = limit
        self._per_owner = per_owner if per_owner is not None else max(1, limit // OWNER_SHARE)
        self._ttl = ttl
        self._clock = clock

    def put(self, key: K, value: V, owner: str = "") -> list[V]:
        """Store ``value`` for ``owner``; return what was dropped to make room or expired."""
        dropped = self.expire()
        self._remove(key)
        self._items[key] = (self._clock() + self._ttl, value, owner)
        owned = self._owned.setdefault(owner, OrderedDict())
        owned[key] = None
        while len(owned) > self._per_owner:
            dropped.append(self._take(next(iter(owned))))
        while len(self._items) > self._limit:
            dropped.append(self._take(next(iter(self._items))))
        return dropped

    def _take(self, key: K) -> V:
        """The value of a ``key`` that is there, taken out."""
        item = self._remove(key)
        assert item is not None
        return item[1]

    def _remove(self, key: K) -> tuple[float, V, str] | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        owned = self._owned.get(item[2])
        if owned is not None:
            owned.pop(key, None)
            if not owned:
                del self._owned[item[2]]
        return item

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] < self._clock():
            return None
        return item[1]

    def pop(self, key: K) -> V | None:
        item = self._remove(key)
        if item is None or item[0] < self._clock():
            return None
        return item[1]

    def expire(self) -> list[V]:
        now = self._clock()
        dropped: list[V] = []
        while self._items:
            key, (until, _, _) = next(iter(self._items.items()))
            if until >= now:
                break
            dropped.append(self._take(key))
        return dropped

    def __len__(self) -> int:
        return len(self._items)


LinkKey = tuple[str, str, str, str, str | None]


class TaskOwners:
    """Whose each task is, by server and task id (rule 4); a front shares one
    across all its mediators, sessions or none."""

    def __init__(self, *, limit: int = 10_000, ttl: float = TASK_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._owners: _Bounded[tuple[str, str], str] = _Bounded(limit, ttl, clock)

    def given(self, server: str, task_id: str, principal: str) -> None:
        """Task ``task_id`` of ``server`` was given to ``principal``."""
        self._owners.put((server, task_id), principal, principal)

    def owner(self, server: str, task_id: str) -> str | None:
        return self._owners.get((server, task_id))


class Rounds:
    """The links of one server's calls across rounds, its tasks, and mcpwall's
    own approval questions. One per mediator unless a front shares one (the
    2026-07-28 revision has no session: a retry may come on another request).

    Example::

        rounds = Rounds()
        rounds.remember(caller, "vm", digest, "state-1", Link("s.1", decision, "allow", 1))
        assert rounds.take(caller, "vm", digest, "state-1").call_id == "s.1"
        assert rounds.take(caller, "vm", digest, "state-1") is None   # used once
    """

    def __init__(self, *, ttl: float = ROUND_TTL, task_ttl: float = TASK_TTL,
                 max_links: int = 10_000, max_tasks: int = 10_000, max_asks: int = 1_000,
                 max_rounds: int = MAX_ROUNDS, seal: StateSeal | None = None,
                 owners: TaskOwners | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rounds = max_rounds
        self.ttl = ttl
        self.seal = seal or StateSeal()
        self._links: _Bounded[LinkKey, Link] = _Bounded(max_links, ttl, clock)
        self._tasks: _Bounded[tuple[str, str, str, str], TaskLink] = _Bounded(
            max_tasks, task_ttl, clock)
        # Whose each task is (rule 4): kept past the task's end, maybe shared.
        self.owners = owners or TaskOwners(limit=max_tasks, ttl=task_ttl, clock=clock)
        self._asks: _Bounded[str, Ask] = _Bounded(max_asks, ttl, clock)

    # -- rounds (rule 1) ---------------------------------------------------------
    def remember(self, caller: Caller, server: str, digest: str, state: str | None,
                 link: Link) -> None:
        """The call ``link.call_id`` asked for input; its retry may echo ``state``."""
        if link.round < self.max_rounds:
            self._links.put((caller.principal, caller.grant, server, digest, state), link,
                            caller.principal)

    def take(self, caller: Caller, server: str, digest: str, state: str | None) -> Link | None:
        """The link a retry continues, removed (used once), or None: a new call."""
        return self._links.pop((caller.principal, caller.grant, server, digest, state))

    # -- tasks -------------------------------------------------------------------
    def task(self, caller: Caller, server: str, task_id: str, link: TaskLink) -> None:
        """Task ``task_id`` carries on the call ``link.call_id``."""
        self._tasks.put((caller.principal, caller.grant, server, task_id), link,
                        caller.principal)
        self.owners.given(server, task_id, caller.principal)

    def task_owner(self, server: str, task_id: str) -> str | None:
        """The principal a task of ``server`` was given to, if mcpwall saw it (rule 4)."""
        return self.owners.owner(server, task_id)

    def task_call(self, caller: Caller, server: str, task_id: str) -> TaskLink | None:
        """The call a task of this caller belongs to, or None."""
        return self._tasks.get((caller.principal, caller.grant, server, task_id))

    def task_ended(self, caller: Caller, server: str, task_id: str) -> TaskLink | None:
        """Forget a task that reached a terminal state (its call's outcome is recorded once)."""
        return self._tasks.pop((caller.principal, caller.grant, server, task_id))

    # -- approval questions (rule 3) ---------------------------------------------
    def ask(self, ask: Ask, owner: str = "") -> list[Ask]:
        """Keep a question (of the caller ``owner``, a principal) until its answer;
        return questions dropped unanswered (their reservations are the caller's
        to give back)."""
        return self._asks.put(ask.call_id, ask, owner)

    def answer(self, call_id: str) -> Ask | None:
        """The question of ``call_id``, removed (answered once), or None."""
        return self._asks.pop(call_id)

    def expired_asks(self) -> list[Ask]:
        """Questions nobody answered in time, removed."""
        return self._asks.expire()
