"""What the policy engine returns, and who it decides for.

These two types are the contract between the gateway (which builds a
:class:`Caller` from a bearer token or the ``wrap`` command line) and the policy
engine (which returns a :class:`Decision`). Both are immutable.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

import msgspec

from firewall.protocol.mcp import Call

Action = Literal["allow", "deny", "limited", "pending", "invalid_arguments"]

ALLOW: Final = "allow"
DENY: Final = "deny"
LIMITED: Final = "limited"  # a rate limit refused the call; retry_after says when to retry
PENDING: Final = "pending"  # the rule requires human approval
INVALID_ARGUMENTS: Final = "invalid_arguments"


class Caller(msgspec.Struct, frozen=True):
    """The authenticated party behind a session.

    ``principal`` is the agent; ``grant`` the credential it used (one agent may
    hold several grants); ``groups`` the groups rules may name.
    """

    principal: str = "anonymous"
    grant: str = "anonymous"
    groups: tuple[str, ...] = ()


SESSIONLESS_PREFIX: Final = "grant:"


def session_scope(session: str | None, caller: Caller) -> str:
    """The value a ``session`` scope (limits, counters) takes for a call.

    In a session (MCP 2025, or a ``wrap`` process, which is one session for
    its life): the session id. Without one (an MCP 2026-07-28 request over
    HTTP, which has no session), the caller's grant, as ``grant:<id>``
    (never a session id, which mcpwall mints in hex): every sessionless call
    made with one credential shares one budget, so leaving out a session
    never buys a fresh one.

    >>> session_scope(None, Caller("agent", "g-1"))
    'grant:g-1'
    """
    return session if session is not None else SESSIONLESS_PREFIX + caller.grant


class Decision(msgspec.Struct, frozen=True):
    """The verdict on one message.

    ``rule`` names the rule that decided (``"default"`` for the policy default),
    ``reason`` is for people, ``retry_after`` (seconds) is set for ``limited``.
    With ``dry_run`` the verdict is recorded but not enforced. ``approval`` says
    who approves a ``pending`` verdict: the operators' desk or the person in
    the client (elicitation).
    """

    action: Action
    rule: str = "default"
    reason: str | None = None
    retry_after: float | None = None
    dry_run: bool = False
    approval: Literal["desk", "client"] = "desk"

    @property
    def enforced_allow(self) -> bool:
        """True when the message goes through: allowed, or refused in dry-run."""
        return self.action == ALLOW or self.dry_run


ALLOW_ALL: Final = Decision(ALLOW, rule="allow-all", reason="no policy configured")


class PolicyPoint(Protocol):
    """Where the gateway asks for a verdict. Implemented by the policy engine.

    Pure and synchronous: lookups, arithmetic and token buckets, no I/O.
    """

    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        """The verdict on one request (``call.direction`` says which way it goes)."""
        ...

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        """False when no argument values could ever let ``caller`` call ``tool``:
        tools/list responses drop such tools."""
        ...

    def recheck(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        """The verdict the rules in force (and the kill switch) give a later round
        of a call already decided and paid for: nothing is debited or reserved."""
        ...


class AllowAll:
    """The policy point used when no policy is configured."""

    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        return ALLOW_ALL

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        return True

    def recheck(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        return ALLOW_ALL
