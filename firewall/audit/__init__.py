"""The append-only, tamper-evident audit trail (see docs/audit.md).

Modules: ``events`` (what the gateway appends), ``chain`` (rows and hashes),
``redaction``, ``store`` (schema, views, segments), ``checkpoint``
(signatures, anchor), ``writer`` (``open_audit``, the Trail and the writer
thread), ``process`` (the writer process, the default), ``verify``,
``query``, ``export`` and ``incident`` (the generated incident of the docs).
The ``[audit]`` table is :mod:`firewall.settings.audit`, the ``mcpwall
audit`` commands :mod:`firewall.cli.audit`. Import from the modules; this
package re-exports nothing, so importing ``firewall.audit.events`` stays cheap.
"""
