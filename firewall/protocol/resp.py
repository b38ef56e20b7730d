"""RESP2, the Redis wire protocol, sans-IO: commands to bytes, bytes to replies.

Just what the shared rate limiter needs (``AUTH``, ``SELECT``, ``PING``,
``EVALSHA``/``EVAL``): arrays of bulk strings out; simple strings, errors,
integers, bulk strings and arrays in. No sockets here: the gateway's
connection feeds received bytes to a :class:`ReplyParser` and asks it for
whole replies, like h11's ``receive_data``/``next_event``.

Rules this module keeps:

1. An error reply is a value (:class:`RespError`), never an exception: the
   caller decides what a ``NOSCRIPT`` means.
2. A reply is returned only when all of its bytes have arrived; a partial one
   stays buffered and :meth:`ReplyParser.next_reply` returns :data:`NEED_DATA`.
3. A malformed stream raises :class:`RespProtocolError`: the connection is
   then unusable and must be dropped.

Example::

    parser = ReplyParser()
    parser.feed(b"$5\\r\\nhello\\r\\n")
    assert parser.next_reply() == b"hello"
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec


class RespError(msgspec.Struct, frozen=True):
    """An error reply, e.g. ``NOSCRIPT No matching script``."""

    message: str

    @property
    def kind(self) -> str:
        """The error's first word (``ERR``, ``NOSCRIPT``, ``WRONGPASS``...)."""
        return self.message.split(" ", 1)[0]


class RespProtocolError(Exception):
    """The server sent bytes that are not RESP2."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
Reply: TypeAlias = "bytes | int | RespError | list[Reply] | None"
_MAX_LINE: Final = 64 * 1024


def encode_command(*args: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings.

    >>> encode_command("PING")
    b'*1\\r\\n$4\\r\\nPING\\r\\n'
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()  # repr: floats round-trip exactly
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ReplyParser:
    """Incremental RESP2 reply parser: :meth:`feed` bytes, take :meth:`next_reply`."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append bytes received from the server."""
        self._buf += data

    def next_reply(self) -> Reply | _NeedData:
        """The next complete reply, or :data:`NEED_DATA`."""
        parsed = self._parse(0)
        if parsed is None:
            return NEED_DATA
        reply, end = parsed
        del self._buf[:end]
        return reply

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            if len(self._buf) - pos > _MAX_LINE:
                raise RespProtocolError("RESP line too long")
            return None
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Reply, int] | None:
        got = self._line(pos)
        if got is None:
            return None
        line, pos = got
        kind, body = line[:1], line[1:]
        try:
            if kind == b"+":
                return body, pos
            if kind == b"-":
                return RespError(body.decode("utf-8", "replace")), pos
            if kind == b":":
                return int(body), pos
            if kind == b"$":
                size = int(body)
                if size < 0:
                    return None, pos
                if len(self._buf) < pos + size + 2:
                    return None
                if self._buf[pos + size:pos + size + 2] != b"\r\n":
                    raise RespProtocolError("bulk string not terminated by CRLF")
                return bytes(self._buf[pos:pos + size]), pos + size + 2
            if kind == b"*":
                count = int(body)
                if count < 0:
                    return None, pos
                items: list[Reply] = []
                for _ in range(count):
                    parsed = self._parse(pos)
                    if parsed is None:
                        return None
                    item, pos = parsed
                    items.append(item)
                return items, pos
        except ValueError:
            raise RespProtocolError(f"bad RESP length in {line[:40]!r}") from None
        raise RespProtocolError(f"unexpected RESP type byte {kind!r}")


__all__ = ["NEED_DATA", "Reply", "ReplyParser", "RespError", "RespProtocolError",
           "encode_command"]
