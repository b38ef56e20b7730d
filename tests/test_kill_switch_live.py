"""The kill switch survives restarts and is shared through its file: real `mcpwall serve`
and `mcpwall wrap` processes, the real MCP SDK client, the `mcpwall kill-switch` CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from admin_gateway import WAIT_SECONDS, bearer, gateway
from conftest import mcpwall_argv
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from sdk_scenarios import stdio_session

pytestmark = pytest.mark.slow

LIST = {"action": "list"}
FAST_POLL = "[kill_switch]\npoll_seconds = 0.1\n"


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def cli(*args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process([*mcpwall_argv(), "kill-switch", *args], capture_stdout=True,
                                  capture_stderr=True, check=False,
                                  env={**os.environ, "USER": "ops-cli"})


async def until_refused(session: ClientSession, refused: bool) -> Any:
    """Call until the answer is (or is no longer) a kill-switch refusal; return it."""
    with trio.fail_after(WAIT_SECONDS):
        while True:
            result = await session.call_tool("vm_management", LIST)
            if ("kill switch on" in text_of(result)) == refused:
                return result
            await trio.sleep(0.05)


async def test_a_switch_outlives_a_restart_and_the_cli_turns_it_off_through_the_file(
        tmp_path: Path) -> None:
    async with gateway(tmp_path, extra=FAST_POLL) as gw, \
            httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        on = await http.post(f"{gw.admin}/api/kill-switch", headers=bearer(),
                             json={"scope": "server", "name": "vm", "comment": "INC-9"})
        assert on.status_code == 200 and on.json()["saved"] is True
    # A new process on the same config: the switch is in force before any call.
    async with (
        gateway(tmp_path, extra=FAST_POLL) as gw,
        streamable_http_client(gw.mcp_url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        denied = await session.call_tool("vm_management", LIST)
        assert denied.is_error
        assert "kill switch on for server vm by alice: INC-9" in text_of(denied)
        status = await cli("status", "--config", str(tmp_path / "gw.toml"))
        assert status.stdout.decode().strip() == "kill switch on for server vm by alice: INC-9"
        # No listener needed: the file is the control; the running gateway follows it.
        off = await cli("off", "--server", "vm", "--config", str(tmp_path / "gw.toml"),
                        "--comment", "resolved")
        assert off.returncode == 0, off.stderr
        assert off.stdout.decode().strip() == "kill switch off for server vm"
        assert not (await until_refused(session, refused=False)).is_error
        again = await cli("off", "--server", "vm", "--config", str(tmp_path / "gw.toml"))
        assert again.returncode == 1 and b"not on" in again.stderr
        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.state') AS state, json_extract(detail, '$.by') AS by,"
            " json_extract(detail, '$.via') AS via FROM events WHERE kind = 'kill_switch' "
            "ORDER BY seq", count=2)
        assert [(r["state"], r["by"], r["via"]) for r in rows] == [
            ("on", "alice", "api"), ("off", "ops-cli", "file")]
    history = await cli("history", "--config", str(tmp_path / "gw.toml"))
    lines = history.stdout.decode().splitlines()
    assert len(lines) == 2
    assert "off  server vm  by ops-cli on cli:" in lines[0] and lines[0].endswith(": resolved")
    assert "on   server vm  by alice on " in lines[1] and lines[1].endswith(": INC-9")


async def test_wrap_obeys_a_kill_switch_file(tmp_path: Path) -> None:
    db = tmp_path / "ks.db"
    on = await cli("on", "--db", str(db), "--principal", "mallory", "--comment", "INC-3")
    assert on.returncode == 0, on.stderr
    assert on.stdout.decode().strip() == "kill switch on for principal mallory by ops-cli: INC-3"
    argv = [*mcpwall_argv(), "wrap", "--principal", "mallory", "--kill-switch-db", str(db),
            "--policy", str(Path(__file__).parent / "fixtures" / "seed-policy.json"),
            "--", sys.executable, "-m", "firewall.demo"]
    async with stdio_session(argv) as session:
        denied = await session.call_tool("vm_management", LIST)
        assert denied.is_error and "kill switch on for principal mallory" in text_of(denied)
        assert (await cli("off", "--db", str(db), "--principal", "mallory")).returncode == 0
        assert not (await until_refused(session, refused=False)).is_error
        assert (await cli("on", "--db", str(db))).returncode == 0  # the whole firewall
        assert "the whole firewall" in text_of(await until_refused(session, refused=True))


async def test_an_unreadable_kill_switch_file_stops_the_start(tmp_path: Path) -> None:
    bad = tmp_path / "ks.db"
    bad.write_bytes(b"not a database" * 300)
    config = tmp_path / "gw.toml"
    config.write_text(f'[kill_switch]\npath = "{bad}"\n[servers.vm]\ntransport = "stdio"\n'
                      f'command = "{sys.executable}"\nargs = ["-m", "firewall.demo"]\n')
    done = await trio.run_process([*mcpwall_argv(), "serve", str(config), "--port", "0"],
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  cwd=tmp_path)
    assert done.returncode == 2
    assert "[kill_switch]" in done.stderr.decode() and str(bad) in done.stderr.decode()
    assert bad.read_bytes() == b"not a database" * 300
