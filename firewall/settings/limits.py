"""The ``[limits]`` table: where token buckets live (this process, or a Redis).

Pure: the table, the parsed Redis address and :func:`check_limits`. The
limiter that talks to Redis is :mod:`firewall.gateway.shared_limits`.

Example (TOML)::

    [limits]
    backend = "redis"
    url = "redis://redis.internal:6379/0"
    password_env = "MCPWALL_REDIS_PASSWORD"
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import unquote, urlsplit

import msgspec

DEFAULT_PORT: Final = 6379
# The [limits] keys naming TLS files (rediss:// only; resolved against the config file).
TLS_FILES: Final = ("tls_ca_file", "tls_cert_file", "tls_key_file")


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[limits]`` table: where token buckets live."""

    backend: Literal["memory", "redis"] = "memory"
    # redis://[user[:password]@]host[:port][/db]
    url: str | None = None
    # An environment variable holding the password (wins over one in the URL).
    password_env: str | None = None
    key_prefix: str = "mcpwall:"
    # Per call to Redis, connecting included; a late answer counts as a failure.
    timeout_seconds: float = 0.25
    on_error: Literal["deny", "allow"] = "deny"
    max_connections: int = 16
    # TLS, with rediss:// URLs only: the CA bundle that signs Redis's
    # certificate (default: the system's), and a client certificate (PEM,
    # with its key in it or in tls_key_file) for a Redis that asks for one.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


class RedisAddress(msgspec.Struct, frozen=True):
    """Where Redis is, parsed from ``url``; ``password`` is kept out of repr."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False  # rediss://

    def __repr__(self) -> str:
        return f"RedisAddress({self.display!r})"

    @property
    def display(self) -> str:
        """``redis://host:port/db`` (``rediss://`` with TLS): safe to log."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def check_limits(settings: LimitSettings, source: str) -> str | None:
    """What is wrong with a ``[limits]`` table (naming the key), or None."""
    if settings.backend == "memory":
        return None
    if settings.url is None:
        return f"{source}: limits.url: required with backend = \"redis\" (redis://host:port/db)"
    try:
        address = parse_url(settings.url)
    except ValueError as exc:
        return f"{source}: limits.url: {exc}"
    for key in TLS_FILES:
        if getattr(settings, key) is not None and not address.tls:
            return f"{source}: limits.{key}: only with a rediss:// URL (TLS)"
    if settings.tls_key_file is not None and settings.tls_cert_file is None:
        return f"{source}: limits.tls_key_file: needs tls_cert_file (the client certificate)"
    if not settings.timeout_seconds > 0:
        return f"{source}: limits.timeout_seconds: expected a positive number"
    if settings.max_connections < 1:
        return f"{source}: limits.max_connections: expected 1 or more"
    return None


def parse_url(url: str) -> RedisAddress:
    """``redis[s]://[user[:password]@]host[:port][/db]`` -> :class:`RedisAddress`.

    Errors never repeat the URL (it may hold the password).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected a redis:// or rediss:// URL, got scheme {parts.scheme!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("the port is not a number in 1..65535") from None
    if not parts.hostname:
        raise ValueError("the URL names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database is a number (redis://host:port/0), not {path!r}")
    return RedisAddress(parts.hostname, port, int(path or 0),
                        unquote(parts.username) if parts.username else None,
                        unquote(parts.password) if parts.password else None,
                        tls=parts.scheme == "rediss")


__all__ = ["DEFAULT_PORT", "TLS_FILES", "LimitSettings", "RedisAddress", "check_limits",
           "parse_url"]
