"""The fronts: where agents reach mcpwall, and the endpoints behind them.

``http_front`` (``mcpwall serve``: routes, authentication, one endpoint per
server), ``sessions`` and ``admission`` (client sessions and how many each
may hold), ``stdio_endpoint`` (an HTTP session backed by a stdio child),
``http_endpoint`` (an HTTP session relayed to a Streamable HTTP upstream),
``held_http`` (what a POST sees while its call is held for approval),
``health`` (the agents' ``GET /healthz``) and ``wrap`` (``mcpwall wrap``:
mcpwall as a stdio server in front of a stdio child). Every message a front
takes goes through a :class:`~firewall.gateway.mediator.Mediator`. Import
from the modules; this package re-exports nothing.
"""
