"""Calls held for human approval: each session's held calls, and the desk.

``hold``: a session's held calls (``Holds``, ``Held``): who decides, the
wait, progress keep-alives, elicitation, withdrawal, approval events; the
mediator hands it a ``pending`` call and gets back how it ended. ``desk``:
the approvals database, the desk a held call asks, and the poller that reads
verdicts and standing approvals. What an HTTP client sees while its
call is held is the front's (:mod:`firewall.gateway.front.held_http`); the
``[approvals]`` table is :mod:`firewall.settings.approvals`; ``mcpwall
approvals`` is :mod:`firewall.cli.approvals`. Import from the modules; this
package re-exports nothing.
"""
