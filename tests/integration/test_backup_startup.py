"""What a backup run loads and asks before its dump tool starts, against real servers.

The fixed cost of a run (issue 6) is start-up plus catalog queries; these tests pin the parts
taken off it: only the named databases are sized, and a backup imports neither the other
engine's driver nor restore-only, remote, encryption or other commands' modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.mariadb import MariadbServer
from harness.postgres import PgServer
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.mysql import MysqlEngine
from vya_backupdb.engines.postgresql import PostgresEngine

pytestmark = [pytest.mark.integration]

PG_DB = "vya_startup ünï"
MY_DB = "vya_startup_Case"

#: Never needed by a plain (unencrypted, local, no stored credential) backup run.
NOT_FOR_A_BACKUP = (
    "boto3",
    "botocore",
    "azure",
    "google",
    "paramiko",
    "yaml",  # the config is JSON
    "vya_backupdb.pipeline.encryption",
    "vya_backupdb.jobs.remote",
    "vya_backupdb.engines.pg_globals",
    "vya_backupdb.engines.mysql_parallel",
    "vya_backupdb.cli.config_cmd",
    "vya_backupdb.cli.restore_cmd",
    "vya_backupdb.cli.ops_cmd",
)


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def _config(tmp_path: Path, instance: dict[str, Any]) -> Path:
    """Write a JSON config with ``instance`` and a store under ``tmp_path/store``."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "hostname": "h",
                "storage": {"base_path": str(tmp_path / "store")},
                "instances": [instance],
            }
        ),
        encoding="utf-8",
    )
    return config


def _backup_in_subprocess(
    tmp_path: Path, instance: dict[str, Any], database: str
) -> tuple[set[str], dict[str, Any]]:
    """Run ``vya-backupdb backup`` in a fresh interpreter; return (modules loaded at exit,
    the metadata record written)."""
    config = _config(tmp_path, instance)
    code = textwrap.dedent(
        f"""
        import atexit, json, os, subprocess, sys
        # Each process the run starts, with what was imported at that moment.
        spawned = []
        popen_init = subprocess.Popen.__init__
        def probe(self, args, *a, **k):
            spawned.append({{"argv": [str(x) for x in args], "modules": sorted(
                m for m in ("psycopg", "pymysql", "typer", "pydantic", "vya_backupdb.jobs.backup")
                if m in sys.modules
            )}})
            popen_init(self, args, *a, **k)
        subprocess.Popen.__init__ = probe
        atexit.register(lambda: sys.__stderr__.write(
            "SPAWNED " + json.dumps(spawned) + "\\n"
            + "MODULES " + " ".join(sorted(sys.modules))))
        sys.argv = ["vya-backupdb", "-c", {str(config)!r}, "backup", {instance["id"]!r},
                    "-d", {database!r}, "--no-users", "--no-progress"]
        from vya_backupdb.cli.entry import main
        main()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    modules = set(done.stderr.rsplit("MODULES ", 1)[1].split())
    spawned = json.loads(done.stderr.rsplit("SPAWNED ", 1)[1].split("\n", 1)[0])
    [record] = (tmp_path / "store").rglob("*.metadata.json")
    record = json.loads(record.read_text(encoding="utf-8"))
    record["test_spawned"] = spawned
    return modules, record


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    pg_server.drop_db(PG_DB)
    pg_server.create_db(PG_DB)
    pg_server.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g", PG_DB)
    yield PG_DB
    pg_server.drop_db(PG_DB)


@pytest.fixture
def my_database(mariadb_server: MariadbServer) -> Iterator[str]:
    mariadb_server.drop_db(MY_DB)
    mariadb_server.create_db(MY_DB)
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY)", MY_DB)
    mariadb_server.sql("INSERT INTO t SELECT seq FROM seq_1_to_500", MY_DB)
    yield MY_DB
    mariadb_server.drop_db(MY_DB)


@pytest.mark.postgres
def test_pg_list_databases_named_returns_only_those_that_exist(
    pg_server: PgServer, pg_database: str
) -> None:
    engine = PostgresEngine(pg_server.instance(), pg_server.password)

    named = engine.list_databases([pg_database, "vya_startup_missing"])
    every = {d.name: d for d in engine.list_databases()}

    assert named == [every[pg_database]]
    assert named[0].size_bytes
    assert engine.list_databases([]) == []


@pytest.mark.mysql
def test_mysql_list_databases_named_compares_names_exactly(
    mariadb_server: MariadbServer, my_database: str
) -> None:
    instance = InstanceConfig.model_validate(mariadb_server.instance_config("mdb"))
    engine = MysqlEngine(instance, mariadb_server.password)

    named = engine.list_databases([my_database, "vya_startup_missing"])
    every = {d.name: d for d in engine.list_databases()}

    assert named == [every[my_database]]
    # information_schema compares case-insensitively; the backup must not accept another case
    assert engine.list_databases([my_database.lower()]) == []


@pytest.mark.postgres
def test_pg_backup_run_loads_no_module_it_does_not_need(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    modules, record = _backup_in_subprocess(tmp_path, pg_server.instance_config("pg"), pg_database)

    unneeded = (*NOT_FOR_A_BACKUP, "pymysql", "cryptography")
    assert [p for p in unneeded if _loaded(modules, p)] == []
    assert record["extra"]["database_properties"]["name"] == pg_database
    assert record["backup_info"]["tool_version"].startswith("pg_dump (PostgreSQL)")
    assert record["stats"]["tables"] == {"public.t": 500}


@pytest.mark.postgres
def test_pg_backup_of_a_named_database_starts_pg_dump_before_the_job_and_driver_load(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    """The head start (engines/pg_head.py) from the console script (cli/early.py): psql
    exports a snapshot and pg_dump starts in it before Typer, the backup job's modules and
    psycopg are imported; the backup records that dump, and its row counts are exact."""
    _, record = _backup_in_subprocess(tmp_path, pg_server.instance_config("pg"), pg_database)

    dumps = [s for s in record["test_spawned"] if "--format=custom" in s["argv"]]
    assert len(dumps) == 1  # adopted: the job did not start a second pg_dump
    [snapshot] = [a for a in dumps[0]["argv"] if a.startswith("--snapshot=")]
    # psql is started on the main thread before anything else loads — the configuration
    # models (pydantic) included: the instance is read from the document (cli/early.py);
    # pg_dump follows on a thread as soon as psql prints the snapshot (not asserted here).
    exporters = [s for s in record["test_spawned"] if s["argv"][0].endswith("psql")]
    assert len(exporters) == 1 and exporters[0]["modules"] == []
    assert pg_server.password not in json.dumps(record["test_spawned"])
    assert snapshot in record["backup_info"]["dump_command"]
    assert record["stats"]["tables"] == {"public.t": 500}
    assert record["stats"]["counts_exact"] is True  # counted in the dump's snapshot


@pytest.mark.mysql
def test_mysql_backup_run_loads_no_module_it_does_not_need(
    tmp_path: Path, mariadb_server: MariadbServer, my_database: str
) -> None:
    os.environ[mariadb_server.password_env] = mariadb_server.password
    instance = mariadb_server.instance_config("my")
    modules, record = _backup_in_subprocess(tmp_path, instance, my_database)

    # (PyMySQL itself imports cryptography, for its sha256 authentication)
    assert [p for p in (*NOT_FOR_A_BACKUP, "psycopg") if _loaded(modules, p)] == []
    assert record["extra"]["database_properties"]["character_set"] == "utf8mb4"
    assert "mariadb-dump" in record["backup_info"]["tool_version"]
    assert record["stats"]["tables"] == {"t": 500}
    assert record["stats"]["counts_exact"] is True  # counted in the dump's stream


@pytest.mark.postgres
def test_pg_backup_of_missing_database_lists_the_others(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    config = _config(tmp_path, pg_server.instance_config("pg"))

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vya_backupdb",
            "-c",
            str(config),
            "backup",
            "pg",
            "-d",
            "vya_startup_missing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 2
    assert "database 'vya_startup_missing' does not exist on instance 'pg'" in done.stderr
    assert pg_database in done.stderr  # the hint lists the databases that exist


@pytest.mark.postgres
def test_pg_backup_usage_error_after_the_head_start_leaves_no_session(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    """The console script starts the dump before Typer parses the line (cli/early.py); a line
    Typer then rejects exits 2 and stops that dump: no psql or pg_dump session is left."""
    import time

    config = _config(tmp_path, pg_server.instance_config("pg"))
    argv = ["-c", str(config), "backup", "pg", "-d", pg_database, "--jobs", "many"]
    done = subprocess.run(
        [sys.executable, "-m", "vya_backupdb", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert "--jobs" in done.stderr
    deadline = time.monotonic() + 10
    with pg_server.connect() as conn:
        while True:
            [(left,)] = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (pg_database,)
            ).fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert left == 0
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.dump*"))


@pytest.mark.postgres
def test_pg_head_start_with_a_readable_password_file_warns_once_through_logging(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    """The head start reads a ``password_file`` from the document; the password is then
    resolved once, through the configured logging: one warning about its mode, not two."""
    secret = tmp_path / "pg.pass"
    secret.write_text(pg_server.password + "\n", encoding="utf-8")
    secret.chmod(0o644)
    instance = {**pg_server.instance_config("pg"), "password_env": None}
    instance["password_file"] = "pg.pass"  # relative: beside the config file
    config = _config(tmp_path, instance)

    done = subprocess.run(
        [sys.executable, "-m", "vya_backupdb", "-c", str(config), "--log-format", "json",
         "backup", "pg", "-d", pg_database, "--no-users", "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "has mode 0644" in line]
    assert len(warnings) == 1, done.stderr
    assert json.loads(warnings[0])["level"] == "WARNING"  # through logging, not stderr raw
    assert pg_server.password not in done.stderr + done.stdout
