"""Wiring: build the policy point and the audit trail from a config, run fronts."""

from __future__ import annotations

import secrets
from pathlib import Path

import trio

from firewall.config import Config, ConfigError, StdioServer
from firewall.gateway.mediator import Mediator
from firewall.gateway.stdio_front import run_wrap
from firewall.log import get_logger
from firewall.policy.decision import AllowAll, Caller, PolicyPoint
from firewall.policy.engine import PolicySet
from firewall.policy.schema import PolicyError


def new_session_id() -> str:
    """A cryptographically random session id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def build_policy(
    fleet: list[str], servers: dict[str, list[str]] | None = None, *, dry_run: bool = False
) -> PolicyPoint:
    """The policy point for these files (allow-all when there are none).

    Raises ConfigError (naming the file and key path) for a bad policy file.
    """
    servers = {name: files for name, files in (servers or {}).items() if files}
    if not fleet and not servers:
        return AllowAll()
    try:
        return PolicySet([Path(p) for p in fleet],
                         {name: [Path(p) for p in files] for name, files in servers.items()},
                         dry_run=dry_run)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


async def run_wrap_session(
    config: Config,
    settings: StdioServer,
    server: str,
    caller: Caller,
    policy_files: list[str],
    dry_run: bool,
) -> int:
    """One ``wrap`` session on our stdin/stdout; returns the process exit code."""
    policy = build_policy(policy_files, dry_run=dry_run or config.policy.dry_run)
    session = new_session_id()
    mediator = Mediator(server=server, session=session, caller=caller, policy=policy,
                        audit=None, deny_tools_call_as=config.policy.deny_tools_call_as)
    get_logger(server=server, session=session).info(
        "session_started", principal=caller.principal, transport="stdio")
    return await run_wrap(settings, mediator=mediator)


async def serve(config: Config) -> None:
    """Run the HTTP front for the fleet until SIGINT/SIGTERM."""
    raise ConfigError("the HTTP front is not available yet")


__all__ = ["new_session_id", "run_wrap_session", "serve", "trio"]
