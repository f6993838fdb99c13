"""Per-instance locks between real processes: busy → exit 10 naming the holder; stale → taken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ops_fixtures import sqlite_config

from vya_backupdb.errors import LockBusy
from vya_backupdb.jobs.locks import InstanceLock, instance_locks, lock_path

pytestmark = pytest.mark.integration

VYA = str(Path(sys.executable).parent / "vya-backupdb")

HOLDER = """
import sys
from pathlib import Path
from vya_backupdb.jobs.locks import InstanceLock
lock = InstanceLock(Path(sys.argv[1]), "lite", command="test holder")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes stdin
lock.release()
"""


def test_run_second_process_gets_exit_10_naming_holder(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "backups")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        result = subprocess.run(
            [VYA, "--config", str(config), "run", "lite"], capture_output=True, text=True
        )
        assert result.returncode == 10, result.stderr
        assert f"pid {holder.pid}" in result.stderr
        assert socket.gethostname() in result.stderr
        assert not list((tmp_path / "backups").rglob("*.metadata.json"))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    # Released: the same command now succeeds.
    again = subprocess.run(
        [VYA, "--config", str(config), "run", "lite"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "backups").rglob("*.metadata.json"))) == 1


def test_run_stale_lock_of_dead_pid_is_taken_over_with_warning(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = lock_path(tmp_path / "backups", "lite")
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started_at": "earlier"})
    )
    result = subprocess.run(
        [VYA, "--config", str(config), "--log-format", "json", "run", "lite"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    warnings = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and '"WARNING"' in line
    ]
    assert any("stale lock" in w["message"] and f"pid {dead.pid}" in w["message"] for w in warnings)
    assert path.read_text() == ""  # released cleanly afterwards


def test_lock_same_host_live_pid_without_flock_is_still_busy(tmp_path: Path) -> None:
    from vya_backupdb.jobs.locks import process_start_time

    # A holder that is alive but whose flock is not visible (as on some network filesystems).
    path = lock_path(tmp_path, "lite")
    path.parent.mkdir(parents=True)
    me = os.getppid()
    path.write_text(
        json.dumps(
            {
                "pid": me,
                "host": socket.gethostname(),
                "started_at": "now",
                "process_start": process_start_time(me),
            }
        )
    )
    with pytest.raises(LockBusy, match=f"pid {me}"):
        InstanceLock(tmp_path, "lite").acquire()


def test_instance_locks_busy_releases_the_ones_taken(tmp_path: Path) -> None:
    holder = InstanceLock(tmp_path, "b")
    holder.acquire()
    with pytest.raises(LockBusy, match="'b'"), instance_locks(tmp_path, ["a", "b"]):
        pass  # pragma: no cover - never reached
    holder.release()
    # 'a' was released when 'b' failed: it can be taken again.
    with InstanceLock(tmp_path, "a") as lock:
        assert lock.held and lock.took_over is None
