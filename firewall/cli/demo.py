"""``mcpwall demo``: the bundled demo MCP server on stdin/stdout."""

from __future__ import annotations

from firewall.demo.server import main as demo

demo.short_help = "Run the bundled demo MCP server on stdin/stdout."
demo.help = """Run the bundled demo MCP server (a simulated virtualization host) on stdin/stdout.

\b
Example (what `mcpwall serve` without a config runs, behind rules/virtualization.json):
  mcpwall wrap --policy rules/virtualization.json -- mcpwall demo

\b
Exit codes: 0 the client closed stdin; 2 usage error (bad option).
"""

__all__ = ["demo"]
