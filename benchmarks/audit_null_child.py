"""A stand-in for the audit writer process that stores nothing (benchmarks only).

It speaks the pipe protocol of :mod:`firewall.audit.process` (``O`` -> ``R``,
each ``B`` -> ``A``, ``C`` -> ``Z``) and acknowledges each batch at once, so
``bench_audit.py`` can measure what the gateway side (producers, encoding,
hand-over, wake-ups) costs on its own: the ceiling that storage cannot raise.
"""

from __future__ import annotations

import os
import sys

import msgspec

from firewall.audit.process import _frame, _take_frame


def main() -> int:
    buf = bytearray()
    out = os.dup(1)
    os.dup2(2, 1)

    def send(kind: bytes, payload: object) -> None:
        data = memoryview(_frame(kind, msgspec.msgpack.encode(payload)))
        while data:
            data = data[os.write(out, data):]

    while True:
        frame = _take_frame(buf)
        if frame is None:
            data = os.read(0, 1 << 20)
            if not data:
                return 0
            buf += data
            continue
        kind = frame[:1]
        if kind == b"O":
            send(b"R", [0, "0" * 64])
        elif kind == b"B":
            send(b"A", [True, "", 0.0, 0.0])
        elif kind == b"C":
            send(b"Z", [True, ""])
            return 0


if __name__ == "__main__":
    sys.exit(main())
