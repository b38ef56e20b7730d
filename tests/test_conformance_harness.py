"""The conformance harness's own parts: result parsing, verdicts, mcpwall config, the fixture's
HTTP front door. Fast, and no Node needed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.fixtures import conformance_harness as harness


def _write_scenario(out: Path, scenario: str, stamp: str, checks: list[dict[str, str]] | None
                    ) -> None:
    d = out / f"server-{scenario}-2026-11-25T11-37-{stamp}Z"
    d.mkdir(parents=True)
    if checks is not None:
        (d / "checks.json").write_text(json.dumps(checks), encoding="utf-8")


def test_parse_results_reads_checks_in_run_order(tmp_path: Path) -> None:
    _write_scenario(tmp_path, "tools-list", "16-100", [
        {"id": "tools-list", "name": "ToolsList", "status": "SUCCESS"}])
    _write_scenario(tmp_path, "server-initialize", "15-900", [
        {"id": "server-initialize", "name": "ServerInitialize", "status": "FAILURE",
         "errorMessage": "Failed to initialize: boom"},
        {"id": "outgoing-request", "name": "OutgoingRequest", "status": "INFO"}])
    (tmp_path / "not-a-result").mkdir()

    checks = harness.parse_results(tmp_path)

    assert [c.key for c in checks] == ["server-initialize/server-initialize",
                                       "server-initialize/outgoing-request",
                                       "tools-list/tools-list"]
    assert checks[0].error == "Failed to initialize: boom"
    run = harness.SuiteRun("t", "u", checks, 1, 0.5)
    assert run.passed == {"tools-list/tools-list"}
    assert run.failed == {"server-initialize/server-initialize"}
    assert len(run.counted) == 2  # INFO checks are not counted
    assert run.by_scenario() == {"server-initialize": (0, 1), "tools-list": (1, 1)}


def test_a_scenario_that_wrote_no_checks_is_a_failure(tmp_path: Path) -> None:
    _write_scenario(tmp_path, "ping", "15-000", None)
    [check] = harness.parse_results(tmp_path)
    assert (check.key, check.status) == ("ping/ping", "FAILURE")


def test_verdict_names_missing_and_extra_checks() -> None:
    checks = [harness.Check("a", "x", "X", "SUCCESS"), harness.Check("b", "y", "Y", "FAILURE"),
              harness.Check("c", "z", "Z", "SUCCESS")]
    verdict = harness.Verdict(harness.SuiteRun("t", "u", checks, 1, 1.0),
                              frozenset({"a/x", "b/y"}))
    assert not verdict.ok
    assert verdict.missing == {"b/y"}
    assert verdict.extra == {"c/z"}
    doc = verdict.to_json()
    assert (doc["passed"], doc["counted"], doc["missing"]) == (2, 3, ["b/y"])


def test_baselines_are_consistent() -> None:
    assert len(harness.EVERYTHING_BASELINE) == 13
    assert len(harness.FIXTURE_BASELINE) == 40
    assert harness.EVERYTHING_BASELINE < harness.FIXTURE_BASELINE


def test_mcpwall_config_is_a_valid_gateway_config(tmp_path: Path) -> None:
    config_module = pytest.importorskip("firewall.config")
    odd = tmp_path / 'dir "quoted" \\ back'
    text = harness.mcpwall_config(4321, {
        "everything": harness.HttpUpstream("http://127.0.0.1:9/mcp"),
        "fixture": harness.StdioUpstream(["/usr/bin/python3", str(odd), "--stdio"]),
    }, odd / "audit.db")
    config = config_module.parse_config(text)
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 4321)
    assert config.servers["everything"].url == "http://127.0.0.1:9/mcp"
    assert config.servers["fixture"].command == "/usr/bin/python3"
    assert config.servers["fixture"].args == [str(odd), "--stdio"]
    assert config.audit.path == str(odd / "audit.db")


def test_cli_rejects_an_unknown_target() -> None:
    result = CliRunner().invoke(harness.main, ["no-such-target"])
    assert result.exit_code == 2
    assert "unknown target 'no-such-target'" in result.output


@pytest.mark.slow
def test_fixture_refuses_foreign_host_and_origin(tmp_path: Path) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    with harness.fixture_http(tmp_path) as url:
        port = url.split(":")[2].split("/")[0]
        foreign = httpx.post(url, json=init, timeout=30, headers={
            **accept, "Host": "evil.example.com", "Origin": "http://evil.example.com"})
        local = httpx.post(url, json=init, timeout=30, headers={
            **accept, "Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"})
    assert 400 <= foreign.status_code < 500
    assert local.status_code == 200
    assert local.headers["mcp-session-id"]
