"""The ``[admin]`` table: the operator listener (API, metrics, console) and its tokens.

:func:`check_admin` is the table's own check, pure: it refuses a listener
that is unsafe (no tokens off loopback) or that shares the agents' address.
Who the tokens name at run time is :mod:`firewall.gateway.operator.auth`.

Example (TOML)::

    [admin]
    host = "127.0.0.1"
    port = 8766
    [[admin.tokens]]
    sha256 = "..."          # mcpwall hash-token
    operator = "alice"
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from firewall.identity import IdentityError, TokenEntry, TokenTable
from firewall.protocol.hosts import allowed_host

Role = Literal["admin", "viewer"]
DEFAULT_ADMIN_PORT: Final = 8766
_LOOPBACK: Final = ("127.0.0.1", "::1", "localhost")
_ANY: Final = ("0.0.0.0", "::", "")


class AdminToken(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One ``[[admin.tokens]]`` entry: the SHA-256 of an operator token, and who holds it."""

    sha256: str
    operator: str
    role: Role = "admin"


class AdminSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[admin]`` table: the operator listener (absent: no operator listener)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_ADMIN_PORT
    tokens: list[AdminToken] = msgspec.field(default_factory=list)
    # Only on a loopback host: every request acts as operator "anonymous" (admin).
    insecure_no_auth: bool = False
    # More names the listener answers to (a reverse proxy's, a DNS name): "name"
    # on any port, "name:port" on that port. Any other Host header gets 421.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    # Failed logins allowed per source address, refilled over the window; then 429.
    login_failures: int = 10
    login_window_seconds: float = 60.0
    # The operator listener's own connection budget, apart from the agents' listener.
    max_connections: int = 64


def token_table(tokens: list[AdminToken]) -> TokenTable:
    """The operator tokens as a :class:`~firewall.identity.TokenTable` whose
    principal slot carries ``role:name``; raises IdentityError naming ``admin.tokens``."""
    try:
        # The agents' token table does the constant-time comparing.
        return TokenTable([
            TokenEntry(sha256=t.sha256, principal=f"{t.role}:{t.operator}") for t in tokens])
    except IdentityError as exc:
        raise IdentityError(str(exc).replace("auth.tokens", "admin.tokens")) from None


def check_admin(admin: AdminSettings, listen_host: str, listen_port: int,
                source: str) -> str | None:
    """What is wrong with an ``[admin]`` table (naming the key), or None."""
    if not 0 < admin.port < 65536:
        return f"{source}: admin.port: expected 1..65535, got {admin.port}"
    if admin.max_connections <= 0:
        return f"{source}: admin.max_connections: expected a positive number"
    hosts = {admin.host.lower(), listen_host.lower()}
    if admin.port == listen_port and (len(hosts) == 1 or hosts & set(_ANY)):
        return (f"{source}: admin: the operator listener {admin.host}:{admin.port} "
                f"must not share the agents' listener {listen_host}:{listen_port}")
    if admin.insecure_no_auth:
        if admin.host.lower() not in _LOOPBACK:
            return (f"{source}: admin.insecure_no_auth: allowed on a loopback host "
                    f"only (127.0.0.1, ::1, localhost), not {admin.host!r}")
    elif not admin.tokens:
        return (f"{source}: admin.tokens: the operator listener needs at least one "
                "token ([[admin.tokens]] sha256 = ..., operator = ...; "
                "`mcpwall hash-token` prints a digest)")
    try:
        token_table(admin.tokens)
    except IdentityError as exc:
        return f"{source}: {exc}"
    for entry in admin.allowed_hosts:
        try:
            allowed_host(entry)
        except ValueError as exc:
            return f"{source}: admin.allowed_hosts: {exc}"
    if admin.login_failures < 1 or not admin.login_window_seconds > 0:
        return (f"{source}: admin.login_failures, admin.login_window_seconds: "
                "expected a positive number of failures over a positive window")
    return None


__all__ = ["DEFAULT_ADMIN_PORT", "AdminSettings", "AdminToken", "Role", "check_admin",
           "token_table"]
