"""Newline-delimited framing for the stdio transport (sans-IO).

MCP's stdio transport sends one JSON-RPC message per line; messages contain
no embedded newlines. :class:`LineSplitter` turns arbitrary chunks into lines
and bounds memory: a line longer than ``max_line`` is not buffered, it is
skipped up to its newline and reported as :data:`TOO_LONG`.

Example::

    s = LineSplitter(max_line=1024)
    assert s.feed(b'{"a":1}\\n{"b"') == [b'{"a":1}']
    assert s.feed(b':2}\\n') == [b'{"b":2}']
"""

from __future__ import annotations

from typing import Final


class _TooLong(bytes):
    """Marker for a line that exceeded the cap (its content was dropped)."""


TOO_LONG: Final = _TooLong(b"")


class LineSplitter:
    """Incremental line splitter with a per-line cap."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes | bytearray) -> list[bytes]:
        """Add ``chunk``; return the complete lines (without ``\\n``, ``\\r\\n`` trimmed).

        Empty lines are ignored. A line over the cap appears once as TOO_LONG.
        """
        lines: list[bytes] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._buf += chunk[start:nl]
                if len(self._buf) > self.max_line:
                    lines.append(TOO_LONG)
                else:
                    line = bytes(self._buf).rstrip(b"\r")
                    if line.strip():
                        lines.append(line)
            self._buf.clear()
            start = nl + 1
        if not self._skipping:
            self._buf += chunk[start:]
            if len(self._buf) > self.max_line:
                self._buf.clear()
                self._skipping = True
                lines.append(TOO_LONG)
        return lines

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line."""
        return len(self._buf)

    def remainder(self) -> bytes:
        """What is left at end of stream (a last line without a newline)."""
        rest = b"" if self._skipping else bytes(self._buf).rstrip(b"\r")
        self._buf.clear()
        return rest if rest.strip() else b""
