"""cleanup against real SQLite backups spread over days: decide, print reasons, delete.

The backups are real (BackupJob with a clock set in the past); only the time differs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.config.loader import load_settings
from vya_backupdb.jobs.backup import BackupJob, BackupRequest
from vya_backupdb.jobs.cleanup import CleanupJob
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.wiring import make_storage

pytestmark = pytest.mark.integration

runner = CliRunner()

#: Ages (days) of the backups each test starts with, oldest first.
AGES = (10, 8, 6, 2, 1)


def _vya(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    # JSON goes to stdout alone; log lines and rendered errors go to stderr.
    return result.exit_code, result.stdout if "--json" in args else result.output


def _config(tmp_path: Path, **extra: Any) -> Path:
    data = tmp_path / "data"
    if not (data / "shop.db").exists():
        create_sqlite_demo(data / "shop.db")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "testhost",
                "storage": {"base_path": str(tmp_path / "backups")},
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}],
                "retention": {"retention_days": 5, "min_backups": 1},
                **extra,
            }
        )
    )
    return config


def _backup_at(config: Path, moment: datetime) -> None:
    run = BackupJob(load_settings(config, None), clock=lambda: moment).run(BackupRequest())
    assert run.ok, [r.error for r in run.results]


@pytest.fixture
def spread(tmp_path: Path) -> tuple[Path, datetime]:
    """Return a config with one backup 10, 8, 6, 2 and 1 days ago, and "now"."""
    config = _config(tmp_path)
    now = datetime.now(UTC).replace(microsecond=0)
    for age in AGES:
        _backup_at(config, now - timedelta(days=age, hours=1))
    return config, now


def _files(config: Path, pattern: str) -> list[Path]:
    return sorted((config.parent / "backups").rglob(pattern))


def _listed(config: Path) -> list[dict[str, Any]]:
    code, out = _vya(config, "list", "--json")
    assert code == 0, out
    backups: list[dict[str, Any]] = json.loads(out)["backups"]
    return backups


def test_cleanup_dry_run_prints_reasons_and_deletes_nothing(
    spread: tuple[Path, datetime],
) -> None:
    config, _now = spread
    before = sorted(p.name for p in (config.parent / "backups").rglob("*") if p.is_file())
    code, out = _vya(config, "cleanup", "--dry-run")
    assert code == 0, out
    assert "dry run" in out
    assert "3 would be deleted" in out and "2 kept" in out
    code, out = _vya(config, "cleanup", "--dry-run", "--json")
    payload = json.loads(out)
    assert payload["dry_run"] is True and payload["deleted"] == []
    actions = [(b["action"], b["reasons"]) for b in payload["backups"]]
    assert actions == [
        ("delete", ["deleted: older than 5 days"]),
        ("delete", ["deleted: older than 5 days"]),
        ("delete", ["deleted: older than 5 days"]),
        ("keep", ["kept: younger than 5 days"]),
        ("keep", ["kept: younger than 5 days", "kept: newest successful"]),
    ]
    assert payload["summary"]["freed_bytes"] > 0
    after = sorted(p.name for p in (config.parent / "backups").rglob("*") if p.is_file())
    assert after == before


def test_cleanup_deletes_exactly_the_expired_backups_with_their_sidecars(
    spread: tuple[Path, datetime],
) -> None:
    config, now = spread
    expected_gone = {f"_{(now - timedelta(days=a, hours=1)):%Y%m%d_%H%M%S}_" for a in AGES[:3]}
    code, out = _vya(config, "cleanup", "lite", "--json")
    assert code == 0, out
    payload = json.loads(out)
    assert len(payload["deleted"]) == 3
    assert {d[d.index("_") : d.rindex("full")] for d in payload["deleted"]} == expected_gone
    assert payload["freed_bytes"] == payload["summary"]["freed_bytes"] > 0
    for pattern in ("*.sqlite.zst", "*.sqlite.zst.sha256", "*.metadata.json"):
        remaining = _files(config, pattern)
        assert len(remaining) == 2, pattern
        assert not any(stamp in p.name for p in remaining for stamp in expected_gone)
    assert len(_listed(config)) == 2
    # Nothing more to do the second time.
    code, out = _vya(config, "cleanup")
    assert code == 0 and "0 deleted" in out


class InterruptAfterMetadata:
    """Local storage whose first data-object deletion is interrupted (like Ctrl-C or a crash
    right after the metadata file was deleted)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.interrupted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def delete(self, name: str) -> None:
        if name.endswith(".sqlite.zst") and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        self._inner.delete(name)


def test_cleanup_interrupted_after_metadata_never_lists_half_deleted_backup(
    spread: tuple[Path, datetime],
) -> None:
    config, _now = spread
    loaded = load_settings(config, None)
    storage = InterruptAfterMetadata(make_storage(loaded.settings))
    job = CleanupJob(loaded, storage)  # type: ignore[arg-type]
    plan = job.plan("lite")
    assert len(plan.to_delete) == 3
    with pytest.raises(KeyboardInterrupt):
        job.apply(plan)
    # The newest doomed backup lost its record but kept its object: it is not listed...
    assert len(_files(config, "*.metadata.json")) == 4
    assert len(_files(config, "*.sqlite.zst")) == 5
    listed = _listed(config)
    assert len(listed) == 4
    assert all(e["checksum"] == "sidecar" for e in listed)
    # ...verify reports the orphan, and the next cleanup finishes the job for the others.
    code, out = _vya(config, "verify", "lite", "--level", "checksum")
    assert code == 8 and "has no metadata record" in out
    code, out = _vya(config, "cleanup", "--json")
    assert code == 0 and len(json.loads(out)["deleted"]) == 2


def test_cleanup_after_backup_applies_retention(tmp_path: Path) -> None:
    config = _config(tmp_path, cleanup={"after_backup": True})
    now = datetime.now(UTC)
    _backup_at(config, now - timedelta(days=20))
    _backup_at(config, now - timedelta(days=19))
    # The run's clock is "now" for its cleanup: one day apart, both are young enough.
    assert len(_files(config, "*.metadata.json")) == 2
    code, out = _vya(config, "backup", "lite")
    assert code == 0, out
    [entry] = _listed(config)
    assert entry["started_at"] > (now - timedelta(minutes=5)).isoformat()


def test_cleanup_without_policy_keeps_everything(tmp_path: Path) -> None:
    config = _config(tmp_path, retention={})
    now = datetime.now(UTC)
    for age in (30, 20):
        _backup_at(config, now - timedelta(days=age))
    code, out = _vya(config, "cleanup", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["deleted"] == [] and payload["summary"]["kept"] == 2
    assert payload["backups"][0]["reasons"] == ["kept: no retention policy"]


def test_cleanup_unknown_instance_exits_2(tmp_path: Path) -> None:
    code, out = _vya(_config(tmp_path), "cleanup", "nope")
    assert code == 2 and "unknown instance 'nope'" in out


def test_cleanup_while_instance_is_locked_exits_10_and_deletes_nothing(
    spread: tuple[Path, datetime],
) -> None:
    from vya_backupdb.jobs.locks import InstanceLock

    config, _now = spread
    with InstanceLock(config.parent / "backups", "lite", command="backup"):
        code, out = _vya(config, "cleanup")
    assert code == 10, out
    assert "is locked by" in out
    assert len(_files(config, "*.metadata.json")) == len(AGES)
