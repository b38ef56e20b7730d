"""Reading a running mcpwall's audit trail from a test.

The writer commits in groups, after the answer went out, so a test that
just saw an answer polls for the rows that record it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def wait_rows(db: Path, sql: str, args: Sequence[Any] = (), at_least: int = 0,
              seconds: float = 10.0) -> list[Any]:
    """The rows of ``sql`` on the trail at ``db`` (opened read-only), once there
    are ``at_least`` of them or ``seconds`` have passed.

    ``wait_rows(db, "SELECT method FROM denials", at_least=1)``
    """
    deadline = time.monotonic() + seconds
    while True:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = list(conn.execute(sql, tuple(args)))
        if len(rows) >= at_least or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
