"""`run --scheduled` windows and state, graceful stop between databases, and the daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ops_fixtures import load, sqlite_config
from test_notify import HttpInbox, http_inbox  # noqa: F401 - fixture

from vya_backupdb.jobs.scheduled import ScheduledRunner

pytestmark = pytest.mark.integration

VYA = str(Path(sys.executable).parent / "vya-backupdb")
DUE = datetime(2024, 6, 10, 2, 30, tzinfo=UTC)  # a Monday


def clock_at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def nightly(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schedules": [
            {
                "name": "nightly",
                "instances": ["lite"],
                "time": "02:30",
                "timezone": "UTC",
                "tolerance_minutes": 30,
            }
        ],
        **(extra or {}),
    }


def test_run_schedule_in_window_runs_once_per_due_time(tmp_path: Path) -> None:
    loaded = load(sqlite_config(tmp_path, nightly()))
    runner = ScheduledRunner(loaded, clock=clock_at(DUE + timedelta(minutes=5)))
    schedule = runner.schedule("nightly")
    first = runner.run_schedule(schedule)
    assert first.status == "ran" and first.due == DUE and first.exit_code == 0
    assert first.run is not None and [r.status for r in first.run.results] == ["success"]
    second = runner.run_schedule(schedule)
    assert second.status == "skipped" and "already ran" in second.reason
    assert runner.last_due_run(schedule) == DUE


def test_run_schedule_outside_window_is_skipped_quietly(
    tmp_path: Path,
    http_inbox: HttpInbox,  # noqa: F811
) -> None:
    hook = {
        "notifications": [
            {
                "type": "webhook",
                "url": http_inbox.url("/h"),
                "on": ["failure", "warning", "success"],
            }
        ]
    }
    loaded = load(sqlite_config(tmp_path, nightly(hook)))
    runner = ScheduledRunner(loaded, clock=clock_at(DUE + timedelta(hours=3)))
    outcome = runner.run_schedule(runner.schedule("nightly"))
    assert outcome.status == "skipped" and outcome.reason.startswith("not due")
    assert http_inbox.posts == []  # never ran before: nothing was missed
    assert not list((tmp_path / "backups").rglob("*.metadata.json"))


def test_run_schedule_missed_due_time_warns_through_notifier(
    tmp_path: Path,
    http_inbox: HttpInbox,  # noqa: F811
) -> None:
    hook = {"notifications": [{"type": "webhook", "url": http_inbox.url("/h"), "on": ["warning"]}]}
    loaded = load(sqlite_config(tmp_path, nightly(hook)))
    # The schedule ran the day before; the next day the timer fires 2 h late.
    runner = ScheduledRunner(loaded, clock=clock_at(DUE - timedelta(days=1) + timedelta(minutes=1)))
    assert runner.run_schedule(runner.schedule("nightly")).status == "ran"
    late = ScheduledRunner(loaded, clock=clock_at(DUE + timedelta(hours=2)))
    outcome = late.run_schedule(late.schedule("nightly"))
    assert outcome.status == "skipped" and outcome.reason.startswith("missed")
    [(_, _, body)] = http_inbox.posts
    assert body["event"] == "warning" and "missed" in body["notes"][0]


def test_run_stop_requested_finishes_current_database_only(tmp_path: Path) -> None:
    loaded = load(sqlite_config(tmp_path, dbs=3))
    stop = threading.Event()
    started: list[str] = []

    def progress(instance: str, database: str, estimate: int | None) -> None:
        started.append(database)
        stop.set()  # SIGTERM arrives while the first database is being dumped

    runner = ScheduledRunner(loaded, stop=stop, progress=progress)  # type: ignore[arg-type]
    outcome = runner.run_instances(("lite",), label="manual")
    assert outcome.run is not None and outcome.run.interrupted
    assert started == ["shop0.db"]
    assert [(r.database, r.status) for r in outcome.run.results] == [("shop0.db", "success")]
    assert outcome.exit_code == 130
    assert len(list((tmp_path / "backups").rglob("*.metadata.json"))) == 1
    [log] = (tmp_path / "backups").rglob("_runs/*/*.json")
    assert json.loads(log.read_text())["status"] == "interrupted"


def test_daemon_runs_due_schedule_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    config = sqlite_config(
        tmp_path,
        {
            "schedules": [
                {
                    "name": "every-minute",
                    "cron": "* * * * *",
                    "timezone": "UTC",
                    "tolerance_minutes": 1,
                }
            ]
        },
    )
    proc = subprocess.Popen(
        [VYA, "--config", str(config), "daemon"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "backups").rglob("*.metadata.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the daemon did not run the due schedule"
            time.sleep(0.1)
        time.sleep(0.5)  # now idle, sleeping until the next minute
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    assert b"daemon: stopped" in err


def test_run_cli_unknown_schedule_is_usage_error(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path, nightly())
    result = subprocess.run(
        [VYA, "--config", str(config), "run", "--scheduled", "--schedule", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "unknown schedule 'nope'" in result.stderr


def test_run_json_log_lines_carry_every_operation_field(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    log_file = tmp_path / "vya.log"
    result = subprocess.run(
        [
            VYA,
            "--config",
            str(config),
            "--log-format",
            "json",
            "--log-file",
            str(log_file),
            "run",
            "lite",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    done = [x for x in lines if x.get("operation") == "backup" and x.get("status") == "success"]
    assert len(done) == 1
    line = done[0]
    for key in (
        "timestamp",
        "level",
        "component",
        "instance",
        "dbms",
        "database",
        "operation",
        "duration_seconds",
        "size_bytes",
        "compression_ratio",
        "status",
    ):
        assert key in line, key
    assert (line["instance"], line["dbms"], line["database"]) == ("lite", "sqlite", "shop0.db")
    assert line["component"] == "jobs.backup" and line["size_bytes"] > 0
    assert line["compression_ratio"] > 1
