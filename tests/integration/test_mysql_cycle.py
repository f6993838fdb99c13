"""MariaDB through the whole product: CLI → jobs → engine → pipeline → storage → catalog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import vya as _vya
from cli_helpers import write_config as _write_config
from mysql_compare import compare_databases
from test_mysql_engine import TRICKY_DB, _execute_all, _tricky_statements

from harness.mariadb import MariadbServer, quote_identifier

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

DB = TRICKY_DB + " cycle"


@pytest.fixture
def source(mariadb_server: MariadbServer) -> Iterator[str]:
    mariadb_server.drop_db(DB)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(DB)} CHARACTER SET utf8mb4")
    _execute_all(mariadb_server, DB, _tricky_statements(DB))
    yield DB
    mariadb_server.drop_db(DB)


@pytest.fixture
def config(tmp_path: Path, mariadb_server: MariadbServer, source: str) -> Path:
    return _write_config(tmp_path, [mariadb_server.instance_config("my", databases=[source])])


def test_mariadb_backup_records_binlog_and_restores_exactly(
    mariadb_server: MariadbServer, config: Path, source: str
) -> None:
    code, out = _vya(config, "backup", "my", "--json")
    assert code == 0, out
    [meta_path] = (config.parent / "backups").rglob("*_full.metadata.json")
    meta = json.loads(meta_path.read_text())
    assert meta["extra"]["binlog"]["file"]
    assert meta["extra"]["binlog"]["position"] > 0
    assert meta["backup_info"]["tool"].startswith("mariadb-dump")
    assert "--single-transaction" in meta["backup_info"]["dump_command"]
    assert mariadb_server.password not in json.dumps(meta)
    target = "restored ü copy"
    mariadb_server.drop_db(target)
    try:
        code, out = _vya(config, "restore", "my", "-d", source, "--latest", "--target", target)
        assert code == 0, out
        assert compare_databases(mariadb_server, source, mariadb_server, target) == []
    finally:
        mariadb_server.drop_db(target)


def test_mariadb_safe_restore_over_existing_replaces_it(
    mariadb_server: MariadbServer, config: Path, source: str
) -> None:
    assert _vya(config, "backup", "my", "--no-users")[0] == 0
    mariadb_server.sql("CREATE TABLE added_later (x INT)", db=source)
    code, out = _vya(config, "restore", "my", "-d", source, "--latest", "--yes")
    assert code == 0, out
    tables = mariadb_server.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        args=(source,),
    )
    assert ("added_later",) not in tables
    leftovers = mariadb_server.query(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
        args=("%\\_\\_vya\\_%",),
    )
    assert leftovers == []


def test_mariadb_restore_onto_latin1_server_keeps_values(
    mariadb_server: MariadbServer, mariadb_server_alt: MariadbServer, tmp_path: Path, source: str
) -> None:
    config = _write_config(
        tmp_path,
        [
            mariadb_server.instance_config("my", databases=[source], users=False),
            mariadb_server_alt.instance_config("my-alt"),
        ],
        compression={"algorithm": "gzip"},
    )
    assert _vya(config, "backup", "my")[0] == 0
    [dump] = (tmp_path / "backups").rglob("*.sql.gz")
    assert dump.name.endswith("_full.sql.gz")
    mariadb_server_alt.drop_db(source)
    try:
        code, out = _vya(
            config, "restore", "my", "-d", source, "--latest", "--target-instance", "my-alt"
        )
        assert code == 0, out
        assert compare_databases(mariadb_server, source, mariadb_server_alt, source) == []
    finally:
        mariadb_server_alt.drop_db(source)


def test_mariadb_users_restore_with_builtin_accounts_present(
    mariadb_server: MariadbServer, config: Path
) -> None:
    mariadb_server.sql(
        "DROP USER IF EXISTS 'vya_carol'@'%'; "
        "CREATE USER 'vya_carol'@'%' IDENTIFIED BY 'carol-pw-789'; "
        "GRANT SELECT ON *.* TO 'vya_carol'@'%'"
    )
    grants_before = mariadb_server.query("SHOW GRANTS FOR 'vya_carol'@'%'")
    code, out = _vya(config, "users", "backup", "my")
    assert code == 0, out
    [users_file] = (config.parent / "backups").rglob("users_*.sql.zst")
    code, out = _vya(config, "users", "list", "--file", str(users_file), "--json")
    names = [u["user"] for u in json.loads(out)]
    assert "'vya_carol'@'%'" in names
    mariadb_server.sql("DROP USER 'vya_carol'@'%'")
    code, out = _vya(
        config,
        "users",
        "restore",
        "--file",
        str(users_file),
        "--all",
        "--exclude-user",
        "root,mariadb.sys",
        "--yes",
    )
    assert code == 0, out
    assert mariadb_server.query("SHOW GRANTS FOR 'vya_carol'@'%'") == grants_before
    mariadb_server.sql("DROP USER 'vya_carol'@'%'")


def test_mariadb_tables_option_is_refused_with_hint(config: Path, source: str) -> None:
    assert _vya(config, "backup", "my", "--no-users")[0] == 0
    code, out = _vya(
        config, "restore", "my", "-d", source, "--latest", "--tables", "ai", "--target", "x"
    )
    assert code == 2, out
    assert "not supported for MySQL" in out


def test_mariadb_users_show_grants_filters_by_database(
    mariadb_server: MariadbServer, config: Path, source: str
) -> None:
    mariadb_server.sql(
        "DROP USER IF EXISTS 'vya_erin'@'localhost'; CREATE USER 'vya_erin'@'localhost'; "
        f"GRANT SELECT ON {quote_identifier(source)}.* TO 'vya_erin'@'localhost'; "
        "GRANT INSERT ON mysql.* TO 'vya_erin'@'localhost'"
    )
    try:
        code, out = _vya(config, "users", "show-grants", "my", "--database", source)
        assert code == 0, out
        assert "GRANT SELECT ON `" in out
        assert "vya_erin" in out
        assert "ON `mysql`.*" not in out
    finally:
        mariadb_server.sql("DROP USER 'vya_erin'@'localhost'")
