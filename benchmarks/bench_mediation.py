"""What airtight forwarding costs per message: the canonical form and the depth
check, against the envelope decode every message pays anyway (same run).

    python benchmarks/bench_mediation.py [--repeat 7] [--number 20000]

For each message shape (an SDK tools/call, the same with whitespace and CRLF
between tokens, a notification, a 300 KB tools/list result, a 1 MB text
result), prints the median ns of: ``mcp.decode`` (or ``jsonrpc.decode`` for
responses: the baseline, which includes the depth check), the depth check
alone (``bounds.too_deep``), and ``framing.canonical`` (requests and
notifications: the form the mediator forwards) or ``framing.line_safe``
(responses), with the ratio of the last to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000,
                        help="calls per timing for small messages (large: / 1000)")
    opts = parser.parse_args()
    print(f"{'message':34} {'bytes':>9} {'decode ns':>11} {'depth ns':>10} {'forward ns':>11}"
          f" {'forward/decode':>9}")
    for name, (data, decided) in CASES.items():
        number = opts.number if len(data) < 10_000 else max(5, opts.number // 1000)
        decode: Callable[[bytes], object] = mcp.decode if decided else jsonrpc.decode
        forward = framing.canonical if decided else framing.line_safe
        base = ns(partial(decode, data), number, opts.repeat)
        depth = ns(partial(bounds.too_deep, data), number, opts.repeat)
        fwd = ns(partial(forward, data), number, opts.repeat)
        print(f"{name:34} {len(data):9,} {base:11,.0f} {depth:10,.0f} {fwd:11,.0f}"
              f" {fwd / base:9.2f}x")

if __name__ == "__main__":
    main()
