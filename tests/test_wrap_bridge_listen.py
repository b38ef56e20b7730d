"""``subscriptions/listen`` under ``mcpwall wrap --bridge`` (wrap_bridge rule 9),
with real processes: the `mcp` SDK client pinned to 2026-07-28 over
``fixtures/subscribing_server.py`` (2025 revisions only, list_changed and
resource subscriptions). mcpwall answers the listen (what the policy allows
and the server promised), subscribes with requests of its own, relays the
server's notifications tagged as the listen's, and unsubscribes at its end.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
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

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "subscribing_server.py"
POLICY: dict[str, Any] = {
    "version": "1", "default": "allow",
    "resources": {"res://secret": {"action": "deny", "reason": "not yours"}},
}


async def test_a_listen_through_wrap_bridge_is_answered_by_mcpwall(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(POLICY))
    record = tmp_path / "subscriptions.jsonl"
    argv = [*mcpwall_argv(), "wrap", "--audit-db", str(tmp_path / "audit.db"),
            "--policy", str(tmp_path / "p.json"), "--principal", "alice", "--bridge", "--",
            sys.executable, str(FIXTURE)]
    params = StdioServerParameters(command=argv[0], args=argv[1:],
                                   env={"SUBSCRIBING_RECORD_FILE": str(record)})
    seen: list[ServerEvent] = []
    async with Client(params, mode=MODERN) as client:
        async with client.listen(
                tools_list_changed=True, prompts_list_changed=True,
                resources_list_changed=True,
                resource_subscriptions=["res://open", "res://secret"]) as sub:
            honored = sub.honored
            assert honored.tools_list_changed and honored.resources_list_changed
            assert not honored.prompts_list_changed  # the server has no listChanged for them
            assert honored.resource_subscriptions == ["res://open"]  # the policy's
            await client.call_tool("emit", {"uris": ["res://secret", "res://open"]})
            with anyio.fail_after(20):
                async for event in sub:
                    seen.append(event)
                    if event == ResourceUpdated(uri="res://open"):
                        break
            listen_id = sub.subscription_id
        # The SDK leaves a listen without a word over stdio: a client ends one
        # with notifications/cancelled, as here.
        await client.session.send_notification(types.CancelledNotification(
            params=types.CancelledNotificationParams(request_id=listen_id)))
        await client.call_tool("echo", {"text": "after"})  # the cancel went first
    assert PromptsListChanged() not in seen
    assert ToolsListChanged() in seen and ResourcesListChanged() in seen
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(v["method"], v["uri"]) for v in lines] == [
        ("resources/subscribe", "res://open"), ("resources/unsubscribe", "res://open")]
    with sqlite3.connect(f"file:{tmp_path / 'audit.db'}?mode=ro", uri=True) as db:
        decided = list(db.execute("SELECT method, decision FROM calls WHERE method LIKE "
                                  "'resources/%subscribe' ORDER BY seq"))
        ends = [json.loads(d)["reason"] for (d,) in db.execute(
            "SELECT detail FROM events WHERE kind = 'listen_end' ORDER BY seq")]
    assert decided == [("resources/subscribe", "allow"), ("resources/unsubscribe", "allow")]
    assert ends == ["client gone"]
