"""The MCP conformance suite against real servers: directly, and through mcpwall.

Direct runs pin the baselines the firewall is held to: server-everything passes
exactly ``EVERYTHING_BASELINE`` (13 of 32 checks with suite 0.1.16), the fixture
passes every check (40 of 40). A run through mcpwall must pass at least what
the same upstream passes directly.

Needs the Node toolchain (``scripts/setup-node``); the through-mcpwall runs need
mcpwall's HTTP front (``firewall.gateway.front.http_front``) and skip until it exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_process import mcpwall_or_skip, require_front

from tests.fixtures import conformance_harness as harness

pytestmark = [pytest.mark.node, pytest.mark.slow]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def everything_url(work_dir: Path) -> Iterator[str]:
    harness.require_toolchain()
    with harness.everything_http(work_dir / "everything") as url:
        yield url


@pytest.fixture(scope="module")
def fixture_url(work_dir: Path) -> Iterator[str]:
    harness.require_toolchain()
    with harness.fixture_http(work_dir / "fixture") as url:
        yield url


@pytest.fixture(scope="module")
def everything_direct(everything_url: str, work_dir: Path) -> harness.SuiteRun:
    return harness.run_suite(everything_url, target="direct-everything", work_dir=work_dir)


def _failures(run: harness.SuiteRun, keys: frozenset[str]) -> str:
    errors = {c.key: c.error for c in run.checks}
    return "\n".join(f"{k}: {errors.get(k) or 'did not run'}" for k in sorted(keys))


def test_everything_direct_passes_exactly_its_baseline(everything_direct: harness.SuiteRun) -> None:
    run = everything_direct
    assert len(run.counted) == 32
    assert run.passed == harness.EVERYTHING_BASELINE, (
        f"missing: {sorted(harness.EVERYTHING_BASELINE - run.passed)}; "
        f"new: {sorted(run.passed - harness.EVERYTHING_BASELINE)}")
    # server-everything has no Host/Origin checks: the rebinding probe gets 200.
    assert "dns-rebinding-protection/localhost-host-rebinding-rejected" in run.failed
    assert run.suite_exit_code == 1


def test_fixture_direct_passes_every_check(fixture_url: str, work_dir: Path) -> None:
    run = harness.run_suite(fixture_url, target="fixture", work_dir=work_dir)
    assert run.failed == frozenset(), _failures(run, run.failed)
    assert run.passed == harness.FIXTURE_BASELINE
    assert len(run.counted) == 40
    assert run.suite_exit_code == 0


def test_single_scenario_run_counts_only_that_scenario(fixture_url: str, work_dir: Path) -> None:
    run = harness.run_suite(fixture_url, target="fixture-one", scenarios=["ping"],
                            work_dir=work_dir)
    assert run.passed == {"ping/ping"}


def test_everything_through_mcpwall_http_keeps_every_direct_pass(
        everything_url: str, everything_direct: harness.SuiteRun, work_dir: Path) -> None:
    require_front()
    upstream = {"everything": harness.HttpUpstream(everything_url)}
    with mcpwall_or_skip(work_dir / "mcpwall-http", upstream) as base:
        run = harness.run_suite(harness.endpoint(base, "everything"),
                                target="through-mcpwall-http", work_dir=work_dir)
    lost = everything_direct.passed - run.passed
    assert not lost, _failures(run, lost)


def test_everything_through_mcpwall_stdio_keeps_every_direct_pass(
        everything_direct: harness.SuiteRun, work_dir: Path) -> None:
    require_front()
    upstream = {"everything": harness.StdioUpstream(harness.everything_stdio_argv())}
    with mcpwall_or_skip(work_dir / "mcpwall-stdio", upstream) as base:
        run = harness.run_suite(harness.endpoint(base, "everything"),
                                target="through-mcpwall-stdio", work_dir=work_dir)
    lost = everything_direct.passed - run.passed
    assert not lost, _failures(run, lost)


def test_fixture_through_mcpwall_http_passes_every_check(fixture_url: str,
                                                          work_dir: Path) -> None:
    require_front()
    upstream = {"fixture": harness.HttpUpstream(fixture_url)}
    with mcpwall_or_skip(work_dir / "fixture-mcpwall-http", upstream) as base:
        run = harness.run_suite(harness.endpoint(base, "fixture"),
                                target="fixture-through-mcpwall-http", work_dir=work_dir)
    assert run.failed == frozenset(), _failures(run, run.failed)
    assert run.passed == harness.FIXTURE_BASELINE


# mcpwall starts one stdio child per client session and the suite opens one
# session per scenario; the fixture's Python start-up (about 1.3 s, mostly
# importing the SDK) makes the whole suite take about a minute this way. The
# test runs the scenarios that exercise what a stdio upstream must relay
# (server-to-client requests, notifications, subscriptions, concurrent
# streams) plus the front's own DNS-rebinding checks; `scripts/conformance
# fixture-through-mcpwall-stdio` runs all 40 checks.
STDIO_SCENARIOS = (
    "tools-call-with-logging", "tools-call-with-progress", "tools-call-sampling",
    "elicitation-sep1330-enums", "resources-subscribe", "server-sse-multiple-streams",
    "dns-rebinding-protection",
)


def test_fixture_through_mcpwall_stdio_passes_relay_scenarios(work_dir: Path) -> None:
    harness.require_toolchain()
    require_front()
    upstream = {"fixture": harness.StdioUpstream(harness.fixture_stdio_argv())}
    with mcpwall_or_skip(work_dir / "fixture-mcpwall-stdio", upstream) as base:
        run = harness.run_suite(harness.endpoint(base, "fixture"),
                                target="fixture-through-mcpwall-stdio",
                                scenarios=STDIO_SCENARIOS, work_dir=work_dir)
    expected = {k for k in harness.FIXTURE_BASELINE if k.split("/")[0] in STDIO_SCENARIOS}
    # The DNS-rebinding checks hit mcpwall's own front: a stdio upstream cannot help.
    assert run.failed == frozenset(), _failures(run, run.failed)
    assert run.passed == expected
    assert len(expected) == 13


# -- the 2026-07-28 revision: suite 0.2.0-alpha.12, --requirements 2026-07-28 -------------


def _next_suite(url: str, target: str, work_dir: Path) -> harness.SuiteRun:
    if not harness.NEXT_CONFORMANCE_JS.exists():
        pytest.skip(f"conformance {harness.NEXT_SUITE_VERSION} is not installed: "
                    "cd scripts/node && npm install")
    return harness.run_suite(url, target=target, work_dir=work_dir,
                             suite_js=harness.NEXT_CONFORMANCE_JS, requirements="2026-07-28")


def test_revision_2026_07_28_checks_passing_directly_pass_through_mcpwall(
        fixture_url: str, work_dir: Path) -> None:
    direct = _next_suite(fixture_url, "next-direct-fixture", work_dir)
    assert len(direct.passed) >= 100, direct.by_scenario()  # the SDK server speaks it
    with mcpwall_or_skip(work_dir / "next-mcpwall",
                         {"fixture": harness.HttpUpstream(fixture_url)}) as base:
        through = _next_suite(harness.endpoint(base, "fixture"), "next-through-fixture",
                              work_dir)
    lost = direct.passed - through.passed
    assert not lost, _failures(through, lost)
