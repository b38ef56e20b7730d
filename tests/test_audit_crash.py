"""kill -9 under load: the trail still verifies and no forwarded call lacks its decision.

A small process appends decision events in durable mode from many trio tasks;
after each ``committed()`` it "forwards" the call by appending its id to a
ledger file, which stands in for the upstream. We SIGKILL it at random moments,
restart it on the same database, and check the two properties.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firewall.audit.verify import verify_paths

WORKER = r'''
import os, sys, time
import trio
from firewall.audit.events import DecisionEvent, OutcomeEvent
from firewall.settings.audit import AuditSettings
from firewall.audit.writer import open_audit

db, ledger_path, run = sys.argv[1], sys.argv[2], sys.argv[3]

async def main():
    settings = AuditSettings(path=db, checkpoint_every_rows=500, anchor_log=False)
    ledger = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with open_audit(settings, instance_id="crash-" + run) as audit:
        async def agent(k):
            i = 0
            while True:
                i += 1
                call_id = f"{run}.{k}.{i}"
                receipt = await audit.append(DecisionEvent(
                    ts_ns=time.time_ns(), call_id=call_id, session=f"{run}.{k}",
                    principal="agent", grant="g", server="up", method="tools/call",
                    tool="work", arguments={"i": i}, decision="allow", rule="r"))
                await receipt.committed()
                os.write(ledger, (call_id + "\n").encode())  # the upstream saw it
                await audit.append(OutcomeEvent(
                    ts_ns=time.time_ns(), call_id=call_id, session=f"{run}.{k}",
                    server="up", status="ok", latency_ns=1))
        async with trio.open_nursery() as nursery:
            for k in range(32):
                nursery.start_soon(agent, k)

trio.run(main)
'''


def _ledger(path: Path) -> list[str]:
    if not path.exists():
        return []
    data = path.read_text()
    lines = data.split("\n")
    return [line for line in lines[:-1] if line]  # a torn last line was never "sent"


@pytest.mark.slow
def test_sigkill_under_load_loses_no_forwarded_call(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    db, ledger = tmp_path / "audit.db", tmp_path / "ledger.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    rng = random.Random(7)
    for run in range(5):
        before = len(_ledger(ledger))
        proc = subprocess.Popen([sys.executable, str(script), str(db), str(ledger), str(run)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while len(_ledger(ledger)) < before + 200 + rng.randrange(2000):
                assert proc.poll() is None, "the worker died on its own"
                assert time.monotonic() < deadline, "the worker made no progress"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
    forwarded = _ledger(ledger)
    assert len(forwarded) > 1000
    [report] = verify_paths([db])
    assert report.ok, report.problems
    conn = sqlite3.connect(db)
    audited = {r[0] for r in conn.execute("SELECT call_id FROM events WHERE kind = 'decision'")}
    conn.close()
    missing = [c for c in forwarded if c not in audited]
    assert not missing, f"{len(missing)} forwarded calls have no decision event: {missing[:5]}"
