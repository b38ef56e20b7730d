"""MCP methods, and the policy-relevant view of a message.

The policy engine never sees bytes: it sees a :class:`Call`, the few fields a
rule can match on (method, tool, resource URI, prompt, arguments). Building a
Call decodes ``params`` only for the methods where a rule needs them.

Example::

    msg = jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                         b'"params":{"name":"vm_management","arguments":{"action":"list"}}}')
    call = view(msg)
    assert call.tool == "vm_management" and call.arguments == {"action": "list"}
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from firewall.protocol import bounds, jsonrpc

# Protocol revisions mcpwall speaks on its front (newest first).
PROTOCOL_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
LATEST_PROTOCOL_VERSION: Final = PROTOCOL_VERSIONS[0]

TOOLS_CALL: Final = "tools/call"
TOOLS_LIST: Final = "tools/list"
RESOURCES_READ: Final = "resources/read"
RESOURCES_SUBSCRIBE: Final = "resources/subscribe"
RESOURCES_UNSUBSCRIBE: Final = "resources/unsubscribe"
PROMPTS_GET: Final = "prompts/get"
INITIALIZE: Final = "initialize"
SERVER_DISCOVER: Final = "server/discover"  # 2026-07-28: what initialize told
PING: Final = "ping"
SAMPLING_CREATE: Final = "sampling/createMessage"
ELICITATION_CREATE: Final = "elicitation/create"
ROOTS_LIST: Final = "roots/list"
CANCELLED: Final = "notifications/cancelled"
PROGRESS: Final = "notifications/progress"
LOG_MESSAGE: Final = "notifications/message"

# The notifications MCP defines (2025-03-26 to 2025-11-25). They carry no
# operation and pass without a decision; any other ``notifications/...``
# method is decided by the policy like a request (``methods``, then the
# default), since a server may act on it.
NOTIFICATIONS: Final = frozenset({
    "notifications/initialized", CANCELLED, PROGRESS, LOG_MESSAGE,
    "notifications/resources/updated", "notifications/resources/list_changed",
    "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/roots/list_changed", "notifications/elicitation/complete",
    "notifications/tasks/status",
})

# Requests a server may send to a client.
SERVER_REQUESTS: Final = frozenset({SAMPLING_CREATE, ELICITATION_CREATE, ROOTS_LIST, PING})


# gc=False: these live for one call and never hold a reference to themselves.
class _ToolParams(msgspec.Struct, gc=False):
    name: str
    arguments: dict[str, Any] | None = None


class _UriParams(msgspec.Struct, gc=False):
    uri: str


class _PromptParams(msgspec.Struct, gc=False):
    name: str
    arguments: dict[str, Any] | None = None


_tool_decoder: Final = msgspec.json.Decoder(_ToolParams)
_uri_decoder: Final = msgspec.json.Decoder(_UriParams)
_prompt_decoder: Final = msgspec.json.Decoder(_PromptParams)


# gc=False: a Call holds strings and the arguments decoded from JSON, which
# cannot refer back to it; one is built per request, so tracking costs.
class Call(msgspec.Struct, frozen=True, gc=False):
    """What a rule can see of one request.

    ``tool`` is set for tools/call, ``uri`` for resources/read|subscribe|unsubscribe,
    ``prompt`` for prompts/get; ``arguments`` for tools/call and prompts/get.
    ``direction`` is ``"client"`` for agent-to-server requests and ``"server"``
    for server-to-client ones (sampling, elicitation, roots/list).
    """

    method: str
    direction: str = "client"
    tool: str | None = None
    uri: str | None = None
    prompt: str | None = None
    arguments: dict[str, Any] | None = None

    @property
    def target(self) -> str | None:
        """The tool name, resource URI or prompt name this call is about."""
        return self.tool or self.uri or self.prompt


def view(msg: jsonrpc.Message, direction: str = "client") -> Call:
    """The policy view of a request; raise ProtocolError(-32602) on bad params."""
    method = msg.method
    assert method is not None, "view() takes requests and notifications"
    # Fields are passed by position (method, direction, tool, uri, prompt,
    # arguments): this runs once per call on the hot path.
    if method == TOOLS_CALL:
        try:
            tp = _tool_decoder.decode(msg.params or b"null")
        except jsonrpc.DECODE_ERRORS as exc:
            raise _invalid_params(msg, exc) from None
        return Call(method, direction, tp.name, None, None, tp.arguments or {})
    if method in _URI_METHODS:
        try:
            uri = _uri_decoder.decode(msg.params or b"null").uri
        except jsonrpc.DECODE_ERRORS as exc:
            raise _invalid_params(msg, exc) from None
        return Call(method, direction, None, uri)
    if method == PROMPTS_GET:
        try:
            pp = _prompt_decoder.decode(msg.params or b"null")
        except jsonrpc.DECODE_ERRORS as exc:
            raise _invalid_params(msg, exc) from None
        return Call(method, direction, None, None, pp.name, pp.arguments or {})
    return Call(method, direction)


_URI_METHODS: Final = frozenset({RESOURCES_READ, RESOURCES_SUBSCRIBE, RESOURCES_UNSUBSCRIBE})


def _invalid_params(msg: jsonrpc.Message, exc: Exception) -> jsonrpc.ProtocolError:
    return jsonrpc.ProtocolError(
        jsonrpc.INVALID_PARAMS, f"invalid params for {msg.method}: {exc}", msg.request_id
    )


# -- one pass for the requests a rule reads --------------------------------------------


class _ViewParams(msgspec.Struct, gc=False):
    # What the policy reads of the params of tools/call, prompts/get and
    # resources/*; other members (_meta...) are skipped. The fields admit null
    # so that a bad value takes the general path, which alone words the error.
    name: str | None = None
    uri: str | None = None
    arguments: dict[str, Any] | None = None


class Request(jsonrpc.Envelope, frozen=True, omit_defaults=True, gc=False):
    """A tools/call, prompts/get or resources/* request decoded in one pass: the
    envelope, and its params as the policy reads them (not raw: the bytes
    forwarded are the original ones; :func:`jsonrpc.decode` gives the raw params)."""

    # The types admit only a well-formed request: anything else (another
    # version, no id, no params, a result or an error beside the method) fails
    # this decode and takes the general path, which words the error.
    jsonrpc: Literal["2.0"]
    method: str
    id: int | str | None
    params: _ViewParams
    result: msgspec.UnsetType = msgspec.UNSET
    error: msgspec.UnsetType = msgspec.UNSET


_request_decoder: Final = msgspec.json.Decoder(Request)


def decode(data: bytes, direction: str = "client") -> tuple[jsonrpc.Envelope, Call | None]:
    """Decode one message and, for a request, its policy view (typed, one pass).

    The message path decodes with :mod:`firewall.protocol.inbound`, which also
    makes the line forwarded from the same value; this typed decoder is its
    reference (``tests/test_inbound.py``) and the baseline of
    ``benchmarks/bench_policy.py``. Answers exactly as :func:`jsonrpc.decode`
    followed by :func:`view` for a request: the same Call, or the same
    :class:`jsonrpc.ProtocolError` (-32700, -32600, or -32602 for bad params).
    A well-formed tools/call, prompts/get or
    resources/* request costs one msgspec pass and comes back as a
    :class:`Request`; anything else as a :class:`jsonrpc.Message` (decoded
    again), with a Call if it is a request and None if not.

    ``decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}')``
    gives ``(Request(...), Call("tools/call", "client", "t", None, None, {}))``.
    A text nested deeper than :data:`bounds.MAX_DEPTH` is refused (-32600)
    before anything is decoded.
    """
    if bounds.too_deep(data):
        raise jsonrpc.too_deep_error()
    try:
        req = _request_decoder.decode(data)
    except jsonrpc.DECODE_ERRORS:
        pass  # the general path words the error
    else:
        # A well-formed request (the types saw to it); view()'s well-formed params.
        p = req.params
        method = req.method
        if method == TOOLS_CALL:
            if p.name is not None:
                return req, Call(method, direction, p.name, None, None, p.arguments or {})
        elif method in _URI_METHODS:
            if p.uri is not None:
                return req, Call(method, direction, None, p.uri)
        elif method == PROMPTS_GET and p.name is not None:
            return req, Call(method, direction, None, None, p.name, p.arguments or {})
    msg = jsonrpc.decode(data)
    if msg.method is not None and msg.id is not msgspec.UNSET:
        return msg, view(msg, direction)
    return msg, None


def tool_error_result(request_id: jsonrpc.RequestId | None, text: str, *,
                      modern: bool = False) -> bytes:
    """A tools/call result with ``isError: true``: how a refusal reaches the model.

    ``modern``: for a 2026-07-28 request, whose results carry ``resultType``."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
    if modern:
        result["resultType"] = "complete"
    return jsonrpc.result_response(request_id, result)


class _Meta(msgspec.Struct):
    progressToken: int | str | None = None


class _MetaParams(msgspec.Struct):
    meta: _Meta | None = msgspec.field(default=None, name="_meta")


class _Capabilities(msgspec.Struct):
    elicitation: dict[str, Any] | None = None


class _InitializeParams(msgspec.Struct):
    capabilities: _Capabilities | None = None


_meta_decoder: Final = msgspec.json.Decoder(_MetaParams)
_initialize_decoder: Final = msgspec.json.Decoder(_InitializeParams)


def progress_token(msg: jsonrpc.Message) -> int | str | None:
    """The ``params._meta.progressToken`` of a request, if any."""
    if not len(msg.params) or b"progressToken" not in bytes(msg.params):
        return None
    try:
        params = _meta_decoder.decode(msg.params)
    except jsonrpc.DECODE_ERRORS:
        return None
    return params.meta.progressToken if params.meta else None


def offers_elicitation(msg: jsonrpc.Message) -> bool:
    """True when an ``initialize`` request advertises ``capabilities.elicitation``
    for forms (an empty object means forms, as in 2025-06-18)."""
    if not len(msg.params):
        return False
    try:
        caps = _initialize_decoder.decode(msg.params).capabilities
    except jsonrpc.DECODE_ERRORS:
        return False
    if caps is None or caps.elicitation is None:
        return False
    return not caps.elicitation or "form" in caps.elicitation


def progress(token: int | str, value: float, message: str) -> bytes:
    """A ``notifications/progress`` message for ``token``."""
    return jsonrpc.request(PROGRESS, {"progressToken": token, "progress": value,
                                      "message": message})
