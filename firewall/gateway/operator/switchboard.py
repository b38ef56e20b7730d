"""The kill switch of one gateway process, kept in step with the shared file.

Rules this module keeps:

1. The hot path reads only :class:`firewall.gateway.operator.killswitch.KillSwitch`
   (memory). Everything here runs beside it: loading, writing, polling.
2. With ``[kill_switch] persist`` (the default) a change is written to the
   file first and applied to memory only once committed, so what an operator
   was told is on survives a restart. Without it, memory is all there is.
3. :meth:`SwitchBoard.open` reads the file before the gateway takes traffic
   (fail closed: an unreadable file is a :class:`SwitchStoreError` and the
   start stops). :meth:`SwitchBoard.run_poller` then looks every
   ``poll_seconds`` and applies what other instances, or
   ``mcpwall kill-switch --config``, changed.
4. Every change this process starts enforcing or stops enforcing is logged
   and audited (a ``kill_switch`` lifecycle event) once, here: ``detail.via``
   is ``api`` for this instance's operator API and ``file`` for a change read
   from the file. A file that fails while polling keeps the switches in
   force and logs ``kill_switch_file_failed`` (a shared file that vanishes
   must not turn switches off).

Example::

    board = SwitchBoard(config.kill_switch, instance="gw-1")
    await board.open()
    policy = GuardedPolicy(policy, board.switch)
    nursery.start_soon(board.run_poller)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.config import ConfigError
from firewall.gateway.background import polled
from firewall.gateway.operator.killswitch import KillSwitch, Scope, Switch
from firewall.gateway.operator.switch_store import (
    HistoryEntry,
    SwitchStore,
    SwitchStoreError,
    connect_switch_store,
)
from firewall.log import get_logger
from firewall.settings.kill_switch import KillSwitchSettings


class SwitchBoard:
    """Turns switches on and off for one process, through the shared file when persisted."""

    def __init__(self, settings: KillSwitchSettings, instance: str,
                 audit: AuditPoint | None = None) -> None:
        self.settings = settings
        self.instance = instance
        self.audit = audit      # where changes are recorded (set once the trail is open)
        self.switch = KillSwitch()
        self._store: SwitchStore | None = None
        self._lock = trio.Lock()  # one thread at a time on the one connection
        self._failing = False
        self.log: Any = get_logger(component="kill_switch")

    @property
    def persisted(self) -> bool:
        return self.settings.persist

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def open(self) -> list[Switch]:
        """Read the file (when persisted) and enforce its switches; return them."""
        if not self.persisted:
            return []
        self._store = await trio.to_thread.run_sync(connect_switch_store,
                                                    Path(self.settings.path))
        switches: list[Switch] = await self._run(self._store.switches)
        self.switch.replace(switches)
        for switch in switches:
            self.log.warning("kill_switch_in_force", scope=switch.scope.kind,
                             name=switch.scope.name, by=switch.by, comment=switch.comment,
                             path=self.settings.path)
        return switches

    async def aclose(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await self._run(store.close)

    async def turn_on(self, scope: Scope, *, by: str,
                      comment: str | None) -> tuple[Switch, str | None]:
        """Turn ``scope`` on, log and audit it; also the error when it could not be saved.

        The file is written first when persisted. If that fails the switch is
        enforced anyway (a kill switch must work in an incident) and the
        error comes back: it holds until this process stops.
        """
        error = None
        since = None
        if self._store is not None:
            try:
                saved: Switch = await self._run(self._store.turn_on, scope, by=by,
                                                comment=comment, instance=self.instance)
                since = saved.since_ns
            except SwitchStoreError as exc:
                error = str(exc)
                self.log.error("kill_switch_not_saved", error=error, scope=scope.kind,
                               name=scope.name)
        switch = self.switch.turn_on(scope, by=by, comment=comment, since_ns=since)
        await self._record("on", switch, "api", by=by, comment=comment, saved=error is None)
        return switch, error

    async def turn_off(self, scope: Scope, *, by: str, comment: str | None) -> Switch | None:
        """Turn ``scope`` off; the switch that was on, or None when it was not.

        Raises :class:`SwitchStoreError` (and changes nothing) when the file
        cannot record it: a switch must not come back on at the next restart
        after the operator was told it is off.
        """
        if self._store is not None:
            await self._run(self._store.turn_off, scope, by=by, comment=comment,
                            instance=self.instance)
        was = self.switch.turn_off(scope)
        if was is not None:
            await self._record("off", was, "api", by=by, comment=comment)
        return was

    async def refresh(self) -> bool:
        """Apply what changed in the file since the last look; True if anything did."""
        store = self._store
        if store is None:
            return False
        try:
            if not await self._run(store.changed):
                return False
            switches: list[Switch] = await self._run(store.switches)
        except SwitchStoreError as exc:
            if not self._failing:
                self.log.error("kill_switch_file_failed", error=str(exc),
                               kept=len(self.switch.switches()))
            self._failing = True
            return False
        if self._failing:
            self.log.info("kill_switch_file_readable", path=self.settings.path)
            self._failing = False
        on, off = self.switch.replace(switches)
        for switch in on:
            await self._record("on", switch, "file", by=switch.by, comment=switch.comment)
        for switch in off:
            last = await self._last_change(store, switch.scope)
            await self._record("off", switch, "file", by=last.by if last else None,
                               comment=last.comment if last else None)
        return bool(on or off)

    async def _last_change(self, store: SwitchStore, scope: Scope) -> HistoryEntry | None:
        try:
            found: HistoryEntry | None = await self._run(store.last_change, scope)
        except SwitchStoreError:
            return None
        return found

    async def run_poller(self) -> None:
        """Every ``poll_seconds``, apply the file's changes (until cancelled)."""
        if self._store is None:
            return
        while True:
            await trio.sleep(self.settings.poll_seconds)
            await self.refresh()

    async def _record(self, state: str, switch: Switch, via: str, *, by: str | None,
                      comment: str | None, saved: bool = True) -> None:
        scope = switch.scope
        self.log.warning("kill_switch_" + state, scope=scope.kind, name=scope.name, by=by,
                         via=via)
        await append_lifecycle(
            self.audit, "kill_switch",
            server=scope.name if scope.kind == "server" else None,
            principal=scope.name if scope.kind == "principal" else None,
            detail={"state": state, "scope": scope.kind, "name": scope.name, "by": by,
                    "comment": comment, "via": via,
                    **({} if saved or not self.persisted else {"saved": False})})


@asynccontextmanager
async def open_switchboard(settings: KillSwitchSettings, *, instance: str,
                           audit: AuditPoint | None) -> AsyncIterator[SwitchBoard]:
    """The process's kill switch, loaded from the file and polled while in use.

    Raises :class:`firewall.config.ConfigError` naming the file when it cannot be read.
    """
    board = SwitchBoard(settings, instance, audit)
    try:
        await board.open()
    except SwitchStoreError as exc:
        raise ConfigError(f"[kill_switch] {exc}") from None
    async with polled(board.run_poller, board.aclose):
        yield board


__all__ = ["SwitchBoard", "open_switchboard"]
