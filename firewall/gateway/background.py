"""A store that a background task keeps fresh while the gateway uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def polled(poll: Callable[[], Awaitable[None]],
                 close: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Run ``poll`` in the background while the block runs; ``close`` afterwards,
    shielded, whether the block ended, failed or was cancelled."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            yield
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await close()


__all__ = ["polled"]
