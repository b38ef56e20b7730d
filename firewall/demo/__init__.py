"""The demo MCP server bundled with mcpwall: a simulated virtualization host.

It serves the tool surface of the Virtualization MCP server (``tools.json``)
over an in-memory host; ``mcpwall serve`` with no config runs it as a stdio
child behind the virtualization policy pack. Nothing it does touches the real
machine.

Example::

    python -m firewall.demo
"""

from firewall.demo.catalog import ArgumentError, Catalog
from firewall.demo.catalog import load as load_catalog
from firewall.demo.host import Host, HostError, ToolResult
from firewall.demo.server import main, serve, stdio_command
from firewall.demo.session import DemoSession, Reply

__all__ = ["ArgumentError", "Catalog", "DemoSession", "Host", "HostError", "Reply", "ToolResult",
           "load_catalog", "main", "serve", "stdio_command"]
