"""What the operator listener checks before anyone is authenticated: Host, Origin, login rate.

Pure: strings and numbers in, verdicts out; the clock is injected.

Rules this module keeps:

1. The ``Host`` header must name this listener (:class:`ListenerNames`), in
   every mode, with or without tokens: the configured ``[admin] host`` and
   ``port``; on a loopback host also ``localhost``, ``127.0.0.1`` and
   ``[::1]`` on that port; on a wildcard host (``0.0.0.0``, ``::``) the
   loopback names and this machine's host name on that port; and every
   ``[admin] allowed_hosts`` entry (``name`` admits any port, ``name:port``
   that port only). A page that DNS rebinding put on the listener's address
   sends its own name in ``Host`` and is refused, whatever its ``Origin``.
2. An ``Origin`` is allowed when its host and port pass the same test (its
   port defaulting to 80 for http, 443 for https); it is never compared with
   the request's own ``Host``, which the sender chooses. ``null`` and
   anything that is not an http(s) origin are refused.
3. Failed logins are rate-limited per source address (:class:`LoginThrottle`):
   a token bucket of ``login_failures`` failures, refilled over
   ``login_window_seconds``. When it is empty every login attempt from that
   address (console form or ``Authorization`` header, right token or wrong) is
   refused with 429 and ``Retry-After`` until a failure has refilled: a
   throttled attempt is never checked, so the throttle does not answer
   "right" or "wrong". Other addresses are not affected. Requests that present
   no token are not login attempts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from firewall.policy.limits import BucketSpec, MemoryLimiter
from firewall.protocol.hosts import allowed_host, split_host

LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1", "[::1]")
_WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "[::]", "")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _bracket(host: str) -> str:
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class ListenerNames:
    """The names (and ports) by which clients may address the operator listener."""

    def __init__(self, host: str, port: int, allowed_hosts: Iterable[str] = (),
                 hostname: Callable[[], str] = socket.gethostname) -> None:
        self.port = port
        names = {_bracket(host)}
        if host.strip().lower() in _LOOPBACK_HOSTS:
            names.update(LOOPBACK_NAMES)
        elif host.strip().lower() in _WILDCARD_HOSTS:
            names.discard(_bracket(host))
            names.update(LOOPBACK_NAMES)
            names.add(hostname().strip().lower())
        self.exact: frozenset[tuple[str, int]] = frozenset((n, port) for n in names if n)
        any_port: set[str] = set()
        pinned: set[tuple[str, int]] = set()
        for entry in allowed_hosts:
            name, entry_port = allowed_host(entry)  # ValueError when it is not one
            if entry_port is None:
                any_port.add(name)
            else:
                pinned.add((name, entry_port))
        self.any_port: frozenset[str] = frozenset(any_port)
        self.exact |= pinned

    def admits(self, name: str, port: int | None) -> bool:
        """True when ``name:port`` addresses this listener."""
        return name in self.any_port or (port is not None and (name, port) in self.exact)

    def host_ok(self, header: str | None) -> bool:
        """True when a ``Host`` header names this listener (a missing one does not)."""
        if header is None:
            return False
        parsed = split_host(header, 80)
        return parsed is not None and self.admits(*parsed)

    def origin_ok(self, origin: str) -> bool:
        """True when an ``Origin`` header is a page served by this listener's names."""
        try:
            parts = urlsplit(origin.strip().lower())
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return False
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            return False
        return self.admits(_bracket(parts.hostname), port or _DEFAULT_PORTS[parts.scheme])


class LoginThrottle:
    """Failed logins per source address, as token buckets (see rule 3).

    >>> throttle = LoginThrottle(failures=2, window=60.0, clock=lambda: 0.0)
    >>> throttle.failed("10.0.0.9"), throttle.failed("10.0.0.9")
    (False, True)
    >>> throttle.wait("10.0.0.9"), throttle.wait("10.0.0.8")
    (30.0, None)
    """

    def __init__(self, failures: int, window: float,
                 clock: Callable[[], float] | None = None) -> None:
        # The bucket key carries the address; the policy scope slot is unused here.
        self.spec = BucketSpec("operator_login", "global", failures, window)
        self._limiter = MemoryLimiter() if clock is None else MemoryLimiter(clock)

    def wait(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        return self._limiter.acquire([(self.spec.key(address), self.spec)], debit=False)

    def failed(self, address: str) -> bool:
        """Count one failed login; True when it used the address's last try."""
        key = self.spec.key(address)
        self._limiter.acquire([(key, self.spec)])
        return self._limiter.tokens(key, self.spec) < 1.0


__all__ = ["LOOPBACK_NAMES", "ListenerNames", "LoginThrottle"]
