"""Calls held for human approval.

``desk`` (the approvals database, the desk a mediator asks and the poller
that reads verdicts and standing approvals) and ``held_http`` (what an HTTP
client's POST sees while its call is held). The ``[approvals]`` table is
:mod:`firewall.settings.approvals`; ``mcpwall approvals`` is
:mod:`firewall.cli.approvals`. Import from the modules; this package
re-exports nothing.
"""
