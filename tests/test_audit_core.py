"""The writer core (firewall.audit.core) on a Trail, driven by an in-memory link.

The thread and the process writers run this same loop; here it runs on the
test's own thread, so each rule is checked without trio, threads or pipes:
an ack only after its commit, a failure that fails every later batch and
writes nothing more, idle indexing, and a close that signs what was committed.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firewall.audit import core
from firewall.audit.chain import Row
from firewall.audit.events import DecisionEvent
from firewall.audit.store import chain_files
from firewall.audit.trail import Trail
from firewall.audit.verify import verify_paths
from firewall.settings.audit import AuditSettings

Batch = Callable[[Trail], list[Row]]


def _decision(i: int) -> DecisionEvent:
    return DecisionEvent(ts_ns=1_700_000_000_000_000_000 + i, call_id=f"c{i}",
                         session=f"s{i % 4}", principal="p", grant="g", server="vm",
                         method="tools/call", tool="t", arguments={"i": i},
                         decision="allow", rule="r")


def _events(first: int, count: int) -> Batch:
    """A batch of ``count`` decisions, chained after the trail's head when taken."""
    return lambda trail: trail.rows([_decision(i) for i in range(first, first + count)])


class ListLink:
    """A core.Link over a list: hands batches over in order, keeps what comes back."""

    def __init__(self, batches: list[Batch | None], db: Path, *, gone_after: int = -1) -> None:
        self.batches: collections.deque[Batch | None] = collections.deque(batches)
        self.db = db
        self.gone_after = gone_after
        self.acks: list[core.Ack] = []
        self.visible: list[int] = []        # rows a reader saw when each ack came
        self.timeouts: list[float | None] = []
        self.failures: list[BaseException] = []
        self.unindexed: list[int] = []      # trail.unindexed() at each receive

    def receive(self, timeout: float | None) -> Batch | None:
        self.timeouts.append(timeout)
        if not self.batches:
            raise core.Closed
        return self.batches.popleft()  # None: "no batch within the timeout"

    def rows(self, batch: Batch, trail: Trail) -> list[Row]:
        self.unindexed.append(trail.unindexed())
        return batch(trail)

    def acknowledge(self, batch: Batch, ack: core.Ack) -> bool:
        conn = sqlite3.connect(self.db)
        self.visible.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        conn.close()
        self.acks.append(ack)
        return len(self.acks) != self.gone_after

    def failed(self, error: BaseException) -> None:
        self.failures.append(error)


def _run(tmp_path: Path, batches: list[Batch | None], **kw: int) -> tuple[ListLink, object]:
    db = tmp_path / "audit.db"
    link = ListLink(batches, db, **kw)
    error = core.run(Trail(AuditSettings(path=str(db)), "gw-1"), link, time.process_time)
    return link, error


def test_each_ack_comes_after_its_commit_in_order(tmp_path: Path) -> None:
    link, error = _run(tmp_path, [_events(0, 3), _events(3, 5), _events(8, 1)])
    assert error is None and link.failures == []
    assert [a.ok for a in link.acks] == [True, True, True]
    assert link.visible == [3, 8, 9]  # another connection already reads each batch
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.signed_upto == 9  # closed: indexed and signed


def _broken(trail: Trail) -> list[Row]:
    raise ValueError("a batch that cannot be decoded")


@pytest.mark.parametrize("bad", ["commit", "rows"])
def test_a_failed_batch_fails_every_later_one_and_nothing_more_is_written(
        tmp_path: Path, bad: str) -> None:
    # Rows of another trail: seq 1 again, so the INSERT fails and rolls back.
    with Trail(AuditSettings(path=str(tmp_path / "other.db")), "other") as other:
        stale = other.rows([_decision(100)])
    failing: Batch = (lambda trail: stale) if bad == "commit" else _broken
    link, error = _run(tmp_path, [_events(0, 2), failing, _events(2, 2), None, _events(4, 1)])
    assert isinstance(error, sqlite3.IntegrityError if bad == "commit" else ValueError)
    assert link.failures == [error]  # reported once, at once
    assert [a.ok for a in link.acks] == [True, False, False, False]  # every batch answered
    assert all(a.error is error for a in link.acks[1:])
    assert link.timeouts[3:] == [None, None, None]  # failed: no idle work, waits for ever
    assert link.visible[-1] == 2
    [report] = verify_paths([tmp_path / "audit.db"])
    assert report.ok and report.rows == 2 and report.signed_upto == 2


def test_idle_time_indexes_the_derived_tables(tmp_path: Path) -> None:
    link, error = _run(tmp_path, [_events(0, 5), None, _events(5, 1)])
    assert error is None
    # After the batch, rows wait for the derived tables: a short wait, then a slice.
    assert link.timeouts[1] == core.INDEX_IDLE
    assert link.unindexed == [0, 0]  # the idle slice indexed all five before batch 2
    assert link.timeouts[2] != core.INDEX_IDLE


def test_the_other_side_gone_closes_and_signs_what_was_committed(tmp_path: Path) -> None:
    link, error = _run(tmp_path, [_events(0, 4), _events(4, 4), _events(8, 4)], gone_after=2)
    assert error is None and len(link.acks) == 2
    assert len(link.batches) == 1  # never taken
    [report] = verify_paths(chain_files(tmp_path / "audit.db"))
    assert report.ok and report.rows == 8 and report.signed_upto == 8
    Trail(AuditSettings(path=str(tmp_path / "audit.db")), "again").close()  # lock released
