"""Answers of the 2026-07-28 revision under ``mcpwall wrap`` are relayed as on
the HTTP front (firewall/gateway/front/wrap.py rule 9, ``revision.ResultView``):
a cacheable result's ``ttlMs`` is capped, so a client's cache never outlives a
policy reload by more than ``listen.max_cache_ttl_seconds``; and ``wrap
--upstream URL`` sends the ``Mcp-Param-*`` headers the tools' ``x-mcp-header``
annotations ask for, made from the decided arguments.

Real processes: the `mcp` SDK client pinned to 2026-07-28 launches ``mcpwall
wrap --upstream`` in front of tests/fixtures/modern_server.py, whose lists say
``ttlMs: 3600000`` and whose ``regional`` tool mirrors arguments into headers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

from firewall.protocol import jsonrpc, revision
from tests.fixtures import conformance_harness as harness

MODERN = "2026-07-28"
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "modern_server.py"
CAP_SECONDS = 30


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("modern")
    port = harness.free_port()
    headers = work / "headers.jsonl"
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)],
                            work / "server.log", env={"HEADERS_FILE": str(headers)}) as server:
        harness.wait_for_port(port, server, work / "server.log")
        yield f"http://127.0.0.1:{port}/mcp", headers


def _params(work: Path, url: str) -> StdioServerParameters:
    (work / "policy.json").write_text(json.dumps({"version": "1", "default": "allow"}))
    config = work / "mcpwall.toml"
    config.write_text("\n".join([
        "[listen]", f"max_cache_ttl_seconds = {CAP_SECONDS}", "",
        "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]", "",
        "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", ""]))
    argv = [*mcpwall_argv(), "wrap", "--config", str(config), "--upstream", url]
    return StdioServerParameters(command=argv[0], args=argv[1:])


@pytest.mark.slow
async def test_wrap_upstream_caps_ttl_and_sends_param_headers(
        tmp_path: Path, upstream: tuple[str, Path]) -> None:
    url, headers_file = upstream
    async with Client(_params(tmp_path, url), mode=MODERN) as client:
        listed = await client.list_tools()
        assert listed.ttl_ms == CAP_SECONDS * 1000  # the server said an hour
        result = await client.call_tool("regional", {"region": "eu-west1", "shard": 7,
                                                     "dry": True, "query": "x"})
        assert not result.is_error
    posts = [json.loads(line) for line in headers_file.read_text().splitlines()]
    [call] = [h for h in posts if h.get("mcp-method") == "tools/call"
              and h.get("mcp-name") == "regional"]
    assert (call.get("mcp-param-region"), call.get("mcp-param-shard"),
            call.get("mcp-param-dry")) == ("eu-west1", "7", "true")


def _answer(result: dict[str, Any]) -> bytes:
    return jsonrpc.result_response(1, result)


def test_a_result_view_bounds_the_revision_s_results_only() -> None:
    view = revision.ResultView(60_000, era_marked=True)
    modern = json.loads(view.seen("tools/list", _answer(
        {"tools": [], "ttlMs": 3_600_000, "cacheScope": "public", "resultType": "complete"}),
        True))["result"]
    assert (modern["ttlMs"], modern["cacheScope"]) == (60_000, "private")
    handshake = _answer({"tools": [], "ttlMs": 3_600_000})  # no resultType: left alone
    assert view.seen("tools/list", handshake, True) is handshake
    other = _answer({"content": [], "resultType": "complete"})
    assert view.seen("tools/call", other, True) is other


def test_a_result_view_learns_headers_within_its_bound() -> None:
    view = revision.ResultView(60_000)
    schema = {"type": "object", "properties": {"r": {"type": "string", "x-mcp-header": "R"}}}
    view.seen("tools/list", _answer({"tools": [{"name": "t", "inputSchema": schema}],
                                     "resultType": "complete"}), False)
    assert view.headers_of({"name": "t"}) is not None
    assert view.headers_of({"name": "other"}) is None and view.headers_of("x") is None
    many = [{"name": f"t{i}", "inputSchema": schema} for i in range(revision.MAX_LEARNT_TOOLS + 5)]
    view.learn(many)
    assert len(view.param_headers) <= revision.MAX_LEARNT_TOOLS
    assert view.headers_of({"name": f"t{revision.MAX_LEARNT_TOOLS + 4}"}) is not None
