"""The curl walkthrough of docs/admin.md runs against a real gateway.

Every ``$ curl`` line of the walkthrough is run with bash (``$ADMIN`` and
``$TOKEN`` set), in order, while an MCP SDK client's ``delete`` of db-01 is
held; the documented approval id is replaced by the real one. Each line must
succeed (``curl -f``), and where the document shows JSON, every key and value
it shows must be in the real answer.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio
from admin_gateway import ALICE, gateway, pending_approval
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from firewall.config import parse_config
from firewall.gateway.operator.killswitch import KillSwitch, Scope
from firewall.policy import render

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parent.parent / "docs" / "admin.md"
DOC_ID = "3f9c2a1b"
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def walkthrough() -> list[tuple[str, Any]]:
    """(curl command line, documented JSON or None), in document order."""
    text = DOC.read_text()
    section = text[text.index("### A walkthrough with curl"):text.index("## Command line")]
    blocks = _BLOCK.findall(section)
    steps: list[tuple[str, Any]] = []
    for i, (lang, body) in enumerate(blocks):
        if lang != "sh":
            continue
        lines = [line[2:] for line in body.splitlines() if line.startswith("$ curl ")]
        shown = json.loads(blocks[i + 1][1]) if i + 1 < len(blocks) and \
            blocks[i + 1][0] == "json" else None
        steps += [(line, shown if j == len(lines) - 1 else None) for j, line in enumerate(lines)]
    return steps


def contains(actual: Any, shown: Any, where: str = "") -> None:
    """Every key and value the document shows is in the actual answer."""
    if isinstance(shown, dict):
        assert isinstance(actual, dict), where
        for key, value in shown.items():
            assert key in actual, f"{where}.{key} missing in {actual}"
            contains(actual[key], value, f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(actual) >= len(shown), where
        for i, value in enumerate(shown):
            contains(actual[i], value, f"{where}[{i}]")
    else:
        assert actual == shown, f"{where}: documented {shown!r}, got {actual!r}"


def test_the_documented_config_and_denial_text_are_real() -> None:
    text = DOC.read_text()
    toml = _BLOCK.findall(text[text.index("## Turning it on"):])[0][1]
    config = parse_config(toml)
    assert config.admin is not None and config.admin.tokens[0].operator == "alice"
    assert tomllib.loads(toml)["admin"]["port"] == 8766
    switch = KillSwitch()
    switch.turn_on(Scope("server", "vm"), by="alice", comment="INC-42")
    denial = switch.check("vm", "anyone")
    assert denial is not None
    assert render.denial_text(denial) in " ".join(text.split())


async def test_every_curl_line_of_the_walkthrough_runs(tmp_path: Path) -> None:
    steps = walkthrough()
    assert len(steps) >= 10
    async with (
        gateway(tmp_path) as gw,
        streamable_http_client(gw.mcp_url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        results: list[Any] = []
        answered = trio.Event()

        async def held_delete() -> None:
            results.append(await session.call_tool(
                "vm_management", {"action": "delete", "vm_name": "db-01"}))
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(held_delete)
            real_id = (await pending_approval(gw))["id"]
            env = {**os.environ, "ADMIN": gw.admin, "TOKEN": ALICE}
            for line, shown in steps:
                command = line.replace(DOC_ID, real_id)
                done = await trio.run_process(["bash", "-c", command], env=env,
                                              capture_stdout=True, capture_stderr=True,
                                              check=False)
                assert done.returncode == 0, f"{line}: exit {done.returncode} {done.stderr!r}"
                if shown is not None:
                    expected = json.loads(json.dumps(shown).replace(DOC_ID, real_id))
                    contains(json.loads(done.stdout), expected, line)
                if "/approve" in line:
                    # The approved call completes before the kill switch goes on.
                    with trio.fail_after(20):
                        await answered.wait()
        assert not results[0].is_error
