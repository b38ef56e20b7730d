"""The 2026-07-28 revision through `mcpwall serve`: the `mcp` SDK 2.3 client, real servers.

One mcpwall in front of a server of the new revision (``fixtures/modern_server.py``,
the SDK's stateless Streamable HTTP, recording what reaches it), a stdio server
of the handshake revisions (mcp-server-time) and, when the Node toolchain is
there, server-everything over HTTP (a 2025 server). The client pinned to
2026-07-28 and in ``auto`` mode must work wherever the upstream can carry it,
and fall back to the handshake where it cannot; every refusal is answered
with the revision's code under the request's id, and recorded.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import venv_tool
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "modern_server.py"
POLICY = {"version": "1", "default": "allow",
          "tools": {"danger": {"action": "deny", "reason": "too dangerous"}}}
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}


class Gateway:
    def __init__(self, base: str, work: Path) -> None:
        self.base = base
        self.work = work

    def url(self, name: str) -> str:
        return harness.endpoint(self.base, name)

    def reached(self) -> list[dict[str, Any]]:
        """The tool calls the modern server executed."""
        path = self.work / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def headers_seen(self) -> list[dict[str, str]]:
        """The mcp-* headers of each POST the modern server received."""
        path = self.work / "headers.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def denials(self, at_least: int = 0) -> list[tuple[str, str | None, str, str, str | None]]:
        """The denials recorded; waits (10 s at most) for ``at_least`` of them to be
        committed: the audit writer commits in groups, after the answer went out."""
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(f"file:{self.work / 'audit.db'}?mode=ro", uri=True) as db:
                rows = list(db.execute(
                    "select session, method, tool, rule, reason from denials order by seq"))
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("revision")
    port = harness.free_port()
    env = {"RECORD_FILE": str(work / "calls.jsonl"), "HEADERS_FILE": str(work / "headers.jsonl")}
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)],
                            work / "modern.log", env=env) as server:
        harness.wait_for_port(port, server, work / "modern.log")
        policy = work / "policy.json"
        policy.write_text(json.dumps(POLICY))
        front = harness.free_port()
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}", "",
                 "[policy]", f"files = [{json.dumps(str(policy))}]",
                 'deny_tools_call_as = "jsonrpc_error"', "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", "",
                 "[servers.modern]", 'transport = "http"',
                 f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", "",
                 "[servers.time]", 'transport = "stdio"',
                 f"command = {json.dumps(venv_tool('mcp-server-time'))}", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(front, proc, log)
            yield Gateway(f"http://127.0.0.1:{front}", work)


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, json=body, headers={
        "accept": "application/json, text/event-stream", "mcp-protocol-version": MODERN,
        **headers}, timeout=30)


def _call(name: str, arguments: dict[str, Any], rid: int = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": META}}


async def test_pinned_client_lists_filtered_calls_and_is_refused_audited(gateway: Gateway) -> None:
    async with Client(gateway.url("modern"), mode=MODERN) as client:
        assert client.protocol_version == MODERN
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["echo", "regional"]  # danger filtered
        # Filtered for this caller: private, and no longer than mcpwall's cap (60 s).
        assert (listed.ttl_ms, listed.cache_scope) == (60_000, "private")
        prompts = await client.list_prompts()  # not narrowed: only the cap applies
        assert (prompts.ttl_ms, prompts.cache_scope) == (60_000, "public")
        echoed = await client.call_tool("echo", {"a": 1})
        assert json.loads(echoed.content[0].text) == {"tool": "echo", "arguments": {"a": 1}}
        regional = await client.call_tool("regional", {"region": "us-west1", "query": "q"})
        assert json.loads(regional.content[0].text)["arguments"]["region"] == "us-west1"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("danger", {})
        assert refused.value.error.data["rule"] == "tools.danger"
    assert "danger" not in [c["tool"] for c in gateway.reached()]
    assert [(m, t, r) for s, m, t, r, _ in gateway.denials(1) if t == "danger"] == [
        ("tools/call", "danger", "tools.danger")]
    assert all(s.startswith("stateless-") for s, *_ in gateway.denials())


async def test_auto_client_speaks_the_new_revision_to_a_new_server(gateway: Gateway) -> None:
    async with Client(gateway.url("modern"), mode="auto") as client:
        assert client.protocol_version == MODERN
        assert [t.name for t in (await client.list_tools()).tools] == ["echo", "regional"]


async def test_auto_client_falls_back_to_the_handshake_for_a_stdio_server(
        gateway: Gateway) -> None:
    async with Client(gateway.url("time"), mode="auto") as client:
        assert client.protocol_version == "2025-11-25"
        names = [t.name for t in (await client.list_tools()).tools]
    assert "get_current_time" in names


async def test_auto_client_falls_back_for_a_2025_http_server(
        gateway: Gateway, tmp_path: Path) -> None:
    problem = harness.toolchain_problem()
    if problem:
        harness.skip_or_fail(problem)
    # An mcpwall of its own, in front of server-everything (TypeScript SDK 1.x).
    with harness.everything_http(tmp_path) as url, harness.mcpwall_front(
            tmp_path / "gw", {"everything": harness.HttpUpstream(url)}) as base:
        async with Client(harness.endpoint(base, "everything"), mode="auto") as client:
            assert client.protocol_version in ("2025-11-25", "2025-06-18")
            names = [t.name for t in (await client.list_tools()).tools]
        assert "echo" in names
        async with Client(harness.endpoint(base, "everything"), mode=MODERN) as pinned:
            with pytest.raises(MCPError) as refused:
                await pinned.list_tools()
        assert refused.value.error.code == -32022
        assert MODERN not in refused.value.error.data["supported"]


def test_stdio_server_answers_unsupported_version_under_the_request_id(gateway: Gateway) -> None:
    before = len(gateway.denials())
    reply = _post(gateway.url("time"), {"jsonrpc": "2.0", "id": 41, "method": "tools/list",
                                        "params": {"_meta": META}},
                  {"mcp-method": "tools/list"})
    assert reply.status_code == 400
    body = reply.json()
    assert body["id"] == 41 and body["error"]["code"] == -32022
    assert body["error"]["data"]["supported"] == ["2025-11-25", "2025-06-18", "2025-03-26"]
    [(_, method, _, rule, _)] = gateway.denials(before + 1)[before:]
    assert (method, rule) == ("tools/list", "protocol")


def test_header_mismatch_is_400_recorded_and_never_reaches_the_server(gateway: Gateway) -> None:
    before = len(gateway.reached())
    recorded = len(gateway.denials())
    # Mcp-Name says echo, the body says danger: a router reading the header
    # would see an allowed call.
    reply = _post(gateway.url("modern"), _call("danger", {}),
                  {"mcp-method": "tools/call", "mcp-name": "echo"})
    assert reply.status_code == 400
    assert reply.json()["id"] == 7 and reply.json()["error"]["code"] == -32020
    # The method header disagrees.
    reply = _post(gateway.url("modern"), _call("echo", {}),
                  {"mcp-method": "tools/list", "mcp-name": "echo"})
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, -32020)
    # The version header disagrees with _meta.
    reply = _post(gateway.url("modern"), _call("echo", {}, 8),
                  {"mcp-method": "tools/call", "mcp-name": "echo",
                   "mcp-protocol-version": "2025-11-25"})
    assert (reply.status_code, reply.json()["id"], reply.json()["error"]["code"]) == (
        400, 8, -32020)
    assert len(gateway.reached()) == before
    rows = gateway.denials(recorded + 3)[recorded:]
    assert [(m, r) for _, m, _, r, why in rows if why and "mismatch" in why] == [
        ("tools/call", "protocol")] * 3


def test_param_headers_checked_against_the_learnt_schema(gateway: Gateway) -> None:
    url = gateway.url("modern")
    listed = _post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                         "params": {"_meta": META}}, {"mcp-method": "tools/list"})
    assert listed.status_code == 200  # mcpwall learns regional's x-mcp-header here
    call = _call("regional", {"region": "us-west1", "query": "q"}, 2)
    wrong = _post(url, call, {"mcp-method": "tools/call", "mcp-name": "regional",
                              "mcp-param-region": "eu-north1"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, -32020)
    missing = _post(url, call, {"mcp-method": "tools/call", "mcp-name": "regional"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, -32020)
    sentinel = "=?base64?" + base64.b64encode(b"us-west1").decode() + "?="
    named = "=?base64?" + base64.b64encode(b"regional").decode() + "?="
    right = _post(url, call, {"mcp-method": "tools/call", "mcp-name": named,
                              "mcp-param-region": sentinel, "mcp-param-other": "noise"})
    assert right.status_code == 200 and "result" in right.json()
    # What went upstream was made from the body: plain values, no client extras.
    assert gateway.headers_seen()[-1] == {
        "mcp-method": "tools/call", "mcp-name": "regional", "mcp-param-region": "us-west1",
        "mcp-protocol-version": MODERN}


def test_a_handshake_request_whose_body_claims_the_new_revision_is_a_mismatch(
        gateway: Gateway) -> None:
    reply = httpx.post(gateway.url("modern"), json=_call("echo", {}, 9), headers={
        "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"},
        timeout=30)
    assert (reply.status_code, reply.json()["id"], reply.json()["error"]["code"]) == (
        400, 9, -32020)
    # The same claim with its member name spelt with a JSON escape.
    body = json.dumps(_call("echo", {}, 10)).replace("protocolVersion", "protocol\\u0056ersion")
    assert "protocolVersion" not in body
    reply = httpx.post(gateway.url("modern"), content=body, headers={
        "accept": "application/json, text/event-stream", "content-type": "application/json",
        "mcp-protocol-version": "2025-11-25"}, timeout=30)
    assert (reply.status_code, reply.json()["id"], reply.json()["error"]["code"]) == (
        400, 10, -32020)


def test_server_discover_is_relayed_within_mcpwall_bounds(gateway: Gateway) -> None:
    reply = _post(gateway.url("modern"), {"jsonrpc": "2.0", "id": 3, "method": "server/discover",
                                          "params": {"_meta": META}},
                  {"mcp-method": "server/discover"})
    assert reply.status_code == 200
    result = reply.json()["result"]
    assert MODERN in result["supportedVersions"]
    assert set(result["supportedVersions"]) <= {MODERN, "2025-11-25", "2025-06-18", "2025-03-26"}
    assert result["ttlMs"] <= 60_000
    assert result["resultType"] == "complete"


def test_get_and_delete_of_the_new_revision_are_405(gateway: Gateway) -> None:
    for method in ("GET", "DELETE"):
        reply = httpx.request(method, gateway.url("modern"), headers={
            "accept": "text/event-stream", "mcp-protocol-version": MODERN,
            "mcp-session-id": "anything"}, timeout=30)
        assert reply.status_code == 405 and reply.headers["allow"] == "POST"
