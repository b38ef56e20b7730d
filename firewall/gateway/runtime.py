"""Wiring: build the policy point and the audit trail from a config, run fronts."""

from __future__ import annotations

import secrets

import trio

from firewall.config import Config, ConfigError, StdioServer
from firewall.gateway.mediator import Mediator
from firewall.gateway.stdio_front import run_wrap
from firewall.log import get_logger
from firewall.policy.decision import AllowAll, Caller, PolicyPoint


def new_session_id() -> str:
    """A cryptographically random session id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def build_policy(files: list[str], dry_run: bool) -> PolicyPoint:
    """The policy point for these files (allow-all when there are none)."""
    if not files:
        return AllowAll()
    raise ConfigError("policy files are not supported yet: " + ", ".join(files))


async def run_wrap_session(
    config: Config,
    settings: StdioServer,
    server: str,
    caller: Caller,
    policy_files: list[str],
    dry_run: bool,
) -> int:
    """One ``wrap`` session on our stdin/stdout; returns the process exit code."""
    policy = build_policy(policy_files, dry_run or config.policy.dry_run)
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
