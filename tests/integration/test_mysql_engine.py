"""MysqlEngine against real MariaDB servers: exact dump → file → restore round trips."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from mysql_compare import (
    account_snapshot,
    assert_databases_equal,
    compare_databases,
    snapshot_database,
)

from harness.mariadb import MariadbServer, quote_identifier
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import RestoreOptions
from vya_backupdb.engines.mysql import MysqlEngine
from vya_backupdb.errors import (
    BackupFailed,
    ConnectionFailed,
    NotFoundError,
    RestoreFailed,
    UsageError,
)

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

TRICKY_DB = "tricky db ü`x'q"
ALL_BYTES = bytes(range(256))
UNICODE_TEXT = "naïve café 🚀 𝄞 日本語 Ωμέγα \"dq\" 'sq' \\ back\ttab\nnewline \0 nul"


def _engine(server: MariadbServer, password: str | None = None) -> MysqlEngine:
    instance = InstanceConfig.model_validate(server.instance_config("mdb"))
    return MysqlEngine(instance, server.password if password is None else password)


def _execute_all(server: MariadbServer, db: str, statements: list[tuple[str, Any]]) -> None:
    with contextlib.closing(server.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        for statement, args in statements:
            cur.execute(statement, args)


def _tricky_statements(db: str) -> list[tuple[str, Any]]:
    """Return the statements that fill the tricky database (args for values, never inlined)."""
    weird_table = "weird `name` 'q' \"dq\" ü"
    return [
        (
            """CREATE TABLE `all types` (
                id INT AUTO_INCREMENT PRIMARY KEY COMMENT 'the key',
                ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT,
                bi BIGINT, biu BIGINT UNSIGNED,
                dec65 DECIMAL(65,30), f FLOAT, d DOUBLE, b BIT(13),
                dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
                c CHAR(10), vc VARCHAR(300), tx TEXT, mtx MEDIUMTEXT,
                bn BINARY(4), vb VARBINARY(300), bl BLOB, lb LONGBLOB,
                e ENUM('a','b c','ü'), st SET('x','y','z'),
                j JSON, g GEOMETRY, p POINT, u UUID, ip INET6,
                gen_v BIGINT AS (i * 2) VIRTUAL,
                gen_s VARCHAR(310) AS (CONCAT(vc, '!')) STORED
            ) ENGINE=InnoDB AUTO_INCREMENT=500 COMMENT='every type'""",
            None,
        ),
        (
            "INSERT INTO `all types` (ti, tiu, si, mi, i, bi, biu, dec65, f, d, b, dt, tm, dtm,"
            " ts, y, c, vc, tx, mtx, bn, vb, bl, lb, e, st, j, g, p, u, ip) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, b'1010101010101', %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))'), POINT(1.5, -2.25), %s, %s)",
            (
                -128,
                255,
                -32768,
                8388607,
                -2147483648,
                -9223372036854775808,
                18446744073709551615,
                "12345678901234567890123456789012345.123456789012345678901234567891",
                3.14159,
                1.7976931348623157e308,
                "1000-01-01",
                "-838:59:59.000000",
                "9999-12-31 23:59:59.999999",
                "2038-01-19 03:14:07.999999",
                2155,
                "ü🚀",
                UNICODE_TEXT,
                UNICODE_TEXT * 100,
                "x" * 70000,
                b"\x00\x01\xfe\x00",
                ALL_BYTES[:255] + b"\x00",
                ALL_BYTES,
                ALL_BYTES * 4096,
                "ü",
                "x,z",
                '{"k": [1, 2.5, "ü", null], "emoji": "🚀", "q": "\\"\'"}',
                "123e4567-e89b-12d3-a456-426655440000",
                "2001:db8::ff00:42:8329",
            ),
        ),
        (
            "INSERT INTO `all types` (ti, tiu, si, i, bi, biu, dec65, f, d, dt, tm, dtm, ts, y,"
            " vc, bl, ip) VALUES (127, 0, 32767, 2147483647, 9223372036854775807, 0,"
            " %s, -1.5e-10, 5e-324, '9999-12-31', '838:59:59.999999', '1000-01-01 00:00:00',"
            " '1970-01-01 00:00:01', 1901, %s, %s, '::ffff:192.0.2.1')",
            ("-0.000000000000000000000000000001", db, ALL_BYTES[::-1]),
        ),
        ("INSERT INTO `all types` (id) VALUES (NULL)", None),  # a row of NULLs
        (
            "CREATE TABLE latin1_t (id INT PRIMARY KEY, s VARCHAR(50), t TEXT)"
            " CHARACTER SET latin1 COLLATE latin1_swedish_ci",
            None,
        ),
        ("INSERT INTO latin1_t VALUES (1, %s, %s), (2, NULL, '')", ("Grüße àéîõü ÿ ©®", "€ æøå")),
        (
            f"CREATE TABLE {quote_identifier(weird_table)} ("
            f"{quote_identifier('col `x` ü')} INT PRIMARY KEY, "
            f"{quote_identifier('other col')} VARCHAR(20) COMMENT 'it''s a \"comment\"')",
            None,
        ),
        (f"INSERT INTO {quote_identifier(weird_table)} VALUES (1, %s)", ("ok",)),
        ("CREATE TABLE ai (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10))", None),
        ("INSERT INTO ai (v) VALUES ('a'), ('b'), ('c')", None),
        ("DELETE FROM ai WHERE id = 3", None),  # counter (4) now ahead of the data
        ("CREATE TABLE parent (id INT PRIMARY KEY)", None),
        (
            "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT,"
            " CONSTRAINT fk_parent FOREIGN KEY (parent_id) REFERENCES parent (id)"
            " ON DELETE CASCADE)",
            None,
        ),
        ("INSERT INTO parent VALUES (1), (2)", None),
        ("INSERT INTO child VALUES (10, 1), (11, 2)", None),
        (
            "CREATE TABLE parted (id INT NOT NULL, v VARCHAR(10), PRIMARY KEY (id))"
            " PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (100),"
            " PARTITION p1 VALUES LESS THAN MAXVALUE)",
            None,
        ),
        ("INSERT INTO parted VALUES (1, 'low'), (500, 'high')", None),
        ("CREATE SEQUENCE seq1 START WITH 100 INCREMENT BY 5 CACHE 10", None),
        ("SELECT NEXTVAL(seq1)", None),
        ("SELECT NEXTVAL(seq1)", None),
        (
            "CREATE VIEW `v all types` AS SELECT a.id, a.vc, l.s FROM `all types` a"
            " LEFT JOIN latin1_t l ON l.id = a.id",
            None,
        ),
        (
            "CREATE FUNCTION `fn ü`(x INT) RETURNS INT DETERMINISTIC"
            " COMMENT 'doubles' RETURN x * 2",
            None,
        ),
        (
            "CREATE PROCEDURE `proc`(IN n INT, OUT total INT)\n"
            "BEGIN\n  DECLARE k INT DEFAULT 0;\n  SELECT COUNT(*) INTO k FROM ai;\n"
            "  SET total = k + n; -- a comment with ; inside\nEND",
            None,
        ),
        (
            "CREATE TRIGGER `ai before` BEFORE INSERT ON ai FOR EACH ROW SET NEW.v = UPPER(NEW.v)",
            None,
        ),
        (
            "CREATE EVENT `nightly ev` ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00'"
            " ON COMPLETION PRESERVE DISABLE COMMENT 'never runs' DO DELETE FROM ai WHERE id < 0",
            None,
        ),
    ]


@pytest.fixture(scope="module")
def tricky_db(mariadb_server: MariadbServer) -> Iterator[str]:
    mariadb_server.drop_db(TRICKY_DB)
    mariadb_server.sql(
        f"CREATE DATABASE {quote_identifier(TRICKY_DB)} CHARACTER SET utf8mb4"
        " COLLATE utf8mb4_unicode_ci COMMENT 'tricky ü'"
    )
    _execute_all(mariadb_server, TRICKY_DB, _tricky_statements(TRICKY_DB))
    yield TRICKY_DB
    mariadb_server.drop_db(TRICKY_DB)


@pytest.fixture(scope="module")
def tricky_dump(
    mariadb_server: MariadbServer, tricky_db: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """Dump the tricky database once through the engine into a file (module scope)."""
    engine = _engine(mariadb_server)
    target = tmp_path_factory.mktemp("dump") / "tricky.sql"
    with engine.dump(tricky_db) as stream, target.open("wb") as out:
        while chunk := stream.read(65536):
            out.write(chunk)
    info = dict(stream.info)
    info["tool"] = stream.tool
    info["command"] = stream.command
    info["extension"] = stream.extension
    info["properties"] = engine.database_properties(tricky_db)
    return target, info


def _restore_file(engine: MysqlEngine, db: str, path: Path, properties: dict[str, Any]) -> None:
    with path.open("rb") as source:
        engine.restore(db, source, RestoreOptions(format="sql", database_properties=properties))


def test_mysql_dump_restore_under_another_name_is_identical(
    mariadb_server: MariadbServer, tricky_db: str, tricky_dump: tuple[Path, dict[str, Any]]
) -> None:
    path, info = tricky_dump
    engine = _engine(mariadb_server)
    target = "restored ü copy"
    mariadb_server.drop_db(target)
    _restore_file(engine, target, path, info["properties"])
    try:
        assert_databases_equal(mariadb_server, tricky_db, mariadb_server, target)
        # The row holding the source database's own name was not rewritten.
        rows = mariadb_server.query(
            "SELECT COUNT(*) FROM `all types` WHERE vc = %s", target, (tricky_db,)
        )
        assert rows[0][0] == 1
        assert engine.table_stats(target) == engine.table_stats(tricky_db)
    finally:
        mariadb_server.drop_db(target)


def test_mysql_dump_file_carries_no_database_name_and_records_binlog(
    mariadb_server: MariadbServer, tricky_dump: tuple[Path, dict[str, Any]]
) -> None:
    path, info = tricky_dump
    head = path.read_bytes()[:20000].decode("utf-8", errors="replace")
    assert "CREATE DATABASE" not in head
    assert "\nUSE " not in head
    assert info["extension"] == "sql"
    assert info["tool"] == "mariadb-dump"
    assert mariadb_server.password not in info["command"]
    binlog = info["binlog"]
    assert binlog is not None
    assert binlog["file"].startswith("binlog.")
    assert binlog["position"] > 0
    assert binlog["gtid"]
    files = [row[0] for row in mariadb_server.query("SHOW BINARY LOGS")]
    assert binlog["file"] in files


def test_mysql_restore_into_server_with_other_defaults_keeps_values(
    mariadb_server: MariadbServer,
    mariadb_server_alt: MariadbServer,
    tricky_db: str,
    tricky_dump: tuple[Path, dict[str, Any]],
) -> None:
    path, info = tricky_dump
    engine = _engine(mariadb_server_alt)
    target = "alt copy"
    mariadb_server_alt.drop_db(target)
    _restore_file(engine, target, path, info["properties"])
    try:
        assert_databases_equal(mariadb_server, tricky_db, mariadb_server_alt, target)
        with contextlib.closing(mariadb_server_alt.connect(target)) as conn, conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute("SELECT CAST(ts AS CHAR), vc FROM `all types` ORDER BY id LIMIT 1")
            ts, text = cur.fetchone()
        assert ts == "2038-01-19 03:14:07.999999"
        assert text == UNICODE_TEXT
        props = engine.database_properties(target)
        assert props["character_set"] == "utf8mb4"
        assert props["collation"] == "utf8mb4_unicode_ci"
        assert props["comment"] == "tricky ü"
        assert engine.server_info().product == "MariaDB"
    finally:
        mariadb_server_alt.drop_db(target)


def test_mysql_comparator_one_changed_row_is_detected(
    mariadb_server: MariadbServer, tricky_db: str, tricky_dump: tuple[Path, dict[str, Any]]
) -> None:
    path, info = tricky_dump
    engine = _engine(mariadb_server)
    target = "compare probe"
    mariadb_server.drop_db(target)
    _restore_file(engine, target, path, info["properties"])
    try:
        assert compare_databases(mariadb_server, tricky_db, mariadb_server, target) == []
        mariadb_server.sql("UPDATE latin1_t SET s = 'Grüße àéîõü ÿ ©?' WHERE id = 1", target)
        diffs = compare_databases(mariadb_server, tricky_db, mariadb_server, target)
        assert diffs == ["rows of latin1_t: 1 row(s) only in the first, 1 only in the second"]
        mariadb_server.sql("ALTER TABLE ai AUTO_INCREMENT = 50", target)
        diffs = compare_databases(mariadb_server, tricky_db, mariadb_server, target)
        assert any(d.startswith("AUTO_INCREMENT counters: ai") for d in diffs)
    finally:
        mariadb_server.drop_db(target)


def test_mysql_engine_information_queries_report_tricky_db(
    mariadb_server: MariadbServer, tricky_db: str
) -> None:
    engine = _engine(mariadb_server)
    info = engine.server_info()
    assert info.product == "MariaDB"
    assert info.version_num == mariadb_server.version_num
    databases = {d.name: d.size_bytes for d in engine.list_databases()}
    assert databases[tricky_db]
    assert "mysql" in databases
    assert engine.database_exists(tricky_db)
    assert not engine.database_exists("no such db")
    stats = engine.table_stats(tricky_db)
    assert stats["all types"] == 3
    assert stats["ai"] == 2
    assert stats["weird `name` 'q' \"dq\" ü"] == 1
    assert "v all types" not in stats  # views are not tables
    assert "seq1" not in stats
    with pytest.raises(NotFoundError):
        engine.database_properties("no such db")


def test_mysql_dump_missing_database_raises_backup_failed_with_stderr(
    mariadb_server: MariadbServer,
) -> None:
    engine = _engine(mariadb_server)
    with pytest.raises(BackupFailed) as caught, engine.dump("no_such_db") as stream:
        while stream.read(65536):
            pass
    error = caught.value
    assert "no_such_db" in (error.details or "") + error.message
    assert "Unknown database" in (error.details or "")
    assert error.hint
    assert mariadb_server.password not in str(error) + (error.details or "")


def test_mysql_wrong_password_raises_connection_failed_without_password(
    mariadb_server: MariadbServer,
) -> None:
    wrong = "Wr0ng-pass-Never-Shown"
    engine = _engine(mariadb_server, password=wrong)
    with pytest.raises(ConnectionFailed) as caught:
        engine.server_info()
    error = caught.value
    text = f"{error.message} {error.hint} {error.details}"
    assert wrong not in text
    assert "Access denied" in error.message
    assert "connection test --instance mdb" in error.hint
    with pytest.raises(ConnectionFailed), engine.dump("mysql"):
        pass


def test_mysql_backup_user_with_odd_password_and_least_privileges_dumps(
    mariadb_server: MariadbServer, tricky_db: str
) -> None:
    # The password goes through the option file (quotes, backslash, '#', non-ASCII) and
    # through PyMySQL: both must send the same UTF-8 bytes.
    password = 'p ü "q" \\ #;x\'s'
    q = quote_identifier(tricky_db)
    statements: list[tuple[str, Any]] = [
        ("DROP USER IF EXISTS 'vya_backup'@'127.0.0.1'", None),
        ("CREATE USER 'vya_backup'@'127.0.0.1' IDENTIFIED BY %s", (password,)),
        (
            f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON {q}.* TO "
            "'vya_backup'@'127.0.0.1'",
            None,
        ),
        ("GRANT RELOAD, BINLOG MONITOR ON *.* TO 'vya_backup'@'127.0.0.1'", None),
    ]
    _execute_all(mariadb_server, "mysql", statements)
    instance = InstanceConfig.model_validate(
        mariadb_server.instance_config("backup", user="vya_backup")
    )
    engine = MysqlEngine(instance, password)
    try:
        assert engine.server_info().product == "MariaDB"
        size = 0
        with engine.dump(tricky_db) as stream:
            while chunk := stream.read(65536):
                size += len(chunk)
        assert size > 100_000
        assert stream.info["binlog"]["position"] > 0
    finally:
        _execute_all(
            mariadb_server, "mysql", [("DROP USER IF EXISTS 'vya_backup'@'127.0.0.1'", None)]
        )


def test_mysql_unreachable_server_raises_connection_failed(mariadb_server: MariadbServer) -> None:
    instance = InstanceConfig.model_validate(mariadb_server.instance_config("down", port=1))
    with pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:1\b") as caught:
        MysqlEngine(instance, "pw").list_databases()
    assert "reachable" in caught.value.hint


def test_mysql_restore_bad_sql_raises_restore_failed_with_stderr(
    mariadb_server: MariadbServer, tmp_path: Path
) -> None:
    engine = _engine(mariadb_server)
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE ok1 (id INT);\nTHIS IS NOT SQL;\nCREATE TABLE never (id INT);\n")
    try:
        with pytest.raises(RestoreFailed) as caught:
            _restore_file(engine, "bad restore", bad, {})
        assert "ERROR 1064" in (caught.value.details or caught.value.message)
        assert engine.table_stats("bad restore") == {"ok1": 0}
    finally:
        mariadb_server.drop_db("bad restore")


def test_mysql_restore_tables_option_raises_usage_error(mariadb_server: MariadbServer) -> None:
    engine = _engine(mariadb_server)
    with pytest.raises(UsageError, match="--tables"):
        engine.restore("x", open(os.devnull, "rb"), RestoreOptions(tables=("t",)))  # noqa: SIM115
    assert not engine.database_exists("x")


def test_mysql_rename_database_with_only_tables_moves_them(mariadb_server: MariadbServer) -> None:
    engine = _engine(mariadb_server)
    for name in ("rename src", "rename dst"):
        mariadb_server.drop_db(name)
    mariadb_server.create_db("rename src", "latin1", "latin1_german1_ci")
    _execute_all(
        mariadb_server,
        "rename src",
        [
            ("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v BLOB)", None),
            ("INSERT INTO t (v) VALUES (%s), (%s)", (ALL_BYTES, b"")),
            ("CREATE SEQUENCE s START WITH 7", None),
            ("SELECT NEXTVAL(s)", None),
        ],
    )
    before = snapshot_database(mariadb_server, "rename src")
    try:
        engine.rename_database("rename src", "rename dst")
        assert not engine.database_exists("rename src")
        after = snapshot_database(mariadb_server, "rename dst")
        assert after == before
        with pytest.raises(NotFoundError):
            engine.rename_database("rename src", "whatever")
    finally:
        for name in ("rename src", "rename dst"):
            mariadb_server.drop_db(name)


def test_mysql_rename_database_with_views_and_routines_copies_exactly(
    mariadb_server: MariadbServer,
    tricky_db: str,
    tricky_dump: tuple[Path, dict[str, Any]],
) -> None:
    path, info = tricky_dump
    engine = _engine(mariadb_server)
    for name in ("swap a", "swap b"):
        mariadb_server.drop_db(name)
    _restore_file(engine, "swap a", path, info["properties"])
    mariadb_server.create_db("swap b")
    try:
        with pytest.raises(RestoreFailed, match="already exists"):
            engine.rename_database("swap a", "swap b")
        mariadb_server.drop_db("swap b")
        engine.rename_database("swap a", "swap b")
        assert not engine.database_exists("swap a")
        assert_databases_equal(mariadb_server, tricky_db, mariadb_server, "swap b")
    finally:
        for name in ("swap a", "swap b"):
            mariadb_server.drop_db(name)


def _db_with_code_objects(
    server: MariadbServer, engine: MysqlEngine, dump: tuple[Path, dict[str, Any]], db: str
) -> Any:
    """Restore the tricky dump as ``db`` (``db`` and ``"{db} b"`` dropped first), add a view
    over a view (named to sort first), a function a view calls and two triggers on one table
    in a set order — what a move must create again in order; return the snapshot of ``db``."""
    path, info = dump
    for name in (db, f"{db} b"):
        server.drop_db(name)
    _restore_file(engine, db, path, info["properties"])
    _execute_all(
        server,
        db,
        [
            ("CREATE FUNCTION `twice`(x INT) RETURNS INT DETERMINISTIC RETURN x * 2", None),
            ("CREATE VIEW `b base` AS SELECT id, `twice`(id) AS d FROM ai", None),
            ("CREATE VIEW `a on b` AS SELECT d FROM `b base` WHERE d > 2", None),
            ("CREATE TABLE audit (n INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(20))", None),
            (
                "CREATE TRIGGER `ai second` AFTER INSERT ON ai FOR EACH ROW"
                " INSERT INTO audit (what) VALUES ('second')",
                None,
            ),
            (
                "CREATE TRIGGER `ai first` AFTER INSERT ON ai FOR EACH ROW PRECEDES `ai second`"
                " INSERT INTO audit (what) VALUES ('first')",
                None,
            ),
        ],
    )
    return snapshot_database(server, db)


def test_mysql_rename_database_moves_code_objects_without_copying(
    mariadb_server: MariadbServer,
    tricky_db: str,
    tricky_dump: tuple[Path, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tables move by RENAME TABLE, views/triggers/routines/events are created again from
    # their SHOW CREATE text: the data is never dumped and loaded again.
    engine = _engine(mariadb_server)
    before = _db_with_code_objects(mariadb_server, engine, tricky_dump, "move a")

    def no_copy(*args: Any) -> None:
        raise AssertionError("the database was copied")

    monkeypatch.setattr(engine, "_copy_database", no_copy)
    try:
        engine.rename_database("move a", "move a b")
        assert not engine.database_exists("move a")
        after = snapshot_database(mariadb_server, "move a b")
        assert after == before
        # The objects work in their new database: the view over a view over a function,
        # both triggers in their order, the trigger that rewrites the row.
        _execute_all(mariadb_server, "move a b", [("INSERT INTO ai (v) VALUES ('moved')", None)])
        rows = mariadb_server.query(
            f"SELECT what FROM {quote_identifier('move a b')}.audit ORDER BY n"
        )
        assert [r[0] for r in rows] == ["first", "second"]
        rows = mariadb_server.query(
            f"SELECT v FROM {quote_identifier('move a b')}.ai ORDER BY id DESC LIMIT 1"
        )
        assert rows[0][0] == "MOVED"
        doubled = mariadb_server.query(f"SELECT d FROM {quote_identifier('move a b')}.`a on b`")
        ids = mariadb_server.query(f"SELECT id FROM {quote_identifier('move a b')}.ai")
        assert sorted(r[0] for r in doubled) == sorted(2 * r[0] for r in ids if 2 * r[0] > 2)
    finally:
        for name in ("move a", "move a b"):
            mariadb_server.drop_db(name)


def test_mysql_rename_database_puts_back_a_failed_move_and_copies(
    mariadb_server: MariadbServer,
    tricky_db: str,
    tricky_dump: tuple[Path, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An object that cannot be created in the new database: the tables go back with their
    # triggers, and the database is copied instead — the result is the same.
    from vya_backupdb.engines import mysql_move

    engine = _engine(mariadb_server)
    before = _db_with_code_objects(mariadb_server, engine, tricky_dump, "put back a")
    create = mysql_move._Session.create
    seen: dict[str, Any] = {"copies": 0, "moved_tables": None}

    def fail_on_events(self: Any, obj: mysql_move.CodeObject) -> None:
        if obj.kind == "event" and seen["moved_tables"] is None:
            seen["moved_tables"] = mariadb_server.query(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
                args=("put back a b",),
            )[0][0]
            raise pymysql.err.OperationalError(1537, "injected: event cannot be created")
        create(self, obj)

    copy = engine._copy_database

    def counting_copy(*args: Any) -> None:
        seen["copies"] += 1
        # Put back before the copy: the old database is whole again.
        assert snapshot_database(mariadb_server, "put back a") == before
        copy(*args)

    monkeypatch.setattr(mysql_move._Session, "create", fail_on_events)
    monkeypatch.setattr(engine, "_copy_database", counting_copy)
    try:
        engine.rename_database("put back a", "put back a b")
        assert seen["moved_tables"] and seen["moved_tables"] > 0  # the move had begun
        assert seen["copies"] == 1
        assert not engine.database_exists("put back a")
        assert snapshot_database(mariadb_server, "put back a b") == before
    finally:
        for name in ("put back a", "put back a b"):
            mariadb_server.drop_db(name)


def test_mysql_rename_database_copies_what_cannot_be_moved_exactly(
    mariadb_server: MariadbServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trigger with non-ASCII text written by a latin1 client: our UTF-8 statements could
    # not re-create it byte for byte, so the database is copied (nothing was moved first).
    engine = _engine(mariadb_server)
    for name in ("latin a", "latin b"):
        mariadb_server.drop_db(name)
    mariadb_server.create_db("latin a", "latin1", "latin1_swedish_ci")
    with contextlib.closing(mariadb_server.connect("latin a")) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (s VARCHAR(20)) CHARACTER SET latin1")
        cur.execute("SET NAMES latin1")
        cur.execute("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.s = 'caf\xe9'")
        cur.execute("SET NAMES utf8mb4")
        cur.execute("INSERT INTO t VALUES ('x')")
    before = snapshot_database(mariadb_server, "latin a")
    copies: list[tuple[Any, ...]] = []
    copy = engine._copy_database

    def counting_copy(*args: Any) -> None:
        copies.append(args)
        copy(*args)

    monkeypatch.setattr(engine, "_copy_database", counting_copy)
    try:
        engine.rename_database("latin a", "latin b")
        assert len(copies) == 1
        assert snapshot_database(mariadb_server, "latin b") == before
    finally:
        for name in ("latin a", "latin b"):
            mariadb_server.drop_db(name)


# -- users and grants ---------------------------------------------------------------------

USER_PASSWORD = "Us3r 'pw' \"q\" \\ ü"
ACCOUNTS: list[tuple[str, str | None]] = [
    ("vya_role_base", None),
    ("vya_role_app", None),
    ("vya_alice", "localhost"),
    ("vya_alice", "10.0.%"),
    ("vya bob ü", "%"),
]


def _create_accounts(server: MariadbServer, db: str) -> None:
    q = quote_identifier(db)
    _execute_all(
        server,
        db,
        [
            ("CREATE ROLE vya_role_base", None),
            ("CREATE ROLE vya_role_app", None),
            ("GRANT vya_role_base TO vya_role_app", None),
            (f"GRANT SELECT ON {q}.* TO vya_role_base", None),
            (f"GRANT INSERT, UPDATE ON {q}.`ai` TO vya_role_app", None),
            (
                "CREATE USER 'vya_alice'@'localhost' IDENTIFIED BY %s"
                " WITH MAX_QUERIES_PER_HOUR 100",
                (USER_PASSWORD,),
            ),
            ("CREATE USER 'vya_alice'@'10.0.%' IDENTIFIED BY 'other'", None),
            ("CREATE USER 'vya bob ü'@'%%' IDENTIFIED BY 'bobpw' ACCOUNT LOCK", ()),
            ("GRANT PROCESS ON *.* TO 'vya_alice'@'localhost'", None),
            (f"GRANT SELECT, INSERT ON {q}.* TO 'vya_alice'@'localhost'", None),
            (f"GRANT UPDATE ON {q}.`latin1_t` TO 'vya_alice'@'localhost'", None),
            (f"GRANT SELECT (s), UPDATE (s) ON {q}.`latin1_t` TO 'vya_alice'@'10.0.%%'", ()),
            # Routine grants use an ASCII database: MariaDB 10.11 loses routine grants on
            # non-ASCII names at FLUSH PRIVILEGES (mojibake in mysql.procs_priv).
            ("CREATE DATABASE IF NOT EXISTS vya_grants", None),
            ("CREATE PROCEDURE IF NOT EXISTS vya_grants.p() SELECT 1", None),
            ("GRANT EXECUTE ON PROCEDURE vya_grants.p TO 'vya_alice'@'10.0.%%'", ()),
            ("GRANT vya_role_app TO 'vya_alice'@'localhost'", None),
            ("SET DEFAULT ROLE vya_role_app FOR 'vya_alice'@'localhost'", None),
            (f"GRANT ALL ON {q}.* TO 'vya bob ü'@'%%' WITH GRANT OPTION", ()),
        ],
    )


def _drop_accounts(server: MariadbServer) -> None:
    statements: list[tuple[str, Any]] = []
    for user, host in ACCOUNTS:
        if host is None:
            statements.append(("DROP ROLE IF EXISTS %s", (user,)))
        else:
            statements.append(("DROP USER IF EXISTS %s@%s", (user, host)))
    _execute_all(server, "mysql", statements)


@pytest.fixture(scope="module")
def users_file(
    mariadb_server: MariadbServer, tricky_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, Any], list[str]]]:
    _drop_accounts(mariadb_server)
    _create_accounts(mariadb_server, tricky_db)
    engine = _engine(mariadb_server)
    snapshot = account_snapshot(mariadb_server, ACCOUNTS)
    path = tmp_path_factory.mktemp("users") / "users.sql"
    with engine.dump_globals() as stream, path.open("wb") as out:
        while chunk := stream.read(4096):
            out.write(chunk)
    yield path, snapshot, list(stream.info["users"])
    _drop_accounts(mariadb_server)
    mariadb_server.drop_db("vya_grants")


def test_mysql_dump_globals_lists_accounts_and_roles(
    mariadb_server: MariadbServer, users_file: tuple[Path, dict[str, Any], list[str]]
) -> None:
    path, _snapshot, names = users_file
    assert "'vya_alice'@'localhost'" in names
    assert "vya_role_app" in names
    assert "'root'@'localhost'" in names
    assert names.index("vya_role_base") < names.index("vya_role_app")
    text = path.read_text()
    assert "--   'vya bob ü'@'%'" in text
    assert USER_PASSWORD not in text  # only the hash is stored
    users = {u.name: u for u in _engine(mariadb_server).list_users()}
    assert users["'root'@'localhost'"].builtin
    assert users["'mariadb.sys'@'localhost'"].builtin
    assert not users["'vya_alice'@'localhost'"].builtin
    assert users["vya_role_app"].attributes["role"] is True


def test_mysql_restore_globals_recreates_identical_accounts_and_is_idempotent(
    mariadb_server: MariadbServer,
    tricky_db: str,
    users_file: tuple[Path, dict[str, Any], list[str]],
) -> None:
    path, snapshot, _names = users_file
    engine = _engine(mariadb_server)
    _drop_accounts(mariadb_server)
    with path.open("rb") as source:
        applied = engine.restore_globals(source, "all", [])
    assert sorted(applied) == sorted(
        [
            "vya_role_base",
            "vya_role_app",
            "'vya_alice'@'localhost'",
            "'vya_alice'@'10.0.%'",
            "'vya bob ü'@'%'",
        ]
    )
    assert account_snapshot(mariadb_server, ACCOUNTS) == snapshot
    # Again, onto existing accounts: no error, nothing changes.
    with path.open("rb") as source:
        engine.restore_globals(source, "all", [])
    assert account_snapshot(mariadb_server, ACCOUNTS) == snapshot
    # The restored password works.
    with (
        contextlib.closing(
            pymysql.connect(
                # 'vya_alice'@'localhost' matches socket logins (no name resolution here).
                unix_socket=mariadb_server.socket,
                user="vya_alice",
                password=USER_PASSWORD.encode(),
                charset="utf8mb4",
            )
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT CURRENT_ROLE()")
        assert cur.fetchone()[0] == "vya_role_app"


def test_mysql_restore_globals_selected_user_brings_its_roles_only(
    mariadb_server: MariadbServer, users_file: tuple[Path, dict[str, Any], list[str]]
) -> None:
    path, snapshot, _names = users_file
    engine = _engine(mariadb_server)
    _drop_accounts(mariadb_server)
    with path.open("rb") as source:
        applied = engine.restore_globals(source, ["vya_alice@localhost"], [])
    assert applied == ["vya_role_base", "vya_role_app", "'vya_alice'@'localhost'"]
    restored = account_snapshot(mariadb_server, ACCOUNTS[:3])
    assert restored == {k: snapshot[k] for k in restored}
    assert not mariadb_server.query(
        "SELECT 1 FROM mysql.user WHERE User IN ('vya bob ü') OR Host = '10.0.%'"
    )
    with path.open("rb") as source, pytest.raises(NotFoundError, match="nobody"):
        engine.restore_globals(source, ["nobody"], [])
    # Leave every account in place for the other tests.
    with path.open("rb") as source:
        engine.restore_globals(source, "all", [])


def test_mysql_restore_globals_onto_other_server_with_builtins_succeeds(
    mariadb_server_alt: MariadbServer,
    tricky_dump: tuple[Path, dict[str, Any]],
    users_file: tuple[Path, dict[str, Any], list[str]],
) -> None:
    path, snapshot, _names = users_file
    engine = _engine(mariadb_server_alt)
    _drop_accounts(mariadb_server_alt)
    mariadb_server_alt.drop_db(TRICKY_DB)
    wanted = [a for a in ACCOUNTS if a[1] != "10.0.%"]
    try:
        # Users first, databases missing: the accounts are created, table grants skipped.
        with path.open("rb") as source:
            applied = engine.restore_globals(source, "all", ["vya_alice@10.0.%"])
        assert "'root'@'localhost'" not in applied
        assert "'mariadb.sys'@'localhost'" not in applied
        assert "'vya_alice'@'10.0.%'" not in applied
        assert "'vya_alice'@'localhost'" in applied
        assert any("vya_role_app" in g and "`ai`" in g for g in engine.skipped_grants)
        # Then the database, then the users again: identical to the source.
        _restore_file(engine, TRICKY_DB, tricky_dump[0], tricky_dump[1]["properties"])
        with path.open("rb") as source:
            engine.restore_globals(source, "all", ["vya_alice@10.0.%"])
        assert engine.skipped_grants == []
        restored = account_snapshot(mariadb_server_alt, wanted)
        assert restored == {k: v for k, v in snapshot.items() if k != "vya_alice@10.0.%"}
        # The alt server's root password still works: built-ins were not touched.
        assert mariadb_server_alt.sql("SELECT 1") == "1"
    finally:
        _drop_accounts(mariadb_server_alt)
        mariadb_server_alt.drop_db(TRICKY_DB)


def test_mysql_users_file_applies_whole_with_the_plain_client(
    mariadb_server: MariadbServer, users_file: tuple[Path, dict[str, Any], list[str]]
) -> None:
    # Standard tools alone: `mariadb < FILE` recreates the accounts and leaves the built-in
    # ones (written commented out) alone, so the target's root password is untouched.
    path, snapshot, _names = users_file
    _drop_accounts(mariadb_server)
    mariadb_server.load_sql(path)
    assert account_snapshot(mariadb_server, ACCOUNTS) == snapshot
    assert mariadb_server.sql("SELECT 1") == "1"
    assert "-- (built-in) ALTER USER `root`@`localhost`" in path.read_text()


# -- Sakila --------------------------------------------------------------------------------


def _sakila_dir() -> Path | None:
    base = Path(os.environ.get("VYA_SAMPLE_DATASETS", "/work/shared/datasets"))
    candidate = base / "sakila"
    if (candidate / "sakila-mv-schema.sql").is_file() and (
        candidate / "sakila-mv-data.sql"
    ).is_file():
        return candidate
    return None


@pytest.mark.slow
def test_mysql_sakila_round_trip_is_identical(
    mariadb_server: MariadbServer, tmp_path: Path
) -> None:
    sakila = _sakila_dir()
    if sakila is None:
        pytest.skip("Sakila not found: set VYA_SAMPLE_DATASETS to the datasets directory")
    if shutil.which("mariadb") is None and shutil.which("mysql") is None:
        pytest.skip("the mariadb client is missing")
    mariadb_server.drop_db("sakila")
    mariadb_server.load_sql(sakila / "sakila-mv-schema.sql")
    mariadb_server.load_sql(sakila / "sakila-mv-data.sql")
    engine = _engine(mariadb_server)
    dump = tmp_path / "sakila.sql"
    try:
        with engine.dump("sakila") as stream, dump.open("wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        _restore_file(engine, "sakila restored", dump, engine.database_properties("sakila"))
        assert engine.table_stats("sakila")["rental"] > 10000
        assert_databases_equal(mariadb_server, "sakila", mariadb_server, "sakila restored")
    finally:
        mariadb_server.drop_db("sakila")
        mariadb_server.drop_db("sakila restored")
