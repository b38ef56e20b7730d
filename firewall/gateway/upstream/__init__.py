"""The upstreams: the MCP servers mcpwall forwards to.

``stdio`` (a supervised child process speaking newline-delimited JSON-RPC)
and ``http`` (a pooled HTTP/1.1 client on h11 and trio streams). Both write
only :class:`~firewall.gateway.outbound.Outbound` messages. Import from the
modules; this package re-exports nothing.
"""
