"""Multi round-trip requests (MRTR) and the tasks extension, as bytes and values.

Sans-IO: what the mediator needs to read of the 2026-07-28 revision's
``InputRequiredResult`` (``resultType: "input_required"``), of a retry
(``params.inputResponses``, ``params.requestState``), of a task handle
(``resultType: "task"``) and of ``tasks/*`` requests and answers; how to
name one call across its rounds (:func:`call_digest`); and mcpwall's own
``requestState`` (:class:`StateSeal`). Rules this module keeps:

1. Only the methods the revision lets a server answer with an
   ``InputRequiredResult`` (:data:`MRTR_METHODS`) or a task handle
   (:data:`TASK_METHODS`) are read here; any other answer is never opened.
   A payload that does not decode as the shape it claims is ``None`` (the
   caller treats it as an ordinary answer, relayed as received).
2. :func:`call_digest` is what makes two rounds one call: the method, its
   target and its arguments, in a canonical encoding (keys sorted): a retry
   whose arguments differ in any value has another digest, so it is another
   call. ``inputResponses``, ``requestState`` and ``_meta`` are not part of
   it (they are what a retry adds).
3. A sealed state (:meth:`StateSeal.seal`) is an HMAC-SHA256 over its
   payload with a key that never leaves the process; :meth:`StateSeal.open`
   returns the payload only when the MAC matches (constant-time compare) and
   the expiry has not passed. A client can read such a state but can neither
   forge nor alter one.

Example::

    ir = input_required(b'{"resultType":"input_required","requestState":"s"}')
    assert ir is not None and ir.state == "s" and ir.requests == {}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any, Final

import msgspec

from firewall.protocol import jsonrpc, mcp

PROTOCOL_VERSION: Final = "2026-07-28"
INPUT_REQUIRED: Final = "input_required"
TASK: Final = "task"
TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
TASKS_GET: Final = "tasks/get"
TASKS_UPDATE: Final = "tasks/update"
TASKS_CANCEL: Final = "tasks/cancel"
TASKS_METHODS: Final = frozenset({TASKS_GET, TASKS_UPDATE, TASKS_CANCEL})
# The requests a server may answer with an InputRequiredResult, or a task handle.
MRTR_METHODS: Final = frozenset({mcp.TOOLS_CALL, mcp.PROMPTS_GET, mcp.RESOURCES_READ})
TASK_METHODS: Final = frozenset({mcp.TOOLS_CALL})
# A task's states that end it.
TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
# What an input request may be (the revision's InputRequests values).
INPUT_METHODS: Final = frozenset({mcp.ELICITATION_CREATE, mcp.SAMPLING_CREATE, mcp.ROOTS_LIST})
_META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
_META_CAPS: Final = "io.modelcontextprotocol/clientCapabilities"


class _ResultType(msgspec.Struct):
    resultType: str | None = None


class InputRequest(msgspec.Struct, frozen=True):
    """One entry of ``inputRequests``: a server-to-client request, by value."""

    method: str
    params: dict[str, Any] | None = None


class InputRequired(msgspec.Struct, frozen=True):
    """An ``InputRequiredResult``: ``requests`` by key (may be empty), ``state``."""

    requests: dict[str, InputRequest]
    state: str | None
    # The other members of the result, kept as read (``resultType``, ``_meta``...).
    rest: dict[str, Any]


class TaskState(msgspec.Struct, frozen=True):
    """A task as a handle or a ``tasks/get`` answer shows it."""

    task_id: str
    status: str
    # For a terminal state: whether a completed tools/call result has isError,
    # and the failed task's JSON-RPC error.
    is_error: bool = False
    error_code: int | None = None
    error_message: str | None = None


class Retry(msgspec.Struct, frozen=True):
    """What a retry adds to a request: the keys it answers, the state it echoes."""

    responses: dict[str, Any]
    state: str | None


_result_type_decoder: Final = msgspec.json.Decoder(_ResultType)
_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_digest_encoder: Final = msgspec.json.Encoder(order="sorted")


def result_type(result: bytes | msgspec.Raw) -> str | None:
    """The ``resultType`` of a result (None: absent, i.e. ``complete``, or unreadable)."""
    if not len(result):
        return None
    try:
        return _result_type_decoder.decode(result).resultType
    except jsonrpc.DECODE_ERRORS:
        return None


def _object(data: bytes | msgspec.Raw) -> dict[str, Any] | None:
    try:
        return _object_decoder.decode(data) if len(data) else None
    except jsonrpc.DECODE_ERRORS:
        return None


def input_required(result: bytes | msgspec.Raw) -> InputRequired | None:
    """Read an ``InputRequiredResult``; None when it is not one or is malformed
    (an ``inputRequests`` that is no map of requests, a ``requestState`` that is
    no string)."""
    value = _object(result)
    if value is None or value.get("resultType") != INPUT_REQUIRED:
        return None
    return _inputs(value)


def task_inputs(result: bytes | msgspec.Raw) -> InputRequired | None:
    """Read the ``inputRequests`` of a ``tasks/get`` answer in ``input_required``."""
    value = _object(result)
    return None if value is None else _inputs(value)


def _inputs(value: dict[str, Any]) -> InputRequired | None:
    raw = value.pop("inputRequests", None)
    state = value.pop("requestState", None)
    if state is not None and not isinstance(state, str):
        return None
    requests: dict[str, InputRequest] = {}
    if raw is not None:
        if not isinstance(raw, dict):
            return None
        for key, entry in raw.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
                return None
            params = entry.get("params")
            if params is not None and not isinstance(params, dict):
                return None
            requests[key] = InputRequest(entry["method"], params)
    return InputRequired(requests, state, value)


def encode_inputs(ir: InputRequired) -> dict[str, Any]:
    """The result object of ``ir`` (its other members, ``requests`` and ``state``)."""
    out: dict[str, Any] = dict(ir.rest)
    if ir.requests:
        out["inputRequests"] = {
            key: {"method": r.method, **({} if r.params is None else {"params": r.params})}
            for key, r in ir.requests.items()}
    if ir.state is not None:
        out["requestState"] = ir.state
    return out


def retry(params: bytes | msgspec.Raw) -> Retry | None:
    """The ``inputResponses`` and ``requestState`` a request carries, or None
    when it carries neither (it is a first round). A quick byte test spares
    every ordinary call a second read of its params."""
    data = bytes(params)
    if data.find(b"inputResponses") < 0 and data.find(b"requestState") < 0:
        return None
    value = _object(data)
    if value is None:
        return None
    responses = value.get("inputResponses")
    state = value.get("requestState")
    if responses is None and state is None:
        return None
    return Retry(responses if isinstance(responses, dict) else {},
                 state if isinstance(state, str) else None)


def without(params: bytes | msgspec.Raw, keys: frozenset[str], drop_state: bool) -> dict[str, Any]:
    """The params with the ``inputResponses`` of ``keys`` removed (and the
    ``requestState`` if ``drop_state``): mcpwall's own answers never reach a server."""
    value = _object(params) or {}
    responses = value.get("inputResponses")
    if isinstance(responses, dict):
        kept = {k: v for k, v in responses.items() if k not in keys}
        if kept:
            value["inputResponses"] = kept
        else:
            del value["inputResponses"]
    if drop_state:
        value.pop("requestState", None)
    return value


def call_digest(call: mcp.Call) -> str:
    """What names one call across its rounds (rule 2): hex SHA-256 of the
    method, target and arguments, keys sorted."""
    blob = _digest_encoder.encode([call.method, call.target, call.arguments])
    return hashlib.sha256(blob).hexdigest()


def revision(params: bytes | msgspec.Raw) -> tuple[str | None, dict[str, Any]]:
    """The request's ``_meta`` protocol version and client capabilities (2026-07-28)."""
    data = bytes(params)
    if _META_VERSION.encode() not in data:
        return None, {}
    value = _object(data) or {}
    meta = value.get("_meta")
    if not isinstance(meta, dict):
        return None, {}
    version = meta.get(_META_VERSION)
    caps = meta.get(_META_CAPS)
    return (version if isinstance(version, str) else None,
            caps if isinstance(caps, dict) else {})


def elicits(caps: dict[str, Any]) -> bool:
    """Whether per-request client capabilities offer form elicitation."""
    elicitation = caps.get("elicitation")
    if not isinstance(elicitation, dict):
        return False
    return not elicitation or "form" in elicitation


def task_handle(result: bytes | msgspec.Raw) -> TaskState | None:
    """Read a ``CreateTaskResult`` (``resultType: "task"``), or None."""
    value = _object(result)
    if value is None or value.get("resultType") != TASK:
        return None
    return _task(value)


def task_state(result: bytes | msgspec.Raw) -> TaskState | None:
    """Read a ``tasks/get`` answer (a DetailedTask), or None."""
    value = _object(result)
    return None if value is None else _task(value)


def _task(value: dict[str, Any]) -> TaskState | None:
    task_id, status = value.get("taskId"), value.get("status")
    if not isinstance(task_id, str) or not isinstance(status, str):
        return None
    inner = value.get("result")
    error = value.get("error")
    is_error = isinstance(inner, dict) and inner.get("isError") is True
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return TaskState(task_id, status, is_error,
                     code if isinstance(code, int) and not isinstance(code, bool) else None,
                     message if isinstance(message, str) else None)


def task_id(params: bytes | msgspec.Raw) -> str | None:
    """The ``taskId`` of a ``tasks/*`` request."""
    value = _object(params)
    ident = value.get("taskId") if value is not None else None
    return ident if isinstance(ident, str) else None


class StateSeal:
    """mcpwall's own ``requestState``: sealed, so a client cannot forge it (rule 3).

    Example::

        seal = StateSeal()
        token = seal.seal({"call": "s.1"}, expires_ns=now + 60 * 10**9)
        assert seal.open(token, now) == {"call": "s.1"}
    """

    PREFIX: Final = "mcpwall1."

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def seal(self, payload: dict[str, Any], *, expires_ns: int) -> str:
        """A state naming ``payload`` until ``expires_ns`` (time.time_ns)."""
        body = _digest_encoder.encode({"p": payload, "exp": expires_ns})
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return self.PREFIX + _b64(body) + "." + _b64(mac)

    def open(self, token: str, now_ns: int) -> dict[str, Any] | None:
        """The payload of a state this process sealed and that has not expired, or None."""
        if not token.startswith(self.PREFIX):
            return None
        body_b64, _, mac_b64 = token[len(self.PREFIX):].partition(".")
        try:
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except ValueError:
            return None
        want = hmac.new(self._key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            return None
        value = _object(body)
        if value is None or not isinstance(value.get("exp"), int) or value["exp"] < now_ns:
            return None
        payload = value.get("p")
        return payload if isinstance(payload, dict) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
