"""The JSON-RPC envelope decoder: exact codes for bad input, and a fuzz harness."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firewall.protocol import jsonrpc
from firewall.protocol.jsonrpc import Kind


def test_request_keeps_params_raw() -> None:
    data = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}'
    msg = jsonrpc.decode(data)
    assert msg.kind is Kind.REQUEST and msg.request_id == 1
    assert bytes(msg.params) == b'{"name":"x","arguments":{}}'


@pytest.mark.parametrize(("data", "kind", "rid"), [
    (b'{"jsonrpc":"2.0","method":"notifications/initialized"}', Kind.NOTIFICATION, None),
    (b'{"jsonrpc":"2.0","id":"a","result":{}}', Kind.RESPONSE, "a"),
    (b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m"}}', Kind.RESPONSE, None),
    (b'{"jsonrpc":"2.0","id":0,"method":"ping"}', Kind.REQUEST, 0),
])
def test_kinds(data: bytes, kind: Kind, rid: object) -> None:
    msg = jsonrpc.decode(data)
    assert msg.kind is kind and msg.request_id == rid


@pytest.mark.parametrize(("data", "code", "rid"), [
    (b"{", jsonrpc.PARSE_ERROR, None),
    (b"", jsonrpc.PARSE_ERROR, None),
    (b'"text"', jsonrpc.INVALID_REQUEST, None),
    (b"[]", jsonrpc.INVALID_REQUEST, None),
    (b'{"jsonrpc":"1.0","id":3,"method":"x"}', jsonrpc.INVALID_REQUEST, 3),
    (b'{"jsonrpc":"2.0","id":4}', jsonrpc.INVALID_REQUEST, 4),
    (b'{"jsonrpc":"2.0","id":5,"result":1,"error":{"code":1,"message":""}}',
     jsonrpc.INVALID_REQUEST, 5),
    (b'{"jsonrpc":"2.0","id":6,"method":"x","result":1}', jsonrpc.INVALID_REQUEST, 6),
    (b'{"jsonrpc":"2.0","id":true,"method":"x"}', jsonrpc.INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0","id":"k","method":7}', jsonrpc.INVALID_REQUEST, "k"),
    (b'{"jsonrpc":"2.0"}', jsonrpc.INVALID_REQUEST, None),
])
def test_bad_input_gets_the_right_code(data: bytes, code: int, rid: object) -> None:
    with pytest.raises(jsonrpc.ProtocolError) as info:
        jsonrpc.decode(data)
    assert info.value.code == code
    reply = json.loads(info.value.response())
    assert reply["error"]["code"] == code and reply["id"] == rid


def test_error_response_encoding() -> None:
    assert json.loads(jsonrpc.error_response(1, -32001, "no", {"rule": "r"})) == {
        "jsonrpc": "2.0", "id": 1,
        "error": {"code": -32001, "message": "no", "data": {"rule": "r"}}}
    assert b"data" not in jsonrpc.error_response(None, -32700, "parse error")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=200))
def test_fuzz_bytes_never_crash(data: bytes) -> None:
    try:
        jsonrpc.decode(data)
    except jsonrpc.ProtocolError as exc:
        assert exc.code in (jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST)
        json.loads(exc.response())


@given(st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]),
                       json_values))
def test_fuzz_objects_decode_or_are_refused(obj: dict[str, object]) -> None:
    data = msgspec.json.encode(obj)
    try:
        msg = jsonrpc.decode(data)
    except jsonrpc.ProtocolError as exc:
        assert exc.code == jsonrpc.INVALID_REQUEST
        return
    assert obj["jsonrpc"] == "2.0"
    if msg.kind is Kind.RESPONSE:
        assert ("result" in obj) != ("error" in obj)
    else:
        assert isinstance(obj["method"], str)


@given(st.integers(-(2**63), 2**63 - 1) | st.text(), json_values)
def test_round_trip_of_requests(rid: int | str, params: object) -> None:
    msg = jsonrpc.decode(jsonrpc.request("m", params, rid))
    assert msg.request_id == rid and jsonrpc.decode_any(msg.params) == params


@pytest.mark.parametrize(("data", "code", "rid"), [
    (b'"\x80"', jsonrpc.PARSE_ERROR, None),
    (b'{"jsonrpc":"2.0","method":"\x80"}', jsonrpc.PARSE_ERROR, None),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\xff\xfe"}}', None, 1),
])
def test_invalid_utf8_is_a_parse_error_not_a_crash(data: bytes, code: int | None,
                                                   rid: object) -> None:
    if code is None:  # inside params the envelope is fine; params stay raw
        assert jsonrpc.decode(data).request_id == rid
        return
    with pytest.raises(jsonrpc.ProtocolError) as info:
        jsonrpc.decode(data)
    assert info.value.code == code and info.value.request_id == rid


def test_invalid_utf8_in_arguments_is_invalid_params() -> None:
    from firewall.protocol import mcp

    msg = jsonrpc.decode(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":'
                         b'{"name":"x","arguments":{"a":"\x80"}}}')
    with pytest.raises(jsonrpc.ProtocolError) as info:
        mcp.view(msg)
    assert info.value.code == jsonrpc.INVALID_PARAMS and info.value.request_id == 4
