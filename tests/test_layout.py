"""The package layout keeps its promise: loading a config and the offline commands
(``mcpwall check``, ``mcpwall audit``) import no I/O stack (trio, hypercorn, the gateway).

Each case runs in a fresh interpreter with ``-X importtime``, which lists every
module the run imported; the first case is the control that shows the listing
does see the gateway when it is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firewall.audit.events import DecisionEvent
from firewall.audit.trail import Trail
from firewall.settings.audit import AuditSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # each test runs a fresh interpreter

HEAVY = ("trio", "hypercorn", "httptools", "h11", "firewall.gateway")

CONFIG = """\
[policy]
files = ["{rules}"]
[admin]
port = 9866
insecure_no_auth = true
allowed_hosts = ["ops.example.com:443"]
[limits]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
[servers.vm]
transport = "stdio"
command = "python"
"""


def _imported(*args: str) -> set[str]:
    """The modules a ``python -X importtime ARGS`` run imported; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)}


def test_the_listing_sees_the_gateway_when_it_is_imported() -> None:
    assert {"trio", "firewall.gateway.mediator"} <= _heavy(
        _imported("-c", "import firewall.gateway.mediator"))


def test_loading_a_config_imports_no_io_stack(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(CONFIG.format(rules=ROOT / "rules" / "virtualization.json"))
    code = ("import sys; from pathlib import Path; from firewall.config import load_config; "
            f"c = load_config(Path({str(config)!r})); assert c.admin.port == 9866")
    modules = _imported("-c", code)
    assert "firewall.settings.admin" in modules
    assert _heavy(modules) == set()


@pytest.mark.parametrize("target", ["policy", "config"])
def test_mcpwall_check_imports_no_io_stack(tmp_path: Path, target: str) -> None:
    rules = ROOT / "rules" / "virtualization.json"
    path = rules
    if target == "config":
        path = tmp_path / "gw.toml"
        path.write_text(CONFIG.format(rules=rules))
    modules = _imported("-m", "firewall", "check", str(path))
    assert "firewall.policy.lint" in modules  # the command module ran
    assert _heavy(modules) == set()


def test_mcpwall_audit_imports_no_io_stack(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with Trail(AuditSettings(path=str(db)), "gw-1") as trail:
        trail.append_batch([DecisionEvent(
            ts_ns=1, call_id="c1", session="s", principal="alice", grant="g", server="vm",
            method="tools/call", tool="vm_list", decision="allow", rule="r")])
    modules = _imported("-m", "firewall", "audit", "verify", str(db))
    assert "firewall.audit.verify" in modules  # the command module ran
    assert _heavy(modules) == set()
