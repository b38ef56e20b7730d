"""Calls held for human approval: the desk.

``desk``: the approvals database, the desk a mediator asks, and the poller
that reads verdicts and standing approvals. What an HTTP client sees while its
call is held is the front's (:mod:`firewall.gateway.front.held_http`); the
``[approvals]`` table is :mod:`firewall.settings.approvals`; ``mcpwall
approvals`` is :mod:`firewall.cli.approvals`. Import from the modules; this
package re-exports nothing.
"""
