"""How a refusal reads on the wire: pure functions from a Decision.

The mediator chooses the envelope (a tool result with ``isError: true`` for a
tools/call, or a JSON-RPC error); these functions give it the words and codes.
The codes are stable and documented in docs/policy.md.

Example::

    d = Decision("limited", rule="tools.vm", reason="rate limit", retry_after=4.2)
    error_code(d) == jsonrpc.RATE_LIMITED
    denial_text(d) == "Refused by mcpwall policy (rule tools.vm): rate limit. Retry after 4.2 s."
"""

from __future__ import annotations

from typing import Any, Final

from firewall.policy.decision import DENY, INVALID_ARGUMENTS, LIMITED, PENDING, Decision
from firewall.protocol import jsonrpc

_CODES: Final = {
    DENY: jsonrpc.POLICY_DENIED,
    LIMITED: jsonrpc.RATE_LIMITED,
    PENDING: jsonrpc.APPROVAL_REQUIRED,
    INVALID_ARGUMENTS: jsonrpc.INVALID_ARGUMENTS,
}
_MESSAGES: Final = {
    DENY: "Refused by mcpwall policy",
    LIMITED: "Rate limited by mcpwall policy",
    PENDING: "Held for approval by mcpwall policy",
    INVALID_ARGUMENTS: "Arguments refused by mcpwall policy",
}


def error_code(decision: Decision) -> int:
    """The JSON-RPC error code for a refusal (-32001 deny, -32002 rate limited,
    -32003 approval required, -32004 invalid arguments)."""
    return _CODES.get(decision.action, jsonrpc.POLICY_DENIED)


def error_message(decision: Decision) -> str:
    """The JSON-RPC error ``message``: short and stable per action."""
    return _MESSAGES.get(decision.action, _MESSAGES[DENY])


def denial_data(decision: Decision) -> dict[str, Any]:
    """The JSON-RPC error ``data``: ``{rule, reason, retry_after}`` (+ ``action``)."""
    return {
        "action": decision.action,
        "rule": decision.rule,
        "reason": decision.reason,
        "retry_after": decision.retry_after,
    }


def denial_text(decision: Decision) -> str:
    """The text of an ``isError`` tool result: names the rule and the reason, so
    the model can tell the user what happened and when to retry."""
    text = f"{error_message(decision)} (rule {decision.rule})"
    if decision.reason:
        text += f": {decision.reason.rstrip('.')}."
    else:
        text += "."
    if decision.retry_after is not None:
        text += f" Retry after {decision.retry_after:g} s."
    return text


def denial_error(request_id: jsonrpc.RequestId | None, decision: Decision) -> bytes:
    """A complete JSON-RPC error response for a refused request."""
    return jsonrpc.error_response(request_id, error_code(decision), error_message(decision),
                                  denial_data(decision))
