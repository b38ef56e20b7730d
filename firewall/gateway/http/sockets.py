"""Reading and writing a trio stream without a trip through the scheduler when it need not wait.

trio makes every socket operation a checkpoint: a ``send_all`` that the kernel
takes whole at once still yields to the scheduler afterwards, one more pass of
trio's run loop (an ``epoll_wait`` and the loop's bookkeeping, and every other
task that is ready runs first) on the way of every request and every answer.
:func:`send_all_now` writes what the socket takes at once and leaves only the
rest to ``send_all``; :func:`receive_now` returns bytes that are already there
and leaves only the wait to ``receive_some``.

Rules this module keeps:

1. Bytes go out in order and whole, as with ``send_all``: a write the socket
   takes in part continues through ``send_all``, which waits for room.
2. Only one writer at a time per stream, as ``send_all`` demands: callers hold
   their own lock (the front's connection) or own the stream (an upstream
   connection during its exchange). trio's conflict check does not see the
   immediate write.
3. Errors are trio's: a reset or broken pipe raises ``trio.BrokenResourceError``,
   a stream closed on our side ``trio.ClosedResourceError`` (from ``send_all``).
4. No checkpoint when everything was written, or when bytes were waiting to be
   read: the caller's next wait (for the answer, for the next request) is the
   checkpoint. A caller that may loop on immediate reads and writes (a stream
   relay) checkpoints every so often itself. Anything that is not a plain
   ``trio.SocketStream`` (TLS, a memory stream in a test) goes through
   ``send_all`` and ``receive_some`` unchanged.
5. One reader at a time per stream, as ``receive_some`` demands: the caller owns
   the stream (an upstream connection during its exchange).
"""

from __future__ import annotations

import os
from typing import Final

import trio

# Reads that found bytes waiting do not yield (receive_now); a loop of them
# checkpoints itself once every this many reads, so other tasks still run.
READS_BETWEEN_CHECKPOINTS: Final = 16


def send_now(stream: trio.abc.SendStream, data: bytes | bytearray | memoryview
             ) -> bytes | bytearray | memoryview:
    """Write what the socket takes at once; return the rest (empty: all written).

    Never waits and never yields. Anything but a plain ``trio.SocketStream``, or
    one closed on our side, writes nothing here: the rest is all of ``data``.
    """
    if type(stream) is trio.SocketStream:
        fd = stream.socket.fileno()
        if fd >= 0:  # -1: closed on our side, send_all says so
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if sent == len(data):
                return b""
            return memoryview(data)[sent:]
    return data


async def send_all_now(stream: trio.abc.SendStream, data: bytes | bytearray | memoryview) -> None:
    """``await stream.send_all(data)``, without yielding when the socket takes it all at once.

    Example: ``await send_all_now(conn.stream, b"POST /mcp HTTP/1.1\\r\\n...")``
    """
    rest = send_now(stream, data)
    if rest:
        await stream.send_all(rest)


async def receive_now(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes | bytearray:
    """``await stream.receive_some(max_bytes)``, without yielding when bytes are waiting.

    ``b""`` at the end of the stream, as ``receive_some``. Example:
    ``data = await receive_now(conn.stream, 65536)``
    """
    if type(stream) is trio.SocketStream:
        fd = stream.socket.fileno()
        if fd >= 0:  # -1: closed on our side, receive_some says so
            while True:
                try:
                    return os.read(fd, max_bytes)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
                # Nothing yet: wait (the checkpoint), then read. A close on our
                # side meanwhile raises trio.ClosedResourceError, as receive_some.
                await trio.lowlevel.wait_readable(fd)
    return await stream.receive_some(max_bytes)


__all__ = ["READS_BETWEEN_CHECKPOINTS", "receive_now", "send_all_now", "send_now"]
