"""The writer process: its death, failures, shutdown and signals are never silent."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest
import trio

from firewall.audit.events import DecisionEvent
from firewall.audit.process import ProcessWriter
from firewall.audit.verify import verify_paths
from firewall.audit.writer import AuditError, open_audit
from firewall.settings.audit import AuditSettings


def _decision(i: int) -> DecisionEvent:
    return DecisionEvent(ts_ns=1_700_000_000_000_000_000 + i, call_id=f"c{i}", session="s",
                         principal="p", grant="g", server="vm", method="tools/call", tool="t",
                         arguments={"i": i}, decision="allow", rule="r")


async def _refused(audit: ProcessWriter, i: int) -> None:
    """The event is refused: by ``append`` or, if it got queued, by ``committed()``."""
    with pytest.raises(AuditError):
        receipt = await audit.append(_decision(i))
        await receipt.committed()


def _settings(tmp_path: Path, **kw: object) -> AuditSettings:
    return AuditSettings(path=str(tmp_path / "audit.db"), writer="process",
                         **kw)  # type: ignore[arg-type]


@pytest.mark.slow
async def test_a_killed_writer_process_fails_every_later_call(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="audit_writer_failed"):
        async with open_audit(_settings(tmp_path), instance_id="gw") as audit:
            assert isinstance(audit, ProcessWriter) and audit.pid is not None
            await (await audit.append(_decision(1))).committed()
            os.kill(audit.pid, signal.SIGKILL)
            with trio.fail_after(30):
                await _refused(audit, 2)
            await _refused(audit, 3)
            with pytest.raises(AuditError):
                await audit.flush()  # what the readiness probe reports
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.rows == 1


@pytest.mark.slow
async def test_a_failed_commit_in_the_writer_process_is_sticky(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with pytest.raises(AuditError, match="audit_writer_failed"):
        async with open_audit(_settings(tmp_path), instance_id="gw") as audit:
            assert isinstance(audit, ProcessWriter)
            await (await audit.append(_decision(1))).committed()
            conn = sqlite3.connect(db)
            conn.execute("CREATE TRIGGER boom BEFORE INSERT ON events "
                         "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
            conn.close()
            await _refused(audit, 2)
            await _refused(audit, 3)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    conn.close()


@pytest.mark.slow
async def test_close_drains_signs_and_ends_the_process(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    async with open_audit(_settings(tmp_path, mode="fast"), instance_id="gw") as audit:
        assert isinstance(audit, ProcessWriter)
        for i in range(500):
            await audit.append(_decision(i))  # fast: nobody waits for the commits
        process = audit._process
    assert process is not None and process.returncode == 0
    [report] = verify_paths([db])
    assert report.ok and report.rows == 500 and report.signed_upto == 500


@pytest.mark.slow
async def test_a_cancelled_gateway_still_flushes_what_it_appended(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with trio.CancelScope() as scope:
        async with open_audit(_settings(tmp_path, mode="fast"), instance_id="gw") as audit:
            for i in range(100):
                await audit.append(_decision(i))
            scope.cancel()  # the gateway is cancelled with events still queued
            await trio.sleep_forever()
    [report] = verify_paths([db])
    assert report.ok and report.rows == 100 and report.signed_upto == 100


@pytest.mark.slow
async def test_the_writer_process_outlives_an_interrupt_to_its_group(tmp_path: Path) -> None:
    async with open_audit(_settings(tmp_path), instance_id="gw") as audit:
        assert isinstance(audit, ProcessWriter) and audit.pid is not None
        await (await audit.append(_decision(1))).committed()
        os.kill(audit.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends it too
        os.kill(audit.pid, signal.SIGTERM)
        await trio.sleep(0.1)
        await (await audit.append(_decision(2))).committed()
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.rows == 2 and report.signed_upto == 2


@pytest.mark.slow
def test_the_writer_process_closes_and_signs_when_the_gateway_vanishes(tmp_path: Path) -> None:
    """End of input without a close frame (the gateway was killed): sign and exit."""
    db = tmp_path / "audit.db"

    async def main() -> int:
        audit = ProcessWriter(_settings(tmp_path), "gw")
        await audit.start()
        await (await audit.append(_decision(1))).committed()
        audit._closing = True  # the watcher stays quiet; nothing more is sent
        process = audit._process
        assert process is not None
        os.close(audit._to)  # what the kernel does when the gateway dies
        audit._to = -1
        with trio.fail_after(30):
            code = await process.wait()
        os.close(audit._from)
        audit._from = -1
        return code

    assert trio.run(main) == 0
    [report] = verify_paths([db])
    assert report.ok and report.rows == 1 and report.signed_upto == 1


def _writer_children(pid: int) -> list[str]:
    """Command lines of ``pid``'s children that are audit writer processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and "firewall.audit.process" in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
async def test_auto_writer_is_a_process_for_serve_and_a_thread_for_wrap(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import mcpwall_argv
    from serve_process import start_serve, stop_serve

    config = tmp_path / "gw.toml"
    config.write_text(f'[audit]\npath = "{tmp_path / "audit.db"}"\n[servers.vm]\n'
                      f'transport = "stdio"\ncommand = "{sys.executable}"\n'
                      'args = ["-m", "firewall.demo"]\n')
    proc, _ = await start_serve(tmp_path, config, tmp_path / "serve.log")
    try:
        assert len(_writer_children(proc.pid)) == 1
    finally:
        await stop_serve(proc)
    wrap = await trio.lowlevel.open_process(
        [*mcpwall_argv(), "wrap", "--config", str(config), "--", sys.executable, "-m",
         "firewall.demo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=tmp_path)
    assert wrap.stdin is not None and wrap.stdout is not None
    try:
        await wrap.stdin.send_all(
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
            b'"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n')
        with trio.fail_after(20):
            answer = b""
            while b"\n" not in answer:
                answer += await wrap.stdout.receive_some()
        assert b'"result"' in answer  # audited (the config's trail) and answering
        assert _writer_children(wrap.pid) == []
    finally:
        await wrap.stdin.aclose()
        with trio.fail_after(20):
            await wrap.wait()
    conn = sqlite3.connect(tmp_path / "audit.db")
    kinds = {r[0] for r in conn.execute("SELECT DISTINCT kind FROM events")}
    assert {"session_start", "session_end", "decision"} <= kinds
