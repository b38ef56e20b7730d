"""`mcpwall serve` end to end: the `mcp` SDK's streamable HTTP client, real processes.

Each comparison runs the same scenario directly against a server and through
mcpwall's HTTP front, and requires equal results: stdio upstreams
(mcp-server-time, the bundled demo server, server-everything) and HTTP
upstreams (the SDK's own streamable HTTP server, server-everything).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from conftest import mcpwall_argv, venv_tool
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from sdk_scenarios import SAMPLING_REPLY, everything_scenario, stdio_session, time_scenario

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=SAMPLING_REPLY),
        model="test-model", stop_reason="endTurn")


@asynccontextmanager
async def http_session(url: str) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session over Streamable HTTP (initialize handshake)."""
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write, sampling_callback=_sampling) as session,
    ):
        await session.initialize()
        yield session


@contextmanager
def front(tmp_path: Path, servers: dict[str, harness.Upstream]) -> Iterator[str]:
    try:
        with harness.mcpwall_front(tmp_path / "mcpwall", servers) as base:
            yield base
    except harness.HarnessError as exc:
        pytest.fail(str(exc))


def _node_or_skip() -> None:
    problem = harness.toolchain_problem()
    if problem:
        harness.skip_or_fail(problem)


async def test_mcp_server_time_same_through_serve(tmp_path: Path) -> None:
    server = [venv_tool("mcp-server-time")]
    async with stdio_session(server) as session:
        direct = await time_scenario(session)
    with front(tmp_path, {"time": harness.StdioUpstream(server)}) as base:
        async with http_session(harness.endpoint(base, "time")) as session:
            through = await time_scenario(session)
    assert through == direct
    assert direct["tools"] and direct["bad_is_error"] is True


async def test_demo_server_through_serve(tmp_path: Path) -> None:
    demo = [sys.executable, "-m", "firewall.demo"]
    async with stdio_session(demo) as session:
        direct = sorted(t.name for t in (await session.list_tools()).tools)
    with front(tmp_path, {"virtualization": harness.StdioUpstream(demo)}) as base:
        # The SDK's default connect mode probes the 2026 revision first, then
        # falls back to the initialize handshake on mcpwall's 400.
        async with Client(harness.endpoint(base, "virtualization")) as client:
            through = sorted(t.name for t in (await client.list_tools()).tools)
    assert through == direct and direct


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_sdk_http_upstream_through_serve(tmp_path: Path, json_response: bool) -> None:
    with harness.fixture_http(tmp_path, json_response=json_response) as url:
        async with http_session(url) as session:
            direct = await _fixture_scenario(session, streaming=not json_response)
        with front(tmp_path, {"fixture": harness.HttpUpstream(url)}) as base:
            async with http_session(harness.endpoint(base, "fixture")) as session:
                through = await _fixture_scenario(session, streaming=not json_response)
            async with Client(harness.endpoint(base, "fixture")) as client:
                assert {t.name for t in (await client.list_tools()).tools} == set(direct["tools"])
    assert through == direct
    if not json_response:
        assert direct["progress"] and SAMPLING_REPLY in json.dumps(direct["sampling"])


async def _fixture_scenario(session: ClientSession, *, streaming: bool) -> dict[str, Any]:
    """With ``streaming`` (SSE answers), also progress and a sampling request."""
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    def dump(result: Any) -> list[Any]:
        return [c.model_dump(mode="json", exclude_none=True) for c in result.content]

    tools = await session.list_tools()
    out: dict[str, Any] = {"tools": sorted(t.name for t in tools.tools)}
    out["text"] = dump(await session.call_tool("test_simple_text", {}))
    out["error"] = (await session.call_tool("test_error_handling", {})).is_error
    if streaming:
        out["progress_result"] = dump(await session.call_tool(
            "test_tool_with_progress", {}, progress_callback=on_progress))
        out["progress"] = progress
        out["sampling"] = dump(await session.call_tool("test_sampling", {"prompt": "hello"}))
    return out


async def test_server_everything_same_through_serve(tmp_path: Path) -> None:
    _node_or_skip()
    argv = harness.everything_stdio_argv()
    async with stdio_session(argv) as session:
        direct = await everything_scenario(session)
    with harness.everything_http(tmp_path) as url, front(tmp_path, {
            "everything-stdio": harness.StdioUpstream(argv),
            "everything-http": harness.HttpUpstream(url)}) as base:
        for name in ("everything-stdio", "everything-http"):
            async with http_session(harness.endpoint(base, name)) as session:
                through = await everything_scenario(session)
            assert through == direct, name
    assert len(direct["progress"]) >= 3
    assert SAMPLING_REPLY in json.dumps(direct["sampling"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_drains_and_stops_children(tmp_path: Path) -> None:
    server = venv_tool("mcp-server-time")
    port = harness.free_port()
    config = tmp_path / "mcpwall.toml"
    config.write_text(harness.mcpwall_config(
        port, {"time": harness.StdioUpstream([server])}, tmp_path / "audit.db"))
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([*mcpwall_argv(), "serve", str(config)], stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        harness.wait_for_port(port, proc, log)
        url = f"http://127.0.0.1:{port}/servers/time/mcp"
        headers = {"accept": "application/json, text/event-stream",
                   "content-type": "application/json"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}
        with httpx.Client(timeout=30) as http:
            reply = http.post(url, json=init, headers=headers)
            assert reply.status_code == 200
            assert "mcp-session-id" in reply.headers
            health = http.get(f"http://127.0.0.1:{port}/healthz").json()
            assert health["status"] == "ok" and health["sessions"] == 1
        children = _children(proc.pid)
        assert children, "the session's child is running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 30  # a guard, not a timing claim
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(c) for c in children)
        text = log.read_text()
        assert "shutdown_started" in text and "serve_stopped" in text
        assert f"http://127.0.0.1:{port}/servers/time/mcp" in text  # the connect banner
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]
