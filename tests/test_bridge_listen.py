"""``subscriptions/listen`` over a bridged 2025 session, answered by mcpwall.

One mcpwall in front of ``fixtures/subscribing_server.py`` (the `mcp` SDK's
low-level server, handshake revisions only, ``bridge = true``). The SDK 2.3
client pinned to 2026-07-28 listens: mcpwall acknowledges what the policy
allows *and* the server can deliver (its ``initialize`` capabilities),
subscribes to the honoured URIs with ``resources/subscribe`` requests of its
own (decided and recorded), relays the server's 2025 notifications tagged as
the listen's, and unsubscribes when the last listen of a URI ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

from tests.audit_rows import wait_rows
from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "subscribing_server.py"
POLICY: dict[str, Any] = {
    "version": "1", "default": "allow",
    "resources": {"res://secret": {"action": "deny", "reason": "not yours"}},
}
TOKEN = "alice-secret-token"
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}


class Gateway:
    def __init__(self, base: str, work: Path, proc: Any) -> None:
        self.base = base
        self.work = work
        self.proc = proc
        self.url = harness.endpoint(base, "subs")

    def events(self, kind: str, at_least: int = 1) -> list[dict[str, Any]]:
        """The ``kind`` lifecycle rows' details; waits (10 s at most) for ``at_least``."""
        return [json.loads(d) for (d,) in self.rows(
            "SELECT detail FROM events WHERE kind = ? ORDER BY seq", (kind,), at_least)]

    def rows(self, sql: str, args: tuple[Any, ...] = (), at_least: int = 0) -> list[Any]:
        return wait_rows(self.work / "audit.db", sql, args, at_least)

    def subscriptions(self, at_least: int = 0) -> list[tuple[str, str]]:
        """What the server was asked (``resources/subscribe``/``unsubscribe``, URI)."""
        path = self.work / "subscriptions.jsonl"
        deadline = time.monotonic() + 10
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [(v["method"], v["uri"]) for v in map(json.loads, lines)]
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("bridge-listen")
    (work / "policy.json").write_text(json.dumps(POLICY))
    port = harness.free_port()
    lines = ["[listen]", 'host = "127.0.0.1"', f"port = {port}", "keepalive_seconds = 0.3", "",
             "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]", "",
             "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
             "[[auth.tokens]]", f'sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"',
             'principal = "alice"', 'grant = "alice-grant"', "",
             "[servers.subs]", 'transport = "stdio"', "bridge = true",
             f"command = {json.dumps(sys.executable)}", f"args = [{json.dumps(str(FIXTURE))}]",
             "env = { SUBSCRIBING_RECORD_FILE = "
             f"{json.dumps(str(work / 'subscriptions.jsonl'))} }}", ""]
    config = work / "mcpwall.toml"
    config.write_text("\n".join(lines))
    log = work / "mcpwall.log"
    with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                            log, cwd=work) as proc:
        harness.wait_for_port(port, proc, log)
        yield Gateway(f"http://127.0.0.1:{port}", work, proc)


def _client(gateway: Gateway) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    return Client(streamable_http_client(gateway.url, http_client=http), mode=MODERN)


def _headers() -> dict[str, str]:
    return {"accept": "application/json, text/event-stream", "mcp-protocol-version": MODERN,
            "mcp-method": "subscriptions/listen", "content-type": "application/json",
            "authorization": f"Bearer {TOKEN}"}


async def test_a_bridged_listen_is_answered_by_mcpwall_and_relays_the_server_s_notifications(
        gateway: Gateway) -> None:
    seen: list[ServerEvent] = []
    async with _client(gateway) as client, client.listen(
            tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True,
            resource_subscriptions=["res://open", "res://secret"]) as sub:
        honored = sub.honored
        # Allowed by the policy and promised by the server's initialize: tools
        # and resources list changes, res://open. Prompts: the server has no
        # listChanged for them; res://secret: the policy refuses it.
        assert honored.tools_list_changed and honored.resources_list_changed
        assert not honored.prompts_list_changed
        assert honored.resource_subscriptions == ["res://open"]
        assert gateway.subscriptions(1) == [("resources/subscribe", "res://open")]
        # The server sends tools, prompts, resources, then res://open (res://secret
        # is not subscribed): once res://open is here, the rest was relayed or dropped.
        await client.call_tool("emit", {"uris": ["res://secret", "res://open"]})
        with anyio.fail_after(20):
            async for event in sub:
                seen.append(event)
                if event == ResourceUpdated(uri="res://open"):
                    break
    assert PromptsListChanged() not in seen
    assert ToolsListChanged() in seen and ResourcesListChanged() in seen
    [start] = gateway.events("listen_start")
    assert start["honoured"] == {"resourcesListChanged": True, "toolsListChanged": True,
                                 "resourceSubscriptions": ["res://open"]}
    assert start["refused"] == ["res://secret"]
    assert start["not_carried"] == ["promptsListChanged"]
    [end] = gateway.events("listen_end")
    assert end["reason"] == "client gone" and end["relayed"] >= 3
    # The listen's end unsubscribed; both requests of mcpwall's own are recorded.
    assert gateway.subscriptions(2) == [("resources/subscribe", "res://open"),
                                        ("resources/unsubscribe", "res://open")]
    decided = gateway.rows("SELECT method, decision FROM calls WHERE method LIKE "
                           "'resources/%subscribe' ORDER BY rowid", (), 2)
    assert decided == [("resources/subscribe", "allow"), ("resources/unsubscribe", "allow")]


def test_discover_names_what_the_bridged_listens_carry(gateway: Gateway) -> None:
    reply = httpx.post(gateway.url, headers={**_headers(), "mcp-method": "server/discover",
                                                "accept": "application/json"},
                       json={"jsonrpc": "2.0", "id": "d", "method": "server/discover",
                             "params": {"_meta": META}}, timeout=20)
    caps = reply.json()["result"]["capabilities"]
    assert caps["tools"] == {"listChanged": True}
    assert caps["resources"] == {"listChanged": True, "subscribe": True}
    assert caps["prompts"] == {"listChanged": False}


def test_a_uri_two_listens_follow_is_subscribed_once_and_unsubscribed_after_the_last(
        gateway: Gateway) -> None:
    before = len(gateway.subscriptions())

    readers = []  # an iterator dropped would close its response

    def listen(http: httpx.Client, rid: int) -> Any:
        cm = http.stream("POST", gateway.url, headers=_headers(), json={
            "jsonrpc": "2.0", "id": rid, "method": "subscriptions/listen",
            "params": {"notifications": {"resourceSubscriptions": ["res://open"]},
                       "_meta": META}})
        resp = cm.__enter__()
        assert resp.status_code == 200
        readers.append(resp.iter_lines())
        for line in readers[-1]:
            if line.startswith("data:"):
                ack = json.loads(line[5:])
                assert ack["method"] == "notifications/subscriptions/acknowledged"
                assert ack["params"]["notifications"] == {"resourceSubscriptions": ["res://open"]}
                assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == rid
                return cm
        raise AssertionError("no acknowledgement")

    with httpx.Client(timeout=20) as http:
        first = listen(http, 71)
        second = listen(http, 72)
        assert gateway.subscriptions(before + 1)[before:] == [
            ("resources/subscribe", "res://open")]
        second.__exit__(None, None, None)
        ends = [e for e in gateway.events("listen_end", 2) if e["request_id"] == 72]
        assert ends
        assert gateway.subscriptions()[before:] == [("resources/subscribe", "res://open")]
        first.__exit__(None, None, None)
    assert gateway.subscriptions(before + 2)[before:] == [
        ("resources/subscribe", "res://open"), ("resources/unsubscribe", "res://open")]


async def test_a_policy_reload_tells_bridged_listeners_their_tool_list_changed(
        gateway: Gateway) -> None:
    async with _client(gateway) as client, client.listen(tools_list_changed=True) as sub:
        changed = dict(POLICY, tools={"echo": {"action": "deny"}})
        (gateway.work / "policy.json").write_text(json.dumps(changed))
        os.kill(gateway.proc.pid, signal.SIGHUP)
        with anyio.fail_after(20):
            event = await sub.__anext__()
        assert event == ToolsListChanged()
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["emit", "crash"]
    (gateway.work / "policy.json").write_text(json.dumps(POLICY))
    os.kill(gateway.proc.pid, signal.SIGHUP)


async def test_listens_end_gracefully_when_the_bridged_server_exits(gateway: Gateway) -> None:
    before = len(gateway.events("listen_end", 0))
    async with _client(gateway) as client, client.listen(tools_list_changed=True) as sub:
        with pytest.raises(MCPError):
            await client.call_tool("crash", {})
        with anyio.fail_after(20):  # the graceful end: the iteration stops, nothing is lost
            assert [event async for event in sub] == []
        # mcpwall lives on: the next request starts a new bridged session.
        echoed = await client.call_tool("echo", {"text": "again"})
        assert "echo: again" in echoed.content[0].text  # type: ignore[union-attr]
    ends = gateway.events("listen_end", before + 1)[before:]
    assert [e["reason"] for e in ends] == ["upstream ended"]
