"""Requests and answers of the operator API: bodies, query parameters, JSON replies.

Every refusal is an :class:`ApiError` (status and message), answered as
``{"error": "..."}``; a refusal sent before the request body was read closes
the connection, since the body is still on the wire.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, TypeVar

import msgspec

from firewall.gateway.http.exchange import BodyTooLarge, Exchange
from firewall.gateway.operator.auth import Operator
from firewall.protocol import bounds

_T = TypeVar("_T")
MAX_BODY: Final = 64 * 1024


class ApiError(Exception):
    """A refusal: HTTP status and a message for the operator."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


class VerdictBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/approvals/{id}/approve|reject``."""

    comment: str | None = None
    note: str | None = None  # an alias of comment (the CLI's --note)
    by: str | None = None    # a person behind a shared token: recorded as "by via operator"
    scope: str = "call"      # call | session | minutes:N (approvals only)


class SwitchBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST|DELETE /api/kill-switch``."""

    scope: Literal["global", "server", "principal"] = "global"
    name: str | None = None
    comment: str | None = None


class Request(msgspec.Struct):
    """One authenticated API request as the handlers see it."""

    ex: Exchange
    operator: Operator
    query: dict[str, str]
    parts: list[str]


Handler = Callable[[Request], Awaitable[None]]


def int_param(query: dict[str, str], name: str, default: int, cap: int) -> int:
    """A positive integer query parameter, at most ``cap``; 400 otherwise."""
    text = query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) < 1:
        raise ApiError(400, f"{name}: expected a positive integer, got {text!r}")
    return min(int(text), cap)


async def read_body(ex: Exchange) -> bytes:
    """The request body (at most 64 KiB; 413 beyond)."""
    try:
        return await ex.read_body(MAX_BODY)
    except BodyTooLarge:
        raise ApiError(413, f"a request body is at most {MAX_BODY} bytes") from None


def decode_body(body: bytes, kind: type[_T]) -> _T:
    """Decode a JSON body (empty means ``{}``); 400 names what is wrong."""
    if bounds.too_deep(body):
        raise ApiError(400, f"bad request body: nested deeper than {bounds.MAX_DEPTH} levels")
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"bad request body: {exc}") from None


async def reply(ex: Exchange, status: int, data: Any) -> None:
    """A JSON answer that no cache keeps."""
    headers = [("cache-control", "no-store")]
    if ex.has_body and not ex.body_read:
        # Refused before the body was read: the connection cannot be reused.
        headers.append(("connection", "close"))
    if status == 401:
        headers.append(("www-authenticate", 'Bearer realm="mcpwall-admin"'))
    if isinstance(data, dict) and status == 429 and "retry_after" in data:
        headers.append(("retry-after", f"{data['retry_after']:.0f}"))
    if isinstance(data, dict) and "allow" in data:
        headers.append(("allow", ", ".join(data["allow"])))
    await ex.respond(status, msgspec.json.encode(data), headers=headers)


__all__ = ["MAX_BODY", "ApiError", "Handler", "Request", "SwitchBody", "VerdictBody", "decode_body",
           "int_param", "read_body", "reply"]
