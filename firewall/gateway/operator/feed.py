"""The operators' live feed: decisions and approval changes, fanned out to SSE readers.

Rules this module keeps:

1. Publishing never blocks and costs nothing while nobody listens: the hot
   path (an audit append) builds the feed entry only when a reader is
   connected (:attr:`Feed.listening`).
2. Each reader has a bounded queue; a reader that falls further behind loses
   its oldest entries (and is told how many with a ``dropped`` entry), so a
   slow browser never slows the firewall.
3. Entries carry no call arguments: arguments reach operators only redacted,
   from the approvals database or the audit trail.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import msgspec
import trio

MAX_QUEUE: Final = 256


class Reader:
    """One subscriber: a bounded queue of encoded SSE frames."""

    def __init__(self, max_queue: int = MAX_QUEUE) -> None:
        self.queue: deque[bytes] = deque()
        self.max_queue = max_queue
        self.dropped = 0
        self.changed = trio.Event()

    def put(self, frame: bytes) -> None:
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(frame)
        self.changed.set()

    async def take(self) -> list[bytes]:
        """Wait for frames; return every queued one (a ``dropped`` frame first if any)."""
        while not self.queue:
            self.changed = trio.Event()
            await self.changed.wait()
        frames = list(self.queue)
        self.queue.clear()
        if self.dropped:
            frames.insert(0, sse_frame("dropped", {"count": self.dropped}))
            self.dropped = 0
        return frames


def sse_frame(event: str, data: Any) -> bytes:
    """One SSE frame: ``event: NAME`` and one JSON ``data:`` line (JSON has no newlines)."""
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


class Feed:
    """Where decisions and approval changes are published for the console."""

    def __init__(self) -> None:
        self.readers: set[Reader] = set()

    @property
    def listening(self) -> bool:
        """True while at least one reader is connected."""
        return bool(self.readers)

    def publish(self, event: str, data: Any) -> None:
        """Hand one entry to every reader (never blocks)."""
        if not self.readers:
            return
        frame = sse_frame(event, data)
        for reader in self.readers:
            reader.put(frame)

    def subscribe(self) -> Reader:
        reader = Reader()
        self.readers.add(reader)
        return reader

    def unsubscribe(self, reader: Reader) -> None:
        self.readers.discard(reader)


__all__ = ["Feed", "Reader", "sse_frame"]
