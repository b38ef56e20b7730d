"""One message, one decode: protocol.inbound held to the two-pass path it replaced.

The reference is what the mediator did before: ``mcp.decode`` (typed: the
envelope and the policy view) and then ``framing.canonical`` (a second,
generic decode for the line forwarded). For any input, the Inbound must give
the same refusal, the same Call, and the line ``framing.canonical`` gives;
and its line, decoded again, must give the very Call the policy saw.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.gateway.mediator import Mediator
from firewall.policy.decision import AllowAll, Caller
from firewall.protocol import bounds, framing, inbound, jsonrpc, mcp
from firewall.protocol.inbound import Inbound
from tests.fuzz_targets import fuzz_inbound as check

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=8)
NAMES = st.sampled_from(["vm", "a\u2028b", "x\r\ny", "\u0085", "", "é"])
PARAMS = JSON | st.fixed_dictionaries(
    {}, optional={"name": NAMES | JSON, "uri": NAMES | JSON,
                  "arguments": st.dictionaries(st.text(max_size=4), JSON, max_size=3) | JSON,
                  "_meta": st.fixed_dictionaries({"progressToken": st.integers(0, 9)})})
IDS = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none(), st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False), st.integers(2**63, 2**65))
# Mostly well-formed requests, so that the view's every check is exercised.
REQUESTS = st.fixed_dictionaries({
    "jsonrpc": st.just("2.0"),
    "method": st.sampled_from([mcp.TOOLS_CALL, mcp.PROMPTS_GET, mcp.RESOURCES_READ]),
    "params": st.fixed_dictionaries({"name": NAMES | JSON, "uri": NAMES | JSON}, optional={
        "arguments": st.dictionaries(st.text(max_size=4), JSON, max_size=3) | JSON}),
}, optional={"id": IDS})
ANY_SHAPE = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2]),
    "id": IDS,
    "method": st.sampled_from([mcp.TOOLS_CALL, mcp.TOOLS_CALL, mcp.PROMPTS_GET,
                               mcp.RESOURCES_READ, mcp.RESOURCES_SUBSCRIBE, mcp.PING,
                               "notifications/initialized", mcp.CANCELLED, "notifications/x",
                               "sampling/createMessage"]) | st.none() | st.integers(0, 2),
    "params": PARAMS,
    "result": JSON,
    "error": JSON,
    "extra": JSON,
})
MESSAGES = REQUESTS | ANY_SHAPE


def layout(message: dict[str, Any], spaced: bool, duplicate: str | None, ensure_ascii: bool,
           order: list[int]) -> bytes:
    """``message`` written one of the ways a client may: members in any order,
    compact or spaced with CR and LF between tokens, a member given twice (the
    last one counts)."""
    keys = list(message)
    message = {keys[i]: message[keys[i]] for i in order if i < len(keys)}
    text = json.dumps(message, ensure_ascii=ensure_ascii,
                      separators=(" ,\r\n", " : ") if spaced else (",", ":"))
    if duplicate is not None and message and text.startswith("{"):
        text = '{"' + duplicate + '":"decoy",' + text[1:]
    return text.encode("utf-8", "surrogatepass")


# Mostly the order the SDKs write (jsonrpc, id, method, params): the fast path's.
ORDERS = st.just(list(range(7))) | st.permutations(list(range(7)))
SDK_ORDER = ["jsonrpc", "id", "method", "params"]


@settings(max_examples=600, deadline=None)
@given(message=MESSAGES, spaced=st.booleans(), ensure_ascii=st.booleans(),
       duplicate=st.none() | st.sampled_from(["method", "id", "params", "jsonrpc"]),
       order=ORDERS)
def test_one_decode_agrees_with_the_two_passes(message: dict[str, Any], spaced: bool,
                                               ensure_ascii: bool, duplicate: str | None,
                                               order: list[int]) -> None:
    if order == list(range(7)):  # the SDKs' order
        message = {k: message[k] for k in sorted(message, key=lambda k: (
            SDK_ORDER.index(k) if k in SDK_ORDER else 9))}
    check(layout(message, spaced, duplicate, ensure_ascii, order))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":',
    b'{"jsonrpc":"2.0","method":"notifications/x","params":',
    b'{"jsonrpc":"2.0","id":1,"result":',
    b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":']))
def test_one_decode_agrees_on_any_bytes(tail: bytes, head: bytes) -> None:
    check(head + tail)


@pytest.mark.parametrize("data", [
    # A payload the typed decode skips but no reader takes: refused, never forwarded.
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\xff"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff"}}',
    b'{"jsonrpc":"2.0","method":"notifications/x","params":{"a":1E400}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"a":"\xff"}}',
    b"[" * (bounds.MAX_DEPTH + 1) + b"]" * (bounds.MAX_DEPTH + 1),
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b"[" * 70 + b"]" * 70 + b"}",
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"vm"},"method":"ping"}',
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"vm"},"smuggled":'
    b'\r{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"x"}}}',
    b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
    b'{"jsonrpc":"2.0","method":null,"id":3,"error":{"code":1,"message":"m"}}',
])
def test_one_decode_agrees_on_known_shapes(data: bytes) -> None:
    check(data)


def test_sdk_bytes_are_their_own_line_and_the_view_comes_with_them() -> None:
    data = (b'{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"vm",'
            b'"arguments":{"action":"info"},"_meta":{"progressToken":5}}}')
    got_ = inbound.client(data)
    assert got_.line is data and got_.refusal is None
    assert got_.call == mcp.Call("tools/call", "client", "vm", None, None, {"action": "info"})
    # The payloads, for the few readers of one, are the value encoded (no decode).
    assert mcp.progress_token(got_.message) == 5
    assert got_.message.params == msgspec.Raw(
        b'{"name":"vm","arguments":{"action":"info"},"_meta":{"progressToken":5}}')


@pytest.mark.parametrize("data", [
    b'{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"vm"}}',
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    b'{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"x\\u2028"}}',
])
def test_canonical_bytes_take_the_one_typed_pass(data: bytes) -> None:
    # The fast path of rule 2 (its value is the typed struct, not plain values):
    # so that the properties above hold it, not only the general path.
    got_ = inbound.client(data)
    assert got_.line is data and type(got_.value) is not dict


@pytest.mark.parametrize("data", [
    b'{"method":"tools/call","jsonrpc":"2.0","id":17,"params":{"name":"vm"}}',
    b'{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"vm"},"x":1}',
    b'{"jsonrpc":"2.0","id":17,"method":"ping","method":"tools/call","params":{"name":"vm"}}',
    b'{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"x\xe2\x80\xa8"}}',
])
def test_other_bytes_take_the_general_pass(data: bytes) -> None:
    got_ = inbound.client(data)
    assert type(got_.value) is dict and got_.line == framing.canonical(
        data, jsonrpc.REQUEST_MEMBERS)


def test_a_line_break_between_tokens_never_goes_on() -> None:
    data = b'{"jsonrpc":"2.0",\r\n"id":1,"method":"tools/call","params":{"name":"vm"}}'
    got_ = inbound.client(data)
    assert got_.line == b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"vm"}}'


def test_bad_params_are_a_refusal_not_a_raise() -> None:
    got_ = inbound.client(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":1}}')
    assert got_.call is None and got_.line is None and got_.refusal is not None
    assert (got_.refusal.code, got_.refusal.request_id) == (jsonrpc.INVALID_PARAMS, 4)


def test_a_server_response_keeps_its_payload_raw() -> None:
    data = b'{"jsonrpc":"2.0","id":3,"result":{"tools":[]} }'
    got_ = inbound.server(data)
    assert isinstance(got_.envelope, jsonrpc.Message) and got_.line is None
    assert got_.relay_line() == b'{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}'


CALLER = Caller("agent-7", "grant-a", ("ops",))


async def test_the_mediator_forwards_the_inbound_line_and_reads_no_bytes_again() -> None:
    # The data of this Inbound is no JSON at all: had anything downstream of
    # the decode read it again, the call would fail or be refused. It goes on
    # as the line that was decided, with its view.
    line = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"vm"}}'
    made = Inbound(b"\xffnot json", jsonrpc.Envelope("2.0", mcp.TOOLS_CALL, 1),
                   mcp.Call(mcp.TOOLS_CALL, "client", "vm", None, None, {}), line,
                   None, json.loads(line))
    med = Mediator(server="vm", session="s1", caller=CALLER, policy=AllowAll(), audit=None)
    routed = await med.from_client(made)
    assert routed.upstream is not None and routed.upstream.data is line
