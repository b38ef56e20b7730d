"""Listen streams under ``mcpwall wrap``: the cap per session and policy reloads.

A wrap session is one principal's, so ``listen.max_listen_streams_per_principal``
bounds the listens open in it: past it a listen is refused (-32002, recorded as
a ``protocol`` deny) and never forwarded. A policy reload re-decides the open
listens' types and pushes ``notifications/tools/list_changed`` to those that
still follow tools (docs/protocol.md, "Listen streams").
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated, ServerEvent, ToolsListChanged

from tests.audit_rows import wait_rows

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "listen_server.py"
POLICY: dict[str, Any] = {"version": "1", "default": "allow",
                          "tools": {"danger": {"action": "deny"}}}


def _rows(db: Path, query: str, at_least: int = 1) -> list[tuple[Any, ...]]:
    """The rows of ``query``, waiting (10 s at most) for ``at_least`` of them:
    the writer commits after the answer went out."""
    return wait_rows(db, query, at_least=at_least)


def _wrap(tmp_path: Path, cap: int = 16) -> StdioServerParameters:
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    config = tmp_path / "mcpwall.toml"
    config.write_text("\n".join([
        "[listen]", f"max_listen_streams_per_principal = {cap}", "",
        "[policy]", f"files = [{json.dumps(str(tmp_path / 'policy.json'))}]", "",
        "[audit]", f"path = {json.dumps(str(tmp_path / 'audit.db'))}", ""]))
    argv = [*mcpwall_argv(), "wrap", "--config", str(config), "--",
            sys.executable, str(FIXTURE), "--stdio"]
    return StdioServerParameters(command=argv[0], args=argv[1:])


async def test_listens_past_the_cap_are_refused_and_never_forwarded(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    async with Client(_wrap(tmp_path, cap=2), mode=MODERN) as client, \
            contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(client.listen(tools_list_changed=True))
        with pytest.raises(MCPError) as refused:
            async with client.listen(tools_list_changed=True):
                pass
        assert refused.value.error.code == -32002
        assert "2 listen streams open" in refused.value.error.message
        # The session lives on: calls still pass, and the two listens still carry.
        assert (await client.call_tool("emit", {})).content
    denials = _rows(db, "SELECT method, rule FROM denials")
    assert denials == [("subscriptions/listen", "protocol")]
    # Two listens were forwarded and opened; the third never was.
    assert len(_rows(db, "SELECT seq FROM events WHERE kind = 'listen_start'", 2)) == 2
    forwarded = _rows(db, "SELECT seq FROM calls WHERE method = 'subscriptions/listen' "
                          "AND decision = 'allow'", 2)
    assert len(forwarded) == 2


async def _next_events(sub: Any, until: type, seconds: float = 20) -> list[ServerEvent]:
    seen: list[ServerEvent] = []
    with anyio.fail_after(seconds):
        async for event in sub:
            seen.append(event)
            if isinstance(event, until):
                return seen
    return seen


async def test_a_reload_tells_the_listen_and_re_decides_its_types(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    policy = tmp_path / "policy.json"
    async with Client(_wrap(tmp_path), mode=MODERN) as client, client.listen(
            tools_list_changed=True, resource_subscriptions=["res://open"]) as sub:
        assert sub.honored.tools_list_changed
        # A reload that changes the table: the listen is told to refetch its tools.
        policy.write_text(json.dumps(dict(POLICY, tools={"danger": {"action": "deny"},
                                                         "emit": {"action": "allow"},
                                                         "echo": {"action": "deny"}})))
        assert await _next_events(sub, ToolsListChanged) == [ToolsListChanged()]
        # A reload that refuses tools/list_changed to this caller: no push, and
        # the server's own list_changed no longer reaches the client.
        _rows(db, "SELECT seq FROM events WHERE kind = 'policy_reload'", 1)
        policy.write_text(json.dumps(dict(POLICY, methods={
            "subscriptions/listen/toolsListChanged": {"action": "deny"}})))
        assert len(_rows(db, "SELECT seq FROM events WHERE kind = 'policy_reload'", 2)) == 2
        await client.call_tool("emit", {"uris": ["res://open"]})
        seen = await _next_events(sub, ResourceUpdated)
        assert seen == [ResourceUpdated(uri="res://open")]
    [(end,)] = _rows(db, "SELECT detail FROM events WHERE kind = 'listen_end'")
    assert json.loads(end)["dropped"] >= 1  # the server's tools list_changed
