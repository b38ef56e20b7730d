"""MCP sessions driven by the real `mcp` Python SDK, comparable across transports.

Each scenario returns a plain summary (dicts, lists, strings) so that a run
through mcpwall can be compared with a direct run against the same server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

SAMPLING_REPLY = "sampled by the test client"


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLING_REPLY),
        model="test-model",
        stop_reason="endTurn",
    )


@asynccontextmanager
async def stdio_session(argv: list[str], env: dict[str, str] | None = None
                        ) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session over stdio with a sampling callback."""
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, sampling_callback=_sampling) as session,
    ):
        await session.initialize()
        yield session


def _content(result: Any) -> list[Any]:
    return [c.model_dump(mode="json", exclude_none=True) for c in result.content]


async def everything_scenario(session: ClientSession) -> dict[str, Any]:
    """Exercise @modelcontextprotocol/server-everything: tools, resources, prompts,
    progress notifications and a server-to-client sampling request."""
    out: dict[str, Any] = {}
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["echo"] = _content(await session.call_tool("echo", {"message": "hello through"}))
    out["sum"] = _content(await session.call_tool("get-sum", {"a": 2, "b": 40}))
    resources = await session.list_resources()
    out["resources"] = sorted(r.uri for r in resources.resources)
    first = sorted(resources.resources, key=lambda r: str(r.uri))[0]
    read = await session.read_resource(first.uri)
    out["read"] = [c.model_dump(mode="json", exclude_none=True) for c in read.contents]
    prompts = await session.list_prompts()
    out["prompts"] = sorted(p.name for p in prompts.prompts)
    prompt = await session.get_prompt("args-prompt", {"city": "Lisbon", "state": "PT"})
    out["prompt"] = [m.model_dump(mode="json", exclude_none=True) for m in prompt.messages]
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    done = await session.call_tool("trigger-long-running-operation",
                                   {"duration": 1, "steps": 4}, progress_callback=on_progress)
    out["long_running"] = _content(done)
    out["progress"] = progress
    sampled = await session.call_tool("trigger-sampling-request",
                                      {"prompt": "say something", "maxTokens": 20})
    out["sampling"] = _content(sampled)
    return out


async def time_scenario(session: ClientSession) -> dict[str, Any]:
    """Exercise mcp-server-time with deterministic calls."""
    tools = await session.list_tools()
    converted = await session.call_tool("convert_time", {
        "source_timezone": "Europe/Lisbon", "time": "03:12", "target_timezone": "Asia/Tokyo"})
    bad = await session.call_tool("get_current_time", {"timezone": "Not/AZone"})
    return {
        "tools": sorted((t.name, str(t.input_schema)) for t in tools.tools),
        "converted_error": converted.is_error,
        "converted": _content(converted) if not converted.is_error else None,
        "bad_is_error": bad.is_error,
    }
