"""The append-only, tamper-evident audit trail (see docs/audit.md).

Modules: ``events`` (what the gateway appends), ``chain`` (rows and hashes),
``redaction``, ``store`` (schema, views, segments), ``checkpoint``
(signatures, anchor), ``trail`` (the Trail: the appender that owns the write
connection), ``core`` (the one loop that drives a Trail in either writer),
``writer`` (``open_audit``, the trio side of both writers, the writer thread),
``process`` (the writer process, the default), ``verify``,
``query``, ``export`` and ``incident`` (the generated incident of the docs).
The ``[audit]`` table is :mod:`firewall.settings.audit`, the ``mcpwall
audit`` commands :mod:`firewall.cli.audit`. Import from the modules; this
package re-exports nothing, so importing ``firewall.audit.events`` stays cheap.
"""
