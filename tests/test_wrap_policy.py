"""Policies enforced in `wrap` mode, through the real SDK client and the demo server."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, mcpwall_argv
from sdk_scenarios import stdio_session

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "fixtures" / "seed-policy.json"
DEMO = [sys.executable, "-m", "firewall.demo"]


def wrap(*options: str) -> list[str]:
    return [*mcpwall_argv(), "wrap", *options, "--", *DEMO]


async def test_seed_policy_allows_ten_per_minute_then_refuses_with_retry_after() -> None:
    async with stdio_session(wrap("--policy", str(SEED), "--grant", "g1")) as session:
        tools = await session.list_tools()
        # default deny: only the tool the policy names is listed.
        assert [t.name for t in tools.tools] == ["vm_management"]
        for _ in range(10):
            ok = await session.call_tool("vm_management", {"action": "list"})
            assert not ok.is_error, ok
        refused = await session.call_tool("vm_management", {"action": "list"})
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "vm_management_rate" in text or "vm_management" in text
        retry = float(re.search(r"[Rr]etry after ([0-9.]+)", text).group(1))  # type: ignore[union-attr]
        assert 0 < retry <= 6.0  # one token refills in 60/10 s
        other = await session.call_tool("snapshot_management", {"action": "list"})
        assert other.is_error and "default" in other.content[0].text  # type: ignore[union-attr]


async def test_virtualization_pack_reads_free_destroy_needs_approval() -> None:
    pack = ROOT / "rules" / "virtualization.json"
    async with stdio_session(wrap("--policy", str(pack))) as session:
        for _ in range(15):  # read-only actions are not rate-limited
            assert not (await session.call_tool("vm_management", {"action": "list"})).is_error
        held = await session.call_tool("vm_management", {"action": "delete", "vm_name": "web-01"})
        assert held.is_error and "approval" in held.content[0].text.lower()  # type: ignore[union-attr]
        info = await session.call_tool("vm_management", {"action": "info", "vm_name": "web-01"})
        assert not info.is_error and "web-01" in json.dumps(info.model_dump(mode="json"))


def test_bad_policy_file_is_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    bad = tmp_path / "bad.json"
    bad.write_text('{"version":"1","default":"deny","tools":{"x":{"limts":[]}}}')
    proc = subprocess.run(wrap("--policy", str(bad)), input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"bad.json" in proc.stderr and b"limts" in proc.stderr
