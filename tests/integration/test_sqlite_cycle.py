"""SQLite end to end through the CLI: backup → list → restore → exact comparison.

No server needed, so this is also the fastest proof of the whole pipeline: layout, sidecars,
records, standard-tool restorability, refusal of damaged files before the target is touched.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.jobs.demo import create_sqlite_demo, sqlite_fingerprint

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    create_sqlite_demo(data / "shop.db")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "testhost",
                "storage": {"base_path": str(tmp_path / "backups")},
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}],
            }
        )
    )
    return config, data


def _vya(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_sqlite_backup_restore_round_trip_is_exact(setup: tuple[Path, Path]) -> None:
    config, data = setup
    code, out = _vya(config, "backup", "lite", "--json")
    assert code == 0, out
    run = json.loads(out)
    [result] = run["results"]
    assert result["status"] == "success"
    assert result["file"].startswith("testhost/lite/shop.db/")
    assert result["file"].endswith("_full.sqlite.zst")

    code, out = _vya(config, "list", "--json")
    assert code == 0, out
    listing = json.loads(out)
    assert listing["version"] == 1
    [entry] = listing["backups"]
    assert entry["checksum"] == "sidecar" and entry["compression"] == "zstd"

    code, out = _vya(
        config, "restore", "lite", "--database", "shop.db", "--latest", "--target", "copy.db"
    )
    assert code == 0, out
    assert sqlite_fingerprint(data / "shop.db") == sqlite_fingerprint(data / "copy.db")


def test_sqlite_backup_metadata_and_sidecar_are_standard(setup: tuple[Path, Path]) -> None:
    config, data = setup
    assert _vya(config, "backup", "--all")[0] == 0
    base = config.parent / "backups"
    [meta_path] = base.rglob("*.metadata.json")
    meta = json.loads(meta_path.read_text())
    assert meta["format_version"] == 1
    info = meta["backup_info"]
    assert info["instance"] == "lite" and info["database"] == "shop.db"
    assert info["status"] == "success" and info["started_at"].endswith(("Z", "+00:00"))
    assert meta["stats"]["tables"] == {"customers": 3, "orders": 500}
    assert meta["stats"]["counts_exact"] is False  # counted beside the backup: a warning only
    [data_file] = base.rglob("*.sqlite.zst")
    # `sha256sum -c` accepts the sidecar as written.
    check = subprocess.run(
        ["sha256sum", "-c", data_file.name + ".sha256"],
        cwd=data_file.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # Restorable with standard tools alone: zstd -d gives a valid SQLite file.
    if shutil.which("zstd"):
        plain = config.parent / "plain.db"
        subprocess.run(["zstd", "-q", "-d", str(data_file), "-o", str(plain)], check=True)
        assert sqlite_fingerprint(plain) == sqlite_fingerprint(data / "shop.db")


def test_sqlite_restore_refuses_a_corrupted_file_before_touching_target(
    setup: tuple[Path, Path],
) -> None:
    config, data = setup
    assert _vya(config, "backup", "--all")[0] == 0
    [data_file] = (config.parent / "backups").rglob("*.sqlite.zst")
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    target = data / "shop.db"
    before = target.read_bytes()
    code, out = _vya(
        config, "restore", "lite", "-d", "shop.db", "--latest", "--mode", "fast", "--yes"
    )
    assert code == 8, out
    assert "checksum mismatch" in out
    assert target.read_bytes() == before


def test_sqlite_restore_over_existing_without_yes_refuses(setup: tuple[Path, Path]) -> None:
    config, data = setup
    assert _vya(config, "backup", "--all")[0] == 0
    with sqlite3.connect(data / "shop.db") as conn:
        conn.execute("DELETE FROM orders WHERE id > 10")
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest")
    assert code == 2, out
    assert "--yes" in out
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--yes")
    assert code == 0, out
    with sqlite3.connect(data / "shop.db") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 500


def test_backup_unknown_instance_exits_2_with_hint(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, out = _vya(config, "backup", "nope")
    assert code == 2
    assert "unknown instance 'nope'" in out and "lite" in out


def test_restore_unknown_database_exits_2(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, out = _vya(config, "restore", "lite", "-d", "missing.db", "--latest")
    assert code == 2
    assert "no successful backup of database 'missing.db'" in out


def test_backup_dry_run_writes_nothing(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, out = _vya(config, "backup", "--all", "--dry-run")
    assert code == 0, out
    assert "planned" in out and "shop.db" in out
    assert not (config.parent / "backups").exists()


@pytest.mark.parametrize("algorithm", ["gzip", "none", "xz", "bzip2", "lz4"])
def test_sqlite_round_trip_with_each_codec(tmp_path: Path, algorithm: str) -> None:
    data = tmp_path / "data"
    create_sqlite_demo(data / "shop.db")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "base_path": str(tmp_path / "b"),
                    "compression": {"algorithm": algorithm},
                },
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}],
            }
        )
    )
    assert _vya(config, "backup", "--all")[0] == 0
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--target", "r.db")
    assert code == 0, out
    assert sqlite_fingerprint(data / "shop.db") == sqlite_fingerprint(data / "r.db")


def test_restore_lands_in_the_run_log_and_metrics(setup: tuple[Path, Path]) -> None:
    from prometheus_client import generate_latest

    from vya_backupdb.catalog.catalog import Catalog
    from vya_backupdb.observability.metrics import catalog_registry
    from vya_backupdb.storage.local import LocalStorage

    config, _ = setup
    assert _vya(config, "backup", "--all")[0] == 0
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--target", "m.db")
    assert code == 0, out
    catalog = Catalog(LocalStorage(config.parent / "backups"), "testhost")
    text = generate_latest(catalog_registry(catalog)).decode()
    restore_lines = [
        line for line in text.splitlines() if line.startswith("vya_restore_last_success")
    ]
    assert restore_lines
    assert restore_lines[0].endswith(" 1.0")
    assert 'database="m.db"' in restore_lines[0]


def test_list_and_restore_list_tables_show_each_backup(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: rich does not wrap the cells
    config, _ = setup
    code, out = _vya(config, "list")
    assert code == 0
    assert "No backups yet" in out
    assert _vya(config, "backup", "--all")[0] == 0
    code, out = _vya(config, "list", "lite")
    assert code == 0, out
    assert "shop.db" in out
    assert "zstd" in out
    assert "sidecar" in out
    code, out = _vya(config, "restore", "--list", "lite", "-d", "shop.db")
    assert code == 0, out
    assert "_full.sqlite.zst" in out
    code, out = _vya(config, "restore", "lite", "-d", "shop.db")
    assert code == 2
    assert "--latest" in out
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--mode", "wild")
    assert code == 2
    assert "unknown --mode" in out


def test_two_backups_in_the_same_second_both_survive(setup: tuple[Path, Path]) -> None:
    from datetime import UTC, datetime

    from vya_backupdb.config.loader import load_settings
    from vya_backupdb.jobs.backup import BackupJob, BackupRequest

    config, _ = setup
    fixed = datetime(2026, 11, 21, 2, 30, 0, tzinfo=UTC)
    job = BackupJob(load_settings(config, None), clock=lambda: fixed)
    first = job.run(BackupRequest())
    second = job.run(BackupRequest())
    names = [r.record.file_info.name for r in (*first.results, *second.results) if r.record]
    assert len(names) == 2
    assert len(set(names)) == 2
    listing = json.loads(_vya(config, "list", "--json")[1])["backups"]
    assert len(listing) == 2
