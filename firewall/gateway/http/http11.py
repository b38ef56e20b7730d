"""HTTP/1.1 for hypercorn on httptools: a drop-in for hypercorn's ``H11Protocol``.

hypercorn parses HTTP/1.1 with h11, in pure Python: about half a millisecond
of CPU per request, most of what the front costs beyond the mediator.
:class:`HttptoolsProtocol` speaks the same interface to hypercorn (``handle``
gets the connection's bytes, ``stream_send`` gets the response events of
hypercorn's own ASGI :class:`~hypercorn.protocol.http_stream.HTTPStream`) and
parses with httptools (llhttp, in C). Everything else stays hypercorn's: the
trio worker, the ASGI stream and lifespan, keep-alive timeouts, graceful
shutdown. :mod:`firewall.gateway.http.server` plugs it in.

Rules this module keeps:

1. One exchange at a time per connection. Requests pipelined behind the one
   being answered are parsed but wait (and the connection is not read further)
   until its response has ended, so answers go out in request order.
2. A response is framed by its ``Content-Length``, else chunked (HTTP/1.1),
   else by closing the connection (HTTP/1.0). The status line and headers go
   out with the first body bytes in one write; each later body part (an SSE
   event) is written at once. An event stream's head is written at once: its
   first event may be minutes away (a long call, a quiet GET stream), and the
   client must know meanwhile that its request was taken; unless the front
   says it will flush the head itself before it waits for anything (an answer
   relayed from an upstream usually has its event at hand: head, event and end
   then go out in one write).
3. The connection closes after a response when the client asked (``Connection:
   close``, HTTP/1.0), when the response says ``Connection: close``, when the
   request body was not read to its end (an early 413), when the server is
   shutting down, and after ``keep_alive_max_requests``.
4. Bad input closes the connection, never the process: a request the parser
   rejects gets 400, a head over ``h11_max_incomplete_size`` bytes 431, both
   with ``Connection: close``, unless a response has started already.
5. ``Upgrade`` is ignored, as RFC 9110 allows: an ``h2c`` or ``websocket``
   request is answered in HTTP/1.1 (its body read as any other). ``CONNECT``
   is answered and the connection closed. A connection that opens with the
   HTTP/2 preface is handed to hypercorn's HTTP/2 protocol, as h11's path does.
6. ``Expect: 100-continue`` gets ``100 Continue`` as soon as the head is parsed
   (as hypercorn's h11 path does), unless body bytes came with the head.
7. Direct exchanges: a request of a method the app names (``direct``: the
   front's POSTs) whose whole body is parsed already, without ``Expect``, is
   served in the connection's reader task as a
   :class:`~firewall.gateway.http.exchange.DirectExchange`: no ASGI scope, message
   dicts, task or channel, and its response is framed by rules 2 and 3 and
   written at once (``write_now``). Everything else, and lifespan, is ASGI.
   The reader is busy meanwhile, so a direct exchange that waits for its
   client to leave (a held call) reads the connection in the reader's place;
   bytes pipelined behind are parsed and served after it, in order (rule 1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final, Protocol
from urllib.parse import unquote

import httptools
import trio

from firewall.gateway.http.exchange import DirectExchange
from firewall.gateway.http.hypercorn_internals import (
    Body,
    Closed,
    EndBody,
    Event,
    H2ProtocolAssumedError,
    HTTPStream,
    InformationalResponse,
    RawData,
    Request,
    Response,
    StreamClosed,
    Updated,
)
from firewall.log import get_logger

STREAM_ID: Final = 1
MAX_RECV: Final = 2**16  # as hypercorn's TCPServer reads
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n"
# Parsed events, in wire order; the reader hands them to the exchange.
_HEAD: Final = 0  # a request's head (a Request)
_BODY: Final = 1  # part of its body (bytes)
_END: Final = 2  # the end of its body
_ERROR: Final = 3  # the parser gave up here (the HTTP status to answer)
# Headers of an Upgrade request dropped when it is parsed again as plain HTTP/1.1.
_UPGRADE_HEADERS: Final = frozenset({b"upgrade", b"connection", b"http2-settings"})
_NO_BODY_STATUS: Final = frozenset({204, 304})


class _HeadTooLarge(Exception):
    """The request head exceeds the configured size."""


DirectHandler = Callable[[DirectExchange], Awaitable[None]]
# The app's handler for a request method, or None: that method goes through ASGI.
DirectRoute = Callable[[str], DirectHandler | None]


class DirectConnection(Protocol):
    """What a direct exchange needs of the TCP connection (:mod:`firewall.gateway.http.server`)."""

    @property
    def stream(self) -> trio.abc.Stream: ...

    async def write_now(self, data: bytes) -> None: ...


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {status.value: _status_line(status.value) for status in HTTPStatus}


class HttptoolsProtocol:
    """hypercorn's HTTP/1.1 protocol interface, parsing with httptools."""

    def __init__(
        self,
        app: Any,
        config: Any,
        context: Any,
        task_group: Any,
        connection_state: Any,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Callable[[Event], Awaitable[None]],
        *,
        direct: DirectRoute | None = None,
        connection: DirectConnection | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.context = context
        self.task_group = task_group
        self.connection_state = connection_state
        self.ssl = ssl
        self.client = client
        self.server = server
        self.send = send
        self.keep_alive_requests = 0
        # Requests the app takes without ASGI (rule 7): only with a connection
        # to write to and read from, and no server names to check.
        self._direct = direct if connection is not None and not config.server_names else None
        self._connection = connection
        self._max_head: int = config.h11_max_incomplete_size
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[tuple[int, Any]] = deque()
        self._stream: HTTPStream | None = None
        self._answered = trio.Event()  # set when the exchange in progress has ended
        self._closed = False  # the connection is closing: drop whatever comes
        self._started = False  # bytes of the connection were parsed
        self._discard = False  # after CONNECT: nothing more is parsed
        self._eof = False  # the client's side ended: answer what is in progress, then close
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False
        self._message_at = 0  # where its events start in _events
        self._upgrade = False
        # The exchange being answered.
        self._keep_alive = True
        self._request_done = False
        self._http10 = False
        self._head_method = False
        self._head = b""  # the response's head, sent with its first body bytes
        self._response_started = False
        self._chunked = False
        self._must_close = False
        self._suppress_body = False  # a direct exchange's 204 or 304: no body bytes

    # -- httptools callbacks (the parser calls these from feed_data) -----------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True
        self._upgrade = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)
        name = name.lower()
        if name == b"upgrade":
            self._upgrade = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        # An Upgrade ends the parse in this same feed_data call: index stable till then.
        self._message_at = len(self._events)
        self._events.append((_HEAD, (Request(
            stream_id=STREAM_ID,
            headers=self._headers,
            http_version=version,
            method=parser.get_method().decode("ascii").upper(),
            raw_path=self._url,
            state=self.connection_state,
        ), version != "1.0" and parser.should_keep_alive())))

    def on_body(self, body: bytes) -> None:
        events = self._events
        if events and events[-1][0] == _BODY:  # parts parsed together go as one
            events[-1] = (_BODY, events[-1][1] + body)
        else:
            events.append((_BODY, body))

    def on_message_complete(self) -> None:
        self._events.append((_END, None))

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_head:
            raise _HeadTooLarge

    # -- what the connection's deadlines need (firewall.gateway.http.connection_limits) --
    def body_pending(self) -> bool:
        """The request being answered has not all of its body here yet."""
        return self._stream is not None and not self._request_done

    def head_pending(self) -> bool:
        """Part of a request head is parsed, not all of it."""
        return self._in_head

    def response_started(self) -> bool:
        """A response of the exchange in progress has been framed: too late for a 408."""
        return self._response_started

    # -- hypercorn's protocol interface ------------------------------------------
    async def initiate(self) -> None:
        pass

    async def handle(self, event: Event) -> None:
        """Bytes from the client (``RawData``), or the connection ended (``Closed``)."""
        if isinstance(event, RawData):
            if self._closed or self._discard or not event.data:
                return  # EOF: TCPServer follows with Closed
            self._parse(event.data)
            await self._deliver()
        elif isinstance(event, Closed):
            # The client went away (or the connection is being closed): the
            # exchange in progress hears of it; writes go on until they fail,
            # as in hypercorn's h11 path (a half-closed client still gets its answer).
            self._eof = True
            self._answered.set()
            if self._stream is not None:
                await self._close_stream()

    def _parse(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            if data.startswith(H2_PREFACE):  # HTTP/2 with prior knowledge (rule 5)
                raise H2ProtocolAssumedError(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadTooLarge):
                raise
            self._events.append((_ERROR, 431))
        except httptools.HttpParserError:
            self._events.append((_ERROR, 400))
        else:
            if self._in_head and self._head_size + len(data) > self._max_head:
                # A head that does not end: bound what the parser buffers.
                self._events.append((_ERROR, 431))

    def _upgraded(self, rest: bytes) -> None:
        """An Upgrade (or CONNECT) request: answer it in HTTP/1.1 (rule 5)."""
        head = (self._events[self._message_at][1][0] if len(self._events) > self._message_at
                else None)
        if not isinstance(head, Request) or head.method == "CONNECT" or not self._upgrade:
            self._discard = True  # CONNECT: the rest is another protocol
            self._events.append((_ERROR, 0))  # close once answered
            return
        # llhttp ends an Upgrade request at its head and stops: parse it again
        # without the upgrade headers, with a fresh parser, then what follows.
        while len(self._events) > self._message_at:
            self._events.pop()
        lines = [head.method.encode("ascii"), b" ", head.raw_path, b" HTTP/",
                 head.http_version.encode("ascii"), b"\r\n"]
        for name, value in head.headers:
            if name == b"connection":  # keep its other options (close, keep-alive)
                value = b",".join(t for t in value.split(b",")
                                  if t.strip().lower() not in _UPGRADE_HEADERS)
            if value and name not in _UPGRADE_HEADERS - {b"connection"}:
                lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        self._parser = httptools.HttpRequestParser(self)
        self._parse(b"".join(lines) + rest)

    async def _deliver(self) -> None:
        """Hand the parsed events to the exchange, in order (rule 1)."""
        events = self._events
        while events and not (self._closed or self._eof):
            kind, value = events[0]
            if (kind == _HEAD or (kind == _ERROR and self._request_done)) \
                    and self._stream is not None:
                # Pipelined behind an exchange not yet answered: wait for it.
                self._answered = trio.Event()
                await self._answered.wait()
                continue
            if kind == _HEAD and self._direct is not None:
                handler = self._direct(value[0].method)
                if handler is not None and await self._serve_direct(handler):
                    continue
            events.popleft()
            if kind == _BODY:
                if events and events[0][0] == _END:
                    # The whole (rest of the) body is here: one ASGI message, not two.
                    events.popleft()
                    await self._last_body(value)
                elif self._stream is not None:
                    await self._stream.handle(Body(stream_id=STREAM_ID, data=value))
            elif kind == _HEAD:
                await self._begin(*value)
            elif kind == _END:
                self._request_done = True
                if self._stream is not None:
                    await self._stream.handle(EndBody(stream_id=STREAM_ID))
            else:
                await self._fail(value)

    async def _serve_direct(self, handler: DirectHandler) -> bool:
        """Serve the request at the head of the events without ASGI, if it is all here.

        False (nothing consumed) when its body has not all arrived, or it
        expects ``100 Continue``: hypercorn's ASGI stream takes it then.
        """
        events = self._events
        request, keep_alive = events[0][1]
        end = 1
        while end < len(events) and events[end][0] == _BODY:
            end += 1
        if end == len(events) or events[end][0] != _END \
                or any(name == b"expect" for name, _ in request.headers):
            return False
        body = b"".join(events[i][1] for i in range(1, end))
        for _ in range(end + 1):
            events.popleft()
        await self._start_request(request, keep_alive, body_read=True)
        self._suppress_body = False
        self.keep_alive_requests += 1
        await self.context.mark_request()
        path, _, _query = request.raw_path.partition(b"?")
        ex = DirectExchange(request.method, unquote(path.decode("ascii")), request.headers,
                            body, self)
        try:
            await handler(ex)
        except Exception:
            # The app answers its own errors; this is the last resort ASGI's
            # stream would be (a 500 if nothing was sent), and the connection closes.
            get_logger(component="http11").exception("direct_request_failed", path=ex.path)
            self._must_close = True
            if not ex.started:
                await ex.respond(500, b"", content_type=None)
        if not ex.started:
            await ex.respond(500, b"", content_type=None)
        elif not ex.finished:
            await ex.end()
        if self._must_close or self._eof or self.context.terminated.is_set():
            await self._close()
        else:
            await self.send(Updated(idle=True))
        return True

    # -- the Responder of a DirectExchange --------------------------------------------
    async def send_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                            more: bool, flush: bool = True) -> None:
        """Start (``more``) or send a whole response of a direct exchange (rule 2).

        ``flush=False``: an event stream's head waits for the first body bytes
        too, because the caller has them at hand or flushes before it waits."""
        stream = self._frame(status, headers)
        self._suppress_body = status in _NO_BODY_STATUS
        if not more:
            await self.send_body(body, False)
        elif stream and flush:
            await self.send_body(b"", True)  # the head alone, now (rule 2)

    async def send_body(self, data: bytes, more: bool) -> None:
        """Part of a direct exchange's body, at once; ``more=False`` ends it."""
        if self._closed or self._connection is None:
            raise trio.ClosedResourceError("the connection is closed")
        out = self._head
        if data and not (self._head_method or self._suppress_body):
            out += b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        if not more and self._chunked and not self._head_method:
            out += b"0\r\n\r\n"
        self._head = b""
        if out:
            try:
                await self._connection.write_now(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._eof = True  # the client is gone: close once the exchange ends
                raise

    async def wait_disconnect(self) -> None:
        """Return when the client's side of the connection ends, during a direct exchange.

        The reader is busy serving the exchange, so this reads in its place:
        bytes pipelined behind are parsed (served after this exchange), the end
        of the stream or an error is the disconnect.
        """
        connection = self._connection
        while not self._eof and connection is not None:
            try:
                data = await connection.stream.receive_some(MAX_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._eof = True
                return
            if not (self._closed or self._discard):
                self._parse(bytes(data))

    async def _last_body(self, data: bytes) -> None:
        """The body's last part and its end, as the single message ASGI allows.

        ``HTTPStream`` would put them in two (a part with ``more_body``, then an
        empty end): one more scheduler round trip for the app and for us.
        """
        self._request_done = True
        stream = self._stream
        if stream is not None and not stream.closed:
            await stream.app_put({"type": "http.request", "body": data, "more_body": False})

    async def _start_request(self, request: Request, keep_alive: bool, body_read: bool) -> None:
        """The connection's state for a new request (either route)."""
        await self.send(Updated(idle=False))
        self._http10 = request.http_version == "1.0"
        self._keep_alive = keep_alive
        self._head_method = request.method == "HEAD"
        self._request_done = body_read
        self._head = b""
        self._response_started = self._chunked = self._must_close = False

    async def _begin(self, request: Request, keep_alive: bool) -> None:
        await self._start_request(request, keep_alive, body_read=False)
        self._stream = HTTPStream(self.app, self.config, self.context, self.task_group,
                                  self.ssl, self.client, self.server, self.stream_send,
                                  STREAM_ID)
        if not self._http10 and (not self._events or self._events[0][0] == _ERROR) \
                and any(n == b"expect" and v.lower() == b"100-continue"
                        for n, v in request.headers):
            await self.send(RawData(data=b"HTTP/1.1 100 Continue\r\n\r\n"))
        await self._stream.handle(request)
        self.keep_alive_requests += 1
        await self.context.mark_request()

    async def _fail(self, status: int) -> None:
        """The parser rejected the input (status 0: nothing more to parse)."""
        if status and not self._response_started:
            await self.send(RawData(data=_STATUS_LINES.get(status, _status_line(status))
                                    + b"content-length: 0\r\nconnection: close\r\n\r\n"))
        if status or self._stream is None:
            await self._close()
        else:
            self._must_close = True

    async def stream_send(self, event: Any) -> None:
        """A response event from the ASGI stream."""
        if self._closed:
            return
        if isinstance(event, Response):
            await self._start_response(event)
        elif isinstance(event, Body):
            if self._head_method or not event.data:
                return
            data = (b"%x\r\n%b\r\n" % (len(event.data), event.data) if self._chunked
                    else event.data)
            head, self._head = self._head, b""
            await self.send(RawData(data=head + data if head else data))
        elif isinstance(event, EndBody):
            tail = b"0\r\n\r\n" if self._chunked and not self._head_method else b""
            head, self._head = self._head, b""
            if head or tail:
                await self.send(RawData(data=head + tail))
        elif isinstance(event, StreamClosed):
            await self._recycle()
        elif isinstance(event, InformationalResponse):
            pass  # early hints are for HTTP/2 and 3, as in hypercorn's h11 path

    async def _start_response(self, event: Response) -> None:
        if event.status_code < 200:
            headers = [*event.headers, *self.config.response_headers("h11")]
            await self.send(RawData(data=self._head_bytes(event.status_code, headers)))
            return
        if self._frame(event.status_code, event.headers):
            head, self._head = self._head, b""
            await self.send(RawData(data=head))

    def _frame(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Decide a final response's framing and whether the connection closes after it;
        keep its head for the first body bytes (rules 2 and 3).

        True when the response is an event stream: its head goes out now (rule 2).
        """
        headers = [*headers, *self.config.response_headers("h11")]
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            self._must_close = True
        sized = stream = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-type":
                stream = value[:17].lower() == b"text/event-stream"
            elif lname == b"content-length":
                sized = True
            elif lname == b"connection" and b"close" in value.lower():
                self._must_close = True
            elif lname == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()  # the app framed it itself
                sized = not self._chunked
        if not (sized or self._chunked or status in _NO_BODY_STATUS or self._head_method):
            if self._http10:
                self._must_close = True  # the end of the body is the end of the connection
            else:
                self._chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
        if not self._keep_alive or not self._request_done:
            self._must_close = True
        if self._must_close and not any(n.lower() == b"connection" for n, _ in headers):
            headers.append((b"connection", b"close"))
        self._response_started = True
        self._head = self._head_bytes(status, headers)
        return stream and not self._head_method

    @staticmethod
    def _head_bytes(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        parts = [_STATUS_LINES.get(status) or _status_line(status)]
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name \
                    or b":" in name:
                raise ValueError(f"invalid response header {name!r}")
            parts += [name.lower(), b": ", value, b"\r\n"]
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _recycle(self) -> None:
        """The response ended: ready the connection for the next request, or close it.

        The exchange stays current (``_stream`` set) until this is done, so a
        request pipelined behind waits and cannot change the state read here.
        """
        close = (self._must_close or self._eof or not self._request_done
                 or self.context.terminated.is_set())
        stream = self._stream
        if stream is not None:
            await stream.handle(StreamClosed(stream_id=STREAM_ID))
        if close:
            self._stream = None
            await self._close()
            return
        await self.send(Updated(idle=True))
        self._stream = None
        self._answered.set()

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.handle(StreamClosed(stream_id=STREAM_ID))

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._answered.set()
        await self.send(Closed())


__all__ = ["HttptoolsProtocol"]
