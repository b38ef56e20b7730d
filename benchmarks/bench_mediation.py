"""What airtight forwarding costs per message: the canonical form and the depth
check, against the envelope decode every message pays anyway (same run).

    python benchmarks/bench_mediation.py [--repeat 7] [--number 20000]
                                         [--pairs 20000] [--baseline SOURCE_TREE]

For each message shape (an SDK tools/call, the same with whitespace and CRLF
between tokens, a notification, a 300 KB tools/list result, a 1 MB text
result), prints the median ns of: ``mcp.decode`` (or ``jsonrpc.decode`` for
responses: the baseline, which includes the depth check), the depth check
alone (``bounds.too_deep``), and ``framing.canonical`` (requests and
notifications: the form the mediator forwards) or ``framing.line_safe``
(responses), with the ratio of the last to the baseline; then what the
mediator did before the one decode (``mcp.decode`` + ``framing.canonical``;
responses: ``jsonrpc.decode``, ``reencode``, ``line_safe``), what it does now
(``inbound.client``: envelope, view and line from one value;
``inbound.server`` and its relay line), and the ratio of the two.

Then the mediator itself: the median us of one call pair with the allow-all
policy, without an audit trail and with an in-memory one: a 2025 session's
(``from_client`` of the SDK tools/call, ``from_server`` of its answer), and a
stateless 2026-07-28 one as the HTTP front takes it (a mediator of its own,
the header ladder, the upstream headers, the answer with ``resultType``: the
pairs of ``callgrind_mediation.py``). With ``--baseline``, another
mcpwall source tree (an earlier revision) is measured the same way in
interleaved subprocesses, and the ratios of this tree to it are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

# The tree measured: this one, or (for --baseline, in a subprocess) another.
sys.path.insert(0, os.environ.get("BENCH_TREE") or str(Path(__file__).resolve().parent.parent))

import msgspec
import trio

from firewall.protocol import bounds, framing, jsonrpc, mcp

CALL = msgspec.json.encode({
    "jsonrpc": "2.0", "id": 17, "method": "tools/call",
    "params": {"name": "vm_management",
               "arguments": {"action": "info", "vm_name": "web-01", "opts": {"a": [1, 2, 3]}},
               "_meta": {"progressToken": 5}}})
SPACED = CALL.replace(b",", b",\r\n  ").replace(b":", b" : ")
NOTE = b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":17}}'
TOOLS = msgspec.json.encode({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
    {"name": f"t{i}", "description": "a tool", "inputSchema": {
        "type": "object", "properties": {"a": {"type": "string", "enum": ["x", "y"]},
                                         "b": {"type": "array", "items": {"type": "integer"}}}}}
    for i in range(2000)]}})
TEXT = msgspec.json.encode({"jsonrpc": "2.0", "id": 4, "result": {"content": [
    {"type": "text", "text": "lorem ipsum dolor sit amet " * 40_000}]}})

CASES: dict[str, tuple[bytes, bool]] = {  # name: (message, is a request or notification)
    "tools/call (SDK bytes)": (CALL, True),
    "tools/call, CRLF between tokens": (SPACED, True),
    "notification": (NOTE, True),
    "tools/list result, 300 KB": (TOOLS, False),
    "text result, 1 MB": (TEXT, False),
}


def ns(fn: Callable[[], object], number: int, repeat: int) -> float:
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e9


def _two_passes(data: bytes) -> object:
    """A request as the mediator took it before: typed decode, then the line."""
    mcp.decode(data)
    return framing.canonical(data, jsonrpc.REQUEST_MEMBERS, depth_checked=True)


def _relayed_before(data: bytes) -> bytes:
    """A response as the mediator relayed it before: decode, new envelope, one line."""
    out = jsonrpc.reencode(jsonrpc.decode(data))
    return framing.line_safe(data if out == data else out)


def _relayed(data: bytes) -> bytes:
    """A response as the mediator relays it: inbound.server, then its relay line."""
    from firewall.protocol import inbound  # this tree only (a baseline may lack it)

    return inbound.server(data).relay_line()


def pair_us(pairs: int, repeat: int, audited: bool, era: str = "2025") -> list[float]:
    """us of one pair (allow-all policy), ``repeat`` times: a 2025 session's
    from_client + from_server of a tools/call, or (``era="2026"``) a stateless
    2026-07-28 tools/call as the HTTP front takes it (callgrind_mediation.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from callgrind_mediation import pair_runner

    pair = pair_runner(era, audited)

    async def run(first: int) -> float:
        started = time.perf_counter()
        for rid in range(first, first + pairs):
            await pair(rid)
        return (time.perf_counter() - started) / pairs * 1e6

    return [trio.run(run, 1 + k * pairs) for k in range(repeat)]


def pairs_in(tree: str | None, pairs: int, repeat: int) -> dict[str, list[float]]:
    """The pair timings of ``tree`` (None: this one), measured in a fresh interpreter."""
    env = {**os.environ, "BENCH_TREE": tree or str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, __file__, "--pairs-only", "--pairs", str(pairs),
                          "--repeat", str(repeat)], env=env, check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, list[float]] = json.loads(out)
    return result


COLUMNS = {"no_audit": "2025, no audit", "audit": "2025, audit",
           "no_audit_2026": "2026, no audit", "audit_2026": "2026, audit"}


def mediator_table(pairs: int, repeat: int, baseline: str | None, rounds: int) -> None:
    trees = {"this tree": None} | ({"baseline": baseline} if baseline else {})
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for _ in range(rounds):  # interleaved, so that load on the machine hits both alike
        for name, tree in trees.items():
            for key, values in pairs_in(tree, pairs, repeat).items():
                runs[name].setdefault(key, []).extend(values)
    keys = [k for k in COLUMNS if all(k in r for r in runs.values())]
    print(f"\nmediator, one tools/call pair, {rounds} rounds of {repeat} x {pairs} pairs; "
          "us, median (min). 2025: a session's from_client + from_server; 2026: a "
          "stateless 2026-07-28 call as the HTTP front takes it (a mediator of its own)")
    print(f"{'tree':12}" + "".join(f" {COLUMNS[k]:>16}" for k in keys))
    medians = {name: {key: statistics.median(v) for key, v in r.items()}
               for name, r in runs.items()}
    for name, r in runs.items():
        print(f"{name:12}" + "".join(f" {medians[name][k]:8.2f} ({min(r[k]):5.2f})"
                                     for k in keys))
    if baseline:
        this, base = medians["this tree"], medians["baseline"]
        print(f"{'ratio':12}" + "".join(f" {this[k] / base[k]:15.2f}x" for k in keys)
              + "   (medians, this tree / baseline; lower is faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000,
                        help="calls per timing for small messages (large: / 1000)")
    parser.add_argument("--pairs", type=int, default=20_000,
                        help="call pairs per mediator timing")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the mediator timing (a process each)")
    parser.add_argument("--baseline", help="another mcpwall source tree to measure beside this one")
    parser.add_argument("--pairs-only", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.pairs_only:
        out = {"no_audit": pair_us(opts.pairs, opts.repeat, False),
               "audit": pair_us(opts.pairs, opts.repeat, True)}
        try:
            out["no_audit_2026"] = pair_us(opts.pairs, opts.repeat, False, "2026")
            out["audit_2026"] = pair_us(opts.pairs, opts.repeat, True, "2026")
        except ImportError:  # a tree from before the 2026-07-28 revision
            pass
        print(json.dumps(out))
        return
    from firewall.protocol import inbound  # this tree only (a baseline may lack it)

    print(f"{'message':34} {'bytes':>9} {'decode ns':>11} {'depth ns':>10} {'forward ns':>11}"
          f" {'fwd/dec':>8} {'before ns':>11} {'inbound ns':>11} {'in/before':>9}")
    for name, (data, decided) in CASES.items():
        number = opts.number if len(data) < 10_000 else max(5, opts.number // 1000)
        decode: Callable[[bytes], object] = mcp.decode if decided else jsonrpc.decode
        forward = framing.canonical if decided else framing.line_safe
        base = ns(partial(decode, data), number, opts.repeat)
        depth = ns(partial(bounds.too_deep, data), number, opts.repeat)
        fwd = ns(partial(forward, data), number, opts.repeat)
        # What the mediator did before the one decode, and what it does now.
        before = ns(partial(_two_passes if decided else _relayed_before, data), number,
                    opts.repeat)
        once = ns(partial(inbound.client if decided else _relayed, data), number, opts.repeat)
        print(f"{name:34} {len(data):9,} {base:11,.0f} {depth:10,.0f} {fwd:11,.0f}"
              f" {fwd / base:7.2f}x {before:11,.0f} {once:11,.0f} {once / before:8.2f}x")
    mediator_table(opts.pairs, opts.repeat, opts.baseline, opts.rounds)

if __name__ == "__main__":
    main()
