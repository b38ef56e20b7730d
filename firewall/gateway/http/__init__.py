"""The HTTP server side: hypercorn's trio worker and what we put under it.

``server`` (``serve``: hypercorn glue, HTTP/1.1 by h11 or httptools),
``hypercorn_internals`` (every use of hypercorn beyond its Config and serve,
checked against its version), ``http11`` (the httptools connection),
``exchange`` (one request and its response over raw ASGI), ``sockets``
(reads and writes that skip the scheduler when they need not wait) and
``connection_limits`` (what a listener owes its clients and may refuse them,
sans-IO). Nothing here knows MCP. Import from the modules; this package
re-exports nothing.
"""
