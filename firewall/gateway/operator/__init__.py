"""The operator plane: a listener of its own for people and their tools.

``listener`` (the second hypercorn server and what it is built from), ``api``
(the JSON API, probes and the console's routes), ``requests`` (API bodies,
query parameters and errors), ``guard`` (Host, Origin and login rate, before
authentication), ``auth`` (operator tokens and console logins), ``console``
(the HTML console), ``metrics`` (Prometheus, from the audit events),
``feed`` (the live event stream), ``readiness`` (``/readyz``), and the kill
switch: ``killswitch`` (what the hot path reads), ``switch_store`` (the
shared file) and ``switchboard`` (one process kept in step with the file).
Import from the modules; this package re-exports nothing.
"""
