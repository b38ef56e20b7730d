"""Every ``mcpwall ...`` line of a ```sh block in README.md and docs/*.md runs.

Each line runs in its own prepared working directory (so ``approve`` and
``reject`` of the same request both find it pending): the ``rules/`` packs, a
``mcpwall.toml`` naming them, an audit database written through the audit
writer (``mcpwall-audit.db``, the default path), and an approvals database
holding request ``3f9c2a1b``. ``$ mcpwall audit ...`` lines of docs/audit.md
are run by tests/test_audit_docs.py against its incident database.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from firewall.audit.events import DecisionEvent, OutcomeEvent
from firewall.audit.query import parse_time
from firewall.audit.trail import Trail
from firewall.cli import main
from firewall.gateway.approvals.desk import ApprovalRequest, open_store
from firewall.settings.audit import AuditSettings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Lines that cannot run here, and why.
SKIPPED = {
    "mcpwall serve mcpwall.toml": "starts a server (tests/test_serve_*.py run it)",
}
# A block that sets MCPWALL_ADMIN_URL talks to a running gateway's operator API
# (tests/test_admin_api.py runs approvals and kill-switch against one).
NEEDS_LISTENER = "MCPWALL_ADMIN_URL="
# Lines whose documented exit code is not 0, and why.
EXPECTED_EXIT = {
    "mcpwall explain rules/virtualization.json --tool vm_management "
    """--args '{"action":"delete","vm_name":"web-01"}'""": 3,  # it shows a refusal
    "mcpwall status": 1,  # nothing runs in the test's empty registry
}

CONFIG = """\
[policy]
files = ["rules/virtualization.json"]

[servers.virtualization]
transport = "stdio"
command = "python"
args = ["-m", "firewall.demo"]
"""


def _examples() -> list[tuple[str, str, str | None]]:
    """(doc, command line without its comment, why it is skipped or None)."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"^```sh\n(.*?)^```", doc.read_text(), re.S | re.M):
            for line in block.splitlines():
                if not line.startswith("mcpwall "):
                    continue
                text = " ".join(shlex.quote(w) if " " in w or "{" in w else w
                                for w in shlex.split(line, comments=True))
                why = SKIPPED.get(text)
                if why is None and NEEDS_LISTENER in block:
                    why = "goes to the operator API of a running gateway ($MCPWALL_ADMIN_URL)"
                if why is None and ("--admin-url" in line or " wrap " in line):
                    why = "needs a running gateway or a server process"
                if why is None and line.startswith("mcpwall scan "):
                    why = "starts the server it scans (tests/test_scan_live.py runs these)"
                found.append((doc.name, text, why))
    return found


EXAMPLES = _examples()


def test_the_docs_have_examples_and_most_run() -> None:
    assert len(EXAMPLES) >= 15
    assert sum(why is None for _, _, why in EXAMPLES) >= 10
    assert any("audit query --principal build-agent" in line for _, line, _ in EXAMPLES)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "mcpwall.toml").write_text(CONFIG)
    t0 = parse_time("2026-11-25T03:05:00Z")
    with Trail(AuditSettings(path=str(tmp_path / "mcpwall-audit.db")), "gw") as trail:
        trail.append_batch([
            DecisionEvent(ts_ns=t0, call_id="c1", session="s1", principal="build-agent",
                          grant="g", server="virtualization", method="tools/call",
                          tool="vm_management", arguments={"action": "list"},
                          decision="allow", rule="read"),
            OutcomeEvent(ts_ns=t0 + 1000, call_id="c1", session="s1",
                         server="virtualization", status="ok", latency_ns=1000),
        ])
    with open_store(tmp_path / "mcpwall-approvals.db") as store:
        store.add(ApprovalRequest(
            id="3f9c2a1b", created_ns=t0, expires_ns=2**62, instance="gw", session="s1",
            principal="build-agent", grant="g", server="virtualization",
            method="tools/call", target="vm_management",
            arguments={"action": "delete", "vm_name": "web-01"}, rule="deletes"))
    monkeypatch.chdir(tmp_path)
    for name in ("MCPWALL_ADMIN_URL", "MCPWALL_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MCPWALL_REGISTRY", str(tmp_path / "registry"))  # nothing runs
    return tmp_path


@pytest.mark.parametrize(("doc", "line", "why"), EXAMPLES,
                         ids=[f"{d}: {line[:60]}" for d, line, _ in EXAMPLES])
def test_the_example_runs(doc: str, line: str, why: str | None, workdir: Path) -> None:
    if why is not None:
        pytest.skip(why)
    result = CliRunner().invoke(main, shlex.split(line)[1:])
    assert result.exit_code == EXPECTED_EXIT.get(line, 0), (doc, line, result.output)
    if "audit query --principal build-agent" in line:
        assert "build-agent" in result.output and "vm_management" in result.output


def test_audit_without_a_database_says_so(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["audit", "query", "--since", "1h"])
    assert result.exit_code == 2 and "no audit database" in result.output
