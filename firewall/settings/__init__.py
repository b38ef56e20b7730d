"""The tables of the gateway configuration that belong to one concern each.

``audit`` (``[audit]``), ``approvals`` (``[approvals]``), ``kill_switch``
(``[kill_switch]``), ``admin`` (``[admin]``) and ``limits`` (``[limits]``):
msgspec Structs and their pure checks, which :mod:`firewall.config` assembles.
No module here does I/O or imports the gateway, so loading a config (``mcpwall
check``) stays cheap. This package re-exports nothing.
"""
