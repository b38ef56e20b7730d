"""Fuzz targets for the sans-IO decoders: each takes bytes and asserts the module's invariants.

``scripts/fuzz TARGET`` runs one under atheris (coverage-guided); the test
suite runs each on a fixed corpus (``tests/test_fuzz_targets.py``) so that they
keep working. A target raises AssertionError (or any unexpected exception)
when an invariant breaks; documented refusals are caught here.

Targets and the invariants they check:

- ``jsonrpc``: :func:`jsonrpc.decode` raises only ``ProtocolError``; an accepted
  message re-encodes to bytes that decode to an equal message; its canonical
  form (what the mediator forwards, ``framing.canonical``), unless refused as
  ``NotCanonical``, is one line for every reader and decodes to the same message.
- ``mcp``: :func:`mcp.decode` raises only ``ProtocolError``; it refuses a
  text nested deeper than ``bounds.MAX_DEPTH`` whole (-32600), and answers any
  other as ``jsonrpc.decode`` then ``mcp.view`` (the same Call).
- ``sse``: :class:`SSEParser` raises only ``SSEError``, and any chunking of
  the input gives the same events as one feed.
- ``lines``: :class:`LineSplitter` gives the same lines for any chunking, and
  no line holds LF or exceeds the cap.
- ``http``: the httptools front connection parses any bytes into well-formed
  events (head, body, end, error) and raises nothing else.
- ``framing``: :func:`framing.canonical` raises only ``NotCanonical``, and
  what it returns is not ``splittable`` and decodes (msgspec) to a value equal
  to the input's; :func:`framing.line_safe` returns its input unchanged when
  that is not splittable, else the canonical form.
- ``inbound``: :func:`inbound.client` and :func:`inbound.server` raise only
  ``ProtocolError``, and answer as the two passes they replace
  (:func:`mcp.decode`, then :func:`framing.canonical`): the same refusal, the
  same Call, the same line, which decoded again gives the Call decided.
- ``bounds``: :func:`bounds.too_deep` never raises, and for any text msgspec
  decodes, ``too_deep(x, L) == (bounds.depth(x) > L)`` for several ``L``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from firewall.protocol import bounds, framing, inbound, jsonrpc, mcp, sse
from firewall.protocol.jsonrpc import Kind

MAX_LINE: Final = 256


def _cuts(data: bytes) -> list[bytes]:
    """Split ``data`` at positions derived from its own bytes (deterministic)."""
    if not data:
        return [data]
    step = data[0] % 7 + 1
    return [data[i:i + step] for i in range(0, len(data), step)]


def _value(msg: jsonrpc.Message) -> Any:
    """A message as a plain value (its Raw members decoded), for comparing forms."""
    return msgspec.json.decode(jsonrpc.encode(msg))


def fuzz_jsonrpc(data: bytes) -> None:
    try:
        msg = jsonrpc.decode(data)
    except jsonrpc.ProtocolError:
        return
    again = jsonrpc.decode(jsonrpc.encode(msg))
    assert again == msg, (again, msg)
    try:
        line = framing.canonical(data)
    except framing.NotCanonical:
        return  # the mediator refuses it (-32600): nothing is forwarded
    assert not framing.splittable(line), line
    forwarded = jsonrpc.decode(line)
    assert _value(forwarded) == _value(msg), (line, data)


def fuzz_mcp(data: bytes) -> None:
    deep = bounds.too_deep(data)
    try:
        envelope, call = mcp.decode(data)
    except jsonrpc.ProtocolError as exc:
        if deep:  # refused whole before decoding (bounds rule 1): the reference does not
            assert (exc.code, exc.message) == (jsonrpc.INVALID_REQUEST,
                                               jsonrpc.too_deep_error().message), exc
            return
        try:
            msg = jsonrpc.decode(data)
            if msg.method is not None and msg.id is not msgspec.UNSET:
                mcp.view(msg)
        except jsonrpc.ProtocolError as reference:
            assert (reference.code, reference.request_id) == (exc.code, exc.request_id)
            return
        raise AssertionError(
            f"mcp.decode refused what jsonrpc.decode + view accept: {exc}") from None
    assert not deep, data
    msg = jsonrpc.decode(data)
    assert (envelope.method, envelope.id, envelope.jsonrpc) == (msg.method, msg.id, msg.jsonrpc)
    expected = mcp.view(msg) if msg.method is not None and msg.id is not msgspec.UNSET else None
    assert call == expected, (call, expected)


def fuzz_sse(data: bytes) -> None:
    whole = sse.SSEParser(keep_dataless=True, max_event_bytes=4096)
    try:
        one = whole.feed(data)
    except sse.SSEError:
        return
    parts = sse.SSEParser(keep_dataless=True, max_event_bytes=4096)
    many: list[sse.Event] = []
    for chunk in _cuts(data):
        many += parts.feed(chunk)
    assert one == many, (one, many)
    assert whole.last_event_id == parts.last_event_id
    for event in one:
        if event.data is not None and b"\r" not in event.data:
            again = sse.SSEParser().feed(sse.encode_event(event.data))
            assert [e.data for e in again] == [event.data]


def fuzz_lines(data: bytes) -> None:
    whole = framing.LineSplitter(MAX_LINE)
    one = [*whole.feed(data), whole.remainder()]
    parts = framing.LineSplitter(MAX_LINE)
    many: list[bytes] = []
    for chunk in _cuts(data):
        many += parts.feed(chunk)
    many.append(parts.remainder())
    assert one == many, (one, many)
    for line in one:
        assert b"\n" not in line and len(line) <= MAX_LINE + 1


_http_config: Any = None


def fuzz_http(data: bytes) -> None:
    from firewall.gateway.http import http11

    global _http_config
    if _http_config is None:
        from hypercorn.config import Config

        _http_config = Config()
    proto = http11.HttptoolsProtocol(None, _http_config, None, None, None, False, None, None,
                                     _no_send)
    try:
        proto._parse(data)
    except http11.H2ProtocolAssumedError:
        assert data.startswith(http11.H2_PREFACE)
        return
    kinds = [kind for kind, _ in proto._events]
    for i, kind in enumerate(kinds):
        assert kind in (http11._HEAD, http11._BODY, http11._END, http11._ERROR), kinds
        if kind == http11._BODY:
            assert i > 0 and kinds[i - 1] in (http11._HEAD, http11._BODY), kinds
        if kind == http11._ERROR:
            assert i == len(kinds) - 1 or proto._discard, kinds


async def _no_send(event: Any) -> None:
    raise AssertionError("the parser wrote to the connection")


_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _decoded(data: bytes) -> tuple[bool, Any]:
    try:
        return True, msgspec.json.decode(data)
    except _DECODE_ERRORS:
        return False, None


def fuzz_framing(data: bytes) -> None:
    ok, value = _decoded(data)
    try:
        line = framing.canonical(data)
    except framing.NotCanonical:
        assert not ok or bounds.too_deep(data), data  # only a deep value is refused
        line = None
    if line is not None:
        assert ok, data  # nothing msgspec refuses has a canonical form
        assert not framing.splittable(line), line
        same, again = _decoded(line)
        assert same and again == value, (line, data)
        assert framing.canonical(line) == line  # canonical is a fixed point
    try:
        safe = framing.line_safe(data)
    except framing.NotCanonical:
        assert framing.splittable(data) and line is None, data
        return
    assert safe == (line if framing.splittable(data) else data), (safe, data)


_Outcome = tuple[Any, ...]


def _reference(data: bytes, direction: str) -> _Outcome:
    """What the two-pass path made of ``data``: a refusal raised, a refusal
    answered, a message dropped, or (kind, call, line)."""
    try:
        env, call = mcp.decode(data, direction)
    except jsonrpc.ProtocolError as exc:
        if exc.code == jsonrpc.INVALID_PARAMS:
            return ("refused", exc.code, exc.message, exc.request_id)
        return ("raised", exc.code, exc.message, exc.request_id)
    kind = env.kind
    if direction == "server" and (kind is Kind.RESPONSE or (env.method in mcp.NOTIFICATIONS
                                  and kind is Kind.NOTIFICATION)):
        return ("relayed", env)  # read no further; its bytes go as received (rule 4)
    if kind is Kind.RESPONSE:
        members = jsonrpc.RESPONSE_MEMBERS
    else:
        members = jsonrpc.REQUEST_MEMBERS
        if kind is Kind.NOTIFICATION and env.method not in mcp.NOTIFICATIONS:
            assert isinstance(env, jsonrpc.Message)
            try:
                call = mcp.view(env, direction)
            except jsonrpc.ProtocolError:
                assert env.method is not None
                call = mcp.Call(env.method, direction)
    try:
        line = framing.canonical(data, members)
    except framing.NotCanonical as exc:
        if kind is Kind.REQUEST:
            return ("refused", jsonrpc.INVALID_REQUEST, f"invalid JSON-RPC request: {exc}",
                    env.request_id)
        return ("dropped", env.request_id)
    return (kind, env.method, env.id, call, line)


def _got(data: bytes, direction: str) -> _Outcome:
    """The same, from the one decode."""
    try:
        msg = inbound.client(data) if direction == "client" else inbound.server(data)
    except jsonrpc.ProtocolError as exc:
        return ("raised", exc.code, exc.message, exc.request_id)
    env = msg.envelope
    if msg.refusal is not None:
        assert msg.call is None and msg.line is None
        if env.kind is Kind.REQUEST:
            return ("refused", msg.refusal.code, msg.refusal.message, msg.refusal.request_id)
        return ("dropped", env.request_id)
    if msg.line is None:  # a server's response or MCP notification, relayed as received
        assert direction == "server" and msg.call is None
        return ("relayed", env)
    return (env.kind, env.method, env.id, msg.call, msg.line)


def fuzz_inbound(data: bytes) -> None:
    for direction in ("client", "server"):
        expected, actual = _reference(data, direction), _got(data, direction)
        assert actual == expected, (direction, data)
        if actual[0] in (Kind.REQUEST, Kind.NOTIFICATION) and actual[3] is not None:
            # The line forwarded, read again, is the value the policy decided.
            again = inbound.client(actual[4])
            assert again.call is not None and again.call.arguments == actual[3].arguments
            assert (again.call.tool, again.call.uri, again.call.prompt) == (
                actual[3].tool, actual[3].uri, actual[3].prompt)
            assert again.envelope.id == actual[2] and again.line is actual[4]


LIMITS: Final = (0, 1, 2, 3, 7, bounds.MAX_DEPTH)


def fuzz_bounds(data: bytes) -> None:
    verdicts = [bounds.too_deep(data, limit) for limit in LIMITS]
    assert all(type(v) is bool for v in verdicts), verdicts
    assert bounds.too_deep(memoryview(data)) == verdicts[-1]
    ok, _value = _decoded(data)
    if not ok:
        return
    depth = bounds.depth(data)
    assert verdicts == [depth > limit for limit in LIMITS], (depth, verdicts, data)


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "jsonrpc": fuzz_jsonrpc,
    "mcp": fuzz_mcp,
    "sse": fuzz_sse,
    "lines": fuzz_lines,
    "http": fuzz_http,
    "framing": fuzz_framing,
    "bounds": fuzz_bounds,
    "inbound": fuzz_inbound,
}


def _nested(depth: int, *, objects: bool = False) -> bytes:
    """A value ``depth`` arrays (or objects) deep."""
    if objects:
        return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return b"[" * depth + b"]" * depth


def _call_with(arguments: bytes) -> bytes:
    return (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"x":' + arguments + b"}}}")


# Nesting around the bound: the envelope and params add three levels to the arguments'.
_DEEP: Final = [_call_with(_nested(bounds.MAX_DEPTH - 3)),
                _call_with(_nested(bounds.MAX_DEPTH - 2, objects=True)),
                _call_with(_nested(bounds.MAX_DEPTH + 1)),
                _call_with(b'"' + b"[" * 80 + b'\\\\\\"' + b"{" * 80 + b'"'),
                b'{"jsonrpc":"2.0","method":"notifications/initialized","params":'
                + _nested(200) + b"}"]

SEEDS: Final[dict[str, list[bytes]]] = {
    "jsonrpc": [b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                b'{"jsonrpc":"2.0","method":"notifications/initialized","params":{"x":\r{}\n}}',
                b'{"jsonrpc":"2.0","id":"a","result":{}}', b'[{"jsonrpc":"2.0"}]',
                b'{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}'],
    "mcp": [b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"a":[1,2]}}}',
            b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"vm://a"}}',
            b'{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":1}}',
            b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"danger"}}'],
    "sse": [b"id: 7\ndata: {}\n\n", b"data: a\r\ndata: b\r\n\r\n", b"\xef\xbb\xbfdata:x\r\r",
            b": keepalive\n\nevent: e\nretry: 10\n\n"],
    "lines": [b'{"a":1}\n{"b"\r\n:2}\n', b"\n\n\r\n", b"x" * 300 + b"\nok\n"],
    "http": [b"POST /servers/a/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
             b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
             b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
             b"CONNECT a:1 HTTP/1.1\r\n\r\nxx", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
             b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"],
    "framing": [b'{ "a" :\r\n1, "a": 2 }', b'{"a":"x\xe2\x80\xa8y\xc2\x85z"}',
                b'{"jsonrpc":"2.0","id":1,"method":"ping"}', b'"\\u2028\\/\\u00e9"',
                b"[1.0, -0.0, 1e308, 123456789012345678901234567890]\n",
                b'{"b":1,"a":{"c":[true,false,null]}}', _nested(bounds.MAX_DEPTH + 1),
                _nested(bounds.MAX_DEPTH, objects=True)],
    "bounds": [_nested(bounds.MAX_DEPTH), _nested(bounds.MAX_DEPTH + 1),
               _nested(70, objects=True), b'["[[[[", "\\\\", "\\"]]]"]',
               b'[[["\\\\\\"[["]]]', b"[[[]],[[[]]]]", b'{"a":[{"b":[]}]}', b"[[[]"],
    "inbound": [b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
                b'"arguments":{"a":[1,2]}}}',
                b'{"method":"tools/call","params":{"name":"e"},"jsonrpc":"2.0","id":"x"}',
                b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff"}}',
                b'{"jsonrpc":"2.0","method":"notifications/x","params":{"a":"\xe2\x80\xa8"}}',
                b'{"jsonrpc":"2.0","id":2,"result":{"content":[]},"id":3}',
                b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":1}}'],
}
SEEDS["jsonrpc"] += _DEEP
SEEDS["mcp"] += _DEEP

# libFuzzer dictionaries: the tokens that get a random input past the first byte.
DICTIONARIES: Final[dict[str, list[bytes]]] = {
    "jsonrpc": [b'"jsonrpc"', b'"2.0"', b'"id"', b'"method"', b'"params"', b'"result"',
                b'"error"', b"{", b"}", b"[", b"]", b":", b",", b"\r", b"\n", b"\\u0000",
                b"null", b"true", b"1e999", b"-0", b"99999999999999999999"],
    "mcp": [b'"tools/call"', b'"name"', b'"arguments"', b'"uri"', b'"prompts/get"',
            b'"resources/read"'],
    "sse": [b"data:", b"id:", b"event:", b"retry:", b"\r\n", b"\xef\xbb\xbf"],
    "lines": [b"\r\n", b"\n", b"\r"],
    "http": [b"POST ", b" HTTP/1.1\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked",
             b"\r\n\r\n", b"Expect: 100-continue", b"Upgrade: ", b"Connection: "],
}
DICTIONARIES["framing"] = [*DICTIONARIES["jsonrpc"], b"\xe2\x80\xa8", b"\xe2\x80\xa9",
                           b"\xc2\x85", b"\\u2028", b'\\"', b"\\\\", b"\r\n"]
DICTIONARIES["bounds"] = [b"[", b"]", b"{", b"}", b'"', b"\\", b'\\"', b'{"a":', b",", b"[[[["]
DICTIONARIES["mcp"] += DICTIONARIES["jsonrpc"]
