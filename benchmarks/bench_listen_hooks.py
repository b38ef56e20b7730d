"""What the wrap session's listen hooks cost a call that has nothing to do with listening.

``mcpwall wrap`` passes each client line through ``StdioListens.incoming``
(and ``pending``) before the mediator, and each mediated server line through
``StdioListens.admits`` (``gateway/front/listen.py``, rule 6). With no listen
open (every 2025 session, and most 2026 ones) they must stay cheap. This
script times one tools/call request and its answer through the hooks, and
through no-op hooks of the same shape in the same run, and prints the medians
(ns per call) and their ratio.

    .venv/bin/python benchmarks/bench_listen_hooks.py [--rounds 7] [--calls 300000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Protocol

from firewall.gateway.front.listen import StdioListens

REQUEST = (b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
           b'"params":{"name":"echo","arguments":{"text":"hi"}}}')
ANSWER = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}'


class Hooks(Protocol):
    @property
    def pending(self) -> bool: ...

    def incoming(self, line: bytes) -> bytes: ...

    def admits(self, line: bytes) -> bool: ...


class NoHooks:
    """Hooks that do nothing: the baseline."""

    pending = False

    def incoming(self, line: bytes) -> bytes:
        return line

    def admits(self, line: bytes) -> bool:
        return True


def per_call(hooks: Hooks, calls: int) -> float:
    """Nanoseconds per request and answer through ``hooks``."""
    started = time.perf_counter()
    for _ in range(calls):
        hooks.incoming(REQUEST)
        if hooks.pending:
            raise AssertionError("a tools/call is no listen")
        hooks.admits(ANSWER)
    return (time.perf_counter() - started) / calls * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300_000)
    args = parser.parse_args()
    mediator: Any = object()  # not consulted while no listen is open
    listens, baseline = StdioListens(mediator), NoHooks()
    with_hooks, without = [], []
    for _ in range(args.rounds):  # interleaved: a burst of load hits both alike
        with_hooks.append(per_call(listens, args.calls))
        without.append(per_call(baseline, args.calls))
    hooked, bare = statistics.median(with_hooks), statistics.median(without)
    print(f"listen hooks, no listen open: {hooked:.0f} ns per call; "
          f"no-op hooks: {bare:.0f} ns; ratio {hooked / bare:.2f}; "
          f"added {hooked - bare:.0f} ns per call")


if __name__ == "__main__":
    main()
