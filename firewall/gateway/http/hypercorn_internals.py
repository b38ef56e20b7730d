"""Every use of hypercorn beyond its public API, for one exact hypercorn version.

hypercorn's public API is its ``Config`` and ``serve()``; mcpwall's HTTP server
(:mod:`firewall.gateway.http.server`, :mod:`firewall.gateway.http.http11`) needs
more: hypercorn has no hook to choose the HTTP/1.1 protocol of a connection.
So it runs hypercorn's worker loop itself (:func:`worker_serve`, shortened from
``hypercorn.trio.run.worker_serve`` to plain-TCP listeners) and speaks the
interfaces hypercorn's protocols speak to their connection: the events, the
ASGI ``HTTPStream``, the HTTP/2 protocol, the worker context and task group.

Rules this module keeps:

1. It is the only module that imports from hypercorn beyond ``hypercorn.config``
   and ``hypercorn.trio.serve``; the others take these names from here.
2. It runs against exactly :data:`HYPERCORN_VERSION` (the version pinned in
   ``pyproject.toml``). Importing it under another one raises
   :class:`HypercornVersionError` (an ImportError) naming both, which
   ``mcpwall serve`` reports as a configuration error at start: an upgrade is
   a deliberate change, never a surprise at run time.
3. Every private name, signature and attribute it and its users rely on is
   listed in :data:`RELIED_ON`, and ``tests/test_hypercorn_contract.py`` checks
   each against the installed hypercorn (and exercises the instance attributes),
   so a new hypercorn release fails the suite, naming what moved.
4. No private member of a hypercorn object is read or written outside this
   module: :func:`h11_pending`, :func:`h11_response_started` and
   :func:`current_protocol` are the only ways in.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final

import h11
import trio

HYPERCORN_VERSION: Final = "0.18.0"


class HypercornVersionError(ImportError):
    """The installed hypercorn is not :data:`HYPERCORN_VERSION` (rule 2)."""


_installed = version("hypercorn")
if _installed != HYPERCORN_VERSION:
    raise HypercornVersionError(
        f"mcpwall's HTTP server is built on the internals of hypercorn {HYPERCORN_VERSION}, "
        f"but hypercorn {_installed} is installed: install hypercorn=={HYPERCORN_VERSION} "
        f"(the version mcpwall pins)", name="hypercorn")

# ruff: noqa: E402 (the version is checked before any internal is imported)
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import (
    Body,
    EndBody,
    InformationalResponse,
    Request,
    Response,
    StreamClosed,
)
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2ProtocolAssumedError, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import wrap_app

# What mcpwall relies on, by dotted name: the parameters of each callable, in
# order (``*args`` for a variadic one), the fields of each event dataclass, or
# (``attrs:``) the attributes an instance has. The contract test checks every
# line against the installed hypercorn.
RELIED_ON: Final[dict[str, tuple[str, ...]]] = {
    # The worker loop (worker_serve below).
    "hypercorn.utils.wrap_app": ("app", "wsgi_max_body_size", "mode"),
    "hypercorn.trio.lifespan.Lifespan.__init__": ("self", "app", "config", "state"),
    "hypercorn.trio.lifespan.Lifespan.handle_lifespan": ("self", "task_status"),
    "hypercorn.trio.lifespan.Lifespan.wait_for_startup": ("self",),
    "hypercorn.trio.lifespan.Lifespan.wait_for_shutdown": ("self",),
    "hypercorn.trio.worker_context.WorkerContext.__init__": ("self", "max_requests"),
    "hypercorn.trio.worker_context.WorkerContext.mark_request": ("self",),
    "attrs:hypercorn.trio.worker_context.WorkerContext": ("terminate", "terminated"),
    "hypercorn.config.Config.set_statsd_logger_class": ("self", "statsd_logger"),
    "hypercorn.config.Config.create_sockets": ("self",),
    "hypercorn.config.Config.response_headers": ("self", "protocol"),
    "attrs:hypercorn.config.Config": (
        "wsgi_max_body_size", "backlog", "graceful_timeout", "keep_alive_timeout",
        "keep_alive_max_requests", "read_timeout", "h11_max_incomplete_size",
        "ssl_enabled"),
    # A connection's protocols and the connection they call back.
    "hypercorn.trio.task_group.TaskGroup.__init__": ("self",),
    "hypercorn.trio.task_group.TaskGroup.spawn": ("self", "func", "*args"),
    "hypercorn.protocol.ProtocolWrapper.__init__": (
        "self", "app", "config", "context", "task_group", "state", "ssl", "client", "server",
        "send", "alpn_protocol"),
    "hypercorn.protocol.ProtocolWrapper.initiate": ("self",),
    "hypercorn.protocol.ProtocolWrapper.handle": ("self", "event"),
    "attrs:hypercorn.protocol.ProtocolWrapper": ("protocol",),
    "hypercorn.protocol.h11.H11Protocol.__init__": (
        "self", "app", "config", "context", "task_group", "connection_state", "ssl", "client",
        "server", "send"),
    "attrs:hypercorn.protocol.h11.H11Protocol": ("connection",),
    "hypercorn.protocol.h11.H2ProtocolAssumedError.__init__": ("self", "data"),
    "attrs:hypercorn.protocol.h11.H2ProtocolAssumedError": ("data",),
    "hypercorn.protocol.h2.H2Protocol.__init__": (
        "self", "app", "config", "context", "task_group", "connection_state", "ssl", "client",
        "server", "send"),
    "hypercorn.protocol.h2.H2Protocol.initiate": ("self", "headers", "settings"),
    "hypercorn.protocol.h2.H2Protocol.handle": ("self", "event"),
    "hypercorn.protocol.http_stream.HTTPStream.__init__": (
        "self", "app", "config", "context", "task_group", "ssl", "client", "server", "send",
        "stream_id"),
    "hypercorn.protocol.http_stream.HTTPStream.handle": ("self", "event"),
    # app_put exists once a Request was handled (a task of the ASGI app).
    "attrs:hypercorn.protocol.http_stream.HTTPStream": ("closed", "app_put"),
    # The events, by their fields.
    "hypercorn.events.RawData": ("data", "address"),
    "hypercorn.events.Closed": (),
    "hypercorn.events.Updated": ("idle",),
    "hypercorn.protocol.events.Request": (
        "stream_id", "headers", "http_version", "method", "raw_path", "state"),
    "hypercorn.protocol.events.Body": ("stream_id", "data"),
    "hypercorn.protocol.events.EndBody": ("stream_id",),
    "hypercorn.protocol.events.Response": ("stream_id", "headers", "status_code"),
    "hypercorn.protocol.events.InformationalResponse": ("stream_id", "headers", "status_code"),
    "hypercorn.protocol.events.StreamClosed": ("stream_id",),
}


@dataclass(frozen=True)
class Worker:
    """What every connection of a worker shares: the wrapped app, the config,
    the worker context (shutdown events, request count) and the lifespan state."""

    app: AppWrapper
    config: Config
    context: WorkerContext
    state: ConnectionState


# Serves one listener for ever: accept, and start each connection in the nursery.
Accept = Callable[[trio.SocketListener, Worker, trio.Nursery], Awaitable[None]]


class _Shutdown(Exception):
    """The shutdown trigger returned, or the worker context says terminate."""


async def _raise_on(trigger: Callable[[], Awaitable[Any]]) -> None:
    await trigger()
    raise _Shutdown


async def worker_serve(app: Any, config: Config, accept: Accept,
                       shutdown_trigger: Callable[..., Awaitable[Any]] | None,
                       task_status: trio.TaskStatus[list[str]]) -> None:
    """``hypercorn.trio.run.worker_serve`` for plain-TCP listeners, connections by ``accept``.

    Lifespan startup first; then each listener is served by ``accept`` until
    ``shutdown_trigger`` returns; connections then get ``graceful_timeout`` to
    end (each sees ``context.terminated`` set); lifespan shutdown last.
    """
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners = []
            binds = []
            for sock in config.create_sockets().insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{_bind(sock.family, sock.getsockname())}")
            task_status.started(binds)
            worker = Worker(wrapped, config, context, ConnectionState(lifespan_state.copy()))
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(_raise_on, shutdown_trigger)
                    nursery.start_soon(_raise_on, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(accept, listener, worker, server_nursery)
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((_Shutdown, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = (trio.current_time()
                                                        + config.graceful_timeout)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _bind(family: int, address: Any) -> str:
    """A bound socket's address as hypercorn writes it (``repr_socket_addr``)."""
    if family == socket.AF_INET:
        return f"{address[0]}:{address[1]}"
    if family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    if family == socket.AF_UNIX:
        return f"unix:{address}"
    return f"{address}"


def socket_address(family: int, address: Any) -> tuple[str, int] | None:
    """A peer's address as hypercorn's protocols take it (``parse_socket_addr``)."""
    if family in (socket.AF_INET, socket.AF_INET6):
        return (address[0], address[1])
    return None


def current_protocol(wrapper: Any) -> Any:
    """The protocol a ``ProtocolWrapper`` (or mcpwall's own wrapper) speaks now."""
    return wrapper.protocol


def h11_pending(protocol: Any) -> tuple[bool, bool] | None:
    """For hypercorn's h11 protocol: (the client owes body bytes, the client
    began a request head); None for any other protocol."""
    if isinstance(protocol, H11Protocol) and isinstance(protocol.connection, h11.Connection):
        state = protocol.connection.their_state
        return (state is h11.SEND_BODY,
                state is h11.IDLE and bool(protocol.connection.trailing_data[0]))
    return None


def h11_response_started(protocol: Any) -> bool | None:
    """For hypercorn's h11 protocol: whether a response began; None for others."""
    if isinstance(protocol, H11Protocol):
        return protocol.connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE)
    return None


__all__ = [
    "HYPERCORN_VERSION", "RELIED_ON", "Accept", "Body", "Closed", "EndBody", "Event",
    "H2Protocol", "H2ProtocolAssumedError", "HTTPStream", "InformationalResponse",
    "ProtocolWrapper", "RawData", "Request", "Response", "StreamClosed", "TaskGroup",
    "Updated", "Worker", "current_protocol", "h11_pending", "h11_response_started",
    "socket_address", "worker_serve",
]
