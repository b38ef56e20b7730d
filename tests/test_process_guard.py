"""The fast tier's guard: a test not marked slow cannot start a process, by any door."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import trio

from tests.process_guard import ProcessGuard, ProcessInFastTest

TRUE = [sys.executable, "-c", "pass"]


def _trio_run_process() -> None:
    trio.run(trio.run_process, TRUE)


def _asyncio_subprocess() -> None:
    async def main() -> None:
        await asyncio.create_subprocess_exec(*TRUE)

    asyncio.run(main())


def _multiprocessing_spawn() -> None:
    multiprocessing.get_context("spawn").Process(target=print).start()


DOORS: dict[str, Callable[[], object]] = {
    "subprocess.run": lambda: subprocess.run(TRUE, check=False),
    "trio.run_process": _trio_run_process,
    "asyncio": _asyncio_subprocess,
    "os.popen": lambda: os.popen("true").read(),
    "os.system": lambda: os.system("true"),
    "os.fork": lambda: os.fork(),  # called through the module: the guard patches it there
    "multiprocessing": _multiprocessing_spawn,
}


@pytest.mark.parametrize("door", DOORS)
def test_every_door_to_a_new_process_is_shut(door: str) -> None:
    guard = ProcessGuard()
    refused = pytest.raises(ProcessInFastTest, match="not marked slow")
    with guard.armed("tests/x.py::test_y"), refused:
        DOORS[door]()
    assert guard.attempts
    with pytest.raises(pytest.fail.Exception, match="test_y is not marked slow"):
        guard.verdict()
    assert not guard.attempts


def test_a_swallowed_attempt_still_fails_the_test() -> None:
    guard = ProcessGuard()
    with guard.armed("tests/x.py::test_y"), contextlib.suppress(Exception):
        subprocess.run(TRUE, check=False)
    with pytest.raises(pytest.fail.Exception, match=r"subprocess\.Popen"):
        guard.verdict()


def test_disarming_restores_every_door() -> None:
    before = (subprocess.Popen._execute_child, os.fork, os.posix_spawn, os.system)  # type: ignore[attr-defined]
    guard = ProcessGuard()
    with guard.armed("tests/x.py::test_y"):
        assert os.fork is not before[1]
    assert (subprocess.Popen._execute_child, os.fork, os.posix_spawn, os.system) == before  # type: ignore[attr-defined]
    guard.verdict()  # nothing was tried: no failure
