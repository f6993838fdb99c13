"""Parallel backups: several databases at once, one failure never stops the others,
a per-database timeout stops a stuck dump."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.postgres import PgServer
from vya_backupdb.cli.app import app

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

runner = CliRunner()
DBS = ["vya_par_a", "vya_par_b", "vya_par_c"]


def _config(tmp_path: Path, pg_server: PgServer, **overrides: object) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"base_path": str(tmp_path / "b")},
                "instances": [
                    pg_server.instance_config(
                        "pg", databases=["vya_par_*"], users=False, **overrides
                    )
                ],
            }
        )
    )
    return config


@pytest.fixture
def databases(pg_server: PgServer):  # type: ignore[no-untyped-def]
    for db in DBS:
        pg_server.drop_db(db)
        pg_server.create_db(db)
        pg_server.psql(
            f"CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g;"
            f"COMMENT ON TABLE t IS '{db}'",
            dbname=db,
        )
    yield DBS
    for db in DBS:
        pg_server.drop_db(db)


def test_backup_jobs_2_backs_up_every_database_in_planned_order(
    tmp_path: Path, pg_server: PgServer, databases: list[str]
) -> None:
    config = _config(tmp_path, pg_server)
    result = runner.invoke(app, ["--config", str(config), "backup", "pg", "--jobs", "2", "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert [r["database"] for r in run["results"]] == databases
    assert all(r["status"] == "success" for r in run["results"])
    # Each file holds its own database (no mix-up between threads).
    for r in run["results"]:
        restored = f"{r['database']}_copy"
        pg_server.drop_db(restored)
        out = runner.invoke(
            app,
            [
                "--config",
                str(config),
                "restore",
                "pg",
                "-d",
                r["database"],
                "--latest",
                "--target",
                restored,
            ],
        )
        assert out.exit_code == 0, out.output
        comment = pg_server.psql("SELECT obj_description('t'::regclass)", dbname=restored)
        assert r["database"] in comment
        pg_server.drop_db(restored)


def test_backup_one_stuck_database_times_out_and_the_others_succeed(
    tmp_path: Path, pg_server: PgServer, databases: list[str]
) -> None:
    config = _config(tmp_path, pg_server, timeout_seconds=2)
    # Hold an ACCESS EXCLUSIVE lock on one table: pg_dump of that database waits forever.
    conn = pg_server.connect("vya_par_b", autocommit=False)
    conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    try:
        result = runner.invoke(
            app, ["--config", str(config), "backup", "pg", "--jobs", "2", "--json"]
        )
    finally:
        conn.rollback()
        conn.close()
    assert result.exit_code == 6, result.output
    run = json.loads(result.stdout)
    status = {r["database"]: (r["status"], r["error"]) for r in run["results"]}
    assert status["vya_par_a"][0] == "success"
    assert status["vya_par_c"][0] == "success"
    assert status["vya_par_b"][0] == "failed"
    assert re.search(r"timed out|statement timeout", status["vya_par_b"][1] or "")
    assert not list((tmp_path / "b").rglob("vya_par_b_*.dump*"))


def test_backup_jobs_is_faster_than_sequential_or_at_least_correct(
    tmp_path: Path, pg_server: PgServer, databases: list[str]
) -> None:
    # Threads really overlap: record the maximum number of dumps running at once.
    import vya_backupdb.jobs.backup as backup_module

    running = 0
    peak = 0
    lock = threading.Lock()
    original = backup_module.BackupJob.backup_database

    def tracking(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            import time

            time.sleep(0.3)
            return original(self, *args, **kwargs)
        finally:
            with lock:
                running -= 1

    backup_module.BackupJob.backup_database = tracking  # type: ignore[method-assign]
    try:
        config = _config(tmp_path, pg_server)
        result = runner.invoke(app, ["--config", str(config), "backup", "pg", "-j", "3"])
    finally:
        backup_module.BackupJob.backup_database = original  # type: ignore[method-assign]
    assert result.exit_code == 0, result.output
    assert peak == 3
