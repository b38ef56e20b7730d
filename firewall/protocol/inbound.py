"""One message as mcpwall received it, decoded once (sans-IO).

An :class:`Inbound` is what a front hands the mediator: the bytes received,
the envelope, the policy view of a request (:class:`mcp.Call`) and the line
that goes on if the policy allows it. :func:`client` and :func:`server` make
one, a function per direction. Rules this module keeps:

1. One value. A message from the client is checked for depth
   (:data:`bounds.MAX_DEPTH`) before anything is decoded; its envelope, its
   policy view and its line all come from one decoded value, never from two
   readings of the bytes. What the SDKs send is parsed once (rule 2); a
   message in another form, or a request from the server (rule 5), is parsed
   a second time, the second parse giving that one value.
   The line is byte for byte what ``framing.canonical(data,
   jsonrpc.REQUEST_MEMBERS)`` gives (``RESPONSE_MEMBERS`` for a response):
   what is forwarded is the encoding of exactly the value the policy saw.
2. The well-formed case is the fast one. A request or notification as the
   SDKs write it (compact, members in JSON-RPC's order, each once, nothing
   else: its own canonical form) is decoded in one typed pass (:class:`_Sent`:
   the envelope typed, ``params`` as plain values) and encoded again; when
   that encoding, with rule 2 of :mod:`framing` applied, is the very bytes
   received, the bytes are proven canonical and go on unchanged (the view is
   made from the same decoded params). Anything else is decoded into plain
   values instead (one pass, or a second one after that check failed: a
   message that is not in its canonical form) and its line is
   :func:`framing.encode_line` of that value.
3. The same answers as the typed decoders: a message is refused exactly when
   :func:`jsonrpc.decode` refuses it, with its words; the view is what
   :func:`mcp.view` makes. A refusal is decoded again, to word the error.
4. One failure path. :func:`client` and :func:`server` raise nothing but
   :class:`jsonrpc.ProtocolError`, for what is not a JSON-RPC message
   (-32700, -32600). A JSON-RPC message that cannot go on comes back with
   ``refusal`` set and no ``call``: a request whose params the view cannot
   read (-32602), or one with a payload no JSON reader can take (invalid
   UTF-8, a number out of range: -32600), for which the mediator answers or
   drops it.
5. A message from the server is most often a response, large and read in
   part only: it is decoded as an envelope with raw payloads
   (:func:`jsonrpc.decode`) and relayed as received unless the framing could
   read it two ways (:meth:`Inbound.relay_line`). A request from the server,
   or a notification the policy decides, is decoded whole as well (rule 1),
   which is rare (sampling, elicitation, roots/list, ping).
6. An Inbound is immutable; its payloads are read from the one value
   (:attr:`Inbound.message` encodes them, it does not decode).

Example::

    inbound = client(b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                     b'"params":{"name":"vm","arguments":{"a":1}}}')
    assert inbound.call == Call("tools/call", "client", "vm", None, None, {"a": 1})
    assert inbound.line is inbound.data  # already canonical: the bytes go on
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from firewall.protocol import bounds, framing, jsonrpc, mcp
from firewall.protocol.jsonrpc import Kind
from firewall.protocol.mcp import Call

UNSET: Final = msgspec.UNSET
_any_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()
_URI_METHODS: Final = frozenset({mcp.RESOURCES_READ, mcp.RESOURCES_SUBSCRIBE,
                                 mcp.RESOURCES_UNSUBSCRIBE})


class _Sent(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A request or notification in the members and order the SDKs write (rule 2).

    Encoded again, it is the bytes received exactly when they are canonical:
    only these members, each once, in this order, compact.
    """

    # gc=False: strings, ints and the params' plain values, which cannot refer
    # back to it. A result or an error, or another version, fails this decode.
    jsonrpc: Literal["2.0"]
    id: int | str | msgspec.UnsetType | None = UNSET
    method: str | None = None
    params: Any = UNSET
    result: msgspec.UnsetType = UNSET
    error: msgspec.UnsetType = UNSET


_sent_decoder: Final = msgspec.json.Decoder(_Sent)


# gc=False: an Inbound holds bytes, structs and the decoded value, none of
# which can refer back to it; one is made per message, so tracking costs.
class Inbound(msgspec.Struct, frozen=True, gc=False):
    """One message, decoded once: ``data`` as received, its ``envelope``, the
    policy view ``call`` (a request, or an id-less message the policy decides),
    the ``line`` forwarded if allowed, or the ``refusal`` that answers it."""

    data: bytes
    envelope: jsonrpc.Envelope
    call: Call | None = None
    # The canonical line (rule 1); None for a server message relayed as
    # received, whose line relay_line() makes.
    line: bytes | None = None
    refusal: jsonrpc.ProtocolError | None = None
    # The decoded message (rule 1), whose payloads ``message`` encodes.
    value: Any = None

    @property
    def message(self) -> jsonrpc.Message:
        """The envelope with its payloads as :class:`msgspec.Raw`, for the few
        readers of a payload (progress token, initialize, cancellations, answers)."""
        env = self.envelope
        if isinstance(env, jsonrpc.Message):
            return env
        value = self.value
        if type(value) is _Sent:
            params = value.params
            return jsonrpc.Message(env.jsonrpc, env.method, env.id, msgspec.Raw(
                b"" if params is UNSET else _encoder.encode(params)))
        return jsonrpc.Message(env.jsonrpc, env.method, env.id, _raw(value, "params"),
                               _raw(value, "result"), _raw(value, "error"))

    @property
    def params(self) -> Any:
        """The decoded ``params`` of a request (plain values, from the one
        value: rule 6), or None when there are none or it was not decoded whole."""
        value = self.value
        if type(value) is _Sent:
            return None if value.params is UNSET else value.params
        if type(value) is dict:
            return value.get("params")
        return None

    def relay_line(self) -> bytes:
        """The bytes to relay for a message passed on undecided: the line when
        there is one; else a new envelope (each member once, ``jsonrpc.reencode``)
        around the payloads as received, canonical only if a reader could split
        it. Raises :class:`framing.NotCanonical` when it cannot be one line."""
        if self.line is not None:
            return self.line
        env = self.envelope
        data = self.data
        out = jsonrpc.reencode(env if isinstance(env, jsonrpc.Message) else self.message)
        return framing.line_safe(data if out == data else out)


def client(data: bytes) -> Inbound:
    """Decode one message from the client (rules 1 to 3).

    ``client(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').line``
    is the data itself; ``client(b'[1]')`` raises ProtocolError(-32600).
    """
    if bounds.too_deep(data):
        raise jsonrpc.too_deep_error()
    # Whitespace between tokens: not canonical (find(), not ``in``: framing.splittable).
    if data.find(b"\n") >= 0 or data.find(b"\r") >= 0:
        return _whole(data, "client", None)
    try:
        sent = _sent_decoder.decode(data)
    except jsonrpc.DECODE_ERRORS:
        return _whole(data, "client", None)  # a response, or not well-formed
    method = sent.method
    out = _encoder.encode(sent)
    if method is not None and (out if out.isascii() else framing.one_line(out)) == data:
        # Proven canonical (rule 2): the bytes go on; the view is of sent.params.
        ident = sent.id
        env = jsonrpc.Envelope("2.0", method, ident)
        call = _view(method, sent.params, "client")
        if ident is UNSET:
            if method in mcp.NOTIFICATIONS:
                return Inbound(data, env, None, data, None, sent)
            return Inbound(data, env, call or Call(method, "client"), data, None, sent)
        if call is not None:
            return Inbound(data, env, call, data, None, sent)
    return _whole(data, "client", None)


def server(data: bytes) -> Inbound:
    """Decode one message from the upstream server (rule 4)."""
    msg = jsonrpc.decode(data)  # checks the depth first
    method = msg.method
    if method is None or (msg.id is UNSET and method in mcp.NOTIFICATIONS):
        return Inbound(data, msg)
    return _whole(data, "server", msg)


def _whole(data: bytes, direction: str, typed: jsonrpc.Message | None) -> Inbound:
    """The message decoded whole into plain values (its depth checked already)."""
    try:
        value = _any_decoder.decode(data)
    except jsonrpc.DECODE_ERRORS as exc:
        return _unreadable(data, direction, typed, exc)
    if type(value) is dict:
        version = value.get("jsonrpc")
        method = value.get("method")
        ident = value.get("id", UNSET)
        # What jsonrpc.decode accepts (its Message type, then its checks).
        if version == "2.0" and (ident is UNSET or ident is None or type(ident) is int
                                 or type(ident) is str):
            if type(method) is str:
                if "result" not in value and "error" not in value:
                    return _request(data, value, jsonrpc.Envelope(version, method, ident),
                                    direction)
            elif method is None and ident is not UNSET and (
                    ("result" in value) is not ("error" in value)):
                return Inbound(data, jsonrpc.Envelope(version, None, ident), None,
                               framing.encode_line(value, data, jsonrpc.RESPONSE_MEMBERS),
                               None, value)
    raise _refusal(data)


def _request(data: bytes, value: dict[str, Any], env: jsonrpc.Envelope,
             direction: str) -> Inbound:
    """A request or notification: its view and its line, from ``value``."""
    method = env.method
    assert method is not None
    line = framing.encode_line(value, data, jsonrpc.REQUEST_MEMBERS)
    call = _view(method, value.get("params"), direction)
    if env.id is UNSET:  # a notification: MCP's pass undecided; others get a view
        if method in mcp.NOTIFICATIONS:
            return Inbound(data, env, None, line, None, value)
        # The params of a refused request do not matter: refused whatever they say.
        return Inbound(data, env, call or Call(method, direction), line, None, value)
    if call is None:  # mcp.view words the error (-32602) from the same value
        inbound = Inbound(data, env, None, None, None, value)
        try:
            mcp.view(inbound.message, direction)
        except jsonrpc.ProtocolError as exc:
            refusal = jsonrpc.ProtocolError(exc.code, exc.message, exc.request_id)
        else:  # pragma: no cover - _view accepts exactly what view accepts
            raise AssertionError(f"view accepted params _view refused: {method}")
        return Inbound(data, env, None, None, refusal, value)
    return Inbound(data, env, call, line, None, value)


def _view(method: str, params: Any, direction: str) -> Call | None:
    """:func:`mcp.view` of decoded params; None where it raises (bad params)."""
    # Fields by position (method, direction, tool, uri, prompt, arguments).
    if method == mcp.TOOLS_CALL or method == mcp.PROMPTS_GET:
        if type(params) is not dict:
            return None
        name = params.get("name")
        arguments = params.get("arguments")
        if type(name) is not str or not (arguments is None or type(arguments) is dict):
            return None
        if method == mcp.TOOLS_CALL:
            return Call(method, direction, name, None, None, arguments or {})
        return Call(method, direction, None, None, name, arguments or {})
    if method in _URI_METHODS:
        if type(params) is not dict:
            return None
        uri = params.get("uri")
        return Call(method, direction, None, uri) if type(uri) is str else None
    return Call(method, direction)


def _unreadable(data: bytes, direction: str, typed: jsonrpc.Message | None,
                exc: Exception) -> Inbound:
    """A message no JSON reader takes whole: refused as :func:`jsonrpc.decode`
    refuses it; or, if only a payload it skips is at fault, an Inbound with
    the refusal (rule 3): -32602 if the view cannot read the params, else -32600."""
    msg = typed if typed is not None else jsonrpc.decode(data)  # raises the refusal
    kind = msg.kind
    if kind is Kind.REQUEST:
        try:
            mcp.view(msg, direction)
        except jsonrpc.ProtocolError as bad:  # a fresh one: no traceback kept
            return Inbound(data, msg, None, None,
                           jsonrpc.ProtocolError(bad.code, bad.message, bad.request_id))
    what = "request" if kind is Kind.REQUEST else "message"
    return Inbound(data, msg, None, None, jsonrpc.ProtocolError(
        jsonrpc.INVALID_REQUEST, f"invalid JSON-RPC {what}: {exc}", msg.request_id))


def _refusal(data: bytes) -> jsonrpc.ProtocolError:
    """The error :func:`jsonrpc.decode` refuses ``data`` with (rule 2)."""
    try:
        jsonrpc.decode(data)
    except jsonrpc.ProtocolError as exc:
        return exc
    raise AssertionError("jsonrpc.decode accepted a message inbound refused")


def _raw(value: Any, member: str) -> msgspec.Raw:
    if type(value) is dict and member in value:
        return msgspec.Raw(_encoder.encode(value[member]))
    return msgspec.Raw()
