"""``subscriptions/listen`` over a bridged 2025 session, answered by mcpwall.

A server of the handshake revisions has no ``subscriptions/listen``: it
sends ``notifications/*/list_changed`` and ``notifications/resources/updated``
on its session (the latter for URIs its client subscribed to). Behind the
bridge (:mod:`~firewall.gateway.front.bridge`), mcpwall answers a caller's
listen itself and relays those notifications. Rules this module keeps (the
listen desk, ``front/listen.py`` rule 7, keeps the rest: the policy's
narrowing and decision, bounds, keepalives, lifetime, audit, reload pushes):

1. A listen is carried by the caller's bridged session, opened if need be
   (only after the policy let the listen through; the session's caps apply:
   a refusal is answered 429/503, a server that cannot be started 502), and
   keeps it from idle expiry while open.
2. What is honoured is the policy's narrowing within what the server said in
   its ``initialize``: a ``...ListChanged`` flag only when the matching
   capability has ``listChanged: true``; resource URIs only when
   ``resources.subscribe`` is true, and each only once the server accepted
   mcpwall's ``resources/subscribe`` for it (a request of mcpwall's own,
   decided and recorded by the bridged session's mediator, sent once per URI
   however many listens follow it). The rest is named in ``listen_start``'s
   ``not_carried``.
3. When the last listen following a URI ends, mcpwall's own
   ``resources/unsubscribe`` (decided and recorded the same way) goes to the
   server, unless the session ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import trio

from firewall.gateway.front.admission import Refusal
from firewall.gateway.front.bridge import Bridge
from firewall.gateway.front.listen import FLAGS, RESOURCES, Feed, Honoured, Unreachable
from firewall.gateway.mediator import Lost
from firewall.policy.decision import Caller

# Each flag and the capability whose ``listChanged`` the server must have said.
_CAPABILITY: Final = {"toolsListChanged": "tools", "promptsListChanged": "prompts",
                      "resourcesListChanged": "resources"}
assert set(_CAPABILITY) == set(FLAGS)


def carried(honoured: Honoured, capabilities: Any) -> tuple[Honoured, list[str]]:
    """The part of ``honoured`` a server with these ``initialize`` capabilities
    can deliver (rule 2, before any subscribe), and the rest, named.

    ``carried(Honoured(frozenset({"toolsListChanged", "promptsListChanged"})),
    {"tools": {"listChanged": True}, "prompts": {}})`` keeps the tools flag and
    names ``promptsListChanged``."""
    caps = capabilities if isinstance(capabilities, dict) else {}
    flags: set[str] = set()
    missing: list[str] = []
    for flag in sorted(honoured.flags):
        cap = caps.get(_CAPABILITY.get(flag, ""))
        if isinstance(cap, dict) and cap.get("listChanged") is True:
            flags.add(flag)
        else:
            missing.append(flag)
    resources = caps.get("resources")
    uris = honoured.uris
    if uris and not (isinstance(resources, dict) and resources.get("subscribe") is True):
        missing.append(RESOURCES)
        uris = frozenset()
    return Honoured(frozenset(flags), uris), missing


class BridgedListens:
    """The :class:`~firewall.gateway.front.listen.ListenSource` of a bridge."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.name = bridge.name

    @contextlib.asynccontextmanager
    async def attach(self, caller: Caller, honoured: Honoured
                     ) -> AsyncIterator[Feed | Unreachable]:
        """Follow ``honoured`` for ``caller`` on its bridged session (rules 1 to 3)."""
        opened = await self.bridge.session_for(caller)
        if isinstance(opened, Refusal):
            yield Unreachable(opened.status, Lost(f"cannot be reached: {opened.message()}"))
            return
        if isinstance(opened, str):
            yield Unreachable(502, Lost(f"cannot be started through the bridge: {opened}"))
            return
        within, not_carried = carried(honoured, opened.init_result.get("capabilities"))
        # Listening before subscribing: an update sent at once is not lost.
        with opened.listening() as notifications:
            followed = await opened.follow(within.uris)
            not_carried += sorted(within.uris - followed)
            try:
                yield Feed(Honoured(within.flags, followed), not_carried, notifications)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(_UNFOLLOW_SECONDS):
                    await opened.unfollow(followed)


_UNFOLLOW_SECONDS: Final = 10.0
