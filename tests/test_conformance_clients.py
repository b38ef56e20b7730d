"""Two independent MCP clients end to end: the ``mcp`` Python SDK and the inspector CLI.

Each runs against the conformance fixture directly (HTTP and stdio), then
through mcpwall (HTTP and stdio upstreams) once mcpwall's HTTP front exists.
The Python SDK client is used two ways: ``mode="legacy"`` (the 2025-11-25
initialize handshake) and its default ``mode="auto"``, which first probes
``server/discover`` at 2026-07-28 and falls back to the handshake on servers
that do not speak that revision.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from serve_process import mcpwall_or_skip, require_front

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

FIXTURE_TOOLS = {
    "test_simple_text", "test_image_content", "test_audio_content", "test_embedded_resource",
    "test_multiple_content_types", "test_tool_with_logging", "test_tool_with_progress",
    "test_error_handling", "test_sampling", "test_elicitation",
    "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums",
    "test_reconnection", "json_schema_2020_12_tool",
}


@dataclass
class Session:
    """What one SDK client session saw."""

    protocol_version: str = ""
    tools: set[str] = field(default_factory=set)
    simple_text: str = ""
    error_result: bool = False
    sampling_text: str = ""
    sampling_prompts: list[str] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)


def _text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def _session(server: str | StdioServerParameters, mode: str) -> Session:
    """List tools and call a few through the SDK's high-level Client."""
    seen = Session()

    async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams
                       ) -> types.CreateMessageResult:
        content = params.messages[0].content
        seen.sampling_prompts.append(getattr(content, "text", ""))
        return types.CreateMessageResult(
            role="assistant", model="test-model",
            content=types.TextContent(type="text", text="forty-two"))

    async def logging(params: types.LoggingMessageNotificationParams) -> None:
        seen.logs.append(params.data)

    async with Client(server, mode=mode, sampling_callback=sampling,  # type: ignore[arg-type]
                      logging_callback=logging, read_timeout_seconds=30) as client:
        seen.protocol_version = client.protocol_version
        seen.tools = {t.name for t in (await client.list_tools()).tools}
        seen.simple_text = _text_of(await client.call_tool("test_simple_text", {}))
        seen.error_result = (await client.call_tool("test_error_handling", {})).is_error
        if mode == "legacy":
            result = await client.call_tool("test_sampling", {"prompt": "six times seven?"})
            seen.sampling_text = _text_of(result)

            async def on_progress(progress: float, total: float | None,
                                  message: str | None) -> None:
                seen.progress.append(progress)

            await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
            await client.call_tool("test_tool_with_logging", {})
    return seen


def run_session(server: str | StdioServerParameters, mode: str = "legacy") -> Session:
    """One SDK client session, on its own asyncio loop, bounded to 60 s."""

    async def bounded() -> Session:
        with anyio.fail_after(60):
            return await _session(server, mode)

    return anyio.run(bounded, backend="asyncio")


def _assert_full_session(seen: Session) -> None:
    assert seen.protocol_version in ("2025-06-18", "2025-11-25")
    assert seen.tools == FIXTURE_TOOLS
    assert seen.simple_text == "This is a simple text response for testing."
    assert seen.error_result is True
    assert seen.sampling_prompts == ["six times seven?"]
    assert seen.sampling_text == "LLM response: forty-two"
    assert seen.progress == [0, 50, 100]
    assert seen.logs == ["Tool execution started", "Tool processing data",
                         "Tool execution completed"]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients")


@pytest.fixture(scope="module")
def fixture_url(work_dir: Path) -> Iterator[str]:
    with harness.fixture_http(work_dir / "fixture") as url:
        yield url


@pytest.fixture(scope="module")
def through_http(fixture_url: str, work_dir: Path) -> Iterator[str]:
    require_front()
    upstream = {"fixture": harness.HttpUpstream(fixture_url)}
    with mcpwall_or_skip(work_dir / "mcpwall-http", upstream) as base:
        yield harness.endpoint(base, "fixture")


@pytest.fixture(scope="module")
def through_stdio(work_dir: Path) -> Iterator[str]:
    require_front()
    upstream = {"fixture": harness.StdioUpstream(harness.fixture_stdio_argv())}
    with mcpwall_or_skip(work_dir / "mcpwall-stdio", upstream) as base:
        yield harness.endpoint(base, "fixture")


# ------------------------------------------------------------ mcp Python SDK


def test_sdk_legacy_handshake_direct(fixture_url: str) -> None:
    _assert_full_session(run_session(fixture_url, "legacy"))


def test_sdk_auto_mode_direct_goes_stateless(fixture_url: str) -> None:
    # The fixture's SDK server answers server/discover, so auto mode goes modern.
    seen = run_session(fixture_url, "auto")
    assert seen.protocol_version in MODERN_PROTOCOL_VERSIONS
    assert seen.tools == FIXTURE_TOOLS
    assert seen.simple_text == "This is a simple text response for testing."


def test_sdk_over_stdio_direct() -> None:
    command, *args = harness.fixture_stdio_argv()
    params = StdioServerParameters(command=command, args=args)
    _assert_full_session(run_session(params, "legacy"))


def test_sdk_legacy_through_mcpwall_http(through_http: str) -> None:
    _assert_full_session(run_session(through_http, "legacy"))


def test_sdk_legacy_through_mcpwall_stdio(through_stdio: str) -> None:
    _assert_full_session(run_session(through_stdio, "legacy"))


@pytest.mark.parametrize("upstream", ["through_http", "through_stdio"])
def test_sdk_auto_mode_through_mcpwall(upstream: str, request: pytest.FixtureRequest) -> None:
    # Whatever mcpwall does with the server/discover probe (relay it or refuse
    # it so the client falls back), a default-configured SDK client must work.
    url = request.getfixturevalue(upstream)
    seen = run_session(url, "auto")
    assert seen.tools == FIXTURE_TOOLS
    assert seen.simple_text == "This is a simple text response for testing."


# ------------------------------------------------------------- inspector CLI


def _inspector_round_trip(target: list[str]) -> None:
    listed = harness.run_inspector(target, "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} == FIXTURE_TOOLS
    called = harness.run_inspector(target, "--method", "tools/call",
                                   "--tool-name", "test_simple_text")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["content"] == [
        {"type": "text", "text": "This is a simple text response for testing."}]


@pytest.mark.node
def test_inspector_direct_http(fixture_url: str) -> None:
    harness.require_toolchain()
    _inspector_round_trip([fixture_url])


@pytest.mark.node
def test_inspector_direct_stdio() -> None:
    harness.require_toolchain()
    _inspector_round_trip([sys.executable, str(harness.FIXTURE_SERVER), "--stdio"])


@pytest.mark.node
@pytest.mark.parametrize("upstream", ["through_http", "through_stdio"])
def test_inspector_through_mcpwall(upstream: str, request: pytest.FixtureRequest) -> None:
    harness.require_toolchain()
    _inspector_round_trip([request.getfixturevalue(upstream)])
