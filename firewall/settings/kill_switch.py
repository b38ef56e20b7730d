"""The ``[kill_switch]`` table: where switches persist, how often to look for changes.

The switches themselves are :mod:`firewall.gateway.operator.killswitch`; this
module holds only the table, so that loading a config imports no I/O.

Example (TOML)::

    [kill_switch]
    path = "/var/lib/mcpwall/kill-switch.db"
    poll_seconds = 1.0
"""

from __future__ import annotations

from typing import Annotated

import msgspec


class KillSwitchSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[kill_switch]`` table: where switches persist, how often to look for changes."""

    # false: switches live in this process's memory only (a restart clears them).
    persist: bool = True
    # Shared by every instance (and ``mcpwall kill-switch --config``) naming it.
    path: str = "mcpwall-kill-switch.db"
    poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0


__all__ = ["KillSwitchSettings"]
