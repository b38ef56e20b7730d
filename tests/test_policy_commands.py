"""The policy commands: check, explain, schema, hash-token."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT

from firewall.cli.policy import COMMANDS
from firewall.identity import hash_token

VIRT = str(ROOT / "rules" / "virtualization.json")
TOOLS = str(ROOT / "tests" / "fixtures" / "virtualization-mcp.tools.json")


@click.group()
def cli() -> None:
    pass


for command in COMMANDS:
    cli.add_command(command)


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=input)
    return result.exit_code, result.output


def test_every_command_has_help_with_example_and_exit_codes() -> None:
    for command in COMMANDS:
        code, out = run(command.name or "", "--help")
        assert code == 0 and "Example" in out and "Exit codes" in out, command.name


def test_check_pack_against_tools_is_clean() -> None:
    code, out = run("check", VIRT, "--tools", TOOLS, "--strict")
    assert code == 0, out
    assert "0 warning(s)" in out
    code, out = run("check", VIRT, "--tools", TOOLS, "--json")
    doc = json.loads(out)
    assert doc["valid"] and doc["rules"]["tools"] == 9 and VIRT in doc["files"]


def test_check_reports_errors_and_lint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tools": {"vm_management": {"acton": "allow"}}}')
    code, out = run("check", str(bad))
    assert code == 1 and "tools.vm_management" in out and "acton" in out

    lintme = tmp_path / "lint.json"
    lintme.write_text(json.dumps({"default": "deny", "tools": {
        "*_management": {},
        "vm_managment": {},
        "vm_management": {"action": "deny", "rules": [
            {"when": {"action": ["list", "info"]}},
            {"when": {"action": "list"}, "action": "deny"},
            {"when": {"action": ["lsit"], "vmname": "x"}},
            {"action": "allow"},
        ]},
    }}))
    code, out = run("check", str(lintme), "--tools", TOOLS)
    assert code == 0, out
    assert "rules[1]: never decides" in out
    assert "action: never used" in out
    assert "including tools the server adds later" in out
    assert "the server has no tool 'vm_managment'" in out
    assert "the tool takes no argument 'vmname'" in out
    assert "['lsit'] are not in the tool's enum" in out
    code, _ = run("check", str(lintme), "--tools", TOOLS, "--strict")
    assert code == 1
    code, out = run("check", str(lintme), "--json")
    assert {f["level"] for f in json.loads(out)["findings"]} >= {"warning"}


def test_check_usage_errors(tmp_path: Path) -> None:
    notools = tmp_path / "t.json"
    notools.write_text('{"nope": 1}')
    code, out = run("check", VIRT, "--tools", str(notools))
    assert code == 2 and "tools/list" in out
    code, _ = run("check", str(tmp_path / "missing.json"))
    assert code == 2


def test_explain_prints_trace_and_exit_code() -> None:
    code, out = run("explain", VIRT, "--tool", "vm_management", "--args",
                    '{"action": "delete", "vm_name": "ci-7"}')
    assert code == 3
    assert "rules[read]: no match" in out and "rules[destroy]: matches" in out
    assert "pending" in out and "deleting a VM destroys its disks" in out
    code, out = run("explain", VIRT, "--tool", "vm_management", "--args",
                    '{"action": "list"}', "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["decision"]["action"] == "allow"
    assert doc["candidates"] == ["virtualization:tools.vm_management"]
    code, out = run("explain", VIRT, "--method", "sampling/createMessage")
    assert code == 0 and "methods.sampling/createMessage" in out


def test_explain_principal_groups_and_server_policy(tmp_path: Path) -> None:
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"name": "own", "tools": {
        "vm_management": {"groups": ["interns"], "action": "deny"},
        "snapshot_*": {"groups": ["admins"]}}}))
    args = ("explain", VIRT, "--server", "vm", "--server-policy", str(own), "--json")

    def rule(*extra: str) -> str:
        code, out = run(*args, *extra)
        assert code in (0, 3), out
        return str(json.loads(out)["decision"]["rule"])

    vm = ("--tool", "vm_management", "--args", '{"action": "list"}')
    # Equally specific and equally restrictive: the server's own entry wins.
    assert rule(*vm, "--group", "interns") == "own:tools.vm_management"
    assert rule(*vm, "--principal", "bob") == "virtualization:tools.vm_management.rules[read]"
    # An exact name in the fleet pack beats the server's glob.
    snap = ("--tool", "snapshot_management", "--args", '{"action": "delete"}')
    assert rule(*snap, "--group", "admins").endswith("snapshot_management.rules[destroy]")
    # The server's own glob decides names the pack does not have.
    assert rule("--tool", "snapshot_x", "--group", "admins") == "own:tools.snapshot_*"
    assert rule("--tool", "snapshot_x") == "default"


@pytest.mark.parametrize("args", [
    ("explain", VIRT),
    ("explain", VIRT, "--tool", "a", "--method", "b"),
    ("explain", VIRT, "--tool", "a", "--args", "[1]"),
    ("explain", VIRT, "--tool", "a", "--args", "{"),
])
def test_explain_usage_errors(args: tuple[str, ...]) -> None:
    assert run(*args)[0] == 2


def test_schema_prints_json_schema() -> None:
    code, out = run("schema")
    assert code == 0 and json.loads(out)["$ref"] == "#/$defs/Policy"


def test_hash_token() -> None:
    code, out = run("hash-token", input="s3cret\n")
    assert code == 0 and f'sha256 = "{hash_token("s3cret")}"' in out
    code, out = run("hash-token", "--new", "--principal", "ci-bot", "--json")
    doc = json.loads(out)
    assert doc["sha256"] == hash_token(doc["token"])
    assert run("hash-token", "x", "--new")[0] == 2
    assert run("hash-token", input="")[0] == 2


def test_check_gateway_config(tmp_path: Path) -> None:
    git = ROOT / "rules" / "git.json"
    config = tmp_path / "mcpwall.toml"
    config.write_text(
        f'[policy]\nfiles = ["{VIRT}"]\n'
        f'[servers.git]\ntransport = "stdio"\ncommand = "mcp-server-git"\npolicy = ["{git}"]\n'
        '[servers.vm]\ntransport = "stdio"\ncommand = "python"\n'
        f'[[auth.tokens]]\nsha256 = "{hash_token("t")}"\nprincipal = "ci"\n')
    code, out = run("check", str(config), "--json")
    assert code == 0, out
    assert set(json.loads(out)["files"]) == {VIRT, str(git)}
    broken = tmp_path / "broken.toml"
    broken.write_text(config.read_text().replace(hash_token("t"), "abc"))
    code, out = run("check", str(broken))
    assert code == 1 and "auth.tokens[0].sha256" in out
    typo = tmp_path / "typo.json"
    typo.write_text('{"tools": {"x": {"limits": [{"max": 1, "scope": "user"}]}}}')
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text(f'[policy]\nfiles = ["{typo}"]\n')
    code, out = run("check", str(bad_policy))
    assert code == 1 and "tools.x.limits[0].scope" in out
