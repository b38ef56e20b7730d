"""Counters through a real `mcpwall wrap` process, the real SDK client and the demo
server: a call the upstream fails (a JSON-RPC error) gives its reservation
back; one it answers keeps it; the next call past ``max`` is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import mcpwall_argv
from mcp.shared.exceptions import MCPError
from sdk_scenarios import stdio_session

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "firewall.demo"]


async def test_a_failed_call_is_rolled_back_and_a_successful_one_committed(
        tmp_path: Path) -> None:
    # One call a day in all, counted across both tools: "no_such_tool" is allowed
    # by the policy, and the demo server answers it with a JSON-RPC error.
    counter = [{"counter": "calls", "window": "day", "max": 1, "scope": "global",
                "reason": "one call a day"}]
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"default": "deny", "tools": {
        "vm_management": {"counters": counter}, "no_such_tool": {"counters": counter}}}))
    argv = [*mcpwall_argv(), "wrap", "--policy", str(policy), "--", *DEMO]
    async with stdio_session(argv) as session:
        for _ in range(3):  # each failure gives its unit back: never refused by the counter
            with pytest.raises(MCPError) as failed:
                await session.call_tool("no_such_tool", {})
            assert "unknown tool" in str(failed.value)
        ok = await session.call_tool("vm_management", {"action": "list"})
        assert not ok.is_error, ok  # the one unit, kept: the upstream answered
        refused = await session.call_tool("vm_management", {"action": "list"})
        assert refused.is_error
        assert "one call a day" in refused.content[0].text  # type: ignore[union-attr]
        # Refused by mcpwall now, before the upstream (which would answer an error).
        refused = await session.call_tool("no_such_tool", {})
        assert refused.is_error
        assert "one call a day" in refused.content[0].text  # type: ignore[union-attr]
