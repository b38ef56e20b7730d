"""``subscriptions/listen`` (2026-07-28) through `mcpwall serve`, under policy.

One mcpwall in front of ``fixtures/listen_server.py`` (the `mcp` SDK's
MCPServer, stateless Streamable HTTP, publishing change events to listen
streams). The SDK 2.3 client pinned to 2026-07-28 listens: the types the
policy allows arrive, the refused ones never do (mcpwall narrows the request
and filters the stream), idle streams get keepalive comments, a caller's
streams are capped, a policy reload sends ``tools/list_changed`` to
listeners, and each stream's open and close are in the audit trail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
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
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "listen_server.py"
POLICY: dict[str, Any] = {
    "version": "1", "default": "allow",
    "tools": {"danger": {"action": "deny", "reason": "too dangerous"}},
    "resources": {"res://secret": {"action": "deny", "reason": "not yours"}},
    "methods": {"subscriptions/listen/promptsListChanged": {
        "action": "deny", "reason": "prompts are not followed here"}},
}
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}
CAP = 3


class Gateway:
    def __init__(self, base: str, work: Path, proc: Any) -> None:
        self.base = base
        self.work = work
        self.proc = proc
        self.url = harness.endpoint(base, "events")
        self.server: Any = None

    def rows(self, query: str, at_least: int = 1) -> list[tuple[Any, ...]]:
        """The rows of ``query``; waits (10 s at most) for ``at_least``."""
        return wait_rows(self.work / "audit.db", query, at_least=at_least)

    def events(self, kind: str, at_least: int = 1) -> list[dict[str, Any]]:
        """The ``kind`` lifecycle rows' details; waits (10 s at most) for ``at_least``."""
        return [json.loads(d) for (d,) in self.rows(
            f"SELECT detail FROM events WHERE kind = '{kind}' ORDER BY seq", at_least)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("listen")
    port = harness.free_port()
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)],
                            work / "server.log") as server:
        harness.wait_for_port(port, server, work / "server.log")
        policy = work / "policy.json"
        policy.write_text(json.dumps(POLICY))
        front = harness.free_port()
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}",
                 "keepalive_seconds = 0.3", f"max_listen_streams_per_principal = {CAP}", "",
                 "[policy]", f"files = [{json.dumps(str(policy))}]", "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
                 "[servers.events]", 'transport = "http"',
                 f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(front, proc, log)
            yield Gateway(f"http://127.0.0.1:{front}", work, proc)


def _listen_body(rid: int, notifications: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "subscriptions/listen",
            "params": {"notifications": notifications, "_meta": META}}


def _headers() -> dict[str, str]:
    return {"accept": "application/json, text/event-stream", "mcp-protocol-version": MODERN,
            "mcp-method": "subscriptions/listen", "content-type": "application/json"}


def test_a_listen_in_a_handshake_session_is_refused_not_forwarded(gateway: Gateway) -> None:
    """A 2025 session has no listen streams: its ``subscriptions/listen`` is
    refused (-32601, a ``protocol`` deny) rather than carried unnarrowed."""
    with httpx.Client(timeout=20) as http:
        init = http.post(gateway.url, headers={
            "accept": "application/json, text/event-stream", "content-type": "application/json"},
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}})
        assert init.status_code == 200, init.text
        session = {"accept": "application/json, text/event-stream",
                   "content-type": "application/json",
                   "mcp-session-id": init.headers["mcp-session-id"],
                   "mcp-protocol-version": "2025-11-25"}
        http.post(gateway.url, headers=session,
                  json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        resp = http.post(gateway.url, headers=session, json={
            "jsonrpc": "2.0", "id": 2, "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": True,
                                         "resourceSubscriptions": ["res://secret"]}}})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    error = resp.json()["error"]
    assert resp.json()["id"] == 2 and error["code"] == -32601
    assert "2026-07-28" in error["message"]
    rows = gateway.rows("SELECT method, rule FROM denials WHERE method = 'subscriptions/listen' "
                        "AND rule = 'protocol'")
    assert rows == [("subscriptions/listen", "protocol")]


async def test_allowed_types_arrive_refused_ones_never_and_the_close_is_audited(
        gateway: Gateway) -> None:
    seen: list[ServerEvent] = []
    async with Client(gateway.url, mode=MODERN) as client, client.listen(
            tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True,
            resource_subscriptions=["res://open", "res://secret"]) as sub:
        honored = sub.honored
        # The refused types are not asked of the server: its acknowledgement
        # names only what the policy allows.
        assert honored.tools_list_changed and honored.resources_list_changed
        assert not honored.prompts_list_changed
        assert honored.resource_subscriptions == ["res://open"]
        # The server publishes tools, prompts, resources, then res://secret and
        # res://open, in this order on one stream: once res://open is here,
        # whatever came before it has been relayed or dropped.
        await client.call_tool("emit", {"uris": ["res://secret", "res://open"]})
        with anyio.fail_after(20):
            async for event in sub:
                seen.append(event)
                if event == ResourceUpdated(uri="res://open"):
                    break
    assert PromptsListChanged() not in seen
    assert ResourceUpdated(uri="res://secret") not in seen
    assert ToolsListChanged() in seen and ResourcesListChanged() in seen
    [start] = [e for e in gateway.events("listen_start")
               if e["honoured"].get("resourceSubscriptions")]
    assert start["honoured"] == {"resourcesListChanged": True, "toolsListChanged": True,
                                 "resourceSubscriptions": ["res://open"]}
    assert sorted(start["refused"]) == ["promptsListChanged", "res://secret"]
    ends = [e for e in gateway.events("listen_end")
            if e["request_id"] == start["request_id"] and e["relayed"] >= 3]
    assert ends and ends[0]["reason"] == "client gone"


def test_an_idle_stream_gets_keepalives_and_ends_when_the_client_closes(
        gateway: Gateway) -> None:
    before = len(gateway.events("listen_end", 0))
    with httpx.Client(timeout=20) as http, http.stream(
            "POST", gateway.url, headers=_headers(),
            json=_listen_body(41, {"toolsListChanged": True})) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        got: list[str] = []
        for line in lines:
            got.append(line)
            if line.startswith(": keepalive") and any(
                    "notifications/subscriptions/acknowledged" in g for g in got):
                break
        ack = json.loads(next(g for g in got if g.startswith("data:"))[5:])
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"] == {"toolsListChanged": True}
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 41
    ends = gateway.events("listen_end", before + 1)
    assert [e["reason"] for e in ends if e["request_id"] == 41] == ["client gone"]


def test_a_caller_s_listen_streams_are_capped(gateway: Gateway) -> None:
    with httpx.Client(timeout=20) as http:
        streams = []
        readers = []  # an iterator dropped would close its response
        try:
            for n in range(CAP):
                cm = http.stream("POST", gateway.url, headers=_headers(),
                                 json=_listen_body(100 + n, {"toolsListChanged": True}))
                resp = cm.__enter__()
                streams.append(cm)
                assert resp.status_code == 200
                readers.append(resp.iter_lines())
                next(readers[-1])  # the stream is open (a first line came)
            over = http.post(gateway.url, headers=_headers(),
                             json=_listen_body(199, {"toolsListChanged": True}))
            assert over.status_code == 429
            assert over.json()["id"] == 199
            assert over.json()["error"]["code"] == -32002
        finally:
            for cm in streams:
                cm.__exit__(None, None, None)


def test_a_denied_tool_is_still_denied_and_listen_refuses_unknown_types(
        gateway: Gateway) -> None:
    resp = httpx.post(gateway.url, headers={**_headers(), "mcp-method": "tools/call",
                                            "mcp-name": "danger"},
                      json={"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                            "params": {"name": "danger", "arguments": {}, "_meta": META}},
                      timeout=20)
    assert resp.status_code == 200
    assert "too dangerous" in resp.text
    with httpx.Client(timeout=20) as http, http.stream(
            "POST", gateway.url, headers=_headers(),
            json=_listen_body(51, {"vendorThings": True, "toolsListChanged": True})) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                ack = json.loads(line[5:])
                assert ack["params"]["notifications"] == {"toolsListChanged": True}
                break
    [start] = [e for e in gateway.events("listen_start") if e["request_id"] == 51]
    assert start["refused"] == ["vendorThings"]


async def test_a_policy_reload_tells_listeners_their_tool_list_changed(
        gateway: Gateway) -> None:
    async with Client(gateway.url, mode=MODERN) as client, client.listen(
            tools_list_changed=True) as sub:
        changed = dict(POLICY, tools={"danger": {"action": "deny"}, "echo": {"action": "deny"}})
        (gateway.work / "policy.json").write_text(json.dumps(changed))
        os.kill(gateway.proc.pid, signal.SIGHUP)
        with anyio.fail_after(20):
            event = await sub.__anext__()
        assert event == ToolsListChanged()
        listed = await client.list_tools()
        assert "echo" not in [t.name for t in listed.tools]
    (gateway.work / "policy.json").write_text(json.dumps(POLICY))
    os.kill(gateway.proc.pid, signal.SIGHUP)


@contextlib.contextmanager
def own_gateway(tmp_path: Path, lifetime: float,
                policy: dict[str, Any] | None = None) -> Iterator[Gateway]:
    """A gateway of the test's own, whose listen streams live ``lifetime`` seconds."""
    port = harness.free_port()
    policy_lines: list[str] = []
    if policy is not None:
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        policy_lines = ["[policy]", f"files = [{json.dumps(str(tmp_path / 'policy.json'))}]", ""]
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)],
                            tmp_path / "server.log") as server:
        harness.wait_for_port(port, server, tmp_path / "server.log")
        front = harness.free_port()
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}",
                 f"listen_stream_max_seconds = {lifetime}", "", *policy_lines,
                 "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", "",
                 "[servers.events]", 'transport = "http"',
                 f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", ""]
        config = tmp_path / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = tmp_path / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=tmp_path) as proc:
            harness.wait_for_port(front, proc, log)
            gateway = Gateway(f"http://127.0.0.1:{front}", tmp_path, proc)
            gateway.server = server
            yield gateway


async def test_a_stream_past_its_lifetime_ends_gracefully(tmp_path: Path) -> None:
    with own_gateway(tmp_path, 1) as short_lived:
        await _listen_until_the_end(short_lived)


async def _listen_until_the_end(short_lived: Gateway) -> None:
    async with Client(short_lived.url, mode=MODERN) as client, client.listen(
            tools_list_changed=True) as sub:
        with anyio.fail_after(20):
            events = [event async for event in sub]  # ends without SubscriptionLost
    assert events == []
    [end] = short_lived.events("listen_end")
    assert end["reason"] == "lifetime"


def test_shutdown_ends_listen_streams_with_their_result(tmp_path: Path) -> None:
    with own_gateway(tmp_path, 3600) as gateway:
        _listen_through_shutdown(gateway)
        # Let the graceful shutdown finish: leaving the block signals again,
        # and a second signal stops at once, before the last rows are written.
        gateway.proc.wait(timeout=60)
    ends = [json.loads(d) for (d,) in sqlite3.connect(str(tmp_path / "audit.db")).execute(
        "SELECT detail FROM events WHERE kind = 'listen_end'")]
    assert [e["reason"] for e in ends] == ["shutdown"]


def _listen_through_shutdown(short_lived: Gateway) -> None:
    with httpx.Client(timeout=20) as http, http.stream(
            "POST", short_lived.url, headers=_headers(),
            json=_listen_body(61, {"toolsListChanged": True})) as resp:
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break  # the acknowledgement
        short_lived.proc.send_signal(signal.SIGTERM)
        data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert data[-1]["id"] == 61
    assert data[-1]["result"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": 61}


async def test_listen_through_wrap_is_narrowed_and_filtered(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    db = tmp_path / "audit.db"
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(db), "--policy", str(policy),
            "--", sys.executable, str(FIXTURE), "--stdio"]
    seen: list[ServerEvent] = []
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with Client(params, mode=MODERN) as client, client.listen(
            tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True,
            resource_subscriptions=["res://open", "res://secret"]) as sub:
        assert not sub.honored.prompts_list_changed
        assert sub.honored.resource_subscriptions == ["res://open"]
        await client.call_tool("emit", {"uris": ["res://secret", "res://open"]})
        with anyio.fail_after(20):
            async for event in sub:
                seen.append(event)
                if event == ResourceUpdated(uri="res://open"):
                    break
    assert PromptsListChanged() not in seen
    assert ResourceUpdated(uri="res://secret") not in seen
    assert ToolsListChanged() in seen
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        [(detail,)] = conn.execute("SELECT detail FROM events WHERE kind = 'listen_start'")
        [(end,)] = conn.execute("SELECT detail FROM events WHERE kind = 'listen_end'")
    assert sorted(json.loads(detail)["refused"]) == ["promptsListChanged", "res://secret"]
    # Closed by the client (its cancellation, or the server's answer to it, or
    # the session's end: whichever mcpwall sees first) once the events came.
    assert json.loads(end)["reason"] in ("client gone", "upstream ended", "session ended")
    assert json.loads(end)["relayed"] >= 3


@pytest.mark.parametrize("entry", [
    {"action": "deny", "reason": "no listening here"},
    {"action": "require_approval", "reason": "no listening here"},
])
def test_a_refused_listen_is_answered_and_recorded_and_opens_nothing(
        tmp_path: Path, entry: dict[str, Any]) -> None:
    refusing = {"version": "1", "default": "allow",
                "methods": {"subscriptions/listen": entry}}
    with own_gateway(tmp_path, 3600, refusing) as gateway:
        resp = httpx.post(gateway.url, headers=_headers(),
                          json=_listen_body(71, {"toolsListChanged": True}), timeout=20)
        assert resp.status_code == 200
        assert resp.json()["id"] == 71
        why = "no listening here" if entry["action"] == "deny" else "cannot wait for approval"
        assert why in json.dumps(resp.json()["error"])
        deadline = time.monotonic() + 10
        rows: list[tuple[str, str]] = []
        while not rows and time.monotonic() < deadline:
            with sqlite3.connect(f"file:{tmp_path / 'audit.db'}?mode=ro", uri=True) as db:
                rows = list(db.execute("SELECT method, rule FROM denials"))
            time.sleep(0.05)
        assert rows == [("subscriptions/listen", "methods.subscriptions/listen")]
        assert gateway.events("listen_start", 0) == []


def test_a_server_that_dies_ends_the_stream_not_mcpwall(tmp_path: Path) -> None:
    with own_gateway(tmp_path, 3600) as gateway, httpx.Client(timeout=20) as http:
        with http.stream("POST", gateway.url, headers=_headers(),
                         json=_listen_body(81, {"toolsListChanged": True})) as resp:
            lines = resp.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    break  # the acknowledgement
            os.killpg(gateway.server.pid, signal.SIGKILL)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest == []  # no graceful result: the server did not end it
        [end] = gateway.events("listen_end")
        assert end["reason"].startswith("upstream")
        assert http.get(gateway.base + "/healthz").status_code in (200, 503)
        assert gateway.proc.poll() is None
