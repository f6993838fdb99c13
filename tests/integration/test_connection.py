"""Connections to the throwaway PostgreSQL and MariaDB servers, through the CLI and the API.

Proves: ``config validate --connect`` is all green; a wrong password gives the troubleshooting
block, a non-zero exit, and the password appears in no output and no log file; databases are
listed with sizes, system databases excluded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.connection import (
    check_connection,
    list_databases_with_sizes,
    make_engine,
)
from vya_backupdb.observability.logging import ROOT_LOGGER
from vya_backupdb.secrets.redaction import clear_registered_secrets

pytestmark = pytest.mark.integration

WRONG = "Wr0ng-Pa55word-xyz"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VYA_BACKUPDB_CONFIG", raising=False)
    monkeypatch.delenv("VYA_BACKUPDB_MASTER_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    clear_registered_secrets()


def write_config(work: Path, *instances: dict[str, Any]) -> Path:
    path = work / "config.yaml"
    data = {
        "hostname": "it",
        "storage": {"base_path": str(work / "backups")},
        "instances": list(instances),
    }
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def assert_wrong_password_handled(work: Path, entry: dict[str, Any], password: str) -> None:
    os.environ["VYA_IT_WRONG_PW"] = WRONG
    try:
        entry = {**entry, "password_env": "VYA_IT_WRONG_PW"}
        write_config(work, entry)
        log_file = work / "vya.log"
        result = cli("-v", "--log-file", str(log_file), "config", "validate", "--connect")
        assert result.exit_code == 4, result.output
        assert "Troubleshooting:" in result.stdout
        assert "authentication" in result.stdout
        assert "next: vya-backupdb credentials set" in result.stdout
        test = cli("--log-format", "json", "--log-file", str(log_file), "connection", "test")
        assert test.exit_code == 4
        assert "Troubleshooting:" in test.stdout
        outputs = [result.stdout, result.stderr, test.stdout, test.stderr, log_file.read_text()]
        for text in outputs:
            assert WRONG not in text
            assert password not in text
        assert "connection-test" in log_file.read_text()
    finally:
        os.environ.pop("VYA_IT_WRONG_PW", None)


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_config_validate_connect_postgres_all_green(work: Path, pg_server: Any) -> None:
    write_config(work, pg_server.instance_config("pg"))
    result = cli("config", "validate", "--connect")
    assert result.exit_code == 0, result.output
    assert "❌" not in result.stdout
    assert "✅ pg: PostgreSQL 15" in result.stdout
    assert pg_server.password not in result.output


@pytest.mark.postgres
def test_config_validate_connect_postgres_wrong_password_troubleshoots(
    work: Path, pg_server: Any
) -> None:
    assert_wrong_password_handled(work, pg_server.instance_config("pg"), pg_server.password)


@pytest.mark.postgres
def test_connection_test_postgres_lists_user_databases_with_sizes(
    work: Path, pg_server: Any
) -> None:
    pg_server.create_db("it_conn_app")
    try:
        write_config(work, pg_server.instance_config("pg"))
        result = cli("connection", "test", "--instance", "pg")
        assert result.exit_code == 0, result.output
        assert "it_conn_app (" in result.stdout
        assert "template0" not in result.stdout
        assert "template1" not in result.stdout
    finally:
        pg_server.drop_db("it_conn_app")


@pytest.mark.postgres
def test_list_databases_postgres_applies_globs(pg_server: Any) -> None:
    pg_server.create_db("it_sel_a")
    pg_server.create_db("it_sel_b")
    try:
        inst = pg_server.instance("pg", databases=["it_sel_*"], exclude_databases=["*_b"])
        rows = list_databases_with_sizes(inst, pg_server.password)
        assert [name for name, _ in rows] == ["it_sel_a"]
        assert rows[0][1] is not None and rows[0][1] > 1_000_000  # an empty PG db is ~7 MB
        everything = list_databases_with_sizes(
            pg_server.instance("pg", include_system_databases=True), pg_server.password
        )
        assert "template1" in [name for name, _ in everything]
    finally:
        pg_server.drop_db("it_sel_a")
        pg_server.drop_db("it_sel_b")


@pytest.mark.postgres
def test_check_connection_postgres_missing_database_is_classified(pg_server: Any) -> None:
    report = check_connection(
        pg_server.instance("pg", database="no_such_db_here"), pg_server.password
    )
    assert not report.ok
    assert report.problem == "database-missing"
    assert any("no_such_db_here" in line for line in report.checks)


@pytest.mark.postgres
def test_check_connection_postgres_unknown_role_is_authentication(pg_server: Any) -> None:
    report = check_connection(pg_server.instance("pg", user="nobody_here"), "whatever-pw")
    assert not report.ok
    assert report.problem == "authentication"
    assert "whatever-pw" not in "\n".join(report.troubleshooting())


@pytest.mark.postgres
def test_make_engine_postgres_url_never_holds_password(pg_server: Any) -> None:
    engine = make_engine(pg_server.instance("pg"), pg_server.password)
    try:
        assert pg_server.password not in str(engine.url)
        assert pg_server.password not in engine.url.render_as_string(hide_password=False)
        assert pg_server.password not in repr(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        engine.dispose()


# --- MariaDB ------------------------------------------------------------------------------


@pytest.mark.mysql
def test_config_validate_connect_mariadb_all_green(work: Path, mariadb_server: Any) -> None:
    write_config(work, mariadb_server.instance_config("maria"))
    result = cli("config", "validate", "--connect")
    assert result.exit_code == 0, result.output
    assert "❌" not in result.stdout
    assert "✅ maria: MariaDB 10." in result.stdout


@pytest.mark.mysql
def test_config_validate_connect_mariadb_wrong_password_troubleshoots(
    work: Path, mariadb_server: Any
) -> None:
    assert_wrong_password_handled(
        work, mariadb_server.instance_config("maria"), mariadb_server.password
    )


@pytest.mark.mysql
def test_connection_test_mariadb_excludes_system_databases(work: Path, mariadb_server: Any) -> None:
    mariadb_server.create_db("it_conn_shop")
    try:
        with mariadb_server.connect("it_conn_shop") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(100))")
            cur.execute("INSERT INTO t VALUES (1, 'x')")
            conn.commit()
        write_config(work, mariadb_server.instance_config("maria"))
        result = cli("connection", "test")
        assert result.exit_code == 0, result.output
        assert "it_conn_shop (" in result.stdout
        for system in ("mysql", "information_schema", "performance_schema", "sys"):
            assert f" {system} (" not in result.stdout
        rows = dict(
            list_databases_with_sizes(
                InstanceConfig.model_validate(mariadb_server.instance_config("maria")),
                mariadb_server.password,
            )
        )
        assert rows["it_conn_shop"] is not None and rows["it_conn_shop"] > 0
    finally:
        mariadb_server.drop_db("it_conn_shop")


@pytest.mark.mysql
def test_check_connection_mariadb_missing_database_is_classified(mariadb_server: Any) -> None:
    inst = InstanceConfig.model_validate(
        mariadb_server.instance_config("maria", database="no_such_db")
    )
    report = check_connection(inst, mariadb_server.password)
    assert not report.ok
    assert report.problem == "database-missing"
