"""Server-Sent Events: an encoder and an incremental, sans-IO parser.

Streamable HTTP answers a request either with one JSON body or with a
``text/event-stream``; this module reads and writes the latter, following the
WHATWG "event stream interpretation" rules.

Rules this module keeps:

1. The parser works on bytes. Line terminators (CR, LF, CRLF) are ASCII and
   never occur inside a multi-byte UTF-8 sequence, so a chunk may end anywhere,
   even mid-character or between the CR and the LF of one CRLF.
2. ``data`` stays bytes, joined with LF, never decoded: MCP puts JSON there and
   msgspec reads bytes. ``id`` and ``event`` are short names, decoded as UTF-8
   with replacement as the standard says.
3. Per the standard, a block without a ``data`` field dispatches nothing, but
   its ``id`` still updates :attr:`SSEParser.last_event_id`. A relay that must
   forward every ``id``/``retry`` passes ``keep_dataless=True`` and gets such
   blocks as events whose ``data`` is ``None``.
4. Memory is bounded: a pending line or event larger than ``max_event_bytes``
   raises :class:`SSEError` (the stream is then unusable; the caller closes it).
5. ``parse(encode_event(...))`` gives back the same event, for any chunking
   (data containing CR is the one exception: CR and CRLF come back as LF).

Example::

    parser = SSEParser()
    events = parser.feed(b"id: 7\\ndata: {}\\n\\n")
    assert events == [Event(data=b"{}", id="7")]
    assert encode_event(b"{}", id="7") == b"id: 7\\ndata: {}\\n\\n"
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = [
    "COMMENT_KEEPALIVE",
    "CONTENT_TYPE",
    "SSE_HEADERS",
    "Event",
    "SSEError",
    "SSEParser",
    "encode_comment",
    "encode_event",
]

CONTENT_TYPE: Final = "text/event-stream"
# The response headers of an event stream: never cached, never buffered by a proxy.
SSE_HEADERS: Final = (("content-type", CONTENT_TYPE), ("cache-control", "no-cache"),
                      ("x-accel-buffering", "no"))

# A comment line plus the blank line that ends the block: clients ignore it, but
# it keeps idle connections (and the proxies between) from timing out.
COMMENT_KEEPALIVE: Final = b": keepalive\n\n"

DEFAULT_MAX_EVENT_BYTES: Final = 16 * 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"
_DATA_LINE_SPLIT: Final = re.compile(rb"\r\n|\r|\n")



# A reconnection delay of ten digits of milliseconds is already months.
_RETRY_DIGITS: Final = 10

class SSEError(ValueError):
    """The event stream cannot be parsed further (an event exceeds the size limit)."""


class Event(msgspec.Struct, frozen=True):
    """One dispatched event.

    ``id`` is the ``id`` field of this block, if it had one (the standard's
    sticky "last event ID" is :attr:`SSEParser.last_event_id`). ``event`` is
    ``None`` for the default type ``message``. ``data`` is ``None`` only for
    data-less blocks, which the parser returns when ``keep_dataless`` is set.
    """

    data: bytes | None
    id: str | None = None
    event: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed bytes, get complete events.

    Example::

        parser = SSEParser()
        assert parser.feed(b"data: a\\r\\nda") == []
        assert parser.feed(b"ta: b\\r\\n\\r\\n") == [Event(data=b"a\\nb")]
    """

    __slots__ = (
        "_bom_checked",
        "_data",
        "_data_size",
        "_event",
        "_has_fields",
        "_id",
        "_keep_dataless",
        "_line",
        "_max",
        "_retry",
        "_skip_lf",
        "last_event_id",
        "retry",
    )

    def __init__(
        self, *, keep_dataless: bool = False, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        self._keep_dataless = keep_dataless
        self._max = max_event_bytes
        self._line = bytearray()  # an incomplete line carried over between feeds
        self._skip_lf = False  # the previous feed ended with CR: a leading LF is its pair
        self._bom_checked = False
        self._data: list[bytes] | None = None
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False
        #: The standard's last event ID: the latest ``id`` seen, sticky across
        #: events; send it back as ``Last-Event-ID`` to resume a stream.
        self.last_event_id: str | None = None
        #: The latest valid ``retry`` (milliseconds), sticky like the ID.
        self.retry: int | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Event]:
        """Take the next bytes of the stream; return the events they complete."""
        data = bytes(chunk)
        if not self._bom_checked:
            data = self._strip_bom(data)
            if not data:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        end = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if end < 0:
            self._line += data
            self._check_size(len(self._line))
            return []
        complete = data[: end + 1]
        if self._line:
            complete = bytes(self._line) + complete
            self._line.clear()
        rest = data[end + 1 :]
        # A CR that ends the chunk may be the first half of a CRLF: the LF,
        # if it comes, opens the next chunk (never a later part of this one).
        self._skip_lf = not rest and complete.endswith(b"\r")
        events: list[Event] = []
        # The line loop is inlined (no call per line): an MCP event is three or
        # four lines, and a relay parses every one of them.
        for line in complete.splitlines():
            if not line:
                self._dispatch(events)
                continue
            if line[:5] == b"data:" or line == b"data":
                value = line[6:] if line[5:6] == b" " else line[5:]
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > self._max:
                    raise SSEError(f"server-sent event larger than {self._max} bytes")
            elif line[:1] != b":":  # not a comment
                self._field(line)
        if rest:
            self._line += rest
            self._check_size(len(self._line))
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        # A UTF-8 byte order mark may open the stream, and may itself be split.
        pending = bytes(self._line) + data
        if len(pending) < len(_BOM) and _BOM.startswith(pending):
            self._line = bytearray(pending)
            return b""
        self._bom_checked = True
        self._line.clear()
        return pending[len(_BOM) :] if pending.startswith(_BOM) else pending

    def _check_size(self, pending: int) -> None:
        if pending + self._data_size > self._max:
            raise SSEError(f"server-sent event larger than {self._max} bytes")

    def _field(self, line: bytes) -> None:
        """A line that is neither blank, nor a comment, nor ``data``."""
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"id":
            if b"\0" not in value:
                self._id = self.last_event_id = value.decode("utf-8", "replace")
                self._has_fields = True
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
            self._has_fields = True
        elif name == b"retry" and value.isdigit() and len(value) <= _RETRY_DIGITS:
            # ASCII digits only, for bytes; a longer value is no delay anyone
            # means (and int() refuses past 4,300 digits): ignored, as the
            # spec ignores any retry that is not a number.
            self._retry = self.retry = int(value)
            self._has_fields = True

    def _dispatch(self, events: list[Event]) -> None:
        if self._data is not None:
            events.append(
                Event(
                    data=b"\n".join(self._data),
                    id=self._id,
                    event=self._event or None,
                    retry=self._retry,
                )
            )
        elif self._keep_dataless and self._has_fields:
            events.append(
                Event(data=None, id=self._id, event=self._event or None, retry=self._retry)
            )
        self._data = None
        self._data_size = 0
        self._event = self._id = self._retry = None
        self._has_fields = False


def encode_event(
    data: bytes | None,
    id: str | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One event block, ready to write to a ``text/event-stream``.

    Line breaks in ``data`` become separate ``data:`` lines. ``data=None``
    writes a block with no data field (only ``id``/``event``/``retry``).
    Raises :class:`ValueError` for an ``id`` or ``event`` containing a line
    break (or NUL, for ``id``) and for a negative ``retry``.

    Example: ``encode_event(b'{"id":1}', id="1")`` is
    ``b'id: 1\\ndata: {"id":1}\\n\\n'``.
    """
    parts: list[bytes] = []
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("SSE id must not contain CR, LF or NUL")
        parts.append(b"id: " + id.encode())
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("SSE event type must not contain CR or LF")
        parts.append(b"event: " + event.encode())
    if retry is not None:
        if retry < 0:
            raise ValueError("SSE retry must be a non-negative number of milliseconds")
        parts.append(b"retry: " + str(retry).encode())
    if data is not None:
        lines = _DATA_LINE_SPLIT.split(data) if (b"\n" in data or b"\r" in data) else [data]
        parts.extend(b"data: " + line for line in lines)
    if not parts:
        raise ValueError("an SSE event needs data, id, event or retry")
    parts.append(b"\n")
    return b"\n".join(parts)


def encode_comment(text: str = "") -> bytes:
    """A comment block (``: text``); clients ignore it. See :data:`COMMENT_KEEPALIVE`."""
    if "\n" in text or "\r" in text:
        raise ValueError("SSE comment must not contain CR or LF")
    return b": " + text.encode() + b"\n\n" if text else b":\n\n"
