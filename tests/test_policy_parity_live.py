"""An Intercept YAML policy with a spend cap (``state`` with ``increment_from``)
through a real `mcpwall wrap` process, the real SDK client and the demo server:
a call the upstream fails with a JSON-RPC error gives its amount back, one it
answers keeps it, and the next one past the cap is refused with ``on_deny``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import mcpwall_argv
from mcp.shared.exceptions import MCPError
from sdk_scenarios import stdio_session

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "firewall.demo"]

# "no_such_tool" is listed, so the policy allows it, and the demo server
# answers it with a JSON-RPC error; the "*" rule's cap counts both tools.
POLICY = """\
version: "1"
default: deny
tools:
  proxmox_management:
    rules: []
  no_such_tool:
    rules: []
  "*":
    rules:
      - name: "daily memory budget"
        conditions:
          - path: "state._global.memory_mb"
            op: "lte"
            value: 4096
        on_deny: "Daily memory budget of 4096 MB reached"
        state:
          counter: "memory_mb"
          window: "day"
          increment_from: "args.memory"
"""


async def test_an_intercept_spend_cap_rolls_back_failures_and_refuses_past_the_cap(
        tmp_path: Path) -> None:
    policy = tmp_path / "intercept.yaml"
    policy.write_text(POLICY)
    argv = [*mcpwall_argv(), "wrap", "--policy", str(policy), "--", *DEMO]
    async with stdio_session(argv) as session:
        for _ in range(3):  # 3 x 3000 MB would pass the cap: each failure gives it back
            with pytest.raises(MCPError) as failed:
                await session.call_tool("no_such_tool", {"memory": 3000})
            assert "unknown tool" in str(failed.value)
        kept = await session.call_tool("proxmox_management",
                                       {"operation": "list", "memory": 3000})
        text = kept.content[0].text  # type: ignore[union-attr]
        assert "memory budget" not in text  # the upstream answered: 3000 MB kept
        refused = await session.call_tool("proxmox_management",
                                          {"operation": "list", "memory": 2000})
        assert refused.is_error
        assert "Daily memory budget of 4096 MB reached" in (
            refused.content[0].text)  # type: ignore[union-attr]
        # Refused by mcpwall now, before the upstream (which would answer an error).
        refused = await session.call_tool("no_such_tool", {"memory": 2000})
        assert refused.is_error and "Daily memory budget" in (
            refused.content[0].text)  # type: ignore[union-attr]
        fits = await session.call_tool("proxmox_management",
                                       {"operation": "list", "memory": 1000})
        assert "memory budget" not in fits.content[0].text  # type: ignore[union-attr]
        missing = await session.call_tool("proxmox_management", {"operation": "list"})
        assert missing.is_error and "args.memory" in (
            missing.content[0].text)  # type: ignore[union-attr]
