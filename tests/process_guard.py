"""The fast tier starts no process: a guard that fails any test not marked ``slow`` that does.

Rules this file keeps:

1. ``pytest -m "not slow"`` (``scripts/test --fast``) is the fast tier: it runs in memory,
   with sockets on 127.0.0.1 at most. A test that starts a process (``subprocess``,
   ``trio.run_process`` / ``trio.lowlevel.open_process``, asyncio subprocesses,
   ``multiprocessing``, ``os.fork``, ``os.posix_spawn``, ``os.system``) is marked ``slow``.
2. The guard is armed for the setup, call and teardown of every test not marked ``slow``,
   so a function fixture that starts a server counts against the test that asked for it.
3. Every door to a new process is shut by patching the one Python-level function it goes
   through; the attempt raises :class:`ProcessInFastTest` and is also recorded, so a test
   that swallows the exception still fails when the phase ends.

The tiers cannot drift: a new test that starts a process and forgets the marker fails on
its first run, with a message naming what it started.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest


class ProcessInFastTest(Exception):
    """A test of the fast tier tried to start a process."""


def _describe(args: Any) -> str:
    if isinstance(args, (list, tuple)):
        return " ".join(str(a) for a in args[:4]) + (" ..." if len(args) > 4 else "")
    return str(args)


class ProcessGuard:
    """Shuts the doors to new processes while armed; remembers each attempt."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.nodeid = ""

    def _refuse(self, what: str) -> ProcessInFastTest:
        self.attempts.append(what)
        return ProcessInFastTest(
            f"{self.nodeid} is not marked slow but started a process ({what}). "
            "Mark it @pytest.mark.slow (or pytestmark = pytest.mark.slow in its module), "
            "or drive the component in memory (tests/memory_fronts.py)."
        )

    def _blocker(self, name: str, describe: Callable[..., str]) -> Callable[..., Any]:
        def blocked(*args: Any, **kwargs: Any) -> Any:
            raise self._refuse(f"{name}: {describe(*args, **kwargs)}")

        return blocked

    @contextlib.contextmanager
    def armed(self, nodeid: str) -> Iterator[None]:
        """Refuse every new process inside the block."""
        self.nodeid = nodeid
        self.attempts.clear()
        doors: list[tuple[Any, str, Callable[..., Any]]] = [
            (
                subprocess.Popen,
                "_execute_child",
                self._blocker("subprocess.Popen", lambda _self, args, *a, **k: _describe(args)),
            ),
            (_posixsubprocess, "fork_exec", self._blocker("fork_exec", lambda *a, **k: "")),
            (os, "fork", self._blocker("os.fork", lambda: "")),
            (os, "forkpty", self._blocker("os.forkpty", lambda: "")),
            (os, "posix_spawn", self._blocker("os.posix_spawn", lambda path, *a, **k: path)),
            (os, "posix_spawnp", self._blocker("os.posix_spawnp", lambda path, *a, **k: path)),
            (os, "system", self._blocker("os.system", lambda command: command)),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in doors]
        for owner, name, blocked in doors:
            setattr(owner, name, blocked)
        try:
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def verdict(self) -> None:
        """Fail the phase if anything tried to start a process, even if the test caught it."""
        if self.attempts:
            attempts, self.attempts = self.attempts, []
            pytest.fail(
                f"{self.nodeid} is not marked slow but started a process: "
                + "; ".join(attempts)
                + ". Mark it @pytest.mark.slow or drive the component in memory.",
                pytrace=False,
            )


GUARD = ProcessGuard()


def guarded_phase(item: pytest.Item) -> contextlib.AbstractContextManager[None]:
    """The guard for one phase of ``item``: armed unless the test is marked slow."""
    if item.get_closest_marker("slow") is not None:
        return contextlib.nullcontext()
    return GUARD.armed(item.nodeid)
