"""What the HTTP front asks of a mounted server: the :class:`Endpoint` contract.

One endpoint serves ``/servers/NAME/mcp`` for one server of the fleet; its
kind follows the server's transport (``stdio_endpoint``: a child process per
session; ``http_endpoint``: a mediated relay to a Streamable HTTP server).
Rules of the contract:

1. Every endpoint implements all of it; what does not apply to a kind is a
   no-op there, never a missing method: the front calls each method directly
   (``mypy --strict`` checks both kinds against it where the front builds them).
2. The front calls :meth:`Endpoint.post`, :meth:`Endpoint.get` and
   :meth:`Endpoint.delete` only after its own checks passed (path, method,
   Origin, bearer token, protocol version, session ownership; for a POST:
   Accept, Content-Type, size, one JSON-RPC message). A GET or DELETE always
   comes with the caller's session.
3. :attr:`Endpoint.idle_limit` is how long its sessions may stay idle: the
   front's reaper runs often enough for the smallest one.
5. A message of the stateless revision (2026-07-28) comes to
   :meth:`Endpoint.post_stateless`, never with a session. An endpoint that
   cannot carry it upstream answers the revision's -32022 (400, the
   request's id, recorded through its mediator).
4. :meth:`Endpoint.aclose` runs once, after every session ended (shutdown):
   it releases what the endpoint holds across sessions (connection pools).
   Ending a session's GET streams is the session's own business
   (``Session.end_get_streams``).
"""

from __future__ import annotations

from typing import Any, Protocol

from firewall.gateway.front.sessions import Session
from firewall.gateway.http.exchange import Exchange
from firewall.gateway.mediator import Mediator
from firewall.policy.decision import Caller
from firewall.protocol import revision
from firewall.protocol.inbound import Inbound


class Endpoint(Protocol):
    """One mounted server: what the front calls once a request passed its checks."""

    name: str
    idle_limit: float

    @property
    def versions(self) -> tuple[str, ...]:
        """The protocol revisions a client may use here, newest first (-32022's list)."""

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``, for ``/healthz``."""

    async def post(self, ex: Exchange, caller: Caller, session: Session | None,
                   inbound: Inbound, accept_sse: bool) -> None:
        """Answer one POSTed message, decoded once by the front (``inbound``)."""

    async def post_stateless(self, ex: Exchange, mediator: Mediator, inbound: Inbound,
                             accept_sse: bool, headers: list[tuple[str, str]]) -> None:
        """Answer one message of the stateless revision (2026-07-28): no session.

        The front checked it (the revision's header ladder) and gives the
        request's own ``mediator`` and the request-metadata ``headers`` made
        from its body (rule 5): what goes upstream carries those, never the
        client's."""

    async def get(self, ex: Exchange, session: Session) -> None:
        """Serve a GET stream of ``session`` (or resume one, with ``Last-Event-ID``)."""

    async def delete(self, ex: Exchange, session: Session) -> None:
        """End ``session`` at the client's request."""

    def health(self) -> dict[str, Any]:
        """This server's part of ``/healthz``."""

    async def aclose(self) -> None:
        """Release what the endpoint holds across sessions (rule 4)."""


async def refuse_stateless(ex: Exchange, mediator: Mediator, inbound: Inbound,
                           requested: str | None) -> None:
    """Refuse a message of the stateless revision an endpoint cannot carry (rule 5):
    -32022 naming the handshake revisions, under the request's id (a
    notification has none), recorded as a ``protocol`` deny."""
    problem = revision.unsupported(requested, revision.HANDSHAKE_VERSIONS)
    reply = await mediator.refuse_protocol(inbound, problem.code, problem.message, problem.data)
    await ex.respond(problem.status, reply)
