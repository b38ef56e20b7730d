"""The demo server's protocol core: one JSON-RPC line in, the lines to send out.

Sans-IO, like the rest of ``firewall.protocol``: no trio, no file
descriptors; :mod:`firewall.demo.server` owns the I/O. Tests drive a
:class:`DemoSession` with bytes and read bytes back.

Rules this module keeps:

1. Every request gets exactly one response, every notification none, and a
   line that is not a JSON-RPC message gets an error response (``id`` null
   when it has no usable id). :meth:`DemoSession.receive` never raises.
2. Tool failures (bad arguments, refused actions) are results with
   ``isError: true``; protocol failures (unknown method, malformed params,
   unknown tool, resource or prompt) are JSON-RPC errors.
3. A request's progress notifications precede its response; server
   notifications (``notifications/message``,
   ``notifications/resources/list_changed``) are sent only after the client
   said ``notifications/initialized``, and log messages only after
   ``logging/setLevel``.
4. No request waits for ``initialize``: the 2026 revision of MCP drops the
   handshake, and a firewall in front may replay calls without one.
5. With a ``record`` callback, every tools/call that reaches a known tool is
   reported to it (tool, arguments, request id) before the tool runs, whatever
   the tool then answers: the server's own account of what it executed.

Example::

    session = DemoSession()
    reply = session.receive(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert reply.frames == (b'{"jsonrpc":"2.0","id":1,"result":{}}',)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

import msgspec

from firewall.demo import catalog
from firewall.demo.host import Host, ToolResult
from firewall.protocol import jsonrpc, mcp
from firewall.protocol.jsonrpc import RequestId

_T = TypeVar("_T")

# record(tool, arguments, request id): see rule 5.
Recorder = Callable[[str, dict[str, Any], RequestId | None], None]

RESOURCE_NOT_FOUND: Final = -32002  # the MCP specification's code for resources/read
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert",
                     "emergency")
INSTRUCTIONS: Final = ("Demo virtualization host bundled with mcpwall. Every action is "
                       "simulated in memory; nothing runs on the real machine.")


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back for one received line.

    ``progress`` then ``frames`` are encoded JSON-RPC messages in send
    order, without newlines; ``frames`` holds the response. ``steps`` counts
    the work steps of a long-ish action (create, clone), so the I/O layer can
    spread the progress notifications over time; ``cancel`` is the request id
    a ``notifications/cancelled`` named.
    """

    frames: tuple[bytes, ...] = ()
    request_id: RequestId | None = None
    progress: tuple[bytes, ...] = ()
    steps: int = 0
    cancel: RequestId | None = None


class ParamsError(Exception):
    """Request params that do not fit the method: answered with -32602."""


class _Meta(msgspec.Struct):
    progressToken: str | int | None = None


class _Initialize(msgspec.Struct):
    protocolVersion: str = ""


class _ToolCall(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | None = None
    meta: _Meta | None = msgspec.field(default=None, name="_meta")


class _Uri(msgspec.Struct):
    uri: str


class _PromptGet(msgspec.Struct):
    name: str
    arguments: dict[str, str] | None = None


class _SetLevel(msgspec.Struct):
    level: str


class _Cancelled(msgspec.Struct):
    requestId: int | str


_PROMPTS: Final[tuple[dict[str, Any], ...]] = (
    {"name": "vm_health_report", "title": "VM health report",
     "description": "Write a health report for one virtual machine from its live state.",
     "arguments": [{"name": "vm_name", "description": "Name of the VM", "required": True}]},
    {"name": "safe_experiment", "title": "Safe experiment plan",
     "description": "Plan risky work inside a throwaway VM: snapshot, work, restore.",
     "arguments": [{"name": "goal", "description": "What to try", "required": True},
                   {"name": "vm_name", "description": "VM to use", "required": False}]},
)


class DemoSession:
    """One client connection to the simulated host."""

    def __init__(self, host: Host | None = None, log: Any = None,
                 record: Recorder | None = None) -> None:
        self.host = host or Host(catalog.load())
        self._record = record
        self.protocol_version: str | None = None
        self.initialized = False
        self.log_level: str | None = None
        self._log = log
        self._methods: dict[str, Callable[[msgspec.Raw, _Out], Any]] = {
            mcp.INITIALIZE: self._initialize,
            mcp.PING: lambda params, out: {},
            mcp.TOOLS_LIST: lambda params, out: {"tools": list(self.host.catalog.tools)},
            mcp.TOOLS_CALL: self._call_tool,
            "resources/list": self._list_resources,
            "resources/templates/list": lambda params, out: {"resourceTemplates": [
                {"uriTemplate": "vm://{name}", "name": "vm", "title": "Virtual machine",
                 "description": "Live state of one virtual machine", "mimeType":
                 "application/json"}]},
            mcp.RESOURCES_READ: self._read_resource,
            "prompts/list": lambda params, out: {"prompts": list(_PROMPTS)},
            mcp.PROMPTS_GET: self._get_prompt,
            "logging/setLevel": self._set_level,
        }

    def receive(self, line: bytes | bytearray | memoryview) -> Reply:
        """Handle one received message; return what to send back (see the module rules)."""
        try:
            msg = jsonrpc.decode(line)
        except jsonrpc.ProtocolError as exc:
            self._emit("warning", "protocol_error", code=exc.code, error=exc.message)
            return Reply((exc.response(),), exc.request_id)
        if msg.kind is jsonrpc.Kind.RESPONSE:
            return Reply()  # this server sends no requests, so nothing waits for one
        if msg.kind is jsonrpc.Kind.NOTIFICATION:
            return self._notification(msg)
        ident = msg.request_id
        method = msg.method or ""
        handler = self._methods.get(method)
        if handler is None:
            self._emit("info", "method_not_found", method=method, id=ident)
            return Reply((jsonrpc.error_response(ident, jsonrpc.METHOD_NOT_FOUND,
                                                 f"method not found: {method}"),), ident)
        out = _Out(ident)
        try:
            result = handler(msg.params, out)
        except ParamsError as exc:
            self._emit("info", "invalid_params", method=method, id=ident, error=str(exc))
            return Reply((jsonrpc.error_response(ident, jsonrpc.INVALID_PARAMS, str(exc)),), ident)
        except _NotFound as exc:
            return Reply((jsonrpc.error_response(ident, RESOURCE_NOT_FOUND, str(exc),
                                                 {"uri": exc.uri}),), ident)
        except Exception as exc:  # a bug here must not end the session
            self._emit("error", "internal_error", method=method, id=ident, error=repr(exc))
            return Reply((jsonrpc.error_response(ident, jsonrpc.INTERNAL_ERROR,
                                                 "internal error"),), ident)
        self._emit("debug", "request_handled", method=method, id=ident)
        frames = (*out.before, jsonrpc.result_response(ident, result), *out.after)
        return Reply(frames, ident, tuple(out.progress), out.steps)

    # -- notifications ------------------------------------------------------

    def _notification(self, msg: jsonrpc.Message) -> Reply:
        if msg.method == "notifications/initialized":
            self.initialized = True
        elif msg.method == mcp.CANCELLED:
            try:
                cancelled = msgspec.json.decode(msg.params if len(msg.params) else b"{}",
                                                type=_Cancelled)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                return Reply()  # a notification cannot be answered, even with an error
            return Reply(cancel=cancelled.requestId)
        return Reply()

    def _notify(self, method: str, params: dict[str, Any]) -> bytes:
        return jsonrpc.request(method, params)

    def _log_message(self, level: str, data: dict[str, Any]) -> bytes | None:
        """A notifications/message frame, if the client asked for ``level``."""
        if not self.initialized or self.log_level is None:
            return None
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(self.log_level):
            return None
        return self._notify("notifications/message",
                            {"level": level, "logger": "virtualization", "data": data})

    # -- methods ------------------------------------------------------------

    def _initialize(self, params: msgspec.Raw, out: _Out) -> dict[str, Any]:
        asked = _decode(params, _Initialize).protocolVersion
        version = asked if asked in mcp.PROTOCOL_VERSIONS else mcp.LATEST_PROTOCOL_VERSION
        self.protocol_version = version
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": True},
                             "resources": {"listChanged": True, "subscribe": False},
                             "prompts": {"listChanged": False}, "logging": {}},
            "serverInfo": {"name": self.host.catalog.server_name,
                           "version": self.host.catalog.server_version},
            "instructions": INSTRUCTIONS,
        }

    def _call_tool(self, params: msgspec.Raw, out: _Out) -> dict[str, Any]:
        call = _decode(params, _ToolCall)
        if self._record is not None and self.host.catalog.tool(call.name) is not None:
            self._record(call.name, call.arguments or {}, out.request_id)
        try:
            result = self.host.call(call.name, call.arguments or {})
        except KeyError:
            raise ParamsError(f"unknown tool: {call.name}") from None
        token = call.meta.progressToken if call.meta is not None else None
        self._emit("info", "tool_called", tool=call.name,
                   action=(call.arguments or {}).get("action"), is_error=result.is_error)
        self._tool_frames(call.name, result, token, out)
        if result.error is not None:
            return {"content": [{"type": "text", "text": result.error}], "isError": True}
        return {"content": [{"type": "text", "text": jsonrpc.encode(result.data).decode()}],
                "structuredContent": result.data, "isError": False}

    def _tool_frames(self, tool: str, result: ToolResult, token: str | int | None,
                     out: _Out) -> None:
        """Progress and log notifications around a tool result."""
        if token is not None and result.steps:
            total = len(result.steps) + 1
            for done, step in enumerate(result.steps, 1):
                out.progress.append(self._notify(mcp.PROGRESS, {
                    "progressToken": token, "progress": done, "total": total, "message": step}))
        out.steps = len(result.steps)
        if result.error is not None:
            frame = self._log_message("warning", {"event": "tool_error", "tool": tool,
                                                  "error": result.error})
        elif result.event is not None:
            frame = self._log_message("info", {"event": result.event, "tool": tool})
        else:
            frame = None
        if frame is not None:
            out.before.append(frame)
        if result.inventory_changed and self.initialized:
            out.after.append(self._notify("notifications/resources/list_changed", {}))

    def _list_resources(self, params: msgspec.Raw, out: _Out) -> dict[str, Any]:
        return {"resources": [
            {"uri": f"vm://{quote(name)}", "name": name, "title": f"VM {name}",
             "description": f"Live state of virtual machine {name}",
             "mimeType": "application/json"} for name in self.host.vms]}

    def _read_resource(self, params: msgspec.Raw, out: _Out) -> dict[str, Any]:
        uri = _decode(params, _Uri).uri
        scheme, _, name = uri.partition("://")
        described = self.host.describe(unquote(name)) if scheme == "vm" else None
        if described is None:
            raise _NotFound(uri)
        return {"contents": [{"uri": uri, "mimeType": "application/json",
                              "text": jsonrpc.encode(described).decode()}]}

    def _get_prompt(self, params: msgspec.Raw, out: _Out) -> dict[str, Any]:
        get = _decode(params, _PromptGet)
        args = get.arguments or {}
        prompt = next((p for p in _PROMPTS if p["name"] == get.name), None)
        if prompt is None:
            raise ParamsError(f"unknown prompt: {get.name}")
        for arg in prompt["arguments"]:
            if arg["required"] and not args.get(arg["name"]):
                raise ParamsError(f"prompt {get.name} requires argument {arg['name']!r}")
        if get.name == "vm_health_report":
            state = self.host.describe(args["vm_name"])
            if state is None:
                raise ParamsError(f"no VM named {args['vm_name']!r}")
            text = (f"Write a short health report for the virtual machine {args['vm_name']}. "
                    "Cover its power state, resources, disks, network adapters and snapshots, "
                    "and flag anything risky. Current state (JSON):\n"
                    + jsonrpc.encode(state).decode())
        else:
            vm_name = args.get("vm_name") or "sandbox-01"
            text = (f"Plan this experiment so it cannot harm the host: {args['goal']}. Use VM "
                    f"{vm_name}: take a snapshot first, do the work, then restore the snapshot "
                    "or delete the VM. List each tool call you would make.")
        return {"description": prompt["description"],
                "messages": [{"role": "user", "content": {"type": "text", "text": text}}]}

    def _set_level(self, params: msgspec.Raw, out: _Out) -> dict[str, Any]:
        level = _decode(params, _SetLevel).level
        if level not in LOG_LEVELS:
            raise ParamsError(f"unknown log level {level!r}; expected one of: "
                              f"{', '.join(LOG_LEVELS)}")
        self.log_level = level
        return {}

    def _emit(self, level: str, event: str, **data: Any) -> None:
        if self._log is not None:
            getattr(self._log, level)(event, **data)


class _Out:
    """Frames a handler adds around its response."""

    __slots__ = ("after", "before", "progress", "request_id", "steps")

    def __init__(self, request_id: RequestId | None) -> None:
        self.request_id = request_id
        self.progress: list[bytes] = []
        self.before: list[bytes] = []
        self.after: list[bytes] = []
        self.steps = 0


class _NotFound(Exception):
    def __init__(self, uri: str) -> None:
        super().__init__(f"resource not found: {uri}")
        self.uri = uri


def _decode(params: msgspec.Raw, kind: type[_T]) -> _T:
    """Decode request params into ``kind``; absent params count as ``{}``."""
    try:
        return msgspec.json.decode(params if len(params) else b"{}", type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ParamsError(f"invalid params: {exc}") from None  # ValidationError is a DecodeError
