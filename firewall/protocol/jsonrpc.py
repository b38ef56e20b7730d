"""JSON-RPC 2.0 envelopes, decoded with msgspec.

Rules this module keeps:

1. Only the envelope is decoded. ``params``, ``result`` and ``error`` stay
   :class:`msgspec.Raw` so the firewall forwards what it received, byte for
   byte, and pays nothing for payloads it does not read.
2. Decoding never raises anything but :class:`ProtocolError`, which carries the
   JSON-RPC error code the peer must get back (-32700 or -32600). A message
   nested deeper than ``bounds.MAX_DEPTH`` is refused (-32600) before it is
   decoded, whichever way it travels.
3. One decoder and one encoder, built at import and reused.
4. The well-formed case is the fast one: a valid request costs one msgspec
   decode and three attribute tests. Anything unusual goes to the slow path,
   which alone builds error texts, so both paths give the same answers.

Example::

    msg = decode(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert msg.kind is Kind.REQUEST
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

from firewall.protocol import bounds

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

# Server-defined codes (the -32000..-32099 range JSON-RPC reserves for
# implementations). Stable: documented in docs/policy.md and docs/operations.md.
POLICY_DENIED: Final = -32001
RATE_LIMITED: Final = -32002
APPROVAL_REQUIRED: Final = -32003
INVALID_ARGUMENTS: Final = -32004
UPSTREAM_UNAVAILABLE: Final = -32010
UPSTREAM_TIMEOUT: Final = -32011
MESSAGE_TOO_LARGE: Final = -32012
REQUEST_CANCELLED: Final = -32013

RequestId = int | str

# The members of a request or notification (JSON-RPC 2.0 has no others): what
# mcpwall forwards of one. An extra member is dropped, since some readers
# refuse the whole message for it and none may act on it unseen.
REQUEST_MEMBERS: Final = frozenset({"jsonrpc", "id", "method", "params"})
# The members of a response, likewise: what mcpwall relays of one it decoded whole.
RESPONSE_MEMBERS: Final = frozenset({"jsonrpc", "id", "result", "error"})
# An integer id every JSON reader reads alike: JavaScript's numbers are
# doubles, exact up to 2**53 - 1 only.
MAX_SAFE_ID: Final = 2**53 - 1


class Kind(enum.Enum):
    """What a JSON-RPC message is, judged from the fields it carries."""

    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """What every JSON-RPC 2.0 message has: the version, a method and/or an id.

    :class:`Message` adds the raw payloads; ``mcp.Request`` a tools/call's
    policy view, decoded in the same pass (see :func:`firewall.protocol.mcp.decode`).
    :mod:`firewall.protocol.inbound` makes a bare one from a message it
    decoded whole (its payloads stay in that value).
    """

    # gc=False: every field is a str, an int or a Raw (or, in mcp.Request, a
    # struct of strs and a dict of arguments), so an envelope can never be part
    # of a reference cycle; the collector need not track it.

    jsonrpc: str
    method: str | None = None
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET

    @property
    def kind(self) -> Kind:
        if self.method is not None:
            return Kind.NOTIFICATION if self.id is msgspec.UNSET else Kind.REQUEST
        return Kind.RESPONSE

    @property
    def request_id(self) -> RequestId | None:
        """The id as a plain value; ``None`` for notifications and null ids."""
        ident = self.id
        if ident is msgspec.UNSET or ident is None:
            return None
        assert isinstance(ident, (int, str))
        return ident


class Message(Envelope, frozen=True, omit_defaults=True, gc=False):
    """A decoded JSON-RPC 2.0 envelope; payloads stay raw."""

    # Absent members decode to an empty Raw (``len(raw) == 0``); a JSON null
    # is ``Raw(b"null")``. msgspec cannot put Raw in a union, hence no None.
    params: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()
    error: msgspec.Raw = msgspec.Raw()

    @property
    def has_result(self) -> bool:
        return len(self.result) > 0

    @property
    def has_error(self) -> bool:
        return len(self.error) > 0


class ProtocolError(Exception):
    """A message that cannot be accepted; ``code`` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def response(self) -> bytes:
        """The JSON-RPC error response that answers the offending message."""
        return error_response(self.request_id, self.code, self.message)


class ErrorObject(msgspec.Struct, frozen=True, omit_defaults=True):
    """The ``error`` member of a JSON-RPC response."""

    code: int
    message: str
    data: Any = None


class _ErrorResponse(msgspec.Struct, frozen=True):
    jsonrpc: str
    id: int | str | None
    error: ErrorObject


class _ResultResponse(msgspec.Struct, frozen=True):
    jsonrpc: str
    id: int | str | None
    result: Any


class _Request(msgspec.Struct, frozen=True, omit_defaults=True):
    jsonrpc: str
    method: str
    id: int | str | msgspec.UnsetType = msgspec.UNSET
    params: Any = msgspec.UNSET


# What msgspec raises on bad input: DecodeError (ValidationError is one),
# UnicodeDecodeError for invalid UTF-8 inside a JSON string, and
# RecursionError for a text nested so deep that decoding it (or skipping it as
# Raw) reaches Python's recursion limit. Catching all three at every decode
# site is what keeps one hostile message from ending a session or the process.
DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_decoder: Final = msgspec.json.Decoder(Message)
_error_decoder: Final = msgspec.json.Decoder(ErrorObject)
_any_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode one JSON-RPC message; raise :class:`ProtocolError` if it is not one.

    JSON-RPC batches (arrays) are refused with -32600: MCP 2025-06-18 removed
    them, and the firewall decides message by message.
    """
    if bounds.too_deep(data):
        raise too_deep_error()
    try:
        msg = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _invalid(data, f"invalid JSON-RPC message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(PARSE_ERROR, f"parse error: {exc}") from None
    except UnicodeDecodeError:
        raise ProtocolError(PARSE_ERROR, "parse error: not valid UTF-8") from None
    except RecursionError:
        raise too_deep_error() from None
    # Fast path: a request or notification with neither result nor error (an
    # empty Raw is falsy), or a response with exactly one of them.
    if msg.jsonrpc == "2.0":
        if msg.method is not None:
            if not msg.result and not msg.error:
                return msg
        elif msg.id is not msgspec.UNSET and (not msg.result) != (not msg.error):
            return msg
    raise _refusal(msg)


def too_deep_error() -> ProtocolError:
    """The refusal of a message nested deeper than mcpwall decodes."""
    return ProtocolError(INVALID_REQUEST,
                         f"invalid JSON-RPC message: nested deeper than {bounds.MAX_DEPTH} levels")


def _refusal(msg: Message) -> ProtocolError:
    """The precise error for a decoded envelope that is not valid JSON-RPC."""
    if msg.jsonrpc != "2.0":
        return ProtocolError(INVALID_REQUEST, 'invalid JSON-RPC message: jsonrpc must be "2.0"',
                             msg.request_id)
    if msg.method is None:
        if msg.id is msgspec.UNSET:
            return ProtocolError(INVALID_REQUEST,
                                 "invalid JSON-RPC message: neither a method nor an id")
        return ProtocolError(INVALID_REQUEST,
                             "invalid JSON-RPC response: exactly one of result and error",
                             msg.request_id)
    return ProtocolError(INVALID_REQUEST,
                         "invalid JSON-RPC request: result or error beside a method",
                         msg.request_id)


def _invalid(data: bytes | bytearray | memoryview, text: str) -> ProtocolError:
    """An -32600 error, echoing the id when the payload has a usable one."""
    request_id: RequestId | None = None
    if bounds.too_deep(data):
        return too_deep_error()
    try:
        obj = _any_decoder.decode(data)
    except DECODE_ERRORS:
        return ProtocolError(PARSE_ERROR, "parse error")
    if isinstance(obj, list):
        return ProtocolError(INVALID_REQUEST, "invalid JSON-RPC message: batches are not supported")
    if isinstance(obj, dict):
        ident = obj.get("id")
        if isinstance(ident, (int, str)) and not isinstance(ident, bool):
            request_id = ident
    return ProtocolError(INVALID_REQUEST, text, request_id)


def decode_error(msg: Message) -> ErrorObject | None:
    """The error object of a response, or ``None`` when it is absent or malformed."""
    if not msg.has_error:
        return None
    try:
        return _error_decoder.decode(msg.error)
    except DECODE_ERRORS:
        return None


def error_response(
    request_id: RequestId | None, code: int, message: str, data: Any = None
) -> bytes:
    """Encode an error response. ``error_response(1, -32601, "no such method")``."""
    return _encoder.encode(
        _ErrorResponse("2.0", request_id, ErrorObject(code, message, data))
    )


def result_response(request_id: RequestId | None, result: Any) -> bytes:
    """Encode a success response. ``result_response(1, {})``."""
    return _encoder.encode(_ResultResponse("2.0", request_id, result))


def request(method: str, params: Any = msgspec.UNSET, request_id: RequestId | None = None) -> bytes:
    """Encode a request, or a notification when ``request_id`` is None."""
    ident: RequestId | msgspec.UnsetType = msgspec.UNSET if request_id is None else request_id
    return _encoder.encode(_Request("2.0", method, ident, params))


class _Envelope(msgspec.Struct, omit_defaults=True):
    # The order the Python SDK writes (and JSON-RPC's examples): what it sends
    # comes out byte for byte.
    jsonrpc: str
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


def _raw(value: msgspec.Raw) -> msgspec.Raw | msgspec.UnsetType:
    return value if len(value) else msgspec.UNSET


def reencode(msg: Message) -> bytes:
    """The envelope of ``msg`` written anew, its payloads as received.

    Every member appears once, as decoded (the last of duplicates, the one
    mcpwall read), so no reader can take a response or a notification for
    another kind of message; ``params``, ``result`` and ``error`` are copied
    unread. ``reencode(decode(b'{"jsonrpc":"2.0","id":1,"result":{},"id":2}'))``
    is ``b'{"jsonrpc":"2.0","id":2,"result":{}}'``.
    """
    return _encoder.encode(_Envelope(
        msg.jsonrpc, msg.id,
        msgspec.UNSET if msg.method is None else msg.method,
        _raw(msg.params), _raw(msg.result), _raw(msg.error)))


def encode(obj: Any) -> bytes:
    """Encode any JSON value with the shared encoder."""
    return _encoder.encode(obj)


def decode_any(data: bytes | bytearray | memoryview | msgspec.Raw) -> Any:
    """Decode any JSON value (used for payloads the firewall must read)."""
    return _any_decoder.decode(data)
