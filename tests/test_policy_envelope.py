"""The envelope decode and the policy view, held to a plain reference.

``jsonrpc.decode`` and ``mcp.view`` take a fast path for well-formed input and
leave error texts to a slow one. This checks, on random envelopes, that the
pair answers exactly what a straightforward decoder does: the same Message or
Call, or the same error code, message and echoed id.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.protocol import jsonrpc, mcp


class _RefMessage(msgspec.Struct, frozen=True):
    jsonrpc: str
    method: str | None = None
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    params: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()
    error: msgspec.Raw = msgspec.Raw()


class _RefTool(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | None = None


class _RefUri(msgspec.Struct):
    uri: str


_ref_decoder = msgspec.json.Decoder(_RefMessage)


def ref_decode(data: bytes) -> tuple[Any, ...]:
    """(fields...) of the message, or ("error", code, message, id)."""
    try:
        msg = _ref_decoder.decode(data)
    except msgspec.ValidationError as exc:
        err = jsonrpc._invalid(data, f"invalid JSON-RPC message: {exc}")
        return ("error", err.code, err.message, err.request_id)
    except msgspec.DecodeError as exc:
        return ("error", jsonrpc.PARSE_ERROR, f"parse error: {exc}", None)
    rid = None if msg.id is msgspec.UNSET else msg.id
    has_result, has_error = len(msg.result) > 0, len(msg.error) > 0
    if msg.jsonrpc != "2.0":
        return ("error", jsonrpc.INVALID_REQUEST,
                'invalid JSON-RPC message: jsonrpc must be "2.0"', rid)
    if msg.method is None:
        if msg.id is msgspec.UNSET:
            return ("error", jsonrpc.INVALID_REQUEST,
                    "invalid JSON-RPC message: neither a method nor an id", None)
        if has_result == has_error:
            return ("error", jsonrpc.INVALID_REQUEST,
                    "invalid JSON-RPC response: exactly one of result and error", rid)
    elif has_result or has_error:
        return ("error", jsonrpc.INVALID_REQUEST,
                "invalid JSON-RPC request: result or error beside a method", rid)
    return (msg.jsonrpc, msg.method, msg.id, bytes(msg.params), bytes(msg.result),
            bytes(msg.error))


def got_decode(data: bytes) -> tuple[Any, ...]:
    try:
        msg = jsonrpc.decode(data)
    except jsonrpc.ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)
    return (msg.jsonrpc, msg.method, msg.id, bytes(msg.params), bytes(msg.result),
            bytes(msg.error))


def ref_view(msg: jsonrpc.Message, direction: str) -> tuple[Any, ...]:
    method = msg.method
    params = bytes(msg.params) if len(msg.params) else b"null"
    try:
        if method == mcp.TOOLS_CALL:
            tp = msgspec.json.decode(params, type=_RefTool)
            return (method, direction, tp.name, None, None, tp.arguments or {})
        if method in (mcp.RESOURCES_READ, mcp.RESOURCES_SUBSCRIBE, mcp.RESOURCES_UNSUBSCRIBE):
            return (method, direction, None, msgspec.json.decode(params, type=_RefUri).uri,
                    None, None)
        if method == mcp.PROMPTS_GET:
            pp = msgspec.json.decode(params, type=_RefTool)
            return (method, direction, None, None, pp.name, pp.arguments or {})
    except msgspec.DecodeError as exc:
        return ("error", jsonrpc.INVALID_PARAMS, f"invalid params for {method}: {exc}",
                msg.request_id)
    return (method, direction, None, None, None, None)


def got_view(msg: jsonrpc.Message, direction: str) -> tuple[Any, ...]:
    try:
        c = mcp.view(msg, direction)
    except jsonrpc.ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)
    assert type(c) is mcp.Call
    return (c.method, c.direction, c.tool, c.uri, c.prompt, c.arguments)


SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "x", "2.0"])
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["a", "name", "uri"]), inner, max_size=3),
                    max_leaves=8)
PARAMS = st.one_of(
    JSON,
    st.fixed_dictionaries({"name": st.one_of(st.text(max_size=5), st.integers())},
                          optional={"arguments": st.one_of(st.none(), JSON,
                                                           st.dictionaries(st.text(max_size=3),
                                                                           JSON, max_size=3)),
                                    "_meta": JSON}),
    st.fixed_dictionaries({"uri": st.one_of(st.text(max_size=8), st.none())}),
)
METHODS = st.sampled_from([mcp.TOOLS_CALL, mcp.RESOURCES_READ, mcp.RESOURCES_SUBSCRIBE,
                           mcp.RESOURCES_UNSUBSCRIBE, mcp.PROMPTS_GET, "ping", "x/y"])
ENVELOPES = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2]),
    "method": st.one_of(METHODS, st.integers(0, 3), st.none()),
    "id": st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none(), st.booleans()),
    "params": PARAMS,
    "result": JSON,
    "error": JSON,
})


@settings(max_examples=400, deadline=None)
@given(envelope=ENVELOPES, direction=st.sampled_from(["client", "server"]))
def test_decode_and_view_agree_with_the_reference(envelope: dict[str, Any],
                                                  direction: str) -> None:
    data = msgspec.json.encode(envelope)
    want = ref_decode(data)
    assert got_decode(data) == want
    if want[0] != "error" and want[1] is not None:
        msg = jsonrpc.decode(data)
        assert got_view(msg, direction) == ref_view(msg, direction)


@given(st.binary(max_size=60))
def test_bytes_decode_like_the_reference(data: bytes) -> None:
    assert got_decode(data) == ref_decode(data)


def test_reference_is_not_trivially_equal() -> None:
    # Two envelopes the reference tells apart, so the property can fail.
    a = ref_decode(b'{"jsonrpc":"2.0","id":1,"method":"m","result":1}')
    b = ref_decode(b'{"jsonrpc":"2.0","id":1,"method":"m"}')
    assert a[0] == "error" and b[0] == "2.0"


def got_one_pass(data: bytes, direction: str) -> tuple[Any, ...]:
    """What mcp.decode answers, in the shape of the two-step path's answer."""
    try:
        env, call = mcp.decode(data, direction)
    except jsonrpc.ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)
    if call is None:
        assert type(env) is jsonrpc.Message and env.kind is not jsonrpc.Kind.REQUEST
        return ("message", got_decode(data))
    assert env.kind is jsonrpc.Kind.REQUEST and env.id == jsonrpc.decode(data).id
    if type(env) is mcp.Request:
        assert env.method in (mcp.TOOLS_CALL, mcp.PROMPTS_GET, mcp.RESOURCES_READ,
                              mcp.RESOURCES_SUBSCRIBE, mcp.RESOURCES_UNSUBSCRIBE)
    return (call.method, call.direction, call.tool, call.uri, call.prompt, call.arguments)


def two_steps(data: bytes, direction: str) -> tuple[Any, ...]:
    """jsonrpc.decode, then view for a request: the path mcp.decode must match."""
    try:
        msg = jsonrpc.decode(data)
    except jsonrpc.ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)
    if msg.kind is not jsonrpc.Kind.REQUEST:
        return ("message", got_decode(data))
    return got_view(msg, direction)


TOOLS_CALLS = st.fixed_dictionaries({
    "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]),
    "method": st.sampled_from([mcp.TOOLS_CALL, mcp.TOOLS_CALL, mcp.PROMPTS_GET,
                               mcp.RESOURCES_READ]),
    "params": PARAMS,
}, optional={
    "id": st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none(), st.booleans()),
    "result": JSON,
})


@settings(max_examples=400, deadline=None)
@given(envelope=ENVELOPES | TOOLS_CALLS, direction=st.sampled_from(["client", "server"]))
def test_one_pass_decode_agrees_with_decode_then_view(envelope: dict[str, Any],
                                                      direction: str) -> None:
    data = msgspec.json.encode(envelope)
    assert got_one_pass(data, direction) == two_steps(data, direction)


@given(st.binary(max_size=60).map(lambda b: b'{"jsonrpc":"2.0","method":"tools/call",' + b))
def test_one_pass_decode_of_bytes_agrees(data: bytes) -> None:
    assert got_one_pass(data, "client") == two_steps(data, "client")


def test_one_pass_decode_takes_the_fast_path() -> None:
    # So that the property above compares the one-pass path, not the fallback alone.
    env, call = mcp.decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                           b'"params":{"name":"t","arguments":{"a":[1]},"_meta":{"x":1}}}')
    assert type(env) is mcp.Request and call == mcp.Call("tools/call", "client", "t", None,
                                                         None, {"a": [1]})
    env, call = mcp.decode(b'{"jsonrpc":"2.0","id":"r","method":"resources/read",'
                           b'"params":{"uri":"file:///x"}}', "server")
    assert type(env) is mcp.Request and call == mcp.Call("resources/read", "server", None,
                                                         "file:///x")
