"""Serve an ASGI app with hypercorn's trio worker, HTTP/1.1 parsed by h11 or httptools.

``serve(app, hyper, parser="httptools")`` is hypercorn's ``hypercorn.trio.serve``
with two differences. Each plain-TCP connection speaks HTTP/1.1 through
:class:`firewall.gateway.http.http11.HttptoolsProtocol` (``parser="httptools"``)
or hypercorn's own h11 protocol (``"h11"``). And each listener and connection
keeps the rules of :mod:`firewall.gateway.http.connection_limits`, with either
parser: a connection cap with a reserve for ``/healthz``, and deadlines on
request heads and bodies (408, then close; ``request_timeout`` in the log).
Everything else is hypercorn's own: its config, lifespan, ASGI HTTP stream,
graceful shutdown on the trigger, HTTP/2 on TLS (ALPN) and with prior knowledge.

hypercorn has no hook to choose the HTTP/1.1 protocol, so its worker loop
runs from :mod:`firewall.gateway.http.hypercorn_internals` (which owns every use of
hypercorn beyond ``Config`` and ``serve``, for one exact hypercorn version) and
each connection here is our own: the part of hypercorn's ``TCPServer`` a
plain-TCP connection needs, written out. Nothing of hypercorn is patched or
subclassed.
"""

from __future__ import annotations

import contextlib
import errno
import math
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from typing import Any, Final, Literal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from firewall.gateway.http.connection_limits import (
    FULL_503,
    RESERVE_HEAD_BYTES,
    TIMEOUT_408,
    Admission,
    Gate,
    Limits,
    Phase,
    canned,
    deadline,
    reserve_request,
)
from firewall.gateway.http.http11 import MAX_RECV, DirectRoute, HttptoolsProtocol
from firewall.gateway.http.hypercorn_internals import (
    Closed,
    Event,
    H2Protocol,
    H2ProtocolAssumedError,
    ProtocolWrapper,
    RawData,
    TaskGroup,
    Updated,
    Worker,
    current_protocol,
    h11_pending,
    h11_response_started,
    socket_address,
    worker_serve,
)
from firewall.gateway.http.sockets import READS_BETWEEN_CHECKPOINTS, receive_now, send_now
from firewall.log import get_logger

Parser = Literal["httptools", "h11"]
# /healthz for a reserve connection: (status, JSON body).
HealthAnswer = Callable[[], tuple[int, bytes]]
# accept() failing for want of descriptors or memory: wait, then accept again
# (as trio.serve_listeners does); the connections being served go on.
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_PAUSE: Final = 0.1
# How long a reserve connection's client has to read its answer before the close.
_RESERVE_LINGER: Final = 1.0
# A log line about refused connections at most this often.
_LOG_EVERY: Final = 1.0


async def serve(
    app: Any,
    hyper: Config,
    *,
    parser: Parser = "httptools",
    gate: Gate | None = None,
    health: HealthAnswer | None = None,
    direct: DirectRoute | None = None,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (ASGI) with hypercorn config ``hyper`` until ``shutdown_trigger`` returns.

    ``gate`` counts the connections and holds the limits (default: the
    defaults of :class:`~firewall.gateway.http.connection_limits.Limits`, with
    hypercorn's keep-alive timeout); ``health`` answers ``/healthz`` on a
    reserve connection (without it, reserve connections get 503).
    ``direct``, with httptools, names the app's handler for requests of a
    method that it takes without ASGI (see :mod:`firewall.gateway.http.http11`,
    rule 7); every other request, and lifespan, is ASGI.
    ``task_status.started`` gets the bound URLs, as hypercorn's ``serve`` does.
    """
    if hyper.ssl_enabled:
        await hypercorn_serve(app, hyper, shutdown_trigger=shutdown_trigger,
                              task_status=task_status)
        return
    gate = gate or Gate(Limits(keep_alive=hyper.keep_alive_timeout))
    await worker_serve(app, hyper, partial(_accept, gate=gate, health=health, parser=parser,
                                           direct=direct),
                       shutdown_trigger, task_status)


async def _accept(listener: trio.SocketListener, worker: Worker, nursery: trio.Nursery, *,
                  gate: Gate, health: HealthAnswer | None, parser: Parser,
                  direct: DirectRoute | None) -> None:
    """Accept connections for ever; serve, reserve or refuse each (the gate's rule 2)."""
    log = get_logger(component="http_server")
    connection = partial(HttptoolsConnection, worker, parser=parser, limits=gate.limits,
                         direct=direct)
    logged = -math.inf
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            if trio.current_time() - logged >= _LOG_EVERY:
                logged = trio.current_time()
                log.warning("accept_failed", error=exc.strerror, connections=gate.report())
            await trio.sleep(_ACCEPT_PAUSE)
            continue
        admission = gate.admit()
        if admission is Admission.SERVE:
            nursery.start_soon(_counted, gate, admission, connection(stream).run)
            continue
        if trio.current_time() - logged >= _LOG_EVERY:
            logged = trio.current_time()
            log.warning("connections_full", connections=gate.report())
        if admission is Admission.RESERVE:
            nursery.start_soon(_counted, gate, admission,
                               partial(_reserve, stream, gate.limits, health))
        else:
            _refuse(stream)


async def _counted(gate: Gate, admission: Admission, run: Callable[[], Awaitable[None]]) -> None:
    try:
        await run()
    finally:
        gate.release(admission)


def _refuse(stream: trio.SocketStream) -> None:
    """Close a connection just accepted, with a 503 if the socket takes it at once."""
    with contextlib.suppress(trio.BrokenResourceError):
        send_now(stream, FULL_503)
    stream.socket.close()


async def _reserve(stream: trio.SocketStream, limits: Limits, health: HealthAnswer | None) -> None:
    """One request on a connection beyond the cap: ``/healthz`` answered, else 503."""
    try:
        head, method = b"", None
        with trio.move_on_after(limits.head_timeout):
            while method is None:
                data = await stream.receive_some(RESERVE_HEAD_BYTES)
                if not data:
                    return
                head += data
                method = reserve_request(head)
        if method is None:
            answer = TIMEOUT_408
        elif method and health is not None:
            status, body = health()
            answer = canned(status, HTTPStatus(status).phrase, body, b"application/json")
            if method == b"HEAD":
                answer = answer[:len(answer) - len(body)]
        else:
            answer = FULL_503
        with trio.move_on_after(limits.head_timeout):
            await stream.send_all(answer)
            await stream.send_eof()
        # Read what the client still sends, briefly, so that closing does not
        # reset the connection before it read the answer.
        with trio.move_on_after(_RESERVE_LINGER):
            while await stream.receive_some(RESERVE_HEAD_BYTES):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


class HttptoolsConnection:
    """One plain-TCP connection: hypercorn's ``TCPServer`` with our protocols and deadlines.

    The protocol is :class:`_Protocols` (httptools) or hypercorn's
    ``ProtocolWrapper`` (h11). One watcher task per connection closes it at the
    deadline of its :class:`~firewall.gateway.http.connection_limits.Phase`: the
    phase is read from the protocol after each read and each change between
    idle and busy, and the deadline moves with it (a 408 first when the client
    owed a head or a body and no response has started).

    Four costs of ``TCPServer`` on every request are avoided: its keep-alive
    timer is a task restarted (``nursery.start``) at the end of each request,
    here one task per connection whose deadline moves; a send takes its lock
    with a scheduler checkpoint, here only when another send holds it; a send
    the socket takes whole yields to the scheduler (and runs in a shielded
    cancel scope), here it does neither (:func:`~firewall.gateway.http.sockets.send_now`);
    and each read runs in a ``fail_after`` scope and yields when bytes were
    waiting, here neither unless ``read_timeout`` is set
    (:func:`~firewall.gateway.http.sockets.receive_now`).
    """

    _timer: trio.CancelScope
    _busy = False  # an exchange is in progress: the server owes the answer
    _fresh = True  # no request head completed yet: the client owes one
    protocol: _Protocols | ProtocolWrapper

    def __init__(self, worker: Worker, stream: trio.SocketStream, *,
                 parser: Parser = "httptools", limits: Limits | None = None,
                 direct: DirectRoute | None = None) -> None:
        self.app, self.config, self.context = worker.app, worker.config, worker.context
        self.state = worker.state
        self.stream = stream
        self.send_lock = trio.Lock()
        self._parser = parser
        self._limits = limits or Limits(keep_alive=worker.config.keep_alive_timeout)
        self._direct = direct
        self._phase = Phase.HEAD
        self._since = trio.current_time()  # when the phase began
        self._received = 0  # body bytes read in the BODY phase

    async def write_now(self, data: bytes) -> None:
        """Write to the client, without a scheduler pass when the socket takes it at once.

        Raises ``trio.BrokenResourceError`` (or ``ClosedResourceError``) when
        the client is gone; the caller decides what that ends.
        """
        if self.send_lock.locked():
            async with self.send_lock:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(data)
            return
        rest = send_now(self.stream, data)  # no wait, no yield: nothing can come between
        if not rest:
            return
        self.send_lock.acquire_nowait()
        try:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(rest)
        finally:
            self.send_lock.release()

    async def run(self) -> None:
        socket = self.stream.socket
        try:
            client = socket_address(socket.family, socket.getpeername())
            server = socket_address(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                args = (self.app, self.config, self.context, task_group,
                        self.state, False, client, server, self.protocol_send)
                if self._parser == "httptools":
                    self.protocol = _Protocols(*args, direct=self._direct, connection=self)
                else:
                    self.protocol = ProtocolWrapper(*args, alpn_protocol="http/1.1")
                    await self.protocol.initiate()
                self._timer = trio.CancelScope(deadline=self._deadline())
                watcher = trio.CancelScope()
                task_group.spawn(self._watch, watcher, client)
                try:
                    await self._read_loop()
                finally:
                    watcher.cancel()
        except OSError:
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        """End the connection: EOF if the client still reads, then close."""
        with contextlib.suppress(trio.BrokenResourceError, trio.BusyResourceError,
                                 trio.ClosedResourceError):
            await self.stream.send_eof()
        await self.stream.aclose()

    async def _initiate_server_close(self) -> None:
        """The server ends the connection (a deadline, or idle at shutdown)."""
        await self.protocol.handle(Closed())
        await self.stream.aclose()

    async def _read_loop(self) -> None:
        """hypercorn's read loop, reading without a scheduler pass when bytes are waiting.

        No cancel scope either unless ``read_timeout`` is set (hypercorn's
        default is none). A client that keeps the socket full still lets other
        tasks run: one read in ``READS_BETWEEN_CHECKPOINTS`` checkpoints.
        """
        timeout = self.config.read_timeout
        reads = 0
        while True:
            try:
                if timeout is None:
                    data = await receive_now(self.stream, MAX_RECV)
                else:
                    with trio.fail_after(timeout):
                        data = await receive_now(self.stream, MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if not data:
                break
            self._observe(len(data))
            reads += 1
            if reads % READS_BETWEEN_CHECKPOINTS == 0:
                await trio.lowlevel.checkpoint()
        await self.protocol.handle(Closed())

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._busy = not event.idle
            if not event.idle:
                self._fresh = False
            self._observe(0)
        elif isinstance(event, RawData):
            try:
                await self.write_now(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            await self._close()
            await self.protocol.handle(Closed())

    # -- deadlines (connection_limits, rule 1) -----------------------------------
    def _owes(self) -> Phase:
        """The phase the connection is in now, as the protocol tells it."""
        protocol = current_protocol(self.protocol)
        if isinstance(protocol, HttptoolsProtocol):
            body, head = protocol.body_pending(), protocol.head_pending()
        else:  # HTTP/2 keeps its own streams: the keep-alive deadline only
            body, head = h11_pending(protocol) or (False, False)
        if self._busy:
            return Phase.BODY if body else Phase.BUSY
        return Phase.HEAD if head or body or self._fresh else Phase.IDLE

    def _observe(self, received: int) -> None:
        """After a read (``received`` bytes) or a change of busy: move the deadline."""
        phase = self._owes()
        if phase is not self._phase:
            self._phase, self._since, self._received = phase, trio.current_time(), 0
        elif phase is not Phase.BODY:
            return
        else:
            self._received += received
        self._timer.deadline = self._deadline()

    def _deadline(self) -> float:
        return deadline(self._limits, self._phase, self._since, self._received)

    async def _watch(self, watcher: trio.CancelScope, client: Any) -> None:
        """Close the connection at its phase's deadline, or when idle at shutdown."""
        with watcher:
            while True:
                with self._timer:
                    await self.context.terminated.wait()
                if not self._timer.cancelled_caught:  # shutdown
                    if self._busy:
                        return  # the exchange closes the connection when it ends
                    break
                if trio.current_time() >= self._deadline():
                    break
                # The phase changed as the deadline passed: watch the new one.
                self._timer = trio.CancelScope(deadline=self._deadline())
            with trio.CancelScope(shield=True):
                if self._phase in (Phase.HEAD, Phase.BODY) and self._timer.cancelled_caught:
                    await self._expire(client)
                await self._initiate_server_close()

    async def _expire(self, client: Any) -> None:
        """The client did not send its head or body in time: 408 if still possible."""
        get_logger(component="http_server").warning(
            "request_timeout", owed=self._phase.name.lower(), client=client,
            seconds=round(trio.current_time() - self._since, 3), body_bytes=self._received)
        protocol = current_protocol(self.protocol)
        if self._phase is Phase.BODY:
            if isinstance(protocol, HttptoolsProtocol) and protocol.response_started():
                return
            if h11_response_started(protocol):
                return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.write_now(TIMEOUT_408)


class _Protocols:
    """hypercorn's ``ProtocolWrapper`` for plain TCP: HTTP/1.1 on httptools, HTTP/2
    (hypercorn's) when the client opens with the HTTP/2 preface."""

    def __init__(self, app: Any, config: Any, context: Any, task_group: Any, state: Any,
                 ssl: bool, client: Any, server: Any,
                 send: Callable[[Any], Awaitable[None]], *, direct: DirectRoute | None = None,
                 connection: HttptoolsConnection | None = None) -> None:
        self._args = (app, config, context, task_group, state, ssl, client, server, send)
        self.protocol: HttptoolsProtocol | H2Protocol = HttptoolsProtocol(
            *self._args, direct=direct, connection=connection)

    async def handle(self, event: Any) -> None:
        try:
            await self.protocol.handle(event)
        except H2ProtocolAssumedError as error:
            self.protocol = H2Protocol(*self._args)
            await self.protocol.initiate()
            if error.data:
                await self.protocol.handle(RawData(data=error.data))


__all__ = ["Parser", "serve"]
