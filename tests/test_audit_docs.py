"""The worked investigation in docs/audit.md runs against the generated incident.

Every ``$ mcpwall audit ...`` line of the document is run (in order) with
click's CliRunner; where the document shows the output, every cell it shows
must be in the real output, line by line.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from firewall.audit.incident import DELETE_RULE, GRANT, PRINCIPAL, SESSION, write_incident
from firewall.audit.trail import Trail
from firewall.cli.audit import audit
from firewall.settings.audit import AuditSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "audit.md"
_BLOCK = re.compile(r"```\n(.*?)```", re.S)
_CELLS = re.compile(r"\s{2,}|, ")


def _steps() -> list[tuple[str, list[str] | None]]:
    """(command, documented output lines or None), in document order."""
    text = DOC.read_text()
    investigation = text[text.index("## A worked investigation"):]
    blocks = _BLOCK.findall(investigation)
    steps: list[tuple[str, list[str] | None]] = []
    for i, block in enumerate(blocks):
        commands = [line[2:] for line in block.splitlines() if line.startswith("$ mcpwall ")]
        if not commands:
            continue
        nxt = blocks[i + 1] if i + 1 < len(blocks) else ""
        shown = None if "$ " in nxt or "sqlite-utils" in nxt else nxt.splitlines()
        for j, cmd in enumerate(commands):
            steps.append((cmd, shown if j == len(commands) - 1 else None))
    return steps


@pytest.fixture
def incident(tmp_path: Path) -> Path:
    db = tmp_path / "incident.db"
    with Trail(AuditSettings(path=str(db)), "gw-eu-1") as trail:
        write_incident(trail)
    return db


def _run(cmd: str, db: Path) -> str:
    argv = shlex.split(cmd)
    assert argv[:2] == ["mcpwall", "audit"]
    argv = [str(db) if a == "incident.db" else a for a in argv[2:]]
    result = CliRunner().invoke(audit, argv)
    assert result.exit_code == 0, f"{cmd}: exit {result.exit_code}\n{result.output}"
    return result.output


def test_the_document_has_an_investigation() -> None:
    steps = _steps()
    assert len(steps) >= 5
    assert sum(shown is not None for _, shown in steps) >= 3


def test_every_documented_command_runs_and_shows_what_the_document_says(
        incident: Path) -> None:
    for cmd, shown in _steps():
        out = _run(cmd, incident)
        if shown is None:
            continue
        actual = [line for line in out.splitlines() if line.strip()]
        expected = [line for line in shown if line.strip()]
        assert len(actual) == len(expected), f"{cmd}:\n{out}"
        for want, got in zip(expected, actual, strict=True):
            for cell in _CELLS.split(want.strip()):
                if cell and "…" not in cell and "..." not in cell:
                    assert cell in got, f"{cmd}: {cell!r} not in {got!r}"


def test_the_answers(incident: Path) -> None:
    """Who, with which grant, under which rule, and what else in that session."""
    out = _run("mcpwall audit query incident.db --tool delete_vm --decision allow --json",
               incident)
    [delete] = msgspec.json.decode(out)
    assert (delete["principal"], delete["grant"], delete["rule"]) == (PRINCIPAL, GRANT,
                                                                      DELETE_RULE)
    assert delete["session"] == SESSION and delete["status"] == "ok"
    assert delete["ts"].startswith("2025-06-01T03:12")
    timeline = msgspec.json.decode(_run(f"mcpwall audit timeline incident.db --session "
                                        f"{SESSION} --json", incident))
    kinds = [(r["kind"], r["tool"], r["decision"]) for r in timeline]
    assert kinds[0][0] == "session_start" and kinds[-1][0] == "session_end"
    assert ("call", "stop_vm", "allow") in kinds
    assert [k for k in kinds if k[1] == "delete_vm"] == [
        ("call", "delete_vm", "allow"), ("call", "delete_vm", "limited"),
        ("call", "delete_vm", "deny")]
    assert all(r["session"] == SESSION for r in timeline)
