"""What an HTTP listener owes its clients and what it may refuse them: sans-IO.

Slow clients (slowloris: a request head sent a byte at a time; a body
trickled) and connection floods must not starve the clients that behave, nor
take the file descriptors that ``/healthz`` and the operator listener need.
:mod:`firewall.gateway.http.server` applies these rules to each connection.

Rules this module keeps:

1. A connection is always in one :class:`Phase`, and each phase but ``BUSY``
   has a deadline (:func:`deadline`): ``IDLE`` (between requests)
   ``keep_alive`` after the last response ended; ``HEAD`` (the client owes a
   request head) ``head_timeout`` after the connection opened or after the
   first byte of the head; ``BODY`` (the client owes the rest of a request
   body) ``body_timeout`` after the head, plus one second for every
   ``body_min_rate`` bytes received, so a body that keeps a fair pace is never
   cut and one that trickles is; ``BUSY`` (the server owes the answer: a long
   call, an event stream) none: the upstream timeout bounds it elsewhere.
2. A listener serves at most ``max_connections`` connections
   (:class:`Gate`). Beyond, up to ``reserve`` more are taken for one request
   each: ``GET``/``HEAD /healthz`` is answered, anything else gets 503 with
   ``Retry-After`` (:func:`reserve_request`). Beyond that, a connection is
   closed as soon as it is accepted, with a 503 written if the socket takes it.
   So at most ``max_connections + reserve`` sockets per listener, whatever
   the clients do.
"""

from __future__ import annotations

import enum
import math
import resource
from dataclasses import dataclass
from typing import Final

# The longest request head a reserve connection reads before answering 503.
RESERVE_HEAD_BYTES: Final = 8192
HEALTH_PATHS: Final = frozenset({b"/healthz", b"/healthz/"})
RETRY_AFTER_SECONDS: Final = 5
# The soft limit of open files asked for when the hard limit is "unlimited"
# (the kernel refuses more than its nr_open, 1048576 by default).
_NO_LIMIT_TARGET: Final = 1048576


class Phase(enum.IntEnum):
    """Who owes what on a connection (rule 1)."""

    IDLE = 0  # between requests: the keep-alive deadline
    HEAD = 1  # the client owes a request head
    BODY = 2  # the client owes the rest of a request body
    BUSY = 3  # the server owes the answer: no deadline


class Admission(enum.IntEnum):
    """What a listener does with a connection it just accepted (rule 2)."""

    SERVE = 0
    RESERVE = 1  # one request: /healthz answered, anything else 503
    REFUSE = 2  # closed at once


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers of one listener (from ``[http]`` and ``[listen]`` / ``[admin]``)."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 16384  # bytes a second
    keep_alive: float = 75.0
    max_connections: int = 1024
    reserve: int = 16


def deadline(limits: Limits, phase: Phase, since: float, received: int) -> float:
    """When a connection in ``phase`` since ``since`` (having read ``received`` body
    bytes) must be closed; ``math.inf`` for never.

    Example: ``deadline(Limits(), Phase.HEAD, 100.0, 0) == 110.0``
    """
    if phase is Phase.HEAD:
        return since + limits.head_timeout
    if phase is Phase.BODY:
        return since + limits.body_timeout + received / limits.body_min_rate
    if phase is Phase.IDLE:
        return since + limits.keep_alive
    return math.inf


class Gate:
    """Counts a listener's connections and admits or refuses new ones (rule 2)."""

    __slots__ = ("limits", "refused", "reserved", "served")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.served = 0  # connections being served
        self.reserved = 0  # reserve connections open
        self.refused = 0  # connections closed at once, since the start

    def admit(self) -> Admission:
        """Take a slot for a new connection; :meth:`release` it when the connection ends."""
        if self.served < self.limits.max_connections:
            self.served += 1
            return Admission.SERVE
        if self.reserved < self.limits.reserve:
            self.reserved += 1
            return Admission.RESERVE
        self.refused += 1
        return Admission.REFUSE

    def release(self, admission: Admission) -> None:
        if admission is Admission.SERVE:
            self.served -= 1
        elif admission is Admission.RESERVE:
            self.reserved -= 1

    def report(self) -> dict[str, int]:
        """For ``/healthz``: connections open, the cap, and refusals so far."""
        return {"open": self.served, "max": self.limits.max_connections,
                "reserve_open": self.reserved, "refused": self.refused}


def reserve_request(head: bytes) -> bytes | None:
    """The method (``b"GET"`` or ``b"HEAD"``) when the request whose first bytes
    are ``head`` asks for ``/healthz``, ``b""`` when it asks for anything else,
    ``None`` while its head is incomplete.

    Example: ``reserve_request(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n") == b"GET"``
    """
    if head.find(b"\r\n\r\n") < 0 and head.find(b"\n\n") < 0:
        return None if len(head) < RESERVE_HEAD_BYTES else b""
    parts = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") \
            or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") \
            or parts[1].split(b"?", 1)[0] not in HEALTH_PATHS:
        return b""
    return parts[0]


def fit_to_open_files(wanted: int, others: int, soft_limit: int) -> int:
    """The connection cap of a listener that fits in the open-files limit:
    ``wanted``, or less when ``wanted`` plus ``others`` (every other socket and
    file the process may hold) would pass ``soft_limit``; at least 1.

    Example: ``fit_to_open_files(1024, 400, 1024) == 624``
    """
    return max(1, min(wanted, soft_limit - others))


def canned(status: int, reason: str, body: bytes = b"", content_type: bytes = b"",
           retry_after: int | None = None) -> bytes:
    """A whole response that closes the connection, for answers below the HTTP layer.

    Example: ``canned(408, "Request Timeout")``
    """
    lines = [b"HTTP/1.1 %d %s" % (status, reason.encode("ascii")),
             b"content-length: %d" % len(body), b"connection: close"]
    if content_type:
        lines.append(b"content-type: " + content_type)
    if retry_after is not None:
        lines.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


TIMEOUT_408: Final = canned(408, "Request Timeout")
FULL_503: Final = canned(503, "Service Unavailable",
                         b'{"error": "too many connections; retry later"}',
                         b"application/json", RETRY_AFTER_SECONDS)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit; return
    (soft, hard) as they are now. A limit that cannot be raised stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NO_LIMIT_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


__all__ = [
    "FULL_503",
    "TIMEOUT_408",
    "Admission",
    "Gate",
    "Limits",
    "Phase",
    "canned",
    "deadline",
    "fit_to_open_files",
    "raise_open_files_limit",
    "reserve_request",
]
