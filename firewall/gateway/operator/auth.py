"""Who may operate the firewall: operator tokens, console logins.

The ``[admin]`` table itself is :mod:`firewall.settings.admin`.

Rules this module keeps:

1. Operator tokens are stored as SHA-256 digests, like agent tokens, and a
   presented token is compared against every digest without an early exit
   (:class:`firewall.identity.TokenTable` does the comparing).
2. Two roles: ``admin`` may change state (approve, kill switch, reload, end
   sessions); ``viewer`` may only read. A viewer's state-changing request is
   403, an unknown or missing token 401.
3. A console login (browser) is a random session id in an HttpOnly,
   SameSite=Strict cookie, held in memory only (a restart logs everyone out),
   with its own CSRF token that every state-changing request must echo in the
   ``X-CSRF-Token`` header. The cookie never holds the operator token.

Example::

    table = OperatorTable(settings.tokens)
    operator = table.authenticate("s3cret")   # Operator(name="alice", role="admin") or None
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Final

import msgspec

from firewall.settings.admin import AdminToken, Role, token_table

LOGIN_SECONDS: Final = 8 * 3600
MAX_LOGINS: Final = 256


class Operator(msgspec.Struct, frozen=True):
    """An authenticated operator: the token's name and role."""

    name: str
    role: Role = "admin"

    @property
    def may_change(self) -> bool:
        """True when this operator may change state (approve, kill switch, ...)."""
        return self.role == "admin"


ANONYMOUS_OPERATOR: Final = Operator("anonymous", "admin")


class OperatorTable:
    """The configured operator tokens: ``authenticate(token) -> Operator | None``."""

    def __init__(self, tokens: list[AdminToken]) -> None:
        self._table = token_table(tokens)  # raises IdentityError naming admin.tokens

    @property
    def enabled(self) -> bool:
        """True when tokens are configured."""
        return self._table.enabled

    def authenticate(self, token: str | None) -> Operator | None:
        """The operator a token belongs to, or None."""
        caller = self._table.authenticate(token)
        if caller is None:
            return None
        role, _, name = caller.principal.partition(":")
        return Operator(name, "viewer" if role == "viewer" else "admin")


class Login(msgspec.Struct):
    """One console login: who, its CSRF token, when it ends (monotonic seconds)."""

    operator: Operator
    csrf: str
    expires: float


class ConsoleLogins:
    """Console logins by cookie value (in memory, bounded, expiring)."""

    def __init__(self, seconds: float = LOGIN_SECONDS, max_logins: int = MAX_LOGINS) -> None:
        self.seconds = seconds
        self.max_logins = max_logins
        self._logins: dict[str, Login] = {}

    def open(self, operator: Operator) -> tuple[str, Login]:
        """A new login for ``operator``: (cookie value, login)."""
        now = time.monotonic()
        self._logins = {k: v for k, v in self._logins.items() if v.expires > now}
        while len(self._logins) >= self.max_logins:
            self._logins.pop(next(iter(self._logins)))  # the oldest goes first
        sid = secrets.token_urlsafe(32)
        login = Login(operator, secrets.token_urlsafe(24), now + self.seconds)
        self._logins[sid] = login
        return sid, login

    def find(self, sid: str | None) -> Login | None:
        """The live login behind a cookie value, or None."""
        if not sid:
            return None
        login = self._logins.get(sid)
        if login is None or login.expires <= time.monotonic():
            return None
        return login

    def close(self, sid: str | None) -> None:
        """Log out."""
        if sid:
            self._logins.pop(sid, None)


def csrf_ok(login: Login, presented: str | None) -> bool:
    """True when ``presented`` is this login's CSRF token (constant-time)."""
    return presented is not None and hmac.compare_digest(login.csrf.encode(),
                                                         presented.encode())


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


__all__ = [
    "ANONYMOUS_OPERATOR",
    "ConsoleLogins",
    "Login",
    "Operator",
    "OperatorTable",
    "cookie_value",
    "csrf_ok",
]
