"""Serve an ASGI app with hypercorn's trio worker, HTTP/1.1 parsed by h11 or httptools.

``serve(app, hyper, parser="httptools")`` is hypercorn's ``hypercorn.trio.serve``
with one difference: each plain-TCP connection speaks HTTP/1.1 through
:class:`firewall.gateway.http11.HttptoolsProtocol` instead of hypercorn's
h11-based protocol. Everything else is hypercorn's own: its config, lifespan,
ASGI HTTP stream, keep-alive and idle timeouts, graceful shutdown on the
trigger, HTTP/2 on TLS (ALPN) and with prior knowledge.

hypercorn has no hook to choose the HTTP/1.1 protocol, so the worker loop
(``hypercorn.trio.run.worker_serve``) and the connection's setup
(``TCPServer.run``) are repeated here, shortened to what a plain-TCP listener
needs, from hypercorn 0.18. Nothing of hypercorn is patched.
Another hypercorn series falls back to h11 with a warning
(``http_parser_fallback``), so an upgrade never runs untested code.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from typing import Any, Final, Literal, cast

import trio
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2ProtocolAssumedError
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import (
    ShutdownError,
    parse_socket_addr,
    raise_shutdown,
    repr_socket_addr,
    wrap_app,
)

from firewall.gateway.http11 import DirectRoute, HttptoolsProtocol
from firewall.gateway.sockets import READS_BETWEEN_CHECKPOINTS, receive_now, send_now
from firewall.log import get_logger

Parser = Literal["httptools", "h11"]
# The hypercorn series whose worker loop and connection setup this module repeats.
HYPERCORN_SERIES: Final = "0.18."
MAX_RECV: Final = 2**16  # as hypercorn's TCPServer reads


def parser_in_use(parser: Parser) -> Parser:
    """The parser that will serve: ``parser``, or h11 on an untested hypercorn."""
    if parser == "httptools" and not version("hypercorn").startswith(HYPERCORN_SERIES):
        get_logger(component="http_server").warning(
            "http_parser_fallback", wanted=parser, used="h11",
            hypercorn=version("hypercorn"), tested=HYPERCORN_SERIES + "x")
        return "h11"
    return parser


async def serve(
    app: Any,
    hyper: Any,
    *,
    parser: Parser = "httptools",
    direct: DirectRoute | None = None,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (ASGI) with hypercorn config ``hyper`` until ``shutdown_trigger`` returns.

    ``direct``, with httptools, names the app's handler for requests of a
    method that it takes without ASGI (see :mod:`firewall.gateway.http11`,
    rule 7); every other request, and lifespan, is ASGI.
    ``task_status.started`` gets the bound URLs, as hypercorn's ``serve`` does.
    """
    if parser_in_use(parser) == "h11" or hyper.ssl_enabled:
        await hypercorn_serve(app, hyper, shutdown_trigger=shutdown_trigger,
                              task_status=task_status)
        return
    await _worker_serve(app, hyper, direct, shutdown_trigger, task_status)


async def _worker_serve(app: Any, config: Any, direct: DirectRoute | None,
                        shutdown_trigger: Callable[..., Awaitable[None]] | None,
                        task_status: trio.TaskStatus[list[str]]) -> None:
    """``hypercorn.trio.run.worker_serve`` for plain-TCP listeners, with our connections."""

    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(partial(
                        trio.serve_listeners,
                        partial(HttptoolsConnection, wrapped, config, context,
                                ConnectionState(lifespan_state.copy()), direct=direct),
                        listeners, handler_nursery=server_nursery))
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = (trio.current_time()
                                                        + config.graceful_timeout)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class HttptoolsConnection(TCPServer):
    """One plain-TCP connection: hypercorn's ``TCPServer.run`` with :class:`_Protocols`.

    Four costs of ``TCPServer`` on every request are avoided: its keep-alive
    timer is a task restarted (``nursery.start``) at the end of each request,
    here one task per connection whose deadline moves; a send takes its lock
    with a scheduler checkpoint, here only when another send holds it; a send
    the socket takes whole yields to the scheduler (and runs in a shielded
    cancel scope), here it does neither (:func:`~firewall.gateway.sockets.send_now`);
    and each read runs in a ``fail_after`` scope and yields when bytes were
    waiting, here neither unless ``read_timeout`` is set
    (:func:`~firewall.gateway.sockets.receive_now`).
    """

    _idle_scope: trio.CancelScope
    _busy = False  # an exchange is in progress: the idle deadline does not apply

    def __init__(self, app: Any, config: Any, context: Any, state: Any, stream: Any,
                 direct: DirectRoute | None = None) -> None:
        super().__init__(app, config, context, state, stream)
        self._direct = direct

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
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = cast(Any, _Protocols(
                    self.app, self.config, self.context, task_group,
                    ConnectionState(self.state), False, client, server, self.protocol_send,
                    direct=self._direct, connection=self))
                self._idle_scope = trio.CancelScope(
                    deadline=trio.current_time() + self.config.keep_alive_timeout)
                watcher = trio.CancelScope()
                task_group.spawn(self._watch_idle, watcher)
                try:
                    await self._read_data()
                finally:
                    watcher.cancel()
        except OSError:
            pass
        finally:
            await self._close()

    async def _read_data(self) -> None:
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
            reads += 1
            if reads % READS_BETWEEN_CHECKPOINTS == 0:
                await trio.lowlevel.checkpoint()
        await self.protocol.handle(Closed())

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            # Idle: close after keep_alive_timeout; busy: never. Only the end of
            # an exchange moves the deadline; one that passes while busy wakes
            # the watcher, which sees the exchange and watches again.
            self._busy = not event.idle
            if event.idle:
                self._idle_scope.deadline = trio.current_time() + self.config.keep_alive_timeout
        elif isinstance(event, RawData):
            try:
                await self.write_now(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
        else:
            await super().protocol_send(event)

    async def _watch_idle(self, watcher: trio.CancelScope) -> None:
        """Close the connection when idle past its deadline, or idle at shutdown."""
        with watcher:
            while True:
                with self._idle_scope:
                    await self.context.terminated.wait()
                if not self._busy:
                    break  # idle past the deadline, or idle at shutdown
                if not self._idle_scope.cancelled_caught:
                    return  # shutdown while busy: the exchange closes when it ends
                # The deadline passed during an exchange (or one began as it
                # fired): watch again; the exchange's end sets the deadline.
                self._idle_scope = trio.CancelScope(deadline=math.inf)
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()


class _Protocols:
    """hypercorn's ``ProtocolWrapper`` for plain TCP: HTTP/1.1 on httptools, HTTP/2
    (hypercorn's) when the client opens with the HTTP/2 preface."""

    def __init__(self, app: Any, config: Any, context: Any, task_group: Any, state: Any,
                 ssl: bool, client: Any, server: Any,
                 send: Callable[[Any], Awaitable[None]], *, direct: DirectRoute | None = None,
                 connection: HttptoolsConnection | None = None) -> None:
        self._args = (app, config, context, task_group, state, ssl, client, server, send)
        self.protocol: Any = HttptoolsProtocol(*self._args, direct=direct, connection=connection)

    async def initiate(self) -> None:
        await self.protocol.initiate()

    async def handle(self, event: Any) -> None:
        try:
            await self.protocol.handle(event)
        except H2ProtocolAssumedError as error:
            self.protocol = H2Protocol(*self._args)
            await self.protocol.initiate()
            if error.data:
                await self.protocol.handle(RawData(data=error.data))


__all__ = ["HYPERCORN_SERIES", "Parser", "parser_in_use", "serve"]
