"""Streamable HTTP upstream: a pooled HTTP/1.1 client on trio streams.

The HTTP front forwards each message an agent POSTs (and the GET and DELETE
of a session) to an MCP server reached over HTTP, and relays the answer as it
arrives: one ``application/json`` body, or a ``text/event-stream`` that may
stay open for the whole of a long tool call.

Rules this module keeps:

1. Responses are parsed by llhttp (Node.js's parser, through ``httptools``),
   one parser per TCP (or TLS) stream: it does all response framing
   (Content-Length, chunked, 1xx, read-until-close). Requests are framed here
   and only one way: a Content-Length body (or none), after h11 checked the
   method, target and headers (rule 7). No response parsing by hand.
2. A connection goes back to the pool only when the whole request was sent and
   the whole response read, neither side asked to close, and nothing followed
   the response on the wire. Anything else (a body not read to the end, an
   error, a cancellation, ``Connection: close``) closes it.
3. The pool is bounded: at most ``max_connections`` exchanges are in flight
   (a FIFO :class:`trio.Semaphore`; waiters queue there), and because only a
   finished exchange leaves an idle connection behind, open connections never
   exceed ``max_connections`` either. A streaming response (SSE) holds its
   slot until the caller leaves the ``request()`` block, so long-lived GET
   streams are best given their own ``HttpUpstream`` (their own budget), lest
   they starve the POSTs.
4. An idle connection is checked before reuse: one idle longer than
   ``keepalive_expiry`` or one the server has closed (its socket is readable)
   is closed instead. No request is ever retried: a POST may be a tools/call
   with side effects, so a failure goes back to the caller, who reports it.
5. Every failure to reach or understand the upstream raises
   :class:`UpstreamError` with a :class:`Reason`; an HTTP error status is an
   answer, not a failure (the front relays it). A cancellation from outside
   propagates as ``trio.Cancelled`` after the connection is closed.
6. Timeouts are trio cancel scopes: ``connect_timeout`` (TCP and TLS),
   ``pool_timeout`` (waiting for a slot), ``response_timeout`` (request sent
   until response head), ``read_timeout`` (silence between body chunks).
7. Headers are checked by h11 before anything is sent: on every request, or
   once by :meth:`HttpUpstream.prepare` for a set a caller sends again and
   again (the front caches one per session); a prepared set is never checked
   again, so it is immutable.

Example::

    async with HttpUpstream("http://127.0.0.1:8000/mcp") as upstream:
        async with upstream.request("POST", {"content-type": "application/json",
                                             "accept": "application/json, text/event-stream"},
                                    body) as resp:
            if resp.content_type == "text/event-stream":
                async for event in resp.events():
                    ...
            else:
                answer = await resp.read()
"""

from __future__ import annotations

import enum
import math
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import h11
import httptools
import msgspec
import trio

from firewall.gateway.http.sockets import READS_BETWEEN_CHECKPOINTS, receive_now, send_all_now
from firewall.gateway.outbound import Outbound
from firewall.protocol import jsonrpc
from firewall.protocol.sse import Event, SSEError, SSEParser

__all__ = [
    "HeaderInput",
    "HttpUpstream",
    "PoolStats",
    "PreparedHeaders",
    "Reason",
    "Response",
    "UpstreamError",
    "UpstreamEvents",
]

HeaderInput = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]

READ_SIZE: Final = 64 * 1024
# A response head (status line and headers) larger than this is refused, as
# h11 refuses one over its max_incomplete_event_size.
MAX_HEAD_BYTES: Final = 64 * 1024

# Headers that describe one hop, not the message: the client sets its own
# (Host, framing) and never forwards the caller's.
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_METHODS: Final = {m: m.encode("ascii") for m in ("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD")}
_KNOWN_METHODS: Final = frozenset(_METHODS.values())


class Reason(enum.StrEnum):
    """Why an exchange with the upstream failed."""

    CONNECT_REFUSED = "connect_refused"
    CONNECT_FAILED = "connect_failed"  # DNS, unreachable network, TLS handshake
    CONNECT_TIMEOUT = "connect_timeout"
    POOL_TIMEOUT = "pool_timeout"  # every connection busy for pool_timeout seconds
    TIMEOUT = "timeout"  # no response head, or silence between body chunks
    DISCONNECTED = "disconnected"  # reset or closed before the response was complete
    PROTOCOL_ERROR = "protocol_error"  # the upstream's bytes are not valid HTTP/1.1 (or SSE)
    TOO_LARGE = "too_large"  # body larger than read(max_bytes)
    INVALID_REQUEST = "invalid_request"  # a header or method h11 refuses to send
    CLOSED = "closed"  # this client was closed


_TIMEOUT_REASONS: Final = frozenset({Reason.TIMEOUT, Reason.CONNECT_TIMEOUT, Reason.POOL_TIMEOUT})


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer properly.

    ``reason`` says why, ``url`` which upstream, ``detail`` the specifics;
    :attr:`code` is the JSON-RPC error code to answer the agent with.
    """

    def __init__(self, reason: Reason, url: str, detail: str) -> None:
        super().__init__(f"{reason.value}: {url}: {detail}")
        self.reason = reason
        self.url = url
        self.detail = detail

    @property
    def code(self) -> int:
        """The JSON-RPC error code that reports this failure to the agent."""
        if self.reason in _TIMEOUT_REASONS:
            return jsonrpc.UPSTREAM_TIMEOUT
        if self.reason is Reason.TOO_LARGE:
            return jsonrpc.MESSAGE_TOO_LARGE
        return jsonrpc.UPSTREAM_UNAVAILABLE


class PoolStats(msgspec.Struct, frozen=True):
    """Counters of one :class:`HttpUpstream`, for metrics and tests."""

    opened: int  # connections opened since start
    reused: int  # exchanges that ran on a kept-alive connection
    closed: int  # connections closed (expired, broken, not reusable, shutdown)
    idle: int  # connections waiting in the pool now
    in_flight: int  # exchanges holding a slot now


class _Target(msgspec.Struct, frozen=True):
    scheme: str
    host: str
    port: int
    host_header: bytes
    target: bytes


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"upstream URL must be http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"upstream URL has no host: {url!r}")
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"upstream URL has an invalid port: {url!r}") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not (host_header.isascii() and target.isascii()):
        raise ValueError(f"upstream URL must be ASCII (IDNA host, percent-encoded path): {url!r}")
    return _Target(parts.scheme, host, port, host_header.encode("ascii"), target.encode("ascii"))


def _header_list(headers: HeaderInput) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[bytes, bytes]] = []
    for name, value in items:
        # Encoding never fails here; h11 refuses what is not a valid header
        # (INVALID_REQUEST) when the request is sent.
        bname = (name.encode("utf-8", "replace") if isinstance(name, str) else name).lower()
        if bname in _HOP_BY_HOP:
            continue
        out.append((bname, value.encode("utf-8", "replace") if isinstance(value, str) else value))
    return out


class PreparedHeaders:
    """Request headers merged with the client's defaults and checked once.

    Made by :meth:`HttpUpstream.prepare`; pass it to :meth:`HttpUpstream.request`
    in place of a mapping to skip the merge and the per-header checks.
    """

    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[bytes, bytes], ...]) -> None:
        self.items = items


def _check_headers(items: Iterable[tuple[bytes, bytes]], host: bytes = b"h") -> None:
    """Raise ``h11.LocalProtocolError`` unless h11 would send these headers."""
    h11.Request(method=b"GET", target=b"/", headers=[(b"host", host), *items])


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _input_poller(stream: trio.abc.Stream) -> select.poll | None:
    """A poll object watching the stream's socket for input, EOF or error."""
    sock = _socket_of(stream)
    if sock is None:
        return None
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return poller


class _Reader:
    """The llhttp parser's callbacks: the head and body of the response in flight."""

    __slots__ = ("chunks", "complete", "extra", "head_bytes", "headers", "headers_done",
                 "http_version", "interim", "keep_alive", "parser", "reason", "status",
                 "until_eof")

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.reset()

    def reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.http_version = b"1.1"
        self.interim = False  # parsing a 1xx response: the final one follows
        self.headers_done = False  # a final (non-1xx) head was parsed
        self.complete = False  # ... and its body too
        self.until_eof = False  # the body ends when the connection does
        self.extra = False  # bytes followed the response: the connection is not reusable
        self.keep_alive = False  # neither side asked to close (known once complete)
        self.chunks: deque[bytes] = deque()
        self.head_bytes = 0

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
            return
        self.headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        if not self.complete:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.complete or self.parser is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True
            return
        self.status = status
        self.http_version = self.parser.get_http_version().encode("ascii")
        names = {name for name, _ in self.headers}
        self.until_eof = (b"content-length" not in names and b"transfer-encoding" not in names
                          and status not in (204, 304))
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        elif self.headers_done and not self.complete:
            self.complete = True
            # The parser forgets this once the message is over: ask now.
            self.keep_alive = self.parser is not None and self.parser.should_keep_alive()


class _Connection:
    """One stream and its response parser; owned by one exchange at a time."""

    __slots__ = ("_poller", "idle_since", "parser", "reader", "sent", "stream", "uses")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = _Reader()
        self.parser = httptools.HttpResponseParser(self.reader)
        self.reader.parser = self.parser
        self.sent = False  # the whole request of this cycle went out
        self.idle_since = 0.0
        self.uses = 0
        self._poller = _input_poller(stream)

    def feed(self, data: bytes | bytearray) -> None:
        """Parse bytes from the upstream; ``httptools.HttpParserError`` if they are not HTTP."""
        reader = self.reader
        if not reader.headers_done:
            reader.head_bytes += len(data)
            if reader.head_bytes > MAX_HEAD_BYTES:
                raise httptools.HttpParserError(
                    f"response head larger than {MAX_HEAD_BYTES} bytes")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise httptools.HttpParserError("unexpected protocol upgrade") from None
        except httptools.HttpParserError:
            if not reader.complete:
                raise
            reader.extra = True  # garbage after a complete response

    def start_next_cycle(self) -> None:
        self.reader.reset()
        self.sent = False

    def has_pending_input(self) -> bool:
        """True when the idle connection's socket is readable: EOF, reset or stray bytes.

        Any of them means the connection cannot carry a new request. (A TLS
        stream could in principle hold a buffered record; it never does while
        idle, as the parser has read the whole previous response.)
        """
        return self._poller is not None and bool(self._poller.poll(0))

    @property
    def reusable(self) -> bool:
        reader = self.reader
        return (self.sent and reader.complete and reader.keep_alive and not reader.extra
                and not reader.until_eof)


class Response:
    """The head of an upstream response, and its body as it arrives.

    Valid inside the ``request()`` block only. ``headers`` are
    ``(lowercase name, value)`` byte pairs, in the order received.
    """

    __slots__ = (
        "_complete",
        "_conn",
        "_eof",
        "_read_timeout",
        "_reads",
        "_released",
        "_url",
        "content_type",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection, url: str, read_timeout: float) -> None:
        self._conn = conn
        self._url = url
        self._read_timeout = read_timeout
        self._complete = False
        self._eof = False
        self._released = False
        self._reads = 0
        reader = conn.reader
        self.status: int = reader.status
        self.reason: bytes = reader.reason.strip()
        self.http_version: bytes = reader.http_version
        self.headers: list[tuple[bytes, bytes]] = reader.headers
        #: The media type, lowercase, without parameters (``""`` if absent).
        self.content_type: str = (
            (self.header("content-type") or "").partition(";")[0].strip().lower()
        )

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), decoded, or ``None``."""
        key = name.lower().encode("ascii")
        for hname, value in self.headers:
            if hname == key:
                return value.decode("utf-8", "replace")
        return None

    @property
    def complete(self) -> bool:
        """True once the whole body has been read."""
        return self._complete

    async def receive_chunk(self) -> bytes:
        """The next piece of the body as it arrives; ``b""`` once it is complete."""
        if self._complete:
            return b""
        if self._released:
            raise UpstreamError(Reason.CLOSED, self._url, "response used after its request block")
        conn = self._conn
        reader = conn.reader
        while True:
            if reader.chunks:
                return reader.chunks.popleft()
            if reader.complete:
                self._complete = True
                return b""
            if self._eof:
                if reader.until_eof:  # a body delimited by the end of the connection
                    reader.complete = True
                    continue
                raise self._broken("connection closed before the response body was complete")
            await self._receive(conn)

    async def _receive(self, conn: _Connection) -> None:
        try:
            if self._read_timeout == math.inf:
                data = await receive_now(conn.stream, READ_SIZE)
            else:
                with trio.move_on_after(self._read_timeout) as scope:
                    data = await receive_now(conn.stream, READ_SIZE)
                if scope.cancelled_caught:
                    raise UpstreamError(
                        Reason.TIMEOUT, self._url, f"no body data for {self._read_timeout:g} s"
                    )
        except trio.ClosedResourceError:  # closed on our side: aclose() of the client
            raise UpstreamError(
                Reason.CLOSED, self._url, "the upstream client was closed"
            ) from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise self._broken(f"connection lost while reading the body: {exc!r}") from None
        if not data:
            self._eof = True
            return
        try:
            conn.feed(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(Reason.PROTOCOL_ERROR, self._url, str(exc)) from None
        self._reads += 1
        if self._reads % READS_BETWEEN_CHECKPOINTS == 0:
            # After the bytes were parsed: a cancellation here loses nothing.
            await trio.lowlevel.checkpoint()

    def _broken(self, detail: str) -> UpstreamError:
        return UpstreamError(Reason.DISCONNECTED, self._url, detail)

    def body(self) -> AsyncIterator[bytes]:
        """Iterate over the body's chunks as they arrive: ``async for chunk in resp.body()``."""
        return _BodyIterator(self)

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole (remaining) body; :class:`UpstreamError` ``TOO_LARGE`` past ``max_bytes``."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.receive_chunk():
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise UpstreamError(
                    Reason.TOO_LARGE, self._url, f"response body larger than {max_bytes} bytes"
                )
            parts.append(chunk)
        return b"".join(parts)

    def events(self, *, keep_dataless: bool = False) -> UpstreamEvents:
        """Parse a ``text/event-stream`` body into events as they complete.

        A malformed stream (an event over the parser's size limit) raises
        :class:`UpstreamError` ``PROTOCOL_ERROR``.
        """
        return UpstreamEvents(self, SSEParser(keep_dataless=keep_dataless))

    def _try_finish_without_io(self) -> None:
        # The rest of the body may already have been parsed (a 202 with an
        # empty body, a small JSON answer): finishing it keeps the connection.
        if self._conn.reader.complete:
            self._conn.reader.chunks.clear()
            self._complete = True


class _BodyIterator:
    __slots__ = ("_response",)

    def __init__(self, response: Response) -> None:
        self._response = response

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._response.receive_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk


class UpstreamEvents:
    """The events of an upstream's ``text/event-stream`` body, as they complete.

    Made by :meth:`Response.events`; read only: what reaches a client is
    written by the front (``gateway/front/sse_response.py``)."""

    __slots__ = ("_parser", "_pending", "_response")

    def __init__(self, response: Response, parser: SSEParser) -> None:
        self._response = response
        self._parser = parser
        self._pending: deque[Event] = deque()

    def __aiter__(self) -> UpstreamEvents:
        return self

    def at_end(self) -> bool:
        """True when the stream has no event left: the next one would end the iteration.

        Known without I/O, once the whole body has been read and parsed: the
        relay can then send the last event and the end of its own stream at once.
        """
        reader = self._response._conn.reader
        return not self._pending and reader.complete and not reader.chunks

    def ready(self) -> list[Event]:
        """The events complete in what has been read so far, at once and without I/O.

        Often none; :meth:`receive` waits for more. A relay that takes every
        event ready before it writes can send a stream that arrived whole in
        one write, and events that arrive one by one each as it comes::

            while True:
                for event in events.ready():
                    ...
                if events.at_end():
                    break
                await events.receive()
        """
        response = self._response
        chunks = response._conn.reader.chunks
        pending = self._pending
        while chunks:
            self._feed(chunks.popleft())
        out = list(pending)
        pending.clear()
        return out

    async def receive(self) -> bool:
        """Wait for more of the body and parse it (its events: :meth:`ready`).

        False once the body is complete. Cancel-safe: bytes read are kept.
        """
        chunk = await self._response.receive_chunk()
        if not chunk:
            return False
        self._feed(chunk)
        return True

    def _feed(self, chunk: bytes) -> None:
        """Parse ``chunk`` into the pending events; a malformed stream is PROTOCOL_ERROR."""
        try:
            self._pending.extend(self._parser.feed(chunk))
        except SSEError as exc:
            raise UpstreamError(Reason.PROTOCOL_ERROR, self._response._url, str(exc)) from None

    async def __anext__(self) -> Event:
        while not self._pending:
            if not await self.receive():
                raise StopAsyncIteration
        return self._pending.popleft()


class _Exchange:
    """The ``async with upstream.request(...)`` block: slot, connection, response."""

    __slots__ = (
        "_body",
        "_checked",
        "_conn",
        "_headers",
        "_method",
        "_pool",
        "_read_timeout",
        "_response",
        "_response_timeout",
        "_slot",
    )

    def __init__(
        self,
        pool: HttpUpstream,
        method: bytes,
        headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
        body: bytes,
        response_timeout: float,
        read_timeout: float,
        checked: bool,
    ) -> None:
        self._pool = pool
        self._checked = checked
        self._method = method
        self._headers = headers
        self._body = body
        self._response_timeout = response_timeout
        self._read_timeout = read_timeout
        self._conn: _Connection | None = None
        self._response: Response | None = None
        self._slot = False

    async def __aenter__(self) -> Response:
        pool = self._pool
        await pool._acquire_slot()
        self._slot = True
        try:
            self._conn = await pool._checkout()
            self._response = await pool._send_and_receive_head(
                self._conn,
                self._method,
                self._headers,
                self._body,
                self._response_timeout,
                self._read_timeout,
                self._checked,
            )
        except BaseException:
            await self._release(reusable=False)
            raise
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Whatever the caller's outcome, a response read to its end leaves the
        # connection clean; anything less closes it (rule 2).
        response = self._response
        reusable = False
        if response is not None:
            if not response._complete:
                response._try_finish_without_io()
            reusable = response._complete
        await self._release(reusable=reusable)

    async def _release(self, *, reusable: bool) -> None:
        if self._response is not None:
            self._response._released = True
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await self._pool._checkin(conn, reusable=reusable)
        finally:
            if self._slot:
                self._slot = False
                self._pool._slots.release()


class HttpUpstream:
    """A pooled HTTP/1.1 client for one upstream MCP server URL.

    ``headers`` are sent with every request (an ``Authorization`` for the
    upstream, say); a request's own headers replace same-named ones.
    Timeouts are seconds; ``None`` waits forever.

    Example::

        async with HttpUpstream("http://127.0.0.1:9000/mcp", {"authorization": "Bearer t"}) as up:
            async with up.request("POST", {"content-type": "application/json"}, body) as resp:
                print(resp.status, await resp.read())
    """

    def __init__(
        self,
        url: str,
        headers: HeaderInput = (),
        *,
        max_connections: int = 64,
        connect_timeout: float | None = 10.0,
        pool_timeout: float | None = None,
        response_timeout: float | None = None,
        read_timeout: float | None = None,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.url = url
        self._target = _parse_url(url)
        try:
            _check_headers((), self._target.host_header)
        except h11.LocalProtocolError:
            raise ValueError(f"upstream URL has an invalid host: {url!r}") from None
        try:
            h11.Request(method=b"GET", target=self._target.target, headers=[(b"host", b"h")])
        except h11.LocalProtocolError:
            raise ValueError(f"upstream URL has an invalid path: {url!r}") from None
        self._default_headers = _header_list(headers)
        self._max_connections = max_connections
        self._connect_timeout = _seconds(connect_timeout)
        self._pool_timeout = _seconds(pool_timeout)
        self._response_timeout = _seconds(response_timeout)
        self._read_timeout = _seconds(read_timeout)
        # Under the usual 5 s keep-alive of servers, so we drop a connection
        # before the server does rather than race its close.
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        if self._target.scheme == "https" and ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        self._slots = trio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._closed = False
        self._opened = self._reused = self._closed_count = 0

    # -- public ---------------------------------------------------------------

    def request(
        self,
        method: str,
        headers: HeaderInput | PreparedHeaders = (),
        body: bytes = b"",
        *,
        response_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Response]:
        """Send one request; ``async with`` it to get the :class:`Response`.

        The gateway sends MCP messages with :meth:`forward`, never with a
        body here (``tests/test_outbound.py`` holds it to that).

        The connection returns to the pool when the block ends, if the body
        was read to the end; otherwise it is closed. ``response_timeout`` and
        ``read_timeout`` override the client's (``math.inf``: no limit).
        Raises :class:`UpstreamError` on entering (and from body reads).

        Example: ``async with up.request("DELETE", {"mcp-session-id": sid}) as r: ...``
        """
        if isinstance(headers, PreparedHeaders):
            merged: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = headers.items
            checked = True
        else:
            merged = self._merge(headers)
            checked = False
        return _Exchange(
            self,
            _METHODS.get(method) or method.upper().encode("utf-8", "replace"),
            merged,
            body,
            self._response_timeout if response_timeout is None else response_timeout,
            self._read_timeout if read_timeout is None else read_timeout,
            checked,
        )

    async def forward(
        self,
        headers: HeaderInput | PreparedHeaders,
        message: Outbound,
        *,
        response_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Response]:
        """POST one :class:`~firewall.gateway.outbound.Outbound` once its decision
        is durable; ``async with await up.forward(headers, routed.upstream) as r``."""
        await message.ready()
        return self.request("POST", headers, message.data, response_timeout=response_timeout)

    def prepare(self, headers: HeaderInput = ()) -> PreparedHeaders:
        """Merge ``headers`` with the client's and check them once, for many requests.

        Raises :class:`UpstreamError` ``INVALID_REQUEST`` for a header h11
        would not send. Example::

            prepared = up.prepare({"mcp-session-id": sid, "accept": "application/json"})
            async with up.request("POST", prepared, body) as resp: ...
        """
        merged = self._merge(headers)
        try:
            _check_headers(merged)
        except h11.LocalProtocolError as exc:
            raise self._error(Reason.INVALID_REQUEST, str(exc)) from None
        return PreparedHeaders(tuple(merged))

    def _merge(self, headers: HeaderInput) -> list[tuple[bytes, bytes]]:
        merged = self._default_headers
        extra = _header_list(headers)
        if extra:
            names = {name for name, _ in extra}
            merged = [h for h in merged if h[0] not in names] + extra
        return merged

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters."""
        return PoolStats(
            opened=self._opened,
            reused=self._reused,
            closed=self._closed_count,
            idle=len(self._idle),
            in_flight=self._max_connections - self._slots.value,
        )

    async def aclose(self) -> None:
        """Close every connection, idle or in use; later requests fail with ``CLOSED``.

        Exchanges still running see their stream closed and raise
        :class:`UpstreamError` (``CLOSED``).
        """
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            await self._close(conn)

    async def __aenter__(self) -> HttpUpstream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- pool -----------------------------------------------------------------

    def _error(self, reason: Reason, detail: str) -> UpstreamError:
        return UpstreamError(reason, self.url, detail)

    async def _acquire_slot(self) -> None:
        if self._closed:
            raise self._error(Reason.CLOSED, "the upstream client is closed")
        try:
            # A free slot costs no trip through the scheduler (the exchange's
            # own I/O is the checkpoint); FIFO still holds, since a slot given
            # back while tasks wait goes straight to the first of them.
            self._slots.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        if self._pool_timeout == math.inf:
            await self._slots.acquire()
        else:
            try:
                with trio.fail_after(self._pool_timeout):
                    await self._slots.acquire()
            except trio.TooSlowError:
                raise self._error(
                    Reason.POOL_TIMEOUT,
                    f"all {self._max_connections} connections busy for {self._pool_timeout:g} s",
                ) from None
        if self._closed:  # closed while we waited
            self._slots.release()
            raise self._error(Reason.CLOSED, "the upstream client is closed")

    async def _checkout(self) -> _Connection:
        now = trio.current_time()
        idle = self._idle
        while idle:
            conn = idle.pop()  # most recently used first: it is the least likely to be stale
            if now - conn.idle_since < self._keepalive_expiry and not conn.has_pending_input():
                self._reused += 1
                conn.uses += 1
                return conn
            await self._close(conn)
        return await self._connect()

    async def _checkin(self, conn: _Connection, *, reusable: bool) -> None:
        if reusable and conn.reusable and not self._closed:
            conn.start_next_cycle()
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
        else:
            await self._close(conn)

    async def _close(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._closed_count += 1
        await trio.aclose_forcefully(conn.stream)

    async def _connect(self) -> _Connection:
        target = self._target
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
                if self._ssl_context is not None:
                    tls = trio.SSLStream(
                        stream,
                        self._ssl_context,
                        server_hostname=target.host,
                        https_compatible=True,
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise self._error(
                Reason.CONNECT_TIMEOUT,
                f"no connection to {target.host}:{target.port} within {self._connect_timeout:g} s",
            ) from None
        except trio.BrokenResourceError as exc:  # TLS handshake failed
            raise self._error(
                Reason.CONNECT_FAILED, f"TLS handshake failed: {exc.__cause__!r}"
            ) from None
        except OSError as exc:
            reason = Reason.CONNECT_REFUSED if _refused(exc) else Reason.CONNECT_FAILED
            raise self._error(
                reason, f"cannot connect to {target.host}:{target.port}: {exc}"
            ) from None
        conn = _Connection(stream)
        self._open.add(conn)
        self._opened += 1
        if self._closed:  # closed while we connected
            await self._close(conn)
            raise self._error(Reason.CLOSED, "the upstream client is closed")
        return conn

    async def _send_and_receive_head(
        self,
        conn: _Connection,
        method: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        response_timeout: float,
        read_timeout: float,
        checked: bool,
    ) -> Response:
        all_headers = [(b"host", self._target.host_header)]
        if body or method in _BODY_METHODS:
            all_headers.append((b"content-length", b"%d" % len(body)))
        all_headers.extend(headers)
        if not checked or method not in _KNOWN_METHODS:
            try:
                # h11 checks the method and every header (prepared ones were
                # checked by prepare(); host at construction; content-length is ours).
                h11.Request(method=method, target=self._target.target, headers=all_headers)
            except h11.LocalProtocolError as exc:
                raise self._error(Reason.INVALID_REQUEST, str(exc)) from None
        wire = b"".join([method, b" ", self._target.target, b" HTTP/1.1\r\n",
                         *[b"%s: %s\r\n" % item for item in all_headers], b"\r\n", body])
        reused = conn.uses > 0
        head_only = method == b"HEAD"
        if response_timeout == math.inf:
            return await self._exchange_head(conn, wire, read_timeout, reused, head_only)
        with trio.move_on_after(response_timeout):
            return await self._exchange_head(conn, wire, read_timeout, reused, head_only)
        raise self._error(Reason.TIMEOUT, f"no response within {response_timeout:g} s")

    async def _exchange_head(
        self, conn: _Connection, wire: bytes, read_timeout: float, reused: bool, head_only: bool
    ) -> Response:
        reader = conn.reader
        try:
            # No scheduler pass after a write the socket takes whole: waiting
            # for the answer is the exchange's checkpoint.
            await send_all_now(conn.stream, wire)
            conn.sent = True
            while not reader.headers_done:
                data = await receive_now(conn.stream, READ_SIZE)
                if not data:
                    raise self._error(Reason.DISCONNECTED, _lost(reused, "end of stream"))
                conn.feed(data)
        except trio.ClosedResourceError:  # closed on our side: aclose() of the client
            raise self._error(Reason.CLOSED, "the upstream client was closed") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise self._error(Reason.DISCONNECTED, _lost(reused, repr(exc))) from None
        except httptools.HttpParserError as exc:
            raise self._error(Reason.PROTOCOL_ERROR, str(exc) or type(exc).__name__) from None
        if head_only:
            # The parser cannot know a HEAD response has no body: it is
            # complete now, and the connection is not reused.
            reader.complete = True
            reader.extra = True
            reader.chunks.clear()
        return Response(conn, self.url, read_timeout)


def _lost(reused: bool, what: str) -> str:
    if reused:
        return f"kept-alive connection lost before the response ({what}); request not retried"
    return f"connection lost before the response ({what})"


def _refused(exc: OSError) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return any(isinstance(e, ConnectionRefusedError) for e in cause.exceptions)
    return False


def _seconds(value: float | None) -> float:
    return math.inf if value is None else value
