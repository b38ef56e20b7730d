"""A bridged 2025 HTTP server's requests and log messages go to the call whose stream
carried them (bridge rules 6 and 9), with several calls of the caller in flight.

Through `mcpwall serve` (``bridge = true``), the `mcp` SDK 2.3 client pinned
to 2026-07-28 calls tools of tests/fixtures/chatty_http_server.py (the `mcp`
SDK's 2025 Streamable HTTP server, sessions, handshake-only) and of
server-everything (TypeScript SDK 1.x): two calls that ask for elicitation at
once both get their client's answer (each an MRTR round of its own call), and
a call's log messages reach the client on that call's event stream at the
level its request asked for (``io.modelcontextprotocol/logLevel``), not
below it, and not at all for a request that asked for none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
import trio
from mcp.client.client import Client

from tests.audit_rows import wait_rows
from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
TOKEN = "alice-secret-token"
FIXTURE = Path(__file__).parent / "fixtures" / "chatty_http_server.py"


class Gateway:
    def __init__(self, base: str, work: Path) -> None:
        self.base = base
        self.work = work

    def rows(self, sql: str, at_least: int) -> list[Any]:
        """Audit rows; waits (10 s at most) for ``at_least`` of them (group commits)."""
        return wait_rows(self.work / "audit.db", sql, at_least=at_least)

    def client(self, server: str, **options: Any) -> Client:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
        return Client(streamable_http_client(harness.endpoint(self.base, server),
                                             http_client=http), mode=MODERN, **options)


@contextlib.contextmanager
def _chatty(work: Path) -> Iterator[str]:
    port = harness.free_port()
    log = work / "chatty.log"
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)], log,
                            env={"CHATTY_BOOK_WAIT": "2"}) as proc:
        harness.wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    problem = harness.toolchain_problem()
    if problem:
        harness.skip_or_fail(problem)
    work = tmp_path_factory.mktemp("bridge-streams")
    (work / "policy.json").write_text(json.dumps({"version": "1", "default": "allow"}))
    port = harness.free_port()
    with _chatty(work) as chatty, harness.everything_http(work) as everything:
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {port}", "",
                 "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]", "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
                 "[[auth.tokens]]", f'sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"',
                 'principal = "alice"', 'grant = "alice-grant"', ""]
        for name, url in (("chatty", chatty), ("everything", everything)):
            lines += [f"[servers.{name}]", 'transport = "http"', f"url = {json.dumps(url)}",
                      "bridge = true", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(port, proc, log)
            yield Gateway(f"http://127.0.0.1:{port}", work)


async def _two_asking_calls(client: Client, tool: str, args: list[dict[str, Any]]
                            ) -> list[str]:
    texts: list[str] = ["", ""]

    async def call(n: int) -> None:
        result = await client.call_tool(tool, args[n])
        texts[n] = "".join(getattr(c, "text", "") for c in result.content)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for n in (0, 1):
                nursery.start_soon(call, n)
    return texts


async def test_two_calls_asking_at_once_each_get_their_clients_answer(
        gateway: Gateway) -> None:
    """The SDK server asks on each call's own stream; the second asks while the
    first is in flight (it waits for the second before it answers)."""
    asked: list[str] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"date": "2026-12-24"})

    async with gateway.client("chatty", elicitation_callback=elicit) as client:
        await client.list_tools()  # the server shows it speaks the 2025 revisions only
        texts = await _two_asking_calls(client, "book", [{"city": "Lyon"}, {"city": "Oslo"}])
    assert texts == ["booked Lyon on 2026-12-24", "booked Oslo on 2026-12-24"]
    assert sorted(asked) == ["Which date for Lyon?", "Which date for Oslo?"]
    # Each question decided and recorded under its own call, as the call's next round.
    rows = gateway.rows("SELECT call_id FROM events WHERE kind = 'decision' AND "
                        "method = 'elicitation/create'", 2)
    assert len(rows) == 2 and len({r[0] for r in rows}) == 2
    assert "bridge_server_request_refused" not in (gateway.work / "mcpwall.log").read_text()


async def test_two_everything_elicitations_at_once_each_reach_the_client(
        gateway: Gateway) -> None:
    """server-everything (TypeScript SDK 1.x) asks on the stream of the call
    too; the client answers neither question before both were asked."""
    both = trio.Event()
    asked: list[str] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        if len(asked) == 2:
            both.set()
        with trio.move_on_after(15):  # (a bridge refusing one never asks it)
            await both.wait()
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    async with gateway.client("everything", elicitation_callback=elicit) as client:
        await client.list_tools()
        texts = await _two_asking_calls(client, "trigger-elicitation-request", [{}, {}])
    assert len(asked) == 2
    assert all("Ada Lovelace" in text for text in texts), texts


async def test_a_calls_log_messages_reach_its_client_at_the_level_it_asked(
        gateway: Gateway) -> None:
    logged: list[tuple[str, Any]] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append((params.level, params.data))

    async with gateway.client("chatty", logging_callback=on_log, log_level="info") as client:
        result = await client.call_tool("chatty", {})
    assert result.content[0].text == "done"  # type: ignore[union-attr]
    assert logged == [("info", "info line"), ("warning", "warning line")]
    # server/discover now keeps the logging a server's initialize promised
    # (server-everything's does; the SDK server's says nothing of it).
    body = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {}}}}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(harness.endpoint(gateway.base, "everything"), json=body,
                                headers={"accept": "application/json",
                                         "mcp-protocol-version": MODERN,
                                         "mcp-method": "server/discover",
                                         "authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200, reply.text
    assert "logging" in reply.json()["result"]["capabilities"]


async def test_a_call_that_asked_for_no_log_messages_gets_none(gateway: Gateway) -> None:
    logged: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params)

    async with gateway.client("chatty", logging_callback=on_log) as client:
        result = await client.call_tool("chatty", {})
    assert result.content[0].text == "done"  # type: ignore[union-attr]
    assert logged == []


async def test_log_messages_for_a_client_that_takes_json_only_are_counted(
        gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        async def dropped() -> int:
            health = (await http.get(f"{gateway.base}/healthz")).json()
            return health["servers"]["chatty"]["bridge"]["logs_dropped"]  # type: ignore[no-any-return]

        before = await dropped()
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "chatty", "arguments": {}, "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/logLevel": "debug"}}}
        reply = await http.post(harness.endpoint(gateway.base, "chatty"), json=body, headers={
            "accept": "application/json", "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call", "mcp-name": "chatty",
            "authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"]["content"][0]["text"] == "done"
        assert await dropped() == before + 3  # asked at debug: all three, none relayed
