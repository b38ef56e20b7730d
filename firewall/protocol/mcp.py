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

from typing import Any, Final

import msgspec

from firewall.protocol import jsonrpc

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
PING: Final = "ping"
SAMPLING_CREATE: Final = "sampling/createMessage"
ELICITATION_CREATE: Final = "elicitation/create"
ROOTS_LIST: Final = "roots/list"
CANCELLED: Final = "notifications/cancelled"
PROGRESS: Final = "notifications/progress"

# Requests a server may send to a client.
SERVER_REQUESTS: Final = frozenset({SAMPLING_CREATE, ELICITATION_CREATE, ROOTS_LIST, PING})


class _ToolParams(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | None = None


class _UriParams(msgspec.Struct):
    uri: str


class _PromptParams(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | None = None


_tool_decoder: Final = msgspec.json.Decoder(_ToolParams)
_uri_decoder: Final = msgspec.json.Decoder(_UriParams)
_prompt_decoder: Final = msgspec.json.Decoder(_PromptParams)


class Call(msgspec.Struct, frozen=True):
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
    try:
        if method == TOOLS_CALL:
            tp = _tool_decoder.decode(_params(msg))
            return Call(method, direction, tool=tp.name, arguments=tp.arguments or {})
        if method in (RESOURCES_READ, RESOURCES_SUBSCRIBE, RESOURCES_UNSUBSCRIBE):
            return Call(method, direction, uri=_uri_decoder.decode(_params(msg)).uri)
        if method == PROMPTS_GET:
            pp = _prompt_decoder.decode(_params(msg))
            return Call(method, direction, prompt=pp.name, arguments=pp.arguments or {})
    except msgspec.DecodeError as exc:
        raise jsonrpc.ProtocolError(
            jsonrpc.INVALID_PARAMS, f"invalid params for {method}: {exc}", msg.request_id
        ) from None
    return Call(method, direction)


def _params(msg: jsonrpc.Message) -> bytes | msgspec.Raw:
    return msg.params if len(msg.params) else b"null"


def tool_error_result(request_id: jsonrpc.RequestId | None, text: str) -> bytes:
    """A tools/call result with ``isError: true``: how a refusal reaches the model."""
    return jsonrpc.result_response(
        request_id, {"content": [{"type": "text", "text": text}], "isError": True}
    )
