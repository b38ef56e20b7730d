"""The ``[approvals]`` table: where calls held for approval wait, and for how long.

The desk that uses it is :mod:`firewall.gateway.approvals.desk.desk`; this module
holds only the table, so that loading a config imports no I/O.

Example (TOML)::

    [approvals]
    path = "/var/lib/mcpwall/approvals.db"
    timeout_seconds = 600
"""

from __future__ import annotations

import msgspec


class ApprovalSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[approvals]`` table: where held calls wait and for how long."""

    # false: a require_approval rule refuses at once (JSON-RPC error -32003).
    enabled: bool = True
    path: str = "mcpwall-approvals.db"
    timeout_seconds: float = 300.0
    poll_seconds: float = 0.5
    # While a call is held, a client that asked for progress (_meta.progressToken)
    # gets notifications/progress this often, so it does not give up; 0: never.
    progress_seconds: float = 15.0


__all__ = ["ApprovalSettings"]
