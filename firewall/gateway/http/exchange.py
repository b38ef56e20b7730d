"""One HTTP request and its response, over raw ASGI.

:class:`Exchange` is the small surface the HTTP front needs from ASGI: the
request's method, path and (lower-cased) headers, a body read with a size cap,
and a response sent whole (:meth:`Exchange.respond`) or streamed
(:meth:`Exchange.start` + :meth:`Exchange.write`). Rules it keeps:

1. The body is read incrementally and reading stops at the cap: an oversized
   body is never held whole in memory.
2. Writes after the client went away are dropped silently (``disconnected``
   says so); the handler decides whether to go on (a request whose answer a
   client may still fetch by resumption) or stop.
3. Exactly one response per request: :meth:`respond` or :meth:`start`, once;
   once the body has ended (``finished``), later writes and ends are dropped.
4. A whole response is two ASGI messages (head with ``Content-Length``, then
   the body), the least the server can frame without chunking; a
   :class:`DirectExchange` (no ASGI: the httptools connection hands it over)
   gives the connection both at once.
5. Every response carries a ``Date`` (RFC 9110), formatted once a second here
   rather than by the server for each response.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, Protocol
from wsgiref.handlers import format_date_time

import trio

from firewall.protocol import jsonrpc

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON: Final = "application/json"
SSE: Final = "text/event-stream"
_CONTENT_TYPES: Final = {JSON: b"application/json", SSE: b"text/event-stream"}


_date: list[Any] = [0, b""]  # (second, its Date header value)


def http_date() -> bytes:
    """The ``Date`` header value for now, e.g. ``b"Wed, 25 Nov 2026 14:00:00 GMT"``."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, format_date_time(now).encode("ascii")
    value: bytes = _date[1]
    return value


class BodyTooLarge(Exception):
    """The request body exceeds the cap."""


class ClientGone(Exception):
    """The client disconnected before its body was read."""


class Exchange:
    """An HTTP request/response pair on ASGI."""

    __slots__ = ("_receive", "_send", "body_read", "disconnected", "finished", "headers",
                 "method", "path", "repeated", "started")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._setup(scope["method"], scope["path"], scope["headers"])
        self._receive = receive
        self._send = send

    def _setup(self, method: str, path: str, raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.method: str = method
        self.path: str = path
        self.headers: dict[str, str] = {}
        # The names sent more than once, for whoever must tell "a, b" from two lines.
        self.repeated: list[str] = []
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            # Repeated headers are joined as RFC 9110 allows for list values.
            if name in self.headers:
                self.headers[name] = f"{self.headers[name]}, {value}"
                self.repeated.append(name)
            else:
                self.headers[name] = value
        self.started = False
        self.finished = False
        self.disconnected = False
        self.body_read = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def has_body(self) -> bool:
        """Whether the request announced a body (a length other than 0, or chunked)."""
        length = self.headers.get("content-length")
        return "transfer-encoding" in self.headers or (length is not None and length != "0")

    async def read_body(self, cap: int) -> bytes:
        """The whole body; raise :class:`BodyTooLarge` past ``cap`` bytes."""
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise BodyTooLarge
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > cap:
                    raise BodyTooLarge
                parts.append(chunk)
            if not message.get("more_body", False):
                self.body_read = True
                return b"".join(parts)

    async def wait_disconnect(self) -> None:
        """Return when the client disconnects (call once the body was read)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return

    async def respond(self, status: int, body: bytes = b"", content_type: str | None = JSON,
                      headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a complete response."""
        raw = [(b"date", http_date())]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if content_type is not None and body:
            raw.append((b"content-type", _CONTENT_TYPES.get(content_type)
                        or content_type.encode("latin-1")))
        # A length, not chunked framing: one write fewer per answer.
        if status not in (204, 304):
            raw.append((b"content-length", b"%d" % len(body)))
        assert not self.started, "one response per request"
        self.started = True
        await self._respond_raw(status, raw, body)

    async def _respond_raw(self, status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self._raw({"type": "http.response.start", "status": status, "headers": raw})
        await self._emit(body, more=False)

    async def start(self, status: int, headers: Iterable[tuple[str, str]], *,
                    flush: bool = True) -> None:
        """Send the status line and headers of a streamed response.

        ``flush=False``: the head may wait for the first body bytes; the caller
        then calls :meth:`flush` before it waits for anything else."""
        assert not self.started, "one response per request"
        self.started = True
        await self._start_raw(status, [(b"date", http_date()),
                                       *((k.encode("latin-1"), v.encode("latin-1"))
                                         for k, v in headers)], flush)

    async def _start_raw(self, status: int, raw: list[tuple[bytes, bytes]],
                         flush: bool = True) -> None:
        await self._raw({"type": "http.response.start", "status": status, "headers": raw})

    async def flush(self) -> None:
        """Make sure what was started has reached the client (a head kept back)."""
        await self._emit(b"", more=True)

    async def write(self, data: bytes) -> None:
        """Send part of a streamed body, at once (no buffering)."""
        await self._emit(data, more=True)

    async def end(self) -> None:
        """Finish a streamed body."""
        await self._emit(b"", more=False)

    async def write_last(self, data: bytes) -> None:
        """Send the last part of a streamed body and finish it (one write, when direct)."""
        await self._emit(data, more=False)

    async def _emit(self, data: bytes, *, more: bool) -> None:
        if self.finished:
            return
        if not more:
            self.finished = True
        await self._raw({"type": "http.response.body", "body": data, "more_body": more})

    async def _raw(self, message: Message) -> None:
        if self.disconnected:
            return
        try:
            await self._send(message)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self.disconnected = True


class Responder(Protocol):
    """The connection side of a :class:`DirectExchange` (:mod:`firewall.gateway.http.http11`).

    ``send_response`` with ``more=False`` sends the whole response; with
    ``more=True`` it only starts it (the head goes out with the first body
    bytes). Writes raise ``trio.BrokenResourceError`` once the client is gone.
    """

    async def send_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                            more: bool, flush: bool = True) -> None: ...

    async def send_body(self, data: bytes, more: bool) -> None: ...

    async def wait_disconnect(self) -> None: ...


class DirectExchange(Exchange):
    """An exchange the HTTP/1.1 connection hands to the front without ASGI.

    For a request whose whole body arrived with its head (an MCP POST, almost
    always): no scope, no message dicts, no task and no channel per request;
    the response goes straight to the connection's framing. The front sees the
    same :class:`Exchange` either way.
    """

    __slots__ = ("_body", "_responder")

    def __init__(self, method: str, path: str, raw_headers: Iterable[tuple[bytes, bytes]],
                 body: bytes, responder: Responder) -> None:
        self._setup(method, path, raw_headers)
        self._body = body
        self._responder = responder

    async def read_body(self, cap: int) -> bytes:
        length = self.headers.get("content-length")
        if (length is not None and length.isdigit() and int(length) > cap) or len(self._body) > cap:
            raise BodyTooLarge
        self.body_read = True
        return self._body

    async def wait_disconnect(self) -> None:
        await self._responder.wait_disconnect()
        self.disconnected = True

    async def _respond_raw(self, status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.finished = True
        if not self.disconnected:
            try:
                await self._responder.send_response(status, raw, body, False)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                self.disconnected = True

    async def _start_raw(self, status: int, raw: list[tuple[bytes, bytes]],
                         flush: bool = True) -> None:
        if not self.disconnected:
            try:
                await self._responder.send_response(status, raw, b"", True, flush)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                self.disconnected = True

    async def _emit(self, data: bytes, *, more: bool) -> None:
        if self.finished:
            return
        if not more:
            self.finished = True
        if self.disconnected:
            return
        try:
            await self._responder.send_body(data, more)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self.disconnected = True


def accepts(header: str | None, media_type: str) -> bool:
    """True when an Accept header admits ``media_type`` (absent header admits all)."""
    if header is None:
        return True
    major = media_type.split("/", 1)[0]
    for item in header.split(","):
        kind = item.split(";", 1)[0].strip().lower()
        if kind in (media_type, "*/*", f"{major}/*"):
            return True
    return False


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan scope: nothing to start or stop beyond the app itself."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def refuse(ex: Exchange, status: int, code: int, message: str,
                 headers: Iterable[tuple[str, str]] = (), data: Any = None) -> None:
    """Answer with an HTTP error status and a JSON-RPC error body (id null)."""
    headers = list(headers)
    if not ex.body_read and ex.has_body:
        # The body was not (fully) read: the server cannot reuse this
        # connection, so say so, or a keep-alive client sends its next request
        # on a connection that is about to close.
        headers.append(("connection", "close"))
    await ex.respond(status, jsonrpc.error_response(None, code, message, data), headers=headers)
