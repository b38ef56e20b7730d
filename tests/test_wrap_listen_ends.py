"""How listens end under ``mcpwall wrap`` and ``mcpwall wrap --upstream URL``.

Real processes: ``fixtures/listen_server.py`` as a stdio child or over
Streamable HTTP (the 2026-07-28 revision), the `mcp` SDK client pinned to that
revision launching mcpwall, a config with a short ``upstream_timeout_seconds``
and ``listen_stream_max_seconds``. A listen lives past the upstream timeout
(it is not a request waiting for its answer) and ends at its lifetime with the
revision's graceful end; the client may listen again. Behind ``--upstream`` it
also ends when the client cancels it and, gracefully, when the session ends
(docs/protocol.md, "Listen streams").
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.subscriptions import ServerEvent, ToolsListChanged

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
SUB = "io.modelcontextprotocol/subscriptionId"
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "listen_server.py"
TIMEOUT = 1.0   # listen.upstream_timeout_seconds
LIFETIME = 4.0  # listen.listen_stream_max_seconds


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("listen-http")
    port = harness.free_port()
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)],
                            work / "server.log") as server:
        harness.wait_for_port(port, server, work / "server.log")
        yield f"http://127.0.0.1:{port}/mcp"


def _argv(work: Path, upstream: str | None) -> list[str]:
    (work / "policy.json").write_text(json.dumps({"version": "1", "default": "allow"}))
    config = work / "mcpwall.toml"
    config.write_text("\n".join([
        "[listen]", f"upstream_timeout_seconds = {TIMEOUT}",
        f"listen_stream_max_seconds = {LIFETIME}", "",
        "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]", "",
        "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", ""]))
    target = (["--upstream", upstream] if upstream is not None
              else ["--", sys.executable, str(FIXTURE), "--stdio"])
    return [*mcpwall_argv(), "wrap", "--config", str(config), *target]


def _params(work: Path, upstream: str | None) -> StdioServerParameters:
    argv = _argv(work, upstream)
    return StdioServerParameters(command=argv[0], args=argv[1:])


async def _rows(db: Path, query: str, at_least: int = 1) -> list[tuple[Any, ...]]:
    """The rows of ``query``, waiting (10 s at most) for ``at_least`` of them (without
    blocking the client's own tasks: its cancellations are written by them)."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = list(conn.execute(query))
        if len(rows) >= at_least or time.monotonic() > deadline:
            return rows
        await anyio.sleep(0.05)


async def _ends(db: Path, at_least: int = 1) -> list[str]:
    return [json.loads(d)["reason"] for (d,) in await _rows(
        db, "SELECT detail FROM events WHERE kind = 'listen_end' ORDER BY seq", at_least)]


async def _until_the_end(sub: Any) -> list[ServerEvent]:
    """Every event of a listen until it ends (20 s at most)."""
    seen: list[ServerEvent] = []
    with anyio.fail_after(20):
        async for event in sub:
            seen.append(event)
    return seen


@pytest.mark.parametrize("over", ["http", "stdio"])
async def test_a_listen_outlives_the_upstream_timeout_and_ends_at_its_lifetime(
        over: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    upstream = request.getfixturevalue("http_server") if over == "http" else None
    db = tmp_path / "audit.db"
    async with Client(_params(tmp_path, upstream), mode=MODERN) as client:
        started = time.monotonic()
        async with client.listen(tools_list_changed=True) as sub:
            assert sub.honored.tools_list_changed
            await anyio.sleep(TIMEOUT * 2)  # past the upstream timeout: still open
            await client.call_tool("emit", {})
            seen = await _until_the_end(sub)
        lived = time.monotonic() - started
        assert seen == [ToolsListChanged()]
        assert lived >= LIFETIME
        # Ended gracefully: the client listens again, and calls still pass.
        async with client.listen(tools_list_changed=True) as again:
            assert again.honored.tools_list_changed
        assert (await client.call_tool("echo", {"text": "on"})).content
    assert (await _ends(db, 2))[0] == "lifetime"
    statuses = await _rows(db, "SELECT status FROM calls WHERE method = 'subscriptions/listen' "
                         "ORDER BY seq", 2)
    assert statuses[0] == ("cancelled",)
    # Only mcpwall's own ending is recorded; no error was made up for the listen.
    assert not await _rows(db, "SELECT seq FROM calls WHERE status IN ('timeout', "
                         "'upstream_failure')", 0)


async def test_behind_upstream_the_client_cancelling_a_listen_ends_it(
        tmp_path: Path, http_server: str) -> None:
    db = tmp_path / "audit.db"
    async with Client(_params(tmp_path, http_server), mode=MODERN) as client:
        async with client.listen(tools_list_changed=True) as sub:
            assert sub.honored.tools_list_changed
        assert await _ends(db) == ["client gone"]
        assert (await client.call_tool("echo", {"text": "on"})).content
    [(status, message)] = await _rows(db, "SELECT status, error_message FROM calls "
                                    "WHERE method = 'subscriptions/listen'")
    assert (status, message) == ("cancelled", "listen cancelled by the client")


async def test_behind_upstream_a_listen_open_at_session_end_ends_gracefully(
        tmp_path: Path, http_server: str) -> None:
    db = tmp_path / "audit.db"
    argv = _argv(tmp_path, http_server)
    listen = {"jsonrpc": "2.0", "id": "L1", "method": "subscriptions/listen",
              "params": {"notifications": {"toolsListChanged": True}, "_meta": META}}
    async with await anyio.open_process(argv) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(json.dumps(listen).encode() + b"\n")
        out = b""
        with anyio.fail_after(20):
            while b"acknowledged" not in out:
                out += await proc.stdout.receive()
            await proc.stdin.aclose()  # client EOF: the session ends
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    out += await proc.stdout.receive()
            assert await proc.wait() == 0
    messages = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert messages[-1] == {"jsonrpc": "2.0", "id": "L1",
                            "result": {"_meta": {SUB: "L1"}, "resultType": "complete"}}
    assert await _ends(db) == ["session ended"]


async def test_under_wrap_bridge_a_listen_mcpwall_answers_ends_at_its_lifetime(
        tmp_path: Path) -> None:
    """A 2025 child (``fixtures/subscribing_server.py``): the listen is mcpwall's
    own, so its lifetime ends it there: the URI it followed is unsubscribed
    (nothing is cancelled at the child) and the client gets the graceful end."""
    record = tmp_path / "subscriptions.jsonl"
    argv = [*_argv(tmp_path, None)[:-4], "--bridge", "--", sys.executable,
            str(FIXTURE.with_name("subscribing_server.py"))]
    params = StdioServerParameters(command=argv[0], args=argv[1:],
                                   env={"SUBSCRIBING_RECORD_FILE": str(record)})
    async with Client(params, mode=MODERN) as client:
        async with client.listen(resource_subscriptions=["res://open"]) as sub:
            assert sub.honored.resource_subscriptions == ["res://open"]
            assert await _until_the_end(sub) == []
        assert (await client.call_tool("echo", {"text": "on"})).content
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(v["method"], v["uri"]) for v in lines] == [
        ("resources/subscribe", "res://open"), ("resources/unsubscribe", "res://open")]
    assert await _ends(tmp_path / "audit.db") == ["lifetime"]
