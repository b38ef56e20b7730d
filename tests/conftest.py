"""Shared fixtures: where the real third-party servers live."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.process_guard import GUARD, guarded_phase

HTTP_PARSERS = ("httptools", "h11")


@pytest.fixture(params=HTTP_PARSERS)
def http_parser(request: pytest.FixtureRequest) -> str:
    """Each HTTP/1.1 parser of the front (``[http] parser``), for tests that run with both."""
    return str(request.param)

ROOT = Path(__file__).resolve().parent.parent
NODE_BIN = ROOT / "scripts" / "node" / "node_modules" / ".bin"
VENV_BIN = Path(sys.executable).parent


def node_tool(name: str) -> str:
    """Path of an npm-installed command; skip the test if scripts/setup-node has not run."""
    path = NODE_BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed: run scripts/setup (it runs scripts/setup-node)")
    return str(path)


def venv_tool(name: str) -> str:
    """Path of a console script installed in this virtualenv."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed in the virtualenv: run scripts/setup")
    return found


def mcpwall_argv() -> list[str]:
    """How to run this checkout's mcpwall."""
    return [sys.executable, "-m", "firewall"]


# The fast tier starts no process (tests/process_guard.py): each phase of a test not
# marked slow runs with the doors to new processes shut, and fails if it tried one.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


# A skip that says a dependency is missing: the project's own scripts install
# every one, so in the whole suite (scripts/test sets MCPWALL_FULL_SUITE) or
# in CI such a skip would hide a test that never ran.
_MISSING_DEPENDENCY = ("not installed", "is missing", "run scripts/setup")


def _missing_dependency(report: pytest.TestReport) -> str | None:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    return reason if any(m in reason for m in _MISSING_DEPENDENCY) else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                         pytest.TestReport]:
    """In the whole suite or CI, a skip for a missing dependency is a failure."""
    report = yield
    reason = _missing_dependency(report)
    if reason is not None and (os.environ.get("MCPWALL_FULL_SUITE") or os.environ.get("CI")):
        report.outcome = "failed"
        report.longrepr = f"a dependency the set-up installs is missing: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    with guarded_phase(item):
        result = yield
    GUARD.verdict()
    return result
