"""The gateway: all of mcpwall's I/O, one sub-package per concern.

The message path: a front (``front``) takes an agent's message over HTTP
(``http``) or stdio, the per-session ``mediator`` decides and audits it and
hands the decided bytes, as an ``outbound.Outbound``, to an ``upstream``;
answers come back the same way. ``approvals`` holds calls for a person,
``operator`` is the operator listener and the kill switch, ``shared_limits``
keeps token buckets in Redis, ``policy_reload`` reloads the policy off the
event loop, ``background`` keeps a polled store fresh, and
``runtime`` assembles a process from a config. See docs/architecture.md.
Only :mod:`firewall.cli` imports this package. It re-exports nothing.
"""
