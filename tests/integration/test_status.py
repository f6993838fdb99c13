"""`status` verdicts and Nagios exit codes from real SQLite backups with a controlled clock."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ops_fixtures import load, sqlite_config
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.config.loader import LoadedConfig
from vya_backupdb.jobs.backup import BackupJob, BackupRequest
from vya_backupdb.jobs.status import check_status
from vya_backupdb.wiring import make_catalog

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 10, 3, 0, tzinfo=UTC)


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def backup_at(loaded: LoadedConfig, moment: datetime) -> None:
    run = BackupJob(loaded, clock=at(moment)).run(BackupRequest(instances=("lite",)))
    assert run.ok


def status_at(loaded: LoadedConfig, moment: datetime, *instances: str):  # type: ignore[no-untyped-def]
    return check_status(
        loaded.settings, make_catalog(loaded.settings), instances=instances, clock=at(moment)
    )


@pytest.fixture
def two_backups(tmp_path: Path) -> LoadedConfig:
    config = sqlite_config(tmp_path, {"status": {"warning_hours": 26, "critical_hours": 50}})
    loaded = load(config)
    backup_at(loaded, T0 - timedelta(hours=48))
    backup_at(loaded, T0 - timedelta(hours=24))
    return loaded


def test_status_fresh_backup_is_ok_exit_0(two_backups: LoadedConfig) -> None:
    report = status_at(two_backups, T0)
    [db] = report.databases
    assert (db.instance, db.database, db.verdict) == ("lite", "shop0.db", "ok")
    assert db.age_hours == pytest.approx(24, abs=0.01)
    assert db.backups == 2 and db.previous_size_bytes == db.size_bytes
    assert db.size_change_percent == 0
    assert report.exit_code == 0 and report.summary() == "OK - 1 ok"


def test_status_backup_older_than_warning_threshold_exit_1(two_backups: LoadedConfig) -> None:
    report = status_at(two_backups, T0 + timedelta(hours=3))  # 27 h old
    assert report.verdict == "warning" and report.exit_code == 1
    assert "27.0 h old (warning above 26 h)" in report.databases[0].reasons[0]


def test_status_backup_older_than_critical_threshold_exit_2(two_backups: LoadedConfig) -> None:
    report = status_at(two_backups, T0 + timedelta(hours=27))  # 51 h old
    assert report.verdict == "critical" and report.exit_code == 2


def test_status_per_instance_thresholds_override_defaults(tmp_path: Path) -> None:
    config = sqlite_config(
        tmp_path, {"status": {"instances": {"lite": {"warning_hours": 2, "critical_hours": 4}}}}
    )
    loaded = load(config)
    backup_at(loaded, T0)
    assert status_at(loaded, T0 + timedelta(hours=3)).verdict == "warning"
    assert status_at(loaded, T0 + timedelta(hours=5)).verdict == "critical"


def test_status_size_jump_against_previous_is_warning(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    loaded = load(config)
    backup_at(loaded, T0 - timedelta(hours=2))
    with sqlite3.connect(tmp_path / "data" / "shop0.db") as conn:
        conn.execute("CREATE TABLE blob_dump (data BLOB)")
        conn.executemany(
            "INSERT INTO blob_dump VALUES (randomblob(4096))", [()] * 200
        )  # incompressible: the compressed size grows many times
    backup_at(loaded, T0 - timedelta(hours=1))
    [db] = status_at(loaded, T0).databases
    assert db.verdict == "warning"
    assert db.size_change_percent is not None and db.size_change_percent > 100
    assert any("size changed by +" in r for r in db.reasons)


def test_status_instance_without_backup_is_critical(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    report = status_at(load(config), T0)
    [db] = report.databases
    assert db.verdict == "critical" and db.database == "*"
    assert report.exit_code == 2


def test_status_newest_attempt_failed_is_warning(two_backups: LoadedConfig, tmp_path: Path) -> None:
    (tmp_path / "data" / "shop0.db").write_bytes(b"now broken " * 300)
    run = BackupJob(two_backups, clock=at(T0 - timedelta(hours=1))).run(BackupRequest())
    assert not run.ok
    [db] = status_at(two_backups, T0).databases
    assert db.verdict == "warning" and db.last_attempt_failed
    assert "newest backup attempt failed (BackupFailed)" in db.reasons[-1]


def test_status_verification_failed_is_critical(two_backups: LoadedConfig) -> None:
    from vya_backupdb.catalog.records import Verification

    catalog = make_catalog(two_backups.settings)
    newest = catalog.records("lite")[-1]
    catalog.save(
        newest.model_copy(
            update={
                "verification": Verification(
                    verified_at=T0, level="checksum", outcome="failed", message="sha256 mismatch"
                )
            }
        )
    )
    [db] = status_at(two_backups, T0).databases
    assert db.verdict == "critical" and db.verification == "failed"
    assert "sha256 mismatch" in db.reasons[-1]


def test_status_cli_json_and_exit_code(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["--config", str(config), "status", "--json"])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["verdict"] == "critical"
    assert runner.invoke(app, ["--config", str(config), "backup", "lite"]).exit_code == 0
    fresh = runner.invoke(app, ["--config", str(config), "status", "--json"])
    assert fresh.exit_code == 0, fresh.output
    report = json.loads(fresh.stdout)
    assert report["verdict"] == "ok" and report["databases"][0]["database"] == "shop0.db"


def test_status_cli_config_error_is_unknown_3(tmp_path: Path) -> None:
    """A check that cannot run is UNKNOWN (3) for Nagios, not CRITICAL (2)."""
    config = tmp_path / "broken.yaml"
    config.write_text("instances: [{id: x, type: nosuchdb}]\n")
    result = CliRunner().invoke(app, ["--config", str(config), "status"])
    assert result.exit_code == 3
    assert "nosuchdb" in result.output or "type" in result.output
