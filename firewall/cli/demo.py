"""``mcpwall demo``: the bundled demo MCP server on stdin/stdout."""

from __future__ import annotations

from firewall.demo.server import main as demo

demo.help = ("Run the bundled demo MCP server (a simulated virtualization host) "
             "on stdin/stdout.")

__all__ = ["demo"]
