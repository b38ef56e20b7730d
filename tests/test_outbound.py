"""What may reach an upstream (firewall/gateway/outbound.py), held structurally.

mypy holds the transports to Outbound values (``StdioChild.send``,
``HttpUpstream.forward``); these tests hold the rest: an Outbound is made by
the mediator or at a few named places, never carries a byte a line reader
splits on, and the gateway never POSTs a body but through ``forward``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio

from firewall.gateway.outbound import Outbound

FIREWALL = Path(__file__).resolve().parent.parent / "firewall"

# Every place in firewall/ that writes a message of mcpwall's own to an
# upstream, and why. A new one is a new way past the policy: add it here only
# with a reason that holds (its bytes are made by mcpwall, not received).
OWN_MESSAGES = {
    ("gateway/front/stdio_endpoint.py", "initialize replayed to a restarted child"),
    ("gateway/front/stdio_endpoint.py", "cancellation of a timed-out request"),
    ("gateway/mediator.py", "protocol error answer"),
    # The bridge (2026-07-28 client, 2025 stdio server): its own session's
    # handshake and an error answering a server request it does not carry.
    ("gateway/front/bridge.py", "bridge: mcpwall's own handshake"),
    ("gateway/front/bridge.py", "bridge: refusal of a server request"),
    # What both bridges (serve's and `wrap --bridge`) send for a call they
    # abandon (its input request refused, unreadable or not answered in time):
    # an error (or the policy's refusal) answering the server's waiting request,
    # and the call's cancellation, both composed by mcpwall.
    ("gateway/front/bridge_input.py", "bridge: refusal of a server request"),
    ("gateway/front/bridge_input.py", "bridge: cancellation of an abandoned call"),
    # The same in `mcpwall wrap --bridge` (2026-07-28 client, 2025 stdio child):
    # its handshake with the child and the refusal of a server request, both
    # composed by mcpwall (no client byte in them).
    ("gateway/front/wrap_bridge.py", "wrap bridge: mcpwall's own handshake"),
    ("gateway/front/wrap_bridge.py", "wrap bridge: refusal of a server request"),
    # `mcpwall wrap` ends a listen past listen.listen_stream_max_seconds: the
    # child is told with a notifications/cancelled mcpwall composes (the
    # listen's id, a fixed reason; no client byte in it).
    ("gateway/front/wrap.py", "cancellation of a listen it ended"),
    # `mcpwall scan`: no agent behind it; it writes the handshake, list requests
    # and refusals of server requests it composes itself, never a tool call.
    ("gateway/upstream/survey.py", "mcpwall scan: its own handshake, lists and refusals"),
}


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def sources() -> list[tuple[str, ast.AST]]:
    return [(str(path.relative_to(FIREWALL)), ast.parse(path.read_text(), str(path)))
            for path in sorted(FIREWALL.rglob("*.py"))]


def test_own_messages_are_made_only_where_listed() -> None:
    found = set()
    for name, tree in sources():
        for call in calls(tree):
            func = call.func
            if (isinstance(func, ast.Attribute) and func.attr in ("own", "decided")
                    and isinstance(func.value, ast.Name) and func.value.id == "Outbound"):
                if func.attr == "decided":
                    assert name == "gateway/mediator.py", f"{name} makes a decided Outbound"
                    continue
                why = call.args[1]
                assert isinstance(why, ast.Constant), f"{name}: Outbound.own needs a literal why"
                found.add((name, why.value))
    assert found == OWN_MESSAGES


def test_decided_messages_are_translated_only_by_the_bridges() -> None:
    # bridge.py (serve) translates twice: a decided request (mcpwall's id, no
    # revision _meta keys), and a decided retry into the response to the server
    # request its client answered (rule 6: the retry's decision receipt is the one
    # the write waits for). wrap_bridge.py (wrap --bridge) strips the same _meta
    # keys, the client's id kept. Each keeps the decided message's receipt.
    places = {name for name, tree in sources() for call in calls(tree)
              if isinstance(call.func, ast.Attribute) and call.func.attr == "translated"}
    assert places == {"gateway/front/bridge.py", "gateway/front/wrap_bridge.py"}


async def test_only_a_decided_message_is_translated() -> None:
    own = Outbound.own(b'{"jsonrpc":"2.0","method":"x"}', "test")
    with pytest.raises(ValueError):
        own.translated(b"{}", "bridged")


def test_the_gateway_posts_bodies_only_through_forward() -> None:
    for name, tree in sources():
        if not name.startswith("gateway/") or name == "gateway/upstream/http.py":
            continue
        for call in calls(tree):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "request":
                has_body = len(call.args) > 2 or any(k.arg == "body" for k in call.keywords)
                method = call.args[0] if call.args else None
                is_upstream = not (isinstance(func.value, ast.Name)
                                   and func.value.id == "jsonrpc")
                if is_upstream:
                    assert not has_body, f"{name}:{call.lineno} sends a body past forward()"
                    assert isinstance(method, ast.Constant) and method.value in ("GET", "DELETE")


def test_an_outbound_is_one_line_and_made_one_of_two_ways() -> None:
    for bad in (b'{"a":\n1}', b'{"a":\r1}', '["\u2028"]'.encode(), '["\u0085"]'.encode()):
        with pytest.raises(ValueError, match="one line"):
            Outbound.own(bad, "test")
    with pytest.raises(TypeError):
        Outbound(b"{}", None, None, "forged", object())


async def test_an_outbound_is_ready_once_its_decision_is_durable() -> None:
    class Receipt:
        def __init__(self) -> None:
            self.done = trio.Event()

        async def committed(self) -> None:
            await self.done.wait()

    receipt = Receipt()
    out = Outbound.decided(b"{}", receipt, "s.1")
    with trio.move_on_after(0.05) as scope:
        await out.ready()
    assert scope.cancelled_caught
    receipt.done.set()
    await out.ready()
