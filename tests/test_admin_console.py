"""The operators' console in a real headless browser (Debian's chromium, driven by
playwright-core): a click in the page releases a call the MCP SDK client is waiting on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from admin_gateway import ALICE, gateway
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures import conformance_harness as harness

pytestmark = [pytest.mark.slow, pytest.mark.node]

SCRIPT = Path(__file__).resolve().parent / "fixtures" / "console_browser.cjs"
PLAYWRIGHT = harness.NODE_MODULES / "playwright-core"
# A tool argument that would run script if the console ever treated it as markup.
PAYLOAD = '<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2</script>'


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (scripts/setup installs Debian's chromium)")
    if not (harness.NODE22.exists() and PLAYWRIGHT.exists()):
        pytest.skip("playwright-core is not installed: run scripts/setup (scripts/setup-node)")
    return found


class BrowserScript:
    """A console script of tests/fixtures run with Node 22: lines out, lines in."""

    def __init__(self, script: Path, config: dict[str, Any], tmp_path: Path) -> None:
        self.script, self.config, self.tmp_path = script, config, tmp_path
        self.out = b""
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            [str(harness.NODE22), str(self.script), json.dumps(self.config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"NODE_PATH": str(harness.NODE_MODULES), "PATH": "/usr/bin:/bin",
                 "HOME": str(self.tmp_path)})

    async def line(self, marker: bytes) -> None:
        """Wait until the script printed the line ``marker``."""
        assert self.proc is not None and self.proc.stdout is not None
        while marker + b"\n" not in self.out:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                await self.fail("the browser script ended early")
            self.out += chunk

    async def send(self, line: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        await self.proc.stdin.send_all(line + b"\n")

    async def result(self) -> dict[str, Any]:
        """Read to the end; the last line, as JSON (fails the test if the script failed)."""
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.receive_some():
            self.out += chunk
        if await self.proc.wait() != 0:
            await self.fail(f"browser script failed ({self.proc.returncode})")
        return json.loads(self.out.decode().splitlines()[-1])  # type: ignore[no-any-return]

    async def fail(self, what: str) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        err = await self.proc.stderr.receive_some(65536)
        pytest.fail(f"{what}: {err.decode()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def click_in_console(tmp_path: Path, action: str, comment: str) -> tuple[Any, dict[str, Any]]:
    """Log in, let the SDK client's call be held, click ``action``; return (result, seen)."""
    browser = chromium()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    config = {"admin": "", "token": ALICE, "action": action, "comment": comment,
              "userDataDir": str(tmp_path / "chromium-profile"), "screenshots": str(shots),
              "chromium": browser}
    result: list[Any] = []
    async with gateway(tmp_path) as gw:
        config["admin"] = gw.admin
        browser_script = BrowserScript(SCRIPT, config, tmp_path)
        await browser_script.start()
        try:
            with trio.fail_after(120):  # chromium starts slowly on a loaded machine
                await browser_script.line(b"logged-in")
                async with (
                    streamable_http_client(gw.mcp_url) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    # Held until someone clicks in the console.
                    result.append(await session.call_tool(
                        "vm_management", {"action": "delete", "vm_name": PAYLOAD}))
                seen = await browser_script.result()
        finally:
            await browser_script.stop()
        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.verdict') AS verdict, "
            "json_extract(detail, '$.by') AS by, json_extract(detail, '$.note') AS note "
            "FROM events WHERE kind = 'approval'")
        seen["audit"] = [dict(r) for r in rows]
    print(f"console screenshots: {shots}")
    for shot in ("console-held.png", f"console-after-{action}.png"):
        assert (await trio.Path(shots / shot).stat()).st_size > 0
    return result[0], seen


def assert_escaped(seen: dict[str, Any]) -> None:
    assert seen["xss"] is None and seen["dialogs"] == [] and seen["injected"] == 0
    assert json.dumps(PAYLOAD) in seen["argumentsText"]  # shown as text, as JSON
    assert seen["consoleErrors"] == []
    # Two decisions of the one call: held (pending), then the verdict.
    assert seen["searchStatus"] == "2 call(s)"
    assert all("vm_management" in row for row in seen["searchRows"])


async def test_a_click_on_approve_releases_the_held_call(tmp_path: Path) -> None:
    result, seen = await click_in_console(tmp_path, "approve", "looks fine")
    assert "vm_management" in seen["rowText"] and "anonymous" in seen["rowText"]
    assert_escaped(seen)
    assert seen["audit"] == [{"verdict": "approved", "by": "alice", "note": "looks fine"}]
    # The call reached the demo host, which answers that it has no such VM.
    assert result.content[0].text.startswith("no VM named") and PAYLOAD in result.content[0].text


async def test_a_click_on_reject_refuses_the_held_call(tmp_path: Path) -> None:
    result, seen = await click_in_console(tmp_path, "reject", "not today")
    assert_escaped(seen)
    assert seen["audit"] == [{"verdict": "rejected", "by": "alice", "note": "not today"}]
    assert result.is_error and "rejected by alice: not today" in result.content[0].text


KILL_SCRIPT = Path(__file__).resolve().parent / "fixtures" / "console_kill_switch.cjs"


async def test_the_console_turns_a_kill_switch_on_and_off(tmp_path: Path) -> None:
    browser = chromium()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    config = {"admin": "", "token": ALICE, "server": "vm", "comment": "INC-77 from the console",
              "userDataDir": str(tmp_path / "chromium-profile"), "screenshots": str(shots),
              "chromium": browser}
    async with gateway(tmp_path) as gw, streamable_http_client(gw.mcp_url) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        assert not (await session.call_tool("vm_management", {"action": "list"})).is_error
        config["admin"] = gw.admin
        browser_script = BrowserScript(KILL_SCRIPT, config, tmp_path)
        await browser_script.start()
        try:
            with trio.fail_after(120):  # chromium starts slowly on a loaded machine
                await browser_script.line(b"on")
                refused = await session.call_tool("vm_management", {"action": "list"})
                await browser_script.send(b"off")
                seen = await browser_script.result()
        finally:
            await browser_script.stop()
        reason = "kill switch on for server vm by alice: INC-77 from the console"
        assert refused.is_error and reason in refused.content[0].text  # type: ignore[union-attr]
        assert seen == {"listed": reason, "error": "", "consoleErrors": []}
        assert not (await session.call_tool("vm_management", {"action": "list"})).is_error
        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.state') AS state, json_extract(detail, '$.by') AS by"
            " FROM events WHERE kind = 'kill_switch' ORDER BY seq", count=2)
        assert [(r["state"], r["by"]) for r in rows] == [("on", "alice"), ("off", "alice")]
    for shot in ("kill-switch-on.png", "kill-switch-off.png"):
        assert (await trio.Path(shots / shot).stat()).st_size > 0
