"""What may be written to an upstream server: an :class:`Outbound`, nothing else.

Rules this module keeps:

1. Every write to an upstream (a stdio child's stdin, a POST body to an HTTP
   server) takes an Outbound, never bytes: ``StdioChild.send`` and
   ``HttpUpstream.request`` accept nothing else.
2. An Outbound is made in exactly two ways:
   - by the mediator, for a message the policy decided (or a refusal it
     answers a server with), holding the bytes that were decided and the
     receipt of the decision event (:meth:`Outbound.decided`);
   - for a message mcpwall writes on its own behalf (a cancellation after a
     timeout, the replayed handshake of a restarted child), named by why
     (:meth:`Outbound.own`). ``tests/test_outbound.py`` pins the places in
     ``firewall/`` that make one, so a new bypass cannot appear unseen.
   A decided Outbound may be :meth:`Outbound.translated` for a server of an
   older protocol revision (the bridges, ``gateway/front/bridge.py`` and
   ``gateway/front/wrap_bridge.py``, the places pinned): the same call, its
   receipt kept, with only what that revision reads differently changed (the
   id, ``_meta`` keys it does not know).
3. The bytes of an Outbound are one line for every reader: no raw CR or LF,
   no U+0085, U+2028 or U+2029 (``framing.splittable``). The mediator makes
   them so (its outputs are ``framing.canonical`` or ``line_safe``, a property
   its tests and the differential harness hold it to); ``Outbound.own``
   refuses anything else, whatever the caller did.
4. A transport writes an Outbound only after ``await outbound.ready()``: in
   durable audit mode that is the commit of its decision event, so nothing
   reaches a server before the trail holds its decision.
"""

from __future__ import annotations

from typing import Final

from firewall.audit.events import Receipt
from firewall.protocol import framing

_DECIDED: Final = object()


class Outbound:
    """Bytes mcpwall may write to an upstream, and the receipt they wait for."""

    __slots__ = ("call_id", "data", "receipt", "why")

    def __init__(self, data: bytes, receipt: Receipt | None, call_id: str | None,
                 why: str, key: object) -> None:
        if key is not _DECIDED:
            raise TypeError("an Outbound is made by Outbound.decided or Outbound.own")
        self.data = data
        self.receipt = receipt
        self.call_id = call_id
        self.why = why

    @classmethod
    def decided(cls, data: bytes, receipt: Receipt | None, call_id: str | None) -> Outbound:
        """A message the policy decided (``call_id``), or a refusal answering the
        upstream; for the mediator only, which made ``data`` with
        ``framing.canonical`` or ``line_safe`` (checked by its tests, and not
        again here: this is the hot path)."""
        return cls(data, receipt, call_id, "decided", _DECIDED)

    @classmethod
    def own(cls, data: bytes, why: str) -> Outbound:
        """A message mcpwall itself writes to the upstream (``why`` says which);
        ValueError unless ``data`` is one line for every reader."""
        if framing.splittable(data):
            raise ValueError("an Outbound must be one line for every reader (no CR, LF, "
                             "U+0085, U+2028 or U+2029)")
        return cls(data, None, None, why, _DECIDED)

    def translated(self, data: bytes, why: str) -> Outbound:
        """This decided message as a server of an older revision reads it (rule 2):
        the same receipt and call; ValueError unless ``data`` is one line."""
        if self.why != "decided":
            raise ValueError("only a decided message is translated")
        if framing.splittable(data):
            raise ValueError("an Outbound must be one line for every reader (no CR, LF, "
                             "U+0085, U+2028 or U+2029)")
        return Outbound(data, self.receipt, self.call_id, why, _DECIDED)

    async def ready(self) -> None:
        """Return once the message may be written (its decision event is durable)."""
        if self.receipt is not None:
            await self.receipt.committed()

    def __repr__(self) -> str:
        return f"Outbound({self.why}, call_id={self.call_id!r}, {len(self.data)} bytes)"
