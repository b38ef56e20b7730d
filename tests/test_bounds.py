"""Bounded decoding and canonical framing: properties, and every decode site.

The rules are in firewall/protocol/bounds.py and framing.py; the mediator's
rules 2, 10 and 11 in firewall/gateway/mediator.py. Here: ``too_deep`` agrees
with a reference depth; ``canonical`` is one line that decodes to the value
decoded, and the SDKs' compact messages are their own canonical form; and a
message nested far too deep is a precise error at every place mcpwall decodes
wire bytes, in both directions, never an exception that escapes.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.demo.session import ParamsError
from firewall.demo.session import _decode as demo_decode
from firewall.gateway.mediator import Mediator
from firewall.gateway.operator.requests import ApiError, decode_body
from firewall.policy.decision import Caller, Decision
from firewall.protocol import bounds, framing, jsonrpc, mcp
from firewall.protocol.mcp import Call

BOMB = b"[" * 100_000 + b"]" * 100_000  # far past Python's recursion limit
JUST_OVER = b"[" * (bounds.MAX_DEPTH + 1) + b"]" * (bounds.MAX_DEPTH + 1)
AT_LIMIT = b"[" * (bounds.MAX_DEPTH - 4) + b"]" * (bounds.MAX_DEPTH - 4)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30)

WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r", "\r\n", ""])


def spaced(value: Any, ws: st.DataObject) -> str:
    """``value`` as JSON text with random whitespace (CR and LF too) between tokens."""
    gap = ws.draw(WHITESPACE)
    if isinstance(value, dict):
        items = [f"{gap}{json.dumps(k)}{ws.draw(WHITESPACE)}:{spaced(v, ws)}"
                 for k, v in value.items()]
        return "{" + ",".join(items) + ws.draw(WHITESPACE) + "}"
    if isinstance(value, list):
        return "[" + ",".join(gap + spaced(v, ws) for v in value) + ws.draw(WHITESPACE) + "]"
    return gap + json.dumps(value, ensure_ascii=ws.draw(st.booleans())) + ws.draw(WHITESPACE)


# -- bounds -------------------------------------------------------------------------


@given(json_values, st.integers(0, 8))
def test_too_deep_agrees_with_the_reference_depth(value: Any, limit: int) -> None:
    text = json.dumps(value).encode()
    assert bounds.too_deep(text, limit) == (bounds.depth(text) > limit)


@given(st.text(alphabet='[]{}"\\ab:,', max_size=60), st.integers(0, 6))
def test_too_deep_never_says_shallow_for_what_msgspec_reads_deeper(text: str,
                                                                   limit: int) -> None:
    data = text.encode()
    try:
        msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return  # not JSON: the decoder refuses it whatever the check said
    assert bounds.too_deep(data, limit) == (bounds.depth(data) > limit)


def test_brackets_inside_strings_and_escapes_do_not_count() -> None:
    assert not bounds.too_deep(b'["' + b"[" * 500 + b'"]', 2)
    assert not bounds.too_deep(b'["\\\\", "\\"[[[[[[[[[[", {"a": []}]', 3)
    assert bounds.too_deep(b'["\\\\", [[["x"]]]]', 3)


def test_limits() -> None:
    assert not bounds.too_deep(AT_LIMIT) and bounds.too_deep(JUST_OVER)
    assert bounds.too_deep(BOMB)


# -- canonical framing ----------------------------------------------------------------


@settings(max_examples=300)
@given(json_values, st.data())
def test_canonical_is_one_line_with_the_same_value(value: Any, data: st.DataObject) -> None:
    text = spaced(value, data).encode()
    line = framing.canonical(text)
    assert not framing.splittable(line)
    assert msgspec.json.decode(line) == msgspec.json.decode(text)
    assert framing.canonical(line) == line  # a fixed point


@given(json_values)
def test_compact_encodings_are_their_own_canonical_form(value: Any) -> None:
    text = msgspec.json.encode(value)
    if framing.splittable(text):  # U+0085, U+2028, U+2029 inside a string
        assert not framing.splittable(framing.canonical(text))
    else:
        assert framing.canonical(text) is text and framing.line_safe(text) is text


def test_separators_inside_strings_are_escaped() -> None:
    text = '{"a":"x\u2028y\u2029z\u0085"}'.encode()
    assert framing.canonical(text) == b'{"a":"x\\u2028y\\u2029z\\u0085"}'


def test_duplicate_members_keep_the_one_the_policy_saw() -> None:
    data = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t",'
            b'"arguments":{"action":"delete","action":"list"}},"method":"ping"}')
    envelope, call = mcp.decode(data)
    assert call is not None and call.method == "ping"
    line = framing.canonical(data)
    assert line.count(b'"method"') == 1 and line.count(b'"action"') == 1
    again, same = mcp.decode(line)
    assert same == call and again.method == envelope.method


methods = st.sampled_from(["tools/call", "resources/read", "prompts/get", "ping", "x/y"])


@settings(max_examples=300)
@given(methods, st.text(max_size=8), json_values, st.data())
def test_the_policy_view_of_the_canonical_form_is_the_view_decided(
        method: str, name: str, args: Any, data: st.DataObject) -> None:
    message = {"jsonrpc": "2.0", "id": data.draw(st.integers(0, 9) | st.text(max_size=3)),
               "method": method,
               "params": {"name": name, "uri": name, "arguments": {"a": args}}}
    text = spaced(message, data).encode()
    try:
        _, call = mcp.decode(text)
    except jsonrpc.ProtocolError:
        return
    _, again = mcp.decode(framing.canonical(text))
    assert again == call


def test_not_json_is_not_canonical() -> None:
    for bad in (b"{", b"[1,]", b"\xff", JUST_OVER, BOMB):
        with pytest.raises(framing.NotCanonical):
            framing.canonical(bad)


# -- every decode site ------------------------------------------------------------------


def deep_request(method: str = "tools/call", payload: bytes = BOMB) -> bytes:
    return (b'{"jsonrpc":"2.0","id":1,"method":"' + method.encode()
            + b'","params":{"name":"t","arguments":{"a":' + payload + b"}}}")


@pytest.mark.parametrize("payload", [BOMB, JUST_OVER], ids=["bomb", "just-over"])
def test_envelope_decoders_refuse_deep_messages(payload: bytes) -> None:
    for decode in (jsonrpc.decode, mcp.decode):
        with pytest.raises(jsonrpc.ProtocolError) as caught:
            decode(deep_request(payload=payload))  # type: ignore[operator]
        assert caught.value.code == jsonrpc.INVALID_REQUEST
        assert "nested deeper" in caught.value.message


def test_a_response_nested_past_the_recursion_limit_is_a_protocol_error() -> None:
    with pytest.raises(jsonrpc.ProtocolError):
        jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"result":' + BOMB + b"}")
    deep_error = jsonrpc.Message("2.0", id=1, error=msgspec.Raw(b'{"code":1,"data":' + BOMB
                                                                  + b',"message":"m"}'))
    assert jsonrpc.decode_error(deep_error) is None


def test_operator_api_bodies_and_demo_params_refuse_deep_values() -> None:
    class Body(msgspec.Struct):
        note: Any = None

    for payload in (BOMB, JUST_OVER):
        with pytest.raises(ApiError) as caught:
            decode_body(b'{"note":' + payload + b"}", Body)
        assert caught.value.status == 400
        with pytest.raises(ParamsError):
            demo_decode(msgspec.Raw(b'{"note":' + BOMB + b"}"), Body)


class Allow:
    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        return Decision("allow", rule="test")

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        return tool != "hidden"


def mediator() -> Mediator:
    return Mediator(server="s", session="s1", caller=Caller("p", "g"), policy=Allow(),
                    audit=None)


@pytest.mark.parametrize("payload", [BOMB, JUST_OVER], ids=["bomb", "just-over"])
async def test_the_mediator_survives_deep_messages_in_both_directions(payload: bytes) -> None:
    med = mediator()
    # client -> server: a request is answered -32600, a notification or a response dropped
    refused = await med.from_client(deep_request(payload=payload))
    assert refused.upstream is None and refused.client is not None
    assert json.loads(refused.client)["error"]["code"] == jsonrpc.INVALID_REQUEST
    for message in (b'{"jsonrpc":"2.0","method":"notifications/x","params":' + payload + b"}",
                    b'{"jsonrpc":"2.0","id":1,"result":' + payload + b"}"):
        routed = await med.from_client(message)
        assert routed.upstream is None
    # server -> client: requests, notifications, and answers to each kind of request
    for message in (deep_request("sampling/createMessage", payload),
                    b'{"jsonrpc":"2.0","method":"notifications/message","params":'
                    + payload + b"}"):
        routed = await med.from_server(message)
        assert routed.client is None
    for rid, method in enumerate(("tools/call", "tools/list", "ping"), start=10):
        call = jsonrpc.request(method, {"name": "t"} if method == "tools/call" else {}, rid)
        assert (await med.from_client(call)).upstream is not None
        answer = (b'{"jsonrpc":"2.0","id":' + str(rid).encode() + b',"result":{"tools":'
                  + payload + b',"isError":' + payload + b"}}")
        routed = await med.from_server(answer)
        assert routed.client is None  # refused before decoding: dropped, logged, recorded
    # Their requests wait for an answer still: the upstream timeout answers them.
    assert med.pending_count == 3
