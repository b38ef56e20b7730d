"""The bridge in front of a 2025-only HTTP server (http_endpoint rule 11).

server-everything (TypeScript SDK 1.x, Streamable HTTP, sessions) speaks only
the handshake revisions. Through `mcpwall serve` with ``bridge = true``, the
`mcp` SDK 2.3 client pinned to 2026-07-28 lists and calls its tools, and a
tool that asks for elicitation during the call gets the client's answer
(an MRTR round, the bridge's rule 6). The first request, which teaches
mcpwall that the server is handshake-only, is carried too.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio
from mcp.client.client import Client

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
TOKEN = "alice-secret-token"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    problem = harness.toolchain_problem()
    if problem:
        harness.skip_or_fail(problem)
    work = tmp_path_factory.mktemp("bridge-http")
    (work / "policy.json").write_text(json.dumps({"version": "1", "default": "allow"}))
    port = harness.free_port()
    with harness.everything_http(work) as url:
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {port}", "",
                 "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]", "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
                 "[[auth.tokens]]", f'sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"',
                 'principal = "alice"', 'grant = "alice-grant"', "",
                 "[servers.everything]", 'transport = "http"', f"url = {json.dumps(url)}",
                 "bridge = true", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(port, proc, log)
            yield harness.endpoint(f"http://127.0.0.1:{port}", "everything"), work


def _client(url: str, **callbacks: Any) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=MODERN, **callbacks)


async def test_pinned_client_through_the_bridge_to_a_2025_http_server(
        gateway: tuple[str, Path]) -> None:
    url, work = gateway
    asked: list[str] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    async with _client(url, elicitation_callback=elicit) as client:
        assert client.protocol_version == MODERN
        names = [t.name for t in (await client.list_tools()).tools]
        assert "echo" in names and "trigger-elicitation-request" in names
        echoed = await client.call_tool("echo", {"message": "hi"})
        assert "hi" in echoed.content[0].text  # type: ignore[union-attr]
        result = await client.call_tool("trigger-elicitation-request", {})
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert "Ada Lovelace" in text
    assert len(asked) == 1
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(f"file:{work / 'audit.db'}?mode=ro", uri=True) as db:
            rows = list(db.execute("SELECT method, direction FROM events WHERE kind = "
                                   "'decision' AND method = 'elicitation/create'"))
        if rows or time.monotonic() > deadline:
            break
        await trio.sleep(0.05)
    assert rows == [("elicitation/create", "server")]
    log = (work / "mcpwall.log").read_text()
    assert "upstream_handshake_only" in log and "bridge_started" in log


async def test_a_listen_to_a_bridged_2025_http_server_is_answered_by_mcpwall(
        gateway: tuple[str, Path]) -> None:
    url, work = gateway
    async with _client(url) as client:
        await client.list_tools()  # the server has shown it speaks the 2025 revisions only
        async with client.listen(tools_list_changed=True, prompts_list_changed=True,
                                 resource_subscriptions=["demo://resource/static/document/"
                                                         "architecture.md"]) as sub:
            honored = sub.honored
    # What its initialize promises (listChanged, resources.subscribe), acknowledged
    # by mcpwall: the server has no subscriptions/listen of its own.
    assert honored.tools_list_changed and honored.prompts_list_changed
    assert honored.resource_subscriptions == ["demo://resource/static/document/architecture.md"]
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(f"file:{work / 'audit.db'}?mode=ro", uri=True) as db:
            rows = list(db.execute("SELECT method, decision FROM calls WHERE method LIKE "
                                   "'resources/%subscribe' ORDER BY rowid"))
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        await trio.sleep(0.05)
    assert rows == [("resources/subscribe", "allow"), ("resources/unsubscribe", "allow")]



async def test_resource_updates_the_2025_http_server_sends_apart_from_answers_reach_listens(
        gateway: tuple[str, Path]) -> None:
    """server-everything sends its simulated resource updates (every 5 s, once
    asked with ``toggle-subscriber-updates``) on its session's GET stream,
    which mcpwall keeps open while the bridged session has listens."""
    from mcp.shared.subscriptions import ResourceUpdated

    url, _ = gateway
    uri = "demo://resource/static/document/architecture.md"
    async with _client(url) as client:
        await client.list_tools()
        async with client.listen(resource_subscriptions=[uri]) as sub:
            await client.call_tool("toggle-subscriber-updates", {})
            with trio.fail_after(20):
                event = await sub.__anext__()
            await client.call_tool("toggle-subscriber-updates", {})
    assert event == ResourceUpdated(uri=uri)
