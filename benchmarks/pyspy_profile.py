"""Sample a running process with py-spy and say where its time goes.

``record`` starts ``py-spy record`` (raw collapsed stacks) on a pid for the
duration of a measurement; ``summarize`` turns the stacks into the functions
with the most samples on top of the stack (self time) and the source files
with the most samples anywhere on the stack (inclusive time).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Frames where a thread waits (py-spy in --nonblocking mode may count them as
# active): reported as one share, left out of the self-time ranking.
WAITING = ("EpollIOManager.get_events", "Condition.wait", "Event.wait", "Lock.acquire",
           "select", "poll", "sleep")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy binary of this environment (the ``bench`` extra), if any."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` (all its threads) for ``seconds``; None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration",
                             str(max(1, round(seconds))), "--rate", "250", "--nonblocking",
                             "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _short(frame: str) -> tuple[str, str]:
    """(function, file shortened to its package path) of one collapsed frame."""
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip(), "?"
    path = found["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        parts = Path(path).parts
        # This package's frames keep their package path at any depth; others the last three.
        ours = [i for i, part in enumerate(parts) if part == "firewall"]
        path = "/".join(parts[ours[-1] if ours else -3:])
    return found["func"], path


def summarize(raw: str, top: int = 12) -> dict[str, Any]:
    """Self time by function and inclusive time by file, as shares of the samples
    not spent waiting (``waiting``: the share that was)."""
    leaf: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        # The first frames are the process and thread names py-spy adds.
        frames = [f for f in frames if f[1] != "?"] or frames
        func, path = frames[-1]
        if func in WAITING:
            waiting += n
            continue
        leaf[f"{func} ({path})"] += n
        for file in {p for _, p in frames}:
            files[file] += n
    busy = total - waiting
    if busy <= 0:
        return {"samples": total, "waiting": 1.0 if total else 0.0, "self": [],
                "inclusive_by_file": []}
    # Shares of the busy samples: where the CPU time goes.
    total = busy
    return {"samples": busy + waiting, "waiting": round(waiting / (busy + waiting), 3),
            "self": [[round(n / total, 3), name] for name, n in leaf.most_common(top)],
            "inclusive_by_file": [[round(n / total, 3), name]
                                  for name, n in files.most_common(top)]}
