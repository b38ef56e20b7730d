"""Who is calling: bearer tokens mapped to a :class:`~firewall.policy.decision.Caller`.

Rules this module keeps:

1. The configuration stores SHA-256 digests of tokens, never tokens. A leaked
   config file gives nobody a credential.
2. A presented token is hashed and compared against every configured digest
   with :func:`hmac.compare_digest`, without an early exit, so the time taken
   says nothing about which digest came close.
3. Authentication is pure: no I/O, no logging of token material. The gateway
   decides what to answer (401) and what to log (the principal, never the token).

Example::

    digest = hash_token("s3cret")
    table = TokenTable([TokenEntry(sha256=digest, principal="ci-bot", grant="ci-1")])
    assert table.authenticate("s3cret") == Caller("ci-bot", "ci-1", ())
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Final

import msgspec

from firewall.policy.decision import Caller

_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


class TokenEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One ``[[auth.tokens]]`` entry of the gateway config.

    ``sha256`` is the lowercase hex SHA-256 of the token (``mcpwall hash-token``
    prints it); ``principal`` the agent; ``grant`` names this credential (one
    agent may hold several); it defaults to ``sha256:`` plus the first 12 hex
    digits of the digest. ``groups`` are the groups policy rules may name.
    """

    sha256: str
    principal: str
    grant: str | None = None
    groups: list[str] = msgspec.field(default_factory=list)

    def caller(self) -> Caller:
        """The :class:`Caller` a request presenting this token acts as."""
        grant = self.grant if self.grant is not None else f"sha256:{self.sha256[:12]}"
        return Caller(self.principal, grant, tuple(self.groups))


class IdentityError(ValueError):
    """A token table that cannot be used (bad digest, duplicate digest)."""


def hash_token(token: str) -> str:
    """The lowercase hex SHA-256 of a token: what the config stores.

    ``hash_token("abc")`` -> ``"ba7816bf..."``.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe) for an operator to hand out."""
    return secrets.token_urlsafe(32)


def bearer_token(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer TOKEN`` header value, or None.

    The scheme is case-insensitive (RFC 7235); surrounding spaces are ignored.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenTable:
    """The configured tokens. ``authenticate(token) -> Caller | None``.

    An empty table means authentication is off (:attr:`enabled` is False); the
    gateway then treats every caller as anonymous.
    """

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        rows: list[tuple[bytes, Caller]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            digest = entry.sha256
            if not _HEX64.match(digest):
                raise IdentityError(
                    f"auth.tokens[{i}].sha256: expected 64 lowercase hex digits "
                    "(the SHA-256 of the token; `mcpwall hash-token` prints it)"
                )
            if digest in seen:
                raise IdentityError(f"auth.tokens[{i}].sha256: the same digest appears twice")
            seen.add(digest)
            rows.append((bytes.fromhex(digest), entry.caller()))
        self._rows: tuple[tuple[bytes, Caller], ...] = tuple(rows)

    @property
    def enabled(self) -> bool:
        """True when tokens are configured, so unauthenticated requests are refused."""
        return bool(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def authenticate(self, token: str | None) -> Caller | None:
        """The caller a token belongs to, or None for a missing or unknown token."""
        if token is None:
            return None
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Caller | None = None
        for digest, caller in self._rows:
            # No early exit: every digest is compared, whatever matched.
            if hmac.compare_digest(presented, digest):
                found = caller
        return found
