"""The registry of running instances, and `mcpwall status` when nothing runs.

No process is started here: entries name this test's own process (and its
parent), a pid that does not exist, or this process with another start time.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from firewall.cli import main
from firewall.gateway.operator import instances
from firewall.gateway.operator.instances import Instance, RegistryError


def _dead_pid() -> int:
    """A pid no process has now."""
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(limit - 1, 1, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    raise AssertionError("no free pid")


def _entry(pid: int, **fields: object) -> Instance:
    return msgspec.structs.replace(instances.describe("wrap", f"h:{pid}", **fields), pid=pid,
                                   boot=instances.boot_ticks(pid))


def test_entry_round_trip_and_removed_at_exit(tmp_path: Path) -> None:
    entry = instances.describe("serve", "h:1", listen=["http://127.0.0.1:1"],
                               audit="rel.db", servers=["demo"])
    assert entry.pid == os.getpid() and entry.audit == str(Path("rel.db").resolve())
    with instances.registered(entry, tmp_path) as path:
        assert path == tmp_path / f"{os.getpid()}.json"
        assert instances.running(tmp_path) == [entry]
    assert not path.exists() and instances.running(tmp_path) == []


def test_stale_entries_are_ignored_and_cleaned(tmp_path: Path) -> None:
    live = instances.write(_entry(os.getpid()), tmp_path)
    dead = instances.write(_entry(_dead_pid()), tmp_path)
    # this pid, but a process that started at another time: the pid was reused
    reused = msgspec.structs.replace(_entry(os.getppid()), boot=(instances.boot_ticks(
        os.getppid()) or 0) + 1)
    reused_path = instances.write(reused, tmp_path)
    garbage_dead = tmp_path / f"{_dead_pid()}.json"
    garbage_dead.write_text("{not json")
    garbage_live = tmp_path / f"{os.getpid() + 0}x.json"  # not a pid name: left alone
    garbage_live.write_text("{not json")
    assert [e.pid for e in instances.running(tmp_path)] == [os.getpid()]
    assert live.exists()
    assert not dead.exists() and not reused_path.exists() and not garbage_dead.exists()
    assert garbage_live.exists()


def test_concurrent_instances_each_keep_their_entry(tmp_path: Path) -> None:
    pids = [os.getpid(), os.getppid()]
    barrier = threading.Barrier(len(pids))

    def register(pid: int) -> None:
        barrier.wait()
        for _ in range(50):  # rewritten again and again: a reader never sees half a file
            instances.write(_entry(pid, servers=[f"s{pid}"]), tmp_path)
            assert all(e.pid in pids for e in instances.running(tmp_path))

    threads = [threading.Thread(target=register, args=(pid,)) for pid in pids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = instances.running(tmp_path)
    assert sorted(e.pid for e in found) == sorted(pids)
    assert {tuple(e.servers) for e in found} == {(f"s{pid}",) for pid in pids}
    assert not list(tmp_path.glob(".*.tmp"))


def test_registry_dir_is_private_and_refuses_a_symlink(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(instances.ENV, str(tmp_path / "reg"))
    made = instances.registry_dir()
    assert made == tmp_path / "reg" and (made.stat().st_mode & 0o777) == 0o700
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(RegistryError, match="not a directory"):
        instances.registry_dir(tmp_path / "link")
    monkeypatch.delenv(instances.ENV)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert instances.registry_dir() == tmp_path / "mcpwall"


def test_registry_that_cannot_be_written_does_not_stop_the_instance(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with instances.registered(instances.describe("wrap", "h:1"), blocker) as path:
        assert path is None


def test_status_with_nothing_running(tmp_path: Path) -> None:
    instances.write(_entry(_dead_pid()), tmp_path)  # stale: does not count
    result = CliRunner().invoke(main, ["status", "--registry", str(tmp_path)])
    assert result.exit_code == 1
    assert "no mcpwall instance is running here" in result.stderr
    assert list(tmp_path.glob("*.json")) == []  # the stale entry was cleaned
    result = CliRunner().invoke(main, ["status", "--registry", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["instances"] == []


def test_status_lists_a_live_entry_without_an_audit_trail(tmp_path: Path) -> None:
    instances.write(_entry(os.getpid(), upstream="http://127.0.0.1:9/mcp"), tmp_path)
    result = CliRunner().invoke(main, ["status", "--registry", str(tmp_path), "--nl"])
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)
    assert item["pid"] == os.getpid() and item["activity"] is None
    table = CliRunner().invoke(main, ["status", "--registry", str(tmp_path)])
    assert table.exit_code == 0 and f"wrap pid {os.getpid()}" in table.stdout
    assert "no audit trail" in table.stdout


def test_hostile_registry_files_do_not_crash_status(tmp_path: Path) -> None:
    # pids no os.kill accepts (beyond a C int), negative or zero; a file named
    # after a huge pid that does not parse; terminal escapes in every field.
    for pid in (2**40, -1, 0):
        (tmp_path / f"x{pid}.json").write_bytes(msgspec.json.encode(
            {"pid": pid, "kind": "serve", "started": "", "started_ns": 0, "instance": "h"}))
    (tmp_path / f"{2**70}.json").write_text("{not json")
    instances.write(_entry(os.getpid(), operator=["http://x/\x1b]0;owned\x07"],
                           listen=["\x1b[2J"]), tmp_path)
    assert [e.pid for e in instances.running(tmp_path)] == [os.getpid()]
    result = CliRunner().invoke(main, ["status", "--registry", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout


def test_a_registry_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RegistryError, match="others can write"):
        instances.registry_dir(shared)
    shared.chmod(0o1777)  # sticky does not help: others may still plant entries
    with pytest.raises(RegistryError, match="others can write"):
        instances.registry_dir(shared)
