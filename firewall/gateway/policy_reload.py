"""Policy reloads off the event loop: compile in a worker thread, swap on the trio thread.

Rules this module keeps:

1. Reading and compiling the files (:meth:`PolicySet.compile`) runs in a
   worker thread, so sessions, keep-alives and decisions go on while a large
   policy compiles (about 2 s at 100,000 rules). The thread is not abandoned
   on cancel: a compile started finishes, and its table is installed or
   dropped whole.
2. The swap (:meth:`PolicySet.install`, one attribute assignment) runs on the
   trio thread, between two decisions: a call decided before it used the old
   table, one decided after it the new one. Token buckets carry over.
3. One reload at a time per policy. Requests that arrive while one runs
   (SIGHUP, a file change, ``POST /api/policy/reload``) are served together by
   one more reload after it, which starts after each of them was asked for,
   so each sees the files as they were when it asked.
4. Each reload is logged and audited once: ``policy_reload`` when the table
   changed or an operator asked (``by``), ``policy_reload_failed`` with the
   error when a file is bad (the table in force is kept). The trigger is the
   first request's; the others are listed under ``coalesced``.
5. After a swap that changed the table, each of :attr:`PolicyReloader.watchers`
   is called (on the trio thread, synchronously): listen streams learn of it
   (``front/listen.py``), on the HTTP front and in ``wrap``. A watcher must
   not raise.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any, Final

import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.log import get_logger
from firewall.policy.compiler import CompiledPolicy
from firewall.policy.engine import PolicySet, ReloadResult
from firewall.policy.schema import PolicyError

_THREAD_NAME: Final = "mcpwall policy compile"
_log: Any = get_logger(component="policy_reload")


class PolicyReloader:
    """Serialises and coalesces the reloads of one :class:`PolicySet` (rules 1-5)."""

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy
        self._lock = trio.Lock()  # fair: waiters get it in arrival order
        self._pending: list[tuple[str, str | None]] = []  # (trigger, by) not yet served
        self._started = 0  # reloads started (the one running is number _started)
        self._finished = 0
        self._last: ReloadResult | None = None
        self.watchers: list[Callable[[], None]] = []  # rule 5

    @property
    def reloads(self) -> int:
        """How many reloads ran to the end (coalesced requests count once)."""
        return self._finished

    async def reload(self, audit: AuditPoint | None, trigger: str, *,
                     by: str | None = None) -> ReloadResult:
        """Reload now, or join the next reload if one is running (rule 3)."""
        self._pending.append((trigger, by))
        ticket = self._started + 1  # the first reload that starts after this request
        async with self._lock:
            if self._finished >= ticket and self._last is not None:
                return self._last  # served by a reload another request ran
            requests, self._pending = self._pending, []
            self._started += 1
            result = await self._run(audit, requests)
            self._finished, self._last = self._started, result
            return result

    async def _run(self, audit: AuditPoint | None,
                   requests: list[tuple[str, str | None]]) -> ReloadResult:
        compiled = await trio.to_thread.run_sync(
            _compile, self.policy, thread_name=_THREAD_NAME, abandon_on_cancel=False)
        # Back on the trio thread: nothing runs between here and the swap.
        if isinstance(compiled, str):
            result = self.policy.failed(compiled)
            await _record(audit, result, requests)
            return result
        retired: list[object] = [self.policy.engine.compiled]
        result = self.policy.install(compiled)
        del compiled
        if result.changed:
            for watcher in list(self.watchers):
                watcher()
        await _record(audit, result, requests)
        await trio.to_thread.run_sync(_dismantle, retired, thread_name=_THREAD_NAME,
                                      abandon_on_cancel=False)
        return result


def _compile(policy: PolicySet) -> CompiledPolicy | str:
    """In the worker thread: the new table, or the error that keeps the old one."""
    try:
        return policy.compile()
    except PolicyError as exc:
        return str(exc)
    except Exception as exc:  # a bug, not a bad file: the table in force stays all the same
        _log.exception("policy_compile_failed")
        return f"internal error while compiling the policy ({exc!r}); the table in force is kept"


def _dismantle(retired: list[object]) -> None:
    """In the worker thread: free the table taken out of service a slice at a time.

    Dropped at once, a table of 100,000 rules is freed in one cascade of
    deallocations that holds the interpreter lock for 0.2 s: on the trio
    thread, or in any thread, the event loop stalls as long. So the table's
    objects down to its large containers (reached through
    ``gc.get_referents``, no deeper than ``_DEPTH``) and the parts of those
    containers (the rules, the parsed entries) are held in a list first; the
    table is dropped (which frees only its root now), then the list is emptied
    a slice at a time, from the root down: each slice frees its own objects
    and what only they hold (a rule's few parts), the rest being held still.
    """
    held: list[object] = []
    seen: set[int] = set()
    level = [retired.pop()]
    for _ in range(_DEPTH):
        below: list[object] = []
        for obj in level:
            held.append(obj)
            refs = gc.get_referents(obj)
            if len(refs) > _SLICE:  # a large container: its parts are held, not walked
                held.extend(refs)
                continue
            for ref in refs:
                if id(ref) not in seen and _part_of_a_table(ref):
                    seen.add(id(ref))
                    below.append(ref)
        level = below
    held.extend(level)
    del level, refs
    held.reverse()  # the root first: each object lets go of parts still held here
    while held:
        del held[-_SLICE:]


_SLICE: Final = 1000
# Deep enough to reach the large containers (CompiledPolicy -> ServerTable ->
# NameIndex -> its entries and dicts; the parsed files -> Policy -> tools),
# each object and its __dict__ a level.
_DEPTH: Final = 10
_CONTAINERS: Final = (dict, list, tuple, set, frozenset)


def _part_of_a_table(obj: object) -> bool:
    """A container, or an object of a policy type: what :func:`_dismantle` walks.
    Functions, modules and classes are not walked (they may lead anywhere)."""
    return (isinstance(obj, _CONTAINERS)
            or type(obj).__module__.startswith("firewall.policy."))


async def _record(audit: AuditPoint | None, result: ReloadResult,
                  requests: list[tuple[str, str | None]]) -> None:
    """Log and audit one reload (rule 4)."""
    trigger = requests[0][0]
    by = next((who for _, who in requests if who is not None), None)
    extra: dict[str, Any] = {} if by is None else {"by": by}
    if len(requests) > 1:
        extra["coalesced"] = [t for t, _ in requests[1:]]
    log = get_logger()
    if result.ok:
        if result.changed or by is not None:
            log.info("policy_reloaded", trigger=trigger, files=result.files, **extra)
            if by is not None:
                extra["changed"] = result.changed
            await append_lifecycle(audit, "policy_reload", detail={
                "files": result.files, "trigger": trigger, **extra})
    else:
        log.error("policy_reload_failed", trigger=trigger, error=result.error, **extra)
        await append_lifecycle(audit, "policy_reload_failed", detail={
            "error": result.error, "kept": result.files, "trigger": trigger, **extra})


_RELOADERS: Final[weakref.WeakKeyDictionary[PolicySet, PolicyReloader]] = (
    weakref.WeakKeyDictionary())


def reloader_for(policy: PolicySet) -> PolicyReloader:
    """The one reloader of ``policy``, shared by SIGHUP, the file watch and the API."""
    reloader = _RELOADERS.get(policy)
    if reloader is None:
        reloader = _RELOADERS[policy] = PolicyReloader(policy)
    return reloader


def watchers_of(policy: object) -> list[Callable[[], None]]:
    """Who is told of the reloads of ``policy`` (rule 5): the watchers of the
    :class:`PolicySet` inside any wrapper, such as the kill switch's ``inner``;
    an empty list, for a policy nothing reloads."""
    for _ in range(4):
        if isinstance(policy, PolicySet):
            return reloader_for(policy).watchers
        policy = getattr(policy, "inner", None)
    return []


__all__ = ["PolicyReloader", "reloader_for", "watchers_of"]
