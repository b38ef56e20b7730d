"""A trivial stdio MCP server for benchmarks: answers each request with its params.

Deliberately plain (json module, line at a time), like the reference echo
server the published peer figures were measured with. It speaks enough MCP
for SDK-based proxies to accept it: a real initialize result, a tools/list of
``--tools N`` tools (``echo`` plus N filler tools with an input schema each),
and a tools/call result whose text content is the call's arguments as JSON.
Every result also carries ``echo``: the request's params, untouched.

    python benchmarks/echo_server.py [--tools N]
"""

from __future__ import annotations

import json
import sys
from typing import Any

PROTOCOL = "2025-06-18"


def tool_list(count: int) -> list[dict[str, Any]]:
    """``echo`` plus ``count`` filler tools, each with a small input schema."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"},
                                               "text": {"type": "string"}}}
    tools = [{"name": "echo", "description": "Answers with its arguments.",
              "inputSchema": schema}]
    tools += [{"name": f"tool_{i}", "description": f"Filler tool number {i}.",
               "inputSchema": schema} for i in range(count)]
    return tools


def echo_text(arguments: Any) -> str:
    """The text content of an echo call: its arguments as compact, sorted JSON."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"))


def answer(message: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reply to one JSON-RPC message, or None for a notification."""
    if "id" not in message or "method" not in message:
        return None
    params = message.get("params")
    method = message["method"]
    result: dict[str, Any]
    if method == "initialize":
        result = {"protocolVersion": (params or {}).get("protocolVersion", PROTOCOL),
                  "capabilities": {"tools": {}},
                  "serverInfo": {"name": "bench-echo", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": tools}
    elif method == "tools/call":
        text = echo_text((params or {}).get("arguments", {}))
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        result = {}
    result["echo"] = params
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def main() -> None:
    tools = tool_list(int(sys.argv[sys.argv.index("--tools") + 1])
                      if "--tools" in sys.argv else 0)
    out = sys.stdout
    for line in sys.stdin:
        reply = answer(json.loads(line), tools)
        if reply is not None:
            out.write(json.dumps(reply) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
