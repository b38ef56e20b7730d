"""The policy point: a compiled table, token buckets and a caller -> Decision.

Rules this module keeps:

1. ``decide`` is pure and synchronous: dict lookups, prebuilt functions and
   bucket arithmetic. No I/O, no logging, no allocation beyond a limited
   Decision or a bucket key, except the first time the table meets a name
   (the index remembers it, boundedly) or a call reaches an entry (its
   evaluator is built).
2. A call reads the current table once, at its start, and finishes under it:
   ``swap`` replaces the whole table with one assignment, never edits it.
3. The precedence is the compiler's (see :mod:`firewall.policy.compiler`):
   the first entry (most specific first) whose audience admits the caller
   decides; within it, ``require`` checks first, then the first argument rule
   that applies and whose ``when`` holds, else the entry's own verdict.
4. ``initialize``, ``ping``, ``resources/unsubscribe`` and every notification
   always pass: the protocol needs them and they carry no operation.
5. Token buckets are debited only when the verdict is allow, all or none.
   ``explain`` walks the same code with a trace and debits nothing.
6. A policy pattern that does not finish matching within its timeout
   (:class:`~firewall.policy.patterns.PatternTimeout`) refuses the call,
   whatever rule the pattern belongs to and whichever way its truth would
   have gone: :func:`timed_out` is the refusal, and the engine's
   ``on_pattern_timeout`` hook (the gateway logs there) hears of it.
7. Counters (:mod:`firewall.policy.counters`) are never touched here: a
   verdict with counters comes back as a :class:`Counted` with the amounts
   computed from the arguments, which the gateway settles (reserves) and
   later commits or rolls back. Its store is the engine's and outlives a
   ``swap``, so totals survive a reload.

Example::

    engine = Engine(compile_policy(parse_policy(text)))
    decision = engine.decide(call, Caller("agent", "grant-1"), "vm", "session-1")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from firewall.policy.compiler import (
    PASS_METHODS,
    CompiledEntry,
    CompiledPolicy,
    NameIndex,
    ServerTable,
    Verdict,
    compile_policies,
    normalise_uri,
)
from firewall.policy.counters import Counted, CounterStore, MemoryCounters, counted
from firewall.policy.decision import ALLOW, DENY, LIMITED, Caller, Decision
from firewall.policy.limits import Limiter, MemoryLimiter, SharedLimiter, defer
from firewall.policy.patterns import DEFAULT_TIMEOUT, PatternTimeout
from firewall.policy.schema import LoadedPolicy, PolicyError, collector_paused, load_policy
from firewall.protocol import mcp

# A later round's verdict when the rules would only have limited it (limits were paid).
ALLOW_ROUND: Final = Decision(ALLOW, rule="round", reason="a later round of a call")

PROTOCOL_ALLOW: Final = Decision(ALLOW, rule="protocol", reason="always passes")
_EMPTY: Final[dict[str, Any]] = {}
_RESOURCE_METHODS: Final = frozenset({mcp.RESOURCES_READ, mcp.RESOURCES_SUBSCRIBE})


def _retry_after(seconds: float) -> float:
    # Round up to the millisecond: a client that waits this long will pass.
    return math.ceil(seconds * 1000.0) / 1000.0


class Explanation(msgspec.Struct, frozen=True):
    """A decision with the trace of rules tried, for ``mcpwall explain``."""

    decision: Decision
    server: str
    target: str | None
    candidates: list[str]
    trace: list[str]


def timed_out(rule: str, exc: PatternTimeout) -> Decision:
    """The refusal of a call whose argument check timed out (rule 6)."""
    return Decision(DENY, rule=rule,
                    reason=f"argument check timed out: matching {exc.subject} against a "
                           f"policy pattern took longer than {exc.timeout * 1000:g} ms; "
                           "the call is refused")


#: ``on_pattern_timeout(exc, rule, server, session)``.
TimeoutHook = Callable[[PatternTimeout, str, str, str], None]


class Engine:
    """Implements :class:`firewall.policy.decision.PolicyPoint` over a compiled policy."""

    def __init__(self, compiled: CompiledPolicy,
                 limiter: Limiter | SharedLimiter | None = None,
                 counters: CounterStore | None = None) -> None:
        self._compiled = compiled
        #: Told of every pattern timeout (the refusal is the engine's own).
        self.on_pattern_timeout: TimeoutHook | None = None
        self.limiter = limiter if limiter is not None else MemoryLimiter()
        #: Where counter totals live (in memory unless told otherwise).
        self.counters = counters if counters is not None else MemoryCounters()

    @property
    def limiter(self) -> Limiter | SharedLimiter:
        """Where the token buckets live (in memory unless told otherwise)."""
        return self._limiter

    @limiter.setter
    def limiter(self, limiter: Limiter | SharedLimiter) -> None:
        self._limiter = limiter
        # The in-memory limiter: decide() steps its buckets itself (see there).
        self._memory = limiter if isinstance(limiter, MemoryLimiter) else None

    @property
    def compiled(self) -> CompiledPolicy:
        return self._compiled

    def swap(self, compiled: CompiledPolicy) -> None:
        """Replace the table atomically; buckets (the limiter) and counter totals
        (the counter store) carry over."""
        self._compiled = compiled

    # -- the hot path -----------------------------------------------------------------

    def decide(self, call: mcp.Call, caller: Caller, server: str, session: str) -> Decision:
        """The verdict on one request (``call.direction`` says which way it goes)."""
        compiled = self._compiled
        table = compiled.servers.get(server) or compiled.fleet
        method = call.method
        if method == mcp.TOOLS_CALL:
            index, name, args = table.tools, call.tool or "", call.arguments or _EMPTY
        elif method in _RESOURCE_METHODS:
            index, name, args = table.resources, normalise_uri(call.uri or ""), _EMPTY
        elif method == mcp.PROMPTS_GET:
            index, name, args = table.prompts, call.prompt or "", call.arguments or _EMPTY
        elif method in PASS_METHODS or method in mcp.NOTIFICATIONS:
            return PROTOCOL_ALLOW
        else:
            index, name, args = table.methods, method, _EMPTY
        evaluate = index.resolved.get(name)
        if evaluate is None:
            evaluate = index.resolve(name)
        try:
            result = evaluate(args, caller)
        except PatternTimeout as exc:
            return self._timed_out(exc, index, name, caller, server, session)
        # Not isinstance(result, Decision): for a Verdict, that asks the Struct
        # metaclass, which costs more than the test; Verdict has no subclass.
        if type(result) is not Verdict:
            return result
        # A Verdict with buckets. The common case, one bucket in memory, is
        # written out here; anything else takes the general path.
        one = result.single
        memory = self._memory
        if one is None or memory is None:
            return self._apply(result, caller, server, session, None, args)
        keys, scope, capacity, rate, window = one
        if scope == 0:
            value = caller.grant
        elif scope == 2:
            value = session
        elif scope == 1:
            value = caller.principal
        elif scope == 3:
            value = server
        else:
            value = ""
        key = keys.get(value)
        if key is None:
            key = result.bucket_key(value)
        # MemoryLimiter.take_one's arithmetic for a bucket that exists and can
        # pay, inlined: a method call costs as much as the step itself.
        cell = memory.state.get(key)
        if cell is not None:
            now = memory.clock()
            tokens = cell[0] + (now - cell[1]) * rate
            if tokens > capacity:
                tokens = capacity
            if tokens >= 1.0:
                cell[0] = tokens - 1.0
                cell[1] = now
                return result.decision
        wait = memory.take_one(key, capacity, rate, window)  # a new bucket, or a short one
        if wait is None:
            return result.decision
        return Decision(LIMITED, rule=result.rule, reason=result.limited_reason,
                        retry_after=_retry_after(wait), dry_run=result.dry_run)

    def _timed_out(self, exc: PatternTimeout, index: NameIndex, name: str, caller: Caller,
                   server: str, session: str) -> Decision:
        rule = next((e.rule for e in index.candidates(name)
                     if e.audience is None or e.audience.admits(caller)), "default")
        hook = self.on_pattern_timeout
        if hook is not None:
            hook(exc, rule, server, session)
        return timed_out(rule, exc)

    def _target(self, table: ServerTable, index: NameIndex, name: str, args: dict[str, Any],
                caller: Caller, server: str, session: str,
                trace: list[str] | None) -> Decision:
        for entry in index.candidates(name):
            audience = entry.audience
            if audience is not None and not audience.admits(caller):
                if trace is not None:
                    trace.append(f"{entry.rule}: skipped, does not apply to this caller "
                                 f"({audience})")
                continue
            return self._evaluate(entry, args, caller, server, session, trace)
        if trace is not None:
            trace.append(f"no entry matches {name!r}: the policy default applies")
        return self._apply(table.default, caller, server, session, trace, args)

    def _method(self, table: ServerTable, method: str, caller: Caller, server: str,
                session: str, trace: list[str] | None) -> Decision:
        for entry in table.methods.candidates(method):
            if entry.audience is None or entry.audience.admits(caller):
                return self._evaluate(entry, _EMPTY, caller, server, session, trace)
        if trace is not None:
            trace.append(f"method {method!r} is not listed: other_methods applies")
        return table.other_methods

    def _evaluate(self, entry: CompiledEntry, args: dict[str, Any], caller: Caller,
                  server: str, session: str, trace: list[str] | None) -> Decision:
        if trace is not None:
            trace.append(f"{entry.rule}: matches ({'exact name' if entry.exact else 'glob'} "
                         f"{entry.pattern!r}, from {entry.source})")
        for req in entry.require:
            if not req.check.test(args):
                if trace is not None:
                    trace.append(f"{entry.rule}: require fails: {req.check.message}")
                return req.denial
        for rule in entry.rules:
            audience = rule.audience
            if audience is not None and not audience.admits(caller):
                if trace is not None:
                    trace.append(f"{rule.rule}: skipped, does not apply to this caller")
                continue
            for check in rule.when:
                if not check.test(args):
                    if trace is not None:
                        trace.append(f"{rule.rule}: no match, {check.message}")
                    break
            else:
                if trace is not None:
                    trace.append(f"{rule.rule}: matches")
                for req in rule.require:
                    if not req.check.test(args):
                        if trace is not None:
                            trace.append(f"{rule.rule}: require fails: {req.check.message}")
                        return req.denial
                return self._apply(rule.verdict, caller, server, session, trace, args)
        if trace is not None and entry.rules:
            own = "the policy default" if entry.fallback_is_default else entry.fallback.action
            trace.append(f"{entry.rule}: no argument rule matched; the entry's own verdict "
                         f"applies ({own})")
        return self._apply(entry.fallback, caller, server, session, trace, args)

    def _apply(self, verdict: Verdict, caller: Caller, server: str, session: str,
               trace: list[str] | None, args: dict[str, Any] = _EMPTY) -> Decision:
        if verdict.counted or verdict.state:
            return self._count(verdict, caller, server, session, trace, args)
        if not verdict.buckets:
            return verdict.decision
        values = (caller.grant, caller.principal, session, server, "")
        requests = [(prefix + values[i], spec) for prefix, i, spec in verdict.plan]
        limiter = self.limiter
        if isinstance(limiter, SharedLimiter):  # buckets in Redis: the gateway settles them
            if trace is not None:
                trace.append(f"{verdict.rule}: limits are shared: explain does not consult them")
            return defer(verdict.decision, requests, verdict.limited_reason, verdict.dry_run,
                         limiter, debit=trace is None)
        wait = limiter.acquire(requests, debit=trace is None)
        if trace is not None:
            trace.append(f"{verdict.rule}: limits {[k.replace(chr(31), '/') for k, _ in requests]}"
                         f" {'have tokens' if wait is None else f'are empty for {wait:.3f}s'}")
        if wait is None:
            return verdict.decision
        return Decision(LIMITED, rule=verdict.rule, reason=verdict.limited_reason,
                        retry_after=_retry_after(wait), dry_run=verdict.dry_run)

    def _count(self, verdict: Verdict, caller: Caller, server: str, session: str,
               trace: list[str] | None, args: dict[str, Any]) -> Decision:
        """A verdict with counters: its buckets first, then a :class:`Counted`
        to settle (explain only describes the counters and reserves nothing)."""
        values = (caller.grant, caller.principal, session, server, "")
        result = counted(verdict.decision, verdict.counted, verdict.state, args, values,
                         self.counters)
        if type(result) is not Counted:  # an increment_from that cannot be counted
            return result
        if trace is not None:
            store = self.counters
            for req in result.requests:
                now = (f"{store.value(req.key, req.window)}"
                       if isinstance(store, MemoryCounters) else "(shared: not read)")
                trace.append(f"{verdict.rule}: counter {req.key.replace(chr(31), '/')} "
                             f"would add {req.amount} to {now}"
                             f"{'' if req.max is None else f' (max {req.max})'}")
            for read in result.reads:
                now = (f"{store.value(read.key, read.window)}"
                       if isinstance(store, MemoryCounters) else "(shared: not read)")
                trace.append(f"{verdict.rule}: require_state on counter "
                             f"{read.key.replace(chr(31), '/')} (now {now}), else: "
                             f"{read.message}")
        if not verdict.buckets:
            return verdict.decision if trace is not None else result
        # Counters settle first (the gateway), then shared buckets; buckets in
        # memory are paid now, and a refusal ends the call before any counter.
        inner = self._apply(verdict.plain, caller, server, session, trace, args)
        if trace is not None or (inner.action == LIMITED and type(inner) is Decision):
            return inner
        return result.but(inner)

    # -- tools/list filtering ---------------------------------------------------------

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        """False when no arguments could ever let ``caller`` call ``tool`` on ``server``."""
        table = self._compiled.table(server)
        for entry in table.tools.candidates(tool):
            if entry.audience is None or entry.audience.admits(caller):
                return _entry_can_pass(entry, caller)
        return _passes(table.default)

    def recheck(self, call: mcp.Call, caller: Caller, server: str, session: str) -> Decision:
        """The verdict without debiting any bucket or reserving any counter (a
        later round of a call paid for already). Limits are not consulted as
        refusals: a ``limited`` or a shared-limit verdict counts as its rule's."""
        decision = self.explain(call, caller, server, session).decision
        if type(decision) is not Decision or decision.action == LIMITED:
            return ALLOW_ROUND
        return decision

    # -- explain ----------------------------------------------------------------------

    def explain(self, call: mcp.Call, caller: Caller, server: str,
                session: str = "explain") -> Explanation:
        """Decide without debiting any bucket, recording every rule tried."""
        table = self._compiled.table(server)
        trace: list[str] = [f"server {server!r}: policy from "
                            f"{', '.join(table.sources) or '(none: default deny)'}"]
        method = call.method
        index: NameIndex | None = None
        name = ""
        args = _EMPTY
        if method == mcp.TOOLS_CALL:
            index, name, args = table.tools, call.tool or "", call.arguments or _EMPTY
        elif method in _RESOURCE_METHODS:
            index, name = table.resources, normalise_uri(call.uri or "")
        elif method == mcp.PROMPTS_GET:
            index, name, args = table.prompts, call.prompt or "", call.arguments or _EMPTY
        if index is not None:
            candidates = index.candidates(name)
            trace.append(f"candidates for {name!r}, best first: "
                         f"{[e.rule for e in candidates] or 'none'}")
            try:
                decision = self._target(table, index, name, args, caller, server, session,
                                        trace)
            except PatternTimeout as exc:
                trace.append(f"{exc}: the call is refused")
                decision = self._timed_out(exc, index, name, caller, server, session)
        elif method in PASS_METHODS or method in mcp.NOTIFICATIONS:
            candidates = ()
            trace.append(f"{method}: always passes")
            decision = PROTOCOL_ALLOW
        else:
            candidates = table.methods.candidates(method)
            decision = self._method(table, method, caller, server, session, trace)
        trace.append(f"decision: {decision.action} by {decision.rule}")
        return Explanation(decision, server, call.target or method,
                           [e.rule for e in candidates], trace)


def _passes(verdict: Verdict) -> bool:
    return verdict.action != "deny" or verdict.dry_run


def _entry_can_pass(entry: CompiledEntry, caller: Caller) -> bool:
    for rule in entry.rules:
        if rule.audience is not None and not rule.audience.admits(caller):
            continue
        if _passes(rule.verdict):
            return True
        if not rule.when:
            return False  # an unconditional deny: nothing after it is reachable
    return _passes(entry.fallback)


class ReloadResult(msgspec.Struct, frozen=True):
    """What a reload did: ``ok`` and the new digests, or the error and the old ones kept."""

    ok: bool
    files: dict[str, str]
    error: str | None = None
    changed: bool = False


class PolicySet:
    """Policy files on disk, compiled into one :class:`Engine`, reloadable.

    ``fleet`` files apply to every server; ``servers[name]`` files to that server
    only (together with the fleet ones). A reload is two steps: :meth:`compile`
    reads and compiles every file into a new table and touches nothing of this
    set (the gateway runs it in a worker thread while calls are decided under
    the table in force); :meth:`install` swaps the new table in with one
    assignment (on the thread that decides). :meth:`reload` does both at once.
    A bad file keeps the old table and the result says why.
    """

    def __init__(self, fleet: Sequence[Path], servers: Mapping[str, Sequence[Path]] | None = None,
                 *, limiter: Limiter | SharedLimiter | None = None,
                 dry_run: bool = False, counters: CounterStore | None = None,
                 regex_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.fleet = tuple(fleet)
        self.servers = {k: tuple(v) for k, v in (servers or {}).items()}
        self.dry_run = dry_run
        self.regex_timeout = regex_timeout
        self.engine = Engine(self.compile(), limiter, counters)

    def compile(self) -> CompiledPolicy:
        """Read and compile every file into a new table; raise :class:`PolicyError`.

        Reads only the file lists given at construction and builds new objects:
        safe in another thread while :meth:`decide` runs under the table in force.
        """
        cache: dict[Path, LoadedPolicy] = {}

        def load(path: Path) -> LoadedPolicy:
            if path not in cache:
                cache[path] = load_policy(path)
            return cache[path]

        with collector_paused():
            return compile_policies(
                [load(p) for p in self.fleet],
                {name: [load(p) for p in paths] for name, paths in self.servers.items()},
                dry_run=self.dry_run, regex_timeout=self.regex_timeout,
            )

    @property
    def digests(self) -> dict[str, str]:
        """``{file: sha256}`` of the table in force: for policy_load audit events."""
        return self.engine.compiled.digests

    def install(self, compiled: CompiledPolicy) -> ReloadResult:
        """Swap ``compiled`` in (buckets carry over); ``changed`` compares digests."""
        before = self.digests
        self.engine.swap(compiled)
        after = compiled.digests
        return ReloadResult(True, after, changed=after != before)

    def failed(self, error: str) -> ReloadResult:
        """The result of a reload that failed with ``error``: the table in force stays."""
        return ReloadResult(False, self.digests, error)

    def reload(self) -> ReloadResult:
        """Re-read and recompile every file now, on this thread; swap only if all are good."""
        try:
            compiled = self.compile()
        except PolicyError as exc:
            return self.failed(str(exc))
        return self.install(compiled)

    def decide(self, call: mcp.Call, caller: Caller, server: str, session: str) -> Decision:
        """Delegates to the current engine (use ``.engine`` directly on the hot path)."""
        return self.engine.decide(call, caller, server, session)

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        return self.engine.tool_visible(tool, caller, server)

    def recheck(self, call: mcp.Call, caller: Caller, server: str, session: str) -> Decision:
        return self.engine.recheck(call, caller, server, session)


__all__ = ["Engine", "Explanation", "PolicySet", "ReloadResult", "timed_out"]
