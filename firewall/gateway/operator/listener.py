"""The operator listener: a second hypercorn server in the same trio nursery as the front.

:func:`operator_plane` builds what the operator plane needs around the
policy point and the audit trail (the kill switch in front of the policy, the
metrics observer behind the audit point); :func:`run_admin` serves it until
the nursery that owns the front is cancelled, so both stop together.
"""

from __future__ import annotations

import trio

from firewall.audit.events import AuditPoint
from firewall.config import Config, ConfigError
from firewall.gateway.front.http_front import hypercorn_config, listener_limits
from firewall.gateway.http.connection_limits import Gate
from firewall.gateway.http.server import serve
from firewall.gateway.operator.api import AdminPlane, Reload
from firewall.gateway.operator.feed import Feed
from firewall.gateway.operator.killswitch import GuardedPolicy
from firewall.gateway.operator.metrics import Metrics, ObservedAudit
from firewall.gateway.operator.switchboard import SwitchBoard
from firewall.policy.decision import PolicyPoint


def operator_plane(config: Config, policy: PolicyPoint, audit: AuditPoint | None,
                   board: SwitchBoard, reload: Reload,
                   ) -> tuple[AdminPlane, PolicyPoint, AuditPoint | None]:
    """The plane, and the policy point and audit point the front should use.

    ``reload`` re-reads the policy files for ``POST /api/policy/reload``
    (:func:`firewall.gateway.runtime.reload_policy`).

    The kill switch's changes are recorded through the observed audit point
    from now on, so metrics and the event feed see them.
    """
    metrics, feed = Metrics(), Feed()
    observed = None if audit is None else ObservedAudit(audit, metrics, feed)
    board.audit = observed
    plane = AdminPlane(config, policy, board, metrics, feed, audit, observed, reload)
    return plane, GuardedPolicy(policy, board.switch), observed


async def run_admin(plane: AdminPlane,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the operator plane until cancelled; ``started`` gets its base URLs.

    Raises :class:`ConfigError` naming ``[admin]`` when the address cannot be bound.
    """
    settings = plane.settings
    config = plane.config
    hyper = hypercorn_config(settings.host, settings.port, 1.0, config.http.keep_alive_seconds)
    # Its own budget, apart from the agents' listener: a flood there leaves this one be.
    gate = Gate(listener_limits(config, hyper, settings.max_connections, others=0))
    try:
        await serve(plane, hyper, parser=config.http.parser, gate=gate,
                    health=lambda: (200, b'{"status": "ok"}'),
                    shutdown_trigger=trio.sleep_forever, task_status=task_status)
    except* OSError as group:
        exc: BaseException = group.exceptions[0]
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port} ([admin]): "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    finally:
        plane.closing.set()


__all__ = ["operator_plane", "run_admin"]
