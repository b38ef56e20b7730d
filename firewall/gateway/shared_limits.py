"""Rate limits shared by a fleet: token buckets in Redis, over trio streams.

The ``[limits]`` table of the gateway configuration says where buckets live:
in each process (``backend = "memory"``, the default) or in one Redis that
every mcpwall instance names (``backend = "redis"``), so that "10 a minute
per grant" means 10 for the fleet, not 10 per instance.

Rules this module keeps:

1. One round trip per limited call: ``EVALSHA`` of
   :data:`firewall.policy.limits.ACQUIRE_LUA` (``EVAL`` once after Redis
   forgot its scripts). Calls without limits never reach this module.
2. Every call to Redis, connecting included, runs under ``timeout_seconds``.
   A connection that failed or timed out is dropped (its state is unknown);
   the next call opens a new one, so mcpwall reconnects by itself when Redis
   comes back.
3. When Redis fails, :class:`~firewall.policy.limits.StoreUnavailable` says why;
   the call is refused (``on_error = "deny"``, the default) or passes
   unlimited (``"allow"``), and ``rate_limit_store_failed`` is logged (at most
   once a second, with the count of failures since).
4. The password never appears in a log line, an error or a repr: it comes
   from the URL or from the environment variable ``password_env`` names.
5. ``rediss://`` speaks TLS (trio's SSLStream over the TCP stream): Redis's
   certificate is verified against ``tls_ca_file`` (or the system's CA
   store) and its host name, always; ``tls_cert_file`` / ``tls_key_file``
   give a client certificate to a Redis that asks for one. The handshake is
   part of connecting, so it runs under ``timeout_seconds`` too.

Example (TOML)::

    [limits]
    backend = "redis"
    url = "redis://redis.internal:6379/0"
    password_env = "MCPWALL_REDIS_PASSWORD"

or over TLS, with a private CA and a client certificate::

    [limits]
    backend = "redis"
    url = "rediss://redis.internal:6380/0"
    tls_ca_file = "redis-ca.pem"
    tls_cert_file = "mcpwall-client.pem"
    tls_key_file = "mcpwall-client.key"
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import msgspec
import trio

from firewall.log import get_logger
from firewall.policy.limits import (
    ACQUIRE_LUA,
    ACQUIRE_SHA,
    BucketRequest,
    SharedLimiter,
    StoreUnavailable,
    script_arguments,
    script_wait,
)
from firewall.protocol.resp import (
    NEED_DATA,
    Reply,
    ReplyParser,
    RespError,
    RespProtocolError,
    encode_command,
)
from firewall.settings.limits import LimitSettings, RedisAddress, parse_url


def tls_context(settings: LimitSettings) -> ssl.SSLContext:
    """The client TLS context of a ``rediss://`` table: certificate and host name
    verified (against ``tls_ca_file``, else the system's CA store), and the
    client certificate if given. Raises :class:`StoreConfigError` naming the key."""
    key = "tls_ca_file"
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        if settings.tls_cert_file is not None:
            key = "tls_cert_file"
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StoreConfigError(f"limits.{key}: {getattr(settings, key)}: cannot be used "
                               f"({reason})") from None
    return context


class _Connection:
    """One Redis connection: a trio stream and the RESP parser reading it."""

    __slots__ = ("parser", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = ReplyParser()

    async def call(self, *args: bytes | str | int) -> Reply:
        await self.stream.send_all(encode_command(*args))
        while True:
            reply = self.parser.next_reply()
            if reply is not NEED_DATA:
                return reply  # type: ignore[return-value]
            data = await self.stream.receive_some(65536)
            if not data:
                raise StoreUnavailable("Redis closed the connection")
            self.parser.feed(bytes(data))  # a bytearray from some streams


class RedisLimiter(SharedLimiter):
    """Token buckets in one Redis, shared by every instance that names it.

    ``clock`` (seconds) replaces Redis's own clock: for tests only, where it
    makes the buckets' time explicit.
    """

    def __init__(self, address: RedisAddress, *, key_prefix: str = "mcpwall:",
                 timeout: float = 0.25, on_error: str = "deny", max_connections: int = 16,
                 clock: Callable[[], float] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        # rediss:// without a context of the caller's: the system's CA store.
        self.tls = (tls or ssl.create_default_context()) if address.tls else None
        self.key_prefix = key_prefix
        self.timeout = timeout
        self.on_error = on_error
        self.clock = clock
        self._idle: list[_Connection] = []
        self.max_connections = max_connections
        self._slots = trio.Semaphore(max_connections)
        self._log = get_logger(component="limits", store=address.display)
        self._failures = 0
        self._logged_at = -1e9

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> RedisLimiter:
        """The limiter a ``[limits]`` table describes (checked by :func:`check_limits`)."""
        assert settings.url is not None
        address = parse_url(settings.url)
        if settings.password_env:
            password = os.environ.get(settings.password_env)
            if password is None:
                raise StoreConfigError(f"limits.password_env: the environment variable "
                                       f"{settings.password_env} is not set")
            address = msgspec.structs.replace(address, password=password)
        return cls(address, key_prefix=settings.key_prefix, timeout=settings.timeout_seconds,
                   on_error=settings.on_error, max_connections=settings.max_connections,
                   tls=tls_context(settings) if address.tls else None)

    async def acquire(self, requests: Sequence[BucketRequest], debit: bool = True) -> float | None:
        """Take one token from every bucket or none, in Redis; see ``Limiter.acquire``."""
        keys, argv = script_arguments(requests, self.key_prefix, debit,
                                      None if self.clock is None else self.clock())
        reply = await self.run(b"EVALSHA", ACQUIRE_SHA, len(keys), *keys, *argv)
        if isinstance(reply, RespError) and reply.kind == "NOSCRIPT":
            # Redis restarted or flushed its scripts: EVAL loads it again.
            reply = await self.run(b"EVAL", ACQUIRE_LUA, len(keys), *keys, *argv)
        if isinstance(reply, RespError):
            raise self._failed(f"Redis refused the script: {reply.message}")
        try:
            wait = script_wait(reply)
        except ValueError as exc:
            raise self._failed(str(exc)) from None
        self._recovered()
        return wait

    async def run(self, *args: bytes | str | int) -> Reply:
        """One command on a pooled connection, under the timeout; error replies are values.

        A pooled connection that Redis closed while it sat idle (a restart, an
        idle timeout) is dropped and the command tried once on a new one.
        """
        slots = self._slots
        got_slot = False
        try:
            slots.acquire_nowait()  # the common case: no wait, no extra trip to the scheduler
        except trio.WouldBlock:
            with trio.move_on_after(self.timeout):
                await slots.acquire()
                got_slot = True
            if not got_slot:
                raise self._failed(f"all {self.max_connections} connections busy for "
                                   f"{self.timeout:g} s") from None
        try:
            if self._idle:
                try:
                    return await self._once(self._idle.pop(), args)
                except _Stale:
                    pass
            return await self._once(None, args)
        finally:
            slots.release()

    async def _once(self, conn: _Connection | None, args: tuple[bytes | str | int, ...]
                    ) -> Reply:
        reused = conn is not None
        healthy = False
        try:
            with trio.fail_after(self.timeout):
                if conn is None:
                    conn = await self._connect()
                reply = await conn.call(*args)
            healthy = True
        except trio.TooSlowError:
            raise self._failed(f"no answer within {self.timeout:g} s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                RespProtocolError, StoreUnavailable) as exc:
            if reused and not isinstance(exc, RespProtocolError):
                raise _Stale from None
            raise self._failed(_describe(exc, tls=self.tls is not None)) from None
        finally:
            # A connection whose command did not complete (an error, a timeout,
            # a cancelled caller) may still get that reply: never reuse it.
            if healthy and conn is not None:
                self._idle.append(conn)
            elif conn is not None:
                await trio.aclose_forcefully(conn.stream)
        return reply

    async def _connect(self) -> _Connection:
        address = self.address
        stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
        try:
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_hostname=address.host)
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        conn = _Connection(stream)
        try:
            if address.password is not None:
                auth: tuple[str, ...] = (address.password,)
                if address.username is not None:
                    auth = (address.username, address.password)
                reply = await conn.call(b"AUTH", *auth)
                if isinstance(reply, RespError):
                    raise StoreUnavailable(f"Redis refused the password ({reply.kind})")
            if address.db:
                reply = await conn.call(b"SELECT", address.db)
                if isinstance(reply, RespError):
                    raise StoreUnavailable(f"Redis refused database {address.db}: "
                                           f"{reply.message}")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return conn

    def _failed(self, why: str) -> StoreUnavailable:
        self._failures += 1
        return StoreUnavailable(why)

    def report_failure(self, exc: StoreUnavailable) -> None:
        """Log ``rate_limit_store_failed``, at most once a second (with a count)."""
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._log.warning("rate_limit_store_failed", error=str(exc), on_error=self.on_error,
                              failures=self._failures)
            self._logged_at = now

    def _recovered(self) -> None:
        if self._failures:
            self._log.info("rate_limit_store_recovered", failures=self._failures)
            self._failures = 0
            self._logged_at = -1e9

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers PING."""
        reply = await self.run(b"PING")
        if isinstance(reply, RespError):
            raise StoreUnavailable(f"Redis refused PING: {reply.message}")

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)


class _Stale(Exception):
    """A pooled connection turned out closed: try a new one."""


class StoreConfigError(Exception):
    """The ``[limits]`` table cannot be used (names the key; never the password)."""


def _describe(exc: BaseException, *, tls: bool = False) -> str:
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot reach Redis: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, RespProtocolError):
        return f"Redis spoke gibberish: {exc}"
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):  # trio wraps a failed handshake
        return f"TLS with Redis failed: its certificate is not trusted ({cause.verify_message})"
    if isinstance(cause, ssl.SSLError):
        if "CERTIFICATE_REQUIRED" in (cause.reason or ""):
            return ("TLS with Redis failed: Redis requires a client certificate "
                    "(limits.tls_cert_file)")
        return f"TLS with Redis failed: {cause.reason or cause}"
    if tls and isinstance(cause, ConnectionResetError):
        # TLS 1.3: a Redis that wants a client certificate (tls-auth-clients)
        # accepts the handshake, then resets the connection without one.
        return ("Redis reset the TLS connection (a Redis with tls-auth-clients refuses "
                "clients without a certificate: limits.tls_cert_file)")
    return "the connection to Redis broke"


def build_limiter(settings: LimitSettings) -> RedisLimiter | None:
    """The shared limiter of a ``[limits]`` table; None for in-process buckets."""
    if settings.backend == "memory":
        return None
    return RedisLimiter.from_settings(settings)


@asynccontextmanager
async def open_limits(limiter: RedisLimiter | None) -> AsyncIterator[RedisLimiter | None]:
    """Say whether Redis answers at start (a failure is logged, not fatal: calls
    are refused until it answers); close its connections at the end."""
    if limiter is None:
        yield None
        return
    log = get_logger(component="limits", store=limiter.address.display)
    try:
        await limiter.ping()
        log.info("rate_limit_store_connected", on_error=limiter.on_error)
    except StoreUnavailable as exc:
        log.warning("rate_limit_store_failed", error=str(exc), on_error=limiter.on_error,
                    failures=1)
    try:
        yield limiter
    finally:
        with trio.CancelScope(shield=True):
            await limiter.aclose()


__all__ = ["RedisLimiter", "StoreConfigError", "build_limiter", "open_limits", "tls_context"]
