"""The TypeScript SDK v2 client (``@modelcontextprotocol/client`` 2.x) through mcpwall.

``fixtures/ts_v2_client.mjs`` runs the v2 client under Node 22, pinned to
2026-07-28, in ``auto`` mode or ``legacy``; it lists tools, calls an allowed
and a denied tool and listens. Through ``mcpwall serve`` to a server of the
new revision (``fixtures/listen_server.py``: the listen stream carries
``tools/list_changed`` under policy) and to a 2025 one (server-everything
over HTTP: the auto client falls back); through ``mcpwall wrap`` to a
dual-era stdio server (``fixtures/dual_era_server.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import mcpwall_argv

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURES = Path(__file__).resolve().with_name("fixtures")
CLIENT = FIXTURES / "ts_v2_client.mjs"
MODULES = harness.NODE22.parents[2]
POLICY = {"version": "1", "default": "allow",
          "tools": {"danger": {"action": "deny", "reason": "too dangerous"},
                    "wipe": {"action": "deny", "reason": "too dangerous"},
                    "get-env": {"action": "deny", "reason": "no secrets"}},
          "methods": {"subscriptions/listen/promptsListChanged": {"action": "deny"}}}


def _client_problem() -> str | None:
    if not (MODULES / "@modelcontextprotocol" / "client" / "package.json").exists():
        return "the TypeScript SDK v2 client is not installed (scripts/node)"
    return harness.toolchain_problem()


def run_client(*args: str, timeout: float = 90) -> dict[str, Any]:
    proc = subprocess.run([str(harness.NODE22), str(CLIENT), "--modules", str(MODULES), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in report, report["error"]
    return report


def refused(outcome: dict[str, Any]) -> bool:
    """A call mcpwall refused: a JSON-RPC error, or a tool result saying so."""
    return (not outcome["ok"]) or (outcome["isError"] and
                                   "Refused by mcpwall" in json.dumps(outcome["content"]))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    problem = _client_problem()
    if problem:
        harness.skip_or_fail(problem)
    work = tmp_path_factory.mktemp("tsv2")
    port = harness.free_port()
    plain = harness.free_port()
    with harness.background([sys.executable, str(FIXTURES / "listen_server.py"),
                             "--port", str(port)], work / "server.log") as server, \
            harness.background([sys.executable, str(FIXTURES / "modern_server.py"),
                                "--port", str(plain)], work / "modern.log") as modern, \
            harness.everything_http(work) as everything:
        harness.wait_for_port(port, server, work / "server.log")
        harness.wait_for_port(plain, modern, work / "modern.log")
        policy = work / "policy.json"
        policy.write_text(json.dumps(POLICY))
        front = harness.free_port()
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}", "",
                 "[policy]", f"files = [{json.dumps(str(policy))}]", "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
                 "[servers.modern]", 'transport = "http"',
                 f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", "",
                 "[servers.plain]", 'transport = "http"',
                 f"url = {json.dumps(f'http://127.0.0.1:{plain}/mcp')}", "",
                 "[servers.everything]", 'transport = "http"',
                 f"url = {json.dumps(everything)}", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(front, proc, log)
            yield f"http://127.0.0.1:{front}"


@pytest.mark.parametrize("mode", [MODERN, "auto"])
def test_v2_client_through_serve_to_a_new_server_listens_under_policy(
        gateway: str, mode: str) -> None:
    report = run_client("--mode", mode, "--url", harness.endpoint(gateway, "modern"),
                        "--allowed", "echo", "--denied", "danger", "--listen", "--emit", "emit")
    assert report["version"] == MODERN
    assert "danger" not in report["tools"] and "echo" in report["tools"]
    assert report["prompts"] == ["greeting"]
    assert sorted(report["resources"]) == ["res://open", "res://secret"]
    assert report["calls"]["echo"]["ok"] and not report["calls"]["echo"]["isError"]
    assert refused(report["calls"]["danger"])
    # promptsListChanged was asked for and refused by the policy: not honoured.
    assert report["honored"] == {"toolsListChanged": True}
    assert report["listenWait"] == "notified"
    assert report["notifications"] == ["notifications/tools/list_changed"]
    assert report["closed"] == "local"


@pytest.mark.parametrize("mode", [MODERN, "auto"])
def test_v2_client_through_serve_to_the_modern_fixture(gateway: str, mode: str) -> None:
    report = run_client("--mode", mode, "--url", harness.endpoint(gateway, "plain"),
                        "--allowed", 'regional={"region": "eu", "query": "q"}',
                        "--denied", "danger")
    assert report["version"] == MODERN
    assert report["tools"] == ["echo", "regional"]  # danger: filtered for this caller
    assert report["prompts"] == ["greeting"]
    assert report["calls"]["regional"]["ok"] and not report["calls"]["regional"]["isError"]
    assert refused(report["calls"]["danger"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_v2_client_through_serve_to_a_2025_server_falls_back(gateway: str, mode: str) -> None:
    report = run_client("--mode", mode, "--url", harness.endpoint(gateway, "everything"),
                        "--allowed", 'echo={"message": "hi"}', "--denied", "get-env")
    assert report["version"] != MODERN
    assert "get-env" not in report["tools"] and "echo" in report["tools"]
    assert report["calls"]["echo"]["ok"] and not report["calls"]["echo"]["isError"]
    assert refused(report["calls"]["get-env"])


@pytest.mark.parametrize("mode", [MODERN, "auto"])
def test_v2_client_through_wrap_to_a_dual_era_server(tmp_path: Path, mode: str) -> None:
    if problem := _client_problem():
        harness.skip_or_fail(problem)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(tmp_path / "audit.db"),
            "--policy", str(policy), "--", sys.executable, str(FIXTURES / "dual_era_server.py")]
    report = run_client("--mode", mode, "--stdio", json.dumps(argv),
                        "--allowed", 'echo={"text": "hi"}', "--denied", "wipe")
    assert report["version"] == MODERN
    assert report["tools"] == ["echo"]
    assert report["calls"]["echo"]["ok"] and not report["calls"]["echo"]["isError"]
    assert refused(report["calls"]["wipe"])


def test_v2_client_listens_through_wrap(tmp_path: Path) -> None:
    if problem := _client_problem():
        harness.skip_or_fail(problem)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(tmp_path / "audit.db"),
            "--policy", str(policy), "--", sys.executable, str(FIXTURES / "listen_server.py"),
            "--stdio"]
    report = run_client("--mode", MODERN, "--stdio", json.dumps(argv),
                        "--denied", "danger", "--listen", "--emit", "emit")
    assert report["version"] == MODERN
    assert refused(report["calls"]["danger"])
    assert report["honored"] == {"toolsListChanged": True}
    assert report["listenWait"] == "notified"
