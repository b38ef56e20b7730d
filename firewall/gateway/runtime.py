"""Wiring: build the policy point and the audit trail from a config, run fronts."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import msgspec
import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.audit.writer import AuditError, default_instance_id, open_audit
from firewall.config import Config, ConfigError, HttpServer, StdioServer
from firewall.gateway.approvals.desk import ApprovalDesk, open_desk
from firewall.gateway.front.sessions import new_session_id
from firewall.gateway.front.wrap import run_wrap
from firewall.gateway.front.wrap_http import run_wrap_http
from firewall.gateway.mediator import Mediator
from firewall.gateway.operator import instances
from firewall.gateway.operator.killswitch import GuardedPolicy
from firewall.gateway.operator.switchboard import SwitchBoard, open_switchboard
from firewall.gateway.policy_reload import reloader_for
from firewall.gateway.shared_counters import RedisCounters
from firewall.gateway.shared_limits import (
    RedisLimiter,
    StoreConfigError,
    build_limiter,
    open_limits,
)
from firewall.log import get_logger
from firewall.policy.decision import AllowAll, Caller, PolicyPoint
from firewall.policy.engine import PolicySet, ReloadResult
from firewall.policy.patterns import PatternTimeout
from firewall.policy.schema import PolicyError
from firewall.settings.limits import LimitSettings


def build_policy(
    fleet: list[str], servers: dict[str, list[str]] | None = None, *, dry_run: bool = False,
    limiter: RedisLimiter | None = None, regex_timeout_ms: int = 20,
) -> PolicyPoint:
    """The policy point for these files (allow-all when there are none).

    Token buckets and counter totals live in ``limiter``'s Redis when given,
    else in this process. A policy pattern that times out is logged
    (``policy_regex_timeout``, never with the value) and refuses its call.
    Raises ConfigError (naming the file and key path) for a bad policy file.
    """
    servers = {name: files for name, files in (servers or {}).items() if files}
    if not fleet and not servers:
        return AllowAll()
    try:
        policy = PolicySet([Path(p) for p in fleet],
                           {name: [Path(p) for p in files] for name, files in servers.items()},
                           dry_run=dry_run, limiter=limiter,
                           counters=RedisCounters(limiter) if limiter is not None else None,
                           regex_timeout=regex_timeout_ms / 1000.0)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    log = get_logger(component="policy")

    def timed_out(exc: PatternTimeout, rule: str, server: str, session: str) -> None:
        log.warning("policy_regex_timeout", rule=rule, condition=exc.where,
                    subject=exc.subject, timeout_ms=exc.timeout * 1000, server=server,
                    session=session)

    policy.engine.on_pattern_timeout = timed_out
    return policy


def shared_limiter(settings: LimitSettings, source: str) -> RedisLimiter | None:
    """The ``[limits]`` table's Redis limiter (None: buckets in this process)."""
    try:
        return build_limiter(settings)
    except StoreConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


async def watch_policy(policy: PolicyPoint, audit: AuditPoint | None,
                       interval: float = 1.0) -> None:
    """Reload the policy on SIGHUP and when a policy file changes on disk.

    A bad file keeps the table in force; the error is logged and audited. Calls
    in flight finish under the table they started with (the engine swaps the
    whole table with one assignment). The load at start, in :func:`build_policy`,
    stays synchronous: nothing is served yet, so there is nothing to stall, and
    a bad file must stop the start with its error (exit code 2), not be logged.
    """
    if not isinstance(policy, PolicySet):
        return
    await append_lifecycle(audit, "policy_load", detail={"files": policy.digests})

    async def reload(trigger: str) -> None:
        await reload_policy(policy, audit, trigger)

    def stamp() -> tuple[tuple[str, float, int], ...]:
        out = []
        for name in sorted(policy.digests):
            try:
                st = os.stat(name)
                out.append((name, st.st_mtime, st.st_size))
            except OSError:
                out.append((name, -1.0, -1))
        return tuple(out)

    async def on_sighup() -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                await reload("SIGHUP")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_sighup)
        last = stamp()
        while True:
            await trio.sleep(interval)
            now = stamp()
            if now != last:
                last = now
                await reload("file_changed")


async def reload_policy(policy: PolicyPoint, audit: AuditPoint | None, trigger: str, *,
                        by: str | None = None) -> ReloadResult | None:
    """Re-read the policy files now; None when no policy files are configured.

    The files compile in a worker thread and the table is swapped on this one;
    a request made while a reload runs joins the one after it
    (:mod:`firewall.gateway.policy_reload`). A change is logged and audited
    (``policy_reload``), a bad file too (``policy_reload_failed``, the table in
    force is kept). A reload an operator asked for (``by``) is audited even
    when nothing changed.
    """
    if not isinstance(policy, PolicySet):
        return None
    return await reloader_for(policy).reload(audit, trigger, by=by)


@asynccontextmanager
async def maybe_audit(config: Config, enabled: bool) -> AsyncIterator[AuditPoint | None]:
    """The audit trail of ``config`` when ``enabled``, else None."""
    if not enabled:
        yield None
        return
    try:
        async with open_audit(config.audit, instance_id=default_instance_id()) as audit:
            yield audit
    except AuditError as exc:
        raise ConfigError(f"audit trail {config.audit.path}: {exc}") from None


@asynccontextmanager
async def open_stores(config: Config, limiter: RedisLimiter | None, audit_enabled: bool
                      ) -> AsyncIterator[tuple[AuditPoint | None, SwitchBoard,
                                               ApprovalDesk | None]]:
    """What a gateway process keeps beside its front, opened in order and closed in
    reverse: the limiter's connections, the audit trail, the kill switch and the
    approval desk (the last two audit what they find on open)."""
    instance = default_instance_id()
    async with (
        open_limits(limiter),
        maybe_audit(config, audit_enabled) as audit,
        open_switchboard(config.kill_switch, instance=instance, audit=audit) as board,
        open_desk(config.approvals, instance=instance, audit=audit) as desk,
    ):
        yield audit, board, desk


async def run_wrap_session(
    config: Config,
    settings: StdioServer | HttpServer,
    server: str,
    caller: Caller,
    policy_files: list[str],
    dry_run: bool,
    audit_enabled: bool,
    *,
    terminate_grace: float = 5.0,
    max_line: int = 16 * 1024 * 1024,
) -> int:
    """One ``wrap`` session on our stdin/stdout, in front of a stdio child or an
    HTTP server (``settings``); returns the process exit code.

    For an HTTP upstream, ``terminate_grace`` is what calls in flight get once
    the client closed stdin, and ``max_line`` the longest client message.
    """
    limiter = shared_limiter(config.limits, config.source)
    policy = build_policy(policy_files, dry_run=dry_run or config.policy.dry_run,
                          limiter=limiter, regex_timeout_ms=config.policy.regex_timeout_ms)
    if config.audit.writer == "auto":  # one client: no second interpreter to wait for
        config = msgspec.structs.replace(
            config, audit=msgspec.structs.replace(config.audit, writer="thread"))
    session = new_session_id()
    log = get_logger(server=server, session=session)
    entry = instances.describe(
        "wrap", default_instance_id(), session=session, servers=[server],
        config=None if config.source.startswith("<") else config.source,
        audit=config.audit.path if audit_enabled else None,
        upstream=(settings.url if isinstance(settings, HttpServer)
                  else " ".join([settings.command, *settings.args])))
    with instances.registered(entry):
        async with (
            open_stores(config, limiter, audit_enabled) as (audit, board, desk),
            trio.open_nursery() as nursery,
        ):
            if audit is None:
                log.warning("audit_disabled", hint="pass --audit-db PATH or --config FILE")
            nursery.start_soon(watch_policy, policy, audit)
            # Without a file nothing can turn a switch on in wrap (it has no operator API).
            guarded = GuardedPolicy(policy, board.switch) if board.persisted else policy
            mediator = Mediator(server=server, session=session, caller=caller, policy=guarded,
                                audit=audit, deny_tools_call_as=config.policy.deny_tools_call_as,
                                approvals=desk)
            log.info("session_started", principal=caller.principal, transport="stdio")
            upstream: dict[str, Any] = (
                {"command": [settings.command, *settings.args]}
                if isinstance(settings, StdioServer) else {"url": settings.url})
            await append_lifecycle(
                audit, "session_start", session=session, principal=caller.principal,
                server=server, detail={"transport": "stdio", "grant": caller.grant, **upstream})
            if isinstance(settings, StdioServer):
                code = await run_wrap(
                    settings, mediator=mediator,
                    handshake_seconds=config.listen.upstream_timeout_seconds,
                    ttl_ms=int(config.listen.max_cache_ttl_seconds * 1000),
                    max_listens=config.listen.max_listen_streams_per_principal,
                    listen_seconds=config.listen.listen_stream_max_seconds)
            else:
                code = await run_wrap_http(settings, mediator=mediator,
                                           answer_seconds=config.listen.upstream_timeout_seconds,
                                           grace=terminate_grace, max_line=max_line,
                                           max_listens=config.listen.max_listen_streams_per_principal,
                                           listen_seconds=config.listen.listen_stream_max_seconds,
                                           ttl_ms=int(config.listen.max_cache_ttl_seconds * 1000))
            if desk is not None:
                await desk.forget_session(session)
            await append_lifecycle(
                audit, "session_end", session=session, principal=caller.principal,
                server=server, detail={"exit_code": code})
            nursery.cancel_scope.cancel()
    return code


async def serve(config: Config, *, banner: TextIO | None = None) -> None:
    """Run the HTTP front for the fleet until SIGINT/SIGTERM.

    The first signal starts a graceful shutdown (no new requests, in-flight
    calls get ``listen.shutdown_grace_seconds``, then children stop and the
    audit trail is flushed); a second one stops at once. ``banner`` (stderr by
    default) gets the URLs and an MCP client config snippet once listening.
    """
    # Deferred for start time, not for a cycle: `mcpwall wrap` (started by an
    # MCP client for every session) never loads hypercorn or the operator plane.
    from firewall.gateway.front.http_front import HttpFront, connect_banner, run_front
    from firewall.gateway.operator.listener import operator_plane, run_admin

    try:  # the HTTP server's hypercorn must be the version it was written for
        import firewall.gateway.http.server  # noqa: F401
    except ImportError as missing:
        if missing.name != "hypercorn":  # hypercorn_internals' version check, or no hypercorn
            raise
        raise ConfigError(str(missing)) from None
    limiter = shared_limiter(config.limits, config.source)
    policy = build_policy(config.policy.files,
                          {name: s.policy for name, s in config.servers.items()},
                          dry_run=config.policy.dry_run, limiter=limiter,
                          regex_timeout_ms=config.policy.regex_timeout_ms)
    log = get_logger(component="serve")

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await run_front(front, task_status=task_status)
        finally:
            nursery.cancel_scope.cancel()

    registry = contextlib.ExitStack()  # this instance's registry entry, once it listens
    try:
        # The audit trail outlives the front: closing it flushes and signs the
        # head after the last session ended.
        async with (
            open_stores(config, limiter, True) as (audit, board, desk),
            trio.open_nursery() as nursery,
        ):
            plane = None
            if config.admin is not None:
                plane, guarded, observed = operator_plane(config, policy, audit, board,
                                                          reload_policy)
                front = HttpFront(config, guarded, observed, approvals=desk)
                plane.attach(front)
            else:
                front = HttpFront(config, GuardedPolicy(policy, board.switch), audit,
                                  approvals=desk)
            nursery.start_soon(watch_policy, policy, audit)
            nursery.start_soon(_stop_on_signals, front, nursery.cancel_scope)
            binds = await nursery.start(run)
            log.info("serve_started", urls=binds, servers=list(config.servers))
            admin_urls: list[str] = []
            if plane is not None:
                admin_urls = await nursery.start(run_admin, plane)
                log.info("admin_started", urls=admin_urls)
            connect_banner(config, binds, banner if banner is not None else sys.stderr)
            if admin_urls:
                (banner if banner is not None else sys.stderr).write(
                    f"Operator console and API: {admin_urls[0]}/\n")
            registry.enter_context(instances.registered(instances.describe(
                "serve", default_instance_id(), listen=binds, operator=admin_urls,
                servers=list(config.servers),
                config=None if config.source.startswith("<") else config.source,
                audit=config.audit.path)))
    except BaseExceptionGroup as group:
        config_error = group.subgroup(ConfigError)
        if config_error is not None:
            first: BaseException = config_error.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        bind_error = group.subgroup(OSError)
        if bind_error is None:
            raise
        exc = bind_error.exceptions[0]
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        raise ConfigError(f"cannot listen on {config.listen.host}:{config.listen.port}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    finally:
        registry.close()
    log.info("serve_stopped")


async def _stop_on_signals(front: Any, scope: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: drain gracefully; a second one: stop now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                get_logger(component="serve").info("signal_received", signal=signum,
                                                   action="drain")
                front.begin_shutdown()
            else:
                get_logger(component="serve").warning("signal_received", signal=signum,
                                                      action="stop_now")
                front.close()
                scope.cancel()
                return


__all__ = ["build_policy", "run_wrap_session", "serve", "watch_policy"]
