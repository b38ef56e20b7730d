"""The kill switch: deny everything for a server, a principal or the whole firewall.

Rules this module keeps:

1. The switch is consulted before the policy, for every request in either
   direction (:class:`GuardedPolicy` wraps the policy point, so the mediator
   does not change), except what the policy engine always passes
   (``initialize``, ``ping``, notifications): a client still connects and
   is told why its calls are refused. While every switch is off, the cost
   is one attribute test.
2. A denial by the switch is an ordinary ``deny`` decision with rule
   ``kill-switch`` and a reason naming the scope, the operator and the
   comment, so the agent, the audit trail and the metrics see it like any
   other refusal. Dry-run policies do not soften it.
3. Turning a switch on or off is audited as a ``kill_switch`` lifecycle
   event: by the operator API for its own changes, by
   :class:`firewall.gateway.operator.switchboard.SwitchBoard` for the changes it reads
   from the shared file (another instance, or ``mcpwall kill-switch --config``).
4. The switches here are what the hot path reads; the file
   (:mod:`firewall.gateway.operator.switch_store`) is what survives a restart and what
   a fleet shares. :meth:`KillSwitch.replace` makes memory match the file.

Example::

    switch = KillSwitch()
    switch.turn_on(Scope("server", "vm"), by="alice", comment="runaway agent")
    policy = GuardedPolicy(policy, switch)
"""

from __future__ import annotations

import time
from typing import Final, Literal

import msgspec

from firewall.policy.compiler import PASS_METHODS
from firewall.policy.decision import DENY, Caller, Decision, PolicyPoint
from firewall.protocol.mcp import Call

ScopeKind = Literal["global", "server", "principal"]
RULE: Final = "kill-switch"


class Scope(msgspec.Struct, frozen=True):
    """What a switch covers: everything, one server, or one principal."""

    kind: ScopeKind = "global"
    name: str | None = None

    def describe(self) -> str:
        """``"server vm"``, ``"principal alice"`` or ``"the whole firewall"``."""
        return "the whole firewall" if self.kind == "global" else f"{self.kind} {self.name}"


class Switch(msgspec.Struct, frozen=True):
    """One switch that is on: its scope, who turned it on, when and why."""

    scope: Scope
    by: str
    since_ns: int
    comment: str | None = None
    decision: Decision | None = None  # the one Decision every denial shares


def armed(switch: Switch) -> Switch:
    """``switch`` with the denial it hands out (its reason names scope, operator, comment)."""
    scope, comment = switch.scope, switch.comment
    reason = f"kill switch on for {scope.describe()} by {switch.by}" + (
        f": {comment}" if comment else "")
    return msgspec.structs.replace(switch, decision=Decision(DENY, rule=RULE, reason=reason))


class KillSwitch:
    """The switches that are on. Reads are dict lookups; writes replace whole entries."""

    def __init__(self) -> None:
        self.on_global: Switch | None = None
        self.servers: dict[str, Switch] = {}
        self.principals: dict[str, Switch] = {}
        self.active = False  # any switch on: the one test on the hot path

    def turn_on(self, scope: Scope, *, by: str, comment: str | None = None,
                since_ns: int | None = None) -> Switch:
        """Turn a switch on (again: the newest operator and comment win)."""
        return self._install(Switch(scope, by, time.time_ns() if since_ns is None else since_ns,
                                    comment))

    def _install(self, switch: Switch) -> Switch:
        switch = armed(switch)
        scope = switch.scope
        if scope.kind == "global":
            self.on_global = switch
        elif scope.kind == "server":
            self.servers[str(scope.name)] = switch
        else:
            self.principals[str(scope.name)] = switch
        self.active = True
        return switch

    def turn_off(self, scope: Scope) -> Switch | None:
        """Turn a switch off; returns the switch that was on, or None."""
        if scope.kind == "global":
            was, self.on_global = self.on_global, None
        elif scope.kind == "server":
            was = self.servers.pop(str(scope.name), None)
        else:
            was = self.principals.pop(str(scope.name), None)
        self.active = bool(self.on_global or self.servers or self.principals)
        return was

    def replace(self, switches: list[Switch]) -> tuple[list[Switch], list[Switch]]:
        """Make ``switches`` exactly the ones on; return (turned on or changed, turned off)."""
        before = {s.scope: s for s in self.switches()}
        after = {s.scope: s for s in switches}
        on = [s for scope, s in after.items()
              if scope not in before or _differs(before[scope], s)]
        off = [s for scope, s in before.items() if scope not in after]
        for switch in off:
            self.turn_off(switch.scope)
        for switch in on:
            self._install(switch)
        return [self._get(s.scope) for s in on], off

    def _get(self, scope: Scope) -> Switch:
        if scope.kind == "global":
            found = self.on_global
        elif scope.kind == "server":
            found = self.servers.get(str(scope.name))
        else:
            found = self.principals.get(str(scope.name))
        assert found is not None
        return found

    def switches(self) -> list[Switch]:
        """Every switch that is on: global first, then servers, then principals."""
        out = [self.on_global] if self.on_global else []
        return out + list(self.servers.values()) + list(self.principals.values())

    def check(self, server: str, principal: str) -> Decision | None:
        """The denial for this server and principal, or None when no switch covers them."""
        switch = self.on_global or self.servers.get(server) or self.principals.get(principal)
        return None if switch is None else switch.decision


def _protocol(method: str) -> bool:
    # What the policy engine always passes (its rule 4): a client still connects
    # and learns why its calls are refused.
    return method in PASS_METHODS or method.startswith("notifications/")


def _differs(a: Switch, b: Switch) -> bool:
    return (a.by, a.since_ns, a.comment) != (b.by, b.since_ns, b.comment)


class GuardedPolicy:
    """A policy point behind the kill switch: the switch first, then ``inner``."""

    __slots__ = ("inner", "switch")

    def __init__(self, inner: PolicyPoint, switch: KillSwitch) -> None:
        self.inner = inner
        self.switch = switch

    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        """The switch's denial when one covers the call, else the policy's verdict."""
        if self.switch.active:
            denial = self.switch.check(server, caller.principal)
            if denial is not None and not _protocol(call.method):
                return denial
        return self.inner.decide(call, caller, server, session)

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        """The policy's answer (a kill switch hides nothing: it refuses)."""
        return self.inner.tool_visible(tool, caller, server)

    def recheck(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        """The switch's denial when one covers the call, else the policy's recheck."""
        if self.switch.active:
            denial = self.switch.check(server, caller.principal)
            if denial is not None and not _protocol(call.method):
                return denial
        return self.inner.recheck(call, caller, server, session)


__all__ = ["RULE", "GuardedPolicy", "KillSwitch", "Scope", "Switch", "armed"]
