"""``mcpwall scan`` against real servers: the bundled demo, mcp-server-git,
mcp-server-time and server-everything over stdio, server-everything over
Streamable HTTP, a paging fixture, and servers that fail in the ways an
operator meets (no such command, an early exit, a timeout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import ROOT, mcpwall_argv, venv_tool

from firewall.gateway.upstream.survey import SurveyError, survey_stdio
from firewall.policy.schema import load_policy
from tests.fixtures import conformance_harness as harness
from tests.mediation_harness import everything_available, everything_server

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "firewall.demo"]
PAGED = ROOT / "tests" / "fixtures" / "paged_server.py"


def scan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mcpwall_argv(), "scan", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def scan_json(*args: str) -> dict[str, Any]:
    done = scan("--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def check(path: Path) -> None:
    done = subprocess.run([*mcpwall_argv(), "check", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def kinds(result: dict[str, Any]) -> dict[str, Any]:
    return {t["name"]: t["values"] if t["argument"] else t["kind"] for t in result["tools"]}


def test_demo_server_yaml_to_a_file_checks_and_splits_vm_management(tmp_path: Path) -> None:
    out = tmp_path / "demo.yaml"
    done = scan("-o", str(out), "--", *DEMO)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and "vm_management" in done.stdout
    check(out)
    text = out.read_text()
    assert "# delete, reset: the names say delete, reset: held for approval" in text
    policy = load_policy(out).policy
    rules = {r.name: r for r in policy.tools["vm_management"].rules}
    assert rules["read"].when == {"action": ["list", "info"]}
    assert rules["change"].limits[0].max == 10
    assert rules["destroy"].action == "require_approval"
    assert set(policy.prompts) == {"safe_experiment", "vm_health_report"}


def test_demo_server_against_the_virtualization_pack() -> None:
    done = scan("--against", str(ROOT / "rules" / "virtualization.json"), "--", *DEMO)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "uncovered  prompts/safe_experiment" in done.stdout
    assert "0 missing" in done.stdout
    done = scan("--json", "--against", str(ROOT / "rules" / "git.json"), "--", *DEMO)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["fits"] is False
    assert {g["name"] for g in report["uncovered"] if g["table"] == "tools"} >= {
        "vm_management", "info_tools"}
    assert {g["name"] for g in report["missing"]} >= {"git_status", "git_reset"}


def test_mcp_server_git(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    server = [venv_tool("mcp-server-git"), "--repository", str(tmp_path)]
    result = scan_json("--", *server)
    found = kinds(result)
    assert found["git_status"] == "read" and found["git_log"] == "read"
    assert found["git_commit"] == "change" and found["git_create_branch"] == "change"
    assert found["git_reset"] == "destroy"
    assert "unknown" not in found.values()
    done = scan("--against", str(ROOT / "rules" / "git.json"), "--", *server)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("fits: mcp-git: 12 tools")


def test_mcp_server_time_json_output(tmp_path: Path) -> None:
    out = tmp_path / "time.json"
    result = scan_json("-o", str(out), "--name", "clock", "--", venv_tool("mcp-server-time"))
    assert kinds(result) == {"convert_time": "read", "get_current_time": "read"}
    assert result["output"] == str(out)
    check(out)
    doc = json.loads(out.read_text())
    assert doc["name"] == "clock"
    assert doc["tools"]["get_current_time"]["description"].startswith(
        "read: annotated readOnlyHint")


@pytest.mark.node
def test_server_everything_over_stdio_and_http(tmp_path: Path) -> None:
    if not everything_available():
        pytest.skip("server-everything not installed: run scripts/setup")
    over_stdio = scan_json("--", *everything_server())
    found = kinds(over_stdio)
    assert found["get-sum"] == "read" and found["toggle-simulated-logging"] == "change"
    assert "unknown" not in found.values()
    assert over_stdio["prompts"] > 0 and over_stdio["resources"] > 0
    harness.require_toolchain()
    with harness.everything_http(tmp_path / "everything") as url:
        over_http = scan_json("--upstream", url, "--header", "X-Scan: yes")
        out = tmp_path / "everything.yaml"
        done = scan("--upstream", url, "-o", str(out))
        assert done.returncode == 0, done.stderr
        done = scan("--upstream", url.replace("/mcp", "/nothing"))
    assert done.returncode == 2 and "HTTP 404" in done.stderr
    assert kinds(over_http) == found
    assert over_http["policy"] == over_stdio["policy"]
    check(out)


def test_paging_and_a_server_request(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"

    async def run() -> Any:
        with trio.fail_after(30):
            return await survey_stdio([sys.executable, str(PAGED), str(record)])

    survey = trio.run(run)
    assert [t["name"] for t in survey.tools] == [
        "delete_all", "list_items", "tool_2", "tool_3", "tool_4"]
    assert survey.prompts == [{"name": "hello"}] and survey.resources == []
    sent = [json.loads(line) for line in record.read_text().splitlines()]
    assert [m.get("method") for m in sent] == [
        "initialize", "notifications/initialized", "tools/list", None, "tools/list",
        "tools/list", "prompts/list"]
    assert sent[3]["id"] == "srv-1" and sent[3]["error"]["code"] == -32601
    assert [m.get("params", {}).get("cursor") for m in sent if m.get("method") == "tools/list"
            ] == [None, "2", "4"]


def test_a_cursor_that_comes_back_is_an_error(tmp_path: Path) -> None:
    done = scan("--", sys.executable, str(PAGED), str(tmp_path / "r"), "--loop")
    assert done.returncode == 2
    assert "tools/list: the server gave the cursor '2' twice" in done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["no-such-command-mcpwall"], "cannot start 'no-such-command-mcpwall'"),
    ([sys.executable, "-c", "print('hello'); raise SystemExit(3)"],
     "exited with code 3 before answering initialize; its stdout held non-JSON-RPC text: "
     "'hello'"),
    ([sys.executable, "-c", "import time; time.sleep(30)"],
     "timed out after 1 s waiting for the answer to initialize"),
])
def test_servers_that_cannot_be_scanned_exit_2(argv: list[str], message: str) -> None:
    done = scan("--timeout", "1", "--", *argv)
    assert done.returncode == 2, done.stdout
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_server_that_exits_is_quoted(tmp_path: Path) -> None:
    done = scan("--", venv_tool("mcp-server-git"), "--repository", str(tmp_path))
    assert done.returncode == 2
    assert "exited with code 0 before answering initialize; its stderr ended with: " in (
        done.stderr)
    assert f"{tmp_path} is not a valid Git repository" in done.stderr


def test_survey_errors_are_values_not_groups() -> None:
    async def run() -> None:
        with trio.fail_after(30):
            await survey_stdio([sys.executable, "-c", "raise SystemExit(4)"])

    with pytest.raises(SurveyError, match="exited with code 4"):
        trio.run(run)


def test_demo_server_in_the_other_formats(tmp_path: Path) -> None:
    out = tmp_path / "demo.intercept.yaml"
    done = scan("--format", "intercept", "-o", str(out), "--", *DEMO)
    assert done.returncode == 0, done.stderr
    assert "note: tools.vm_management.limits: cannot be expressed (dropped)" in done.stderr
    check(out)
    done = scan("--format", "policylayer", "--", *DEMO)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["tools"]["vm_management"]["require"][0]["value"] == [
        "list", "info", "create", "start", "stop", "clone", "pause", "resume"]
    done = scan("--format", "policylayer", "-o", str(tmp_path / "x.yaml"), "--", "no-such")
    assert done.returncode == 2 and "policylayer policies are written as .json" in done.stderr
