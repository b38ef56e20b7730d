"""mcpwall: a firewall for the Model Context Protocol.

The import package is ``firewall``; the command is ``mcpwall``.
"""

__version__ = "0.1.0"
