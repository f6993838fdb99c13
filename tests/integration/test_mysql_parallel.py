"""MariaDB parallel format: per-table files dumped and loaded by ``jobs`` workers, exactly.

Every round trip is compared with mysql_compare (schema, every row, AUTO_INCREMENT counters,
routines, triggers, events, views, character sets) — the same bar as the single-stream dump.
The consistency test writes to two tables in one transaction while they are dumped by two
different workers; the restored copy must still hold the invariant.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import vya, write_config
from mysql_compare import assert_databases_equal, snapshot_database
from test_mysql_engine import TRICKY_DB, _execute_all, _sakila_dir, _tricky_statements
from test_verify import _decompressed, _rewrite_consistently

from harness.mariadb import MariadbServer, quote_identifier
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines import process
from vya_backupdb.engines.base import RestoreOptions
from vya_backupdb.engines.mysql import MysqlEngine
from vya_backupdb.engines.mysql_parallel import MANIFEST_NAME

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

DB = TRICKY_DB + " par"


@pytest.fixture(scope="module")
def source(mariadb_server: MariadbServer) -> Iterator[str]:
    mariadb_server.drop_db(DB)
    mariadb_server.sql(
        f"CREATE DATABASE {quote_identifier(DB)} CHARACTER SET utf8mb4"
        " COLLATE utf8mb4_unicode_ci COMMENT 'parallel ü'"
    )
    _execute_all(mariadb_server, DB, _tricky_statements(DB))
    yield DB
    mariadb_server.drop_db(DB)


def _instance(server: MariadbServer, source: str, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "databases": [source],
        "users": False,
        "mysql_format": "parallel",
        "jobs": 2,
    }
    settings.update(overrides)
    return server.instance_config("my", **settings)


@pytest.fixture
def config(tmp_path: Path, mariadb_server: MariadbServer, source: str) -> Path:
    return write_config(tmp_path, [_instance(mariadb_server, source)])


def _backup(config: Path) -> dict[str, Any]:
    code, out = vya(config, "backup", "my", "--json")
    assert code == 0, out
    [meta_path] = (config.parent / "backups").rglob("*_full.metadata.json")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    return meta


def _no_leftover_temp_dbs(server: MariadbServer) -> None:
    leftovers = server.query(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
        args=("%\\_\\_vya\\_%",),
    )
    assert leftovers == []


def test_parallel_backup_records_format_and_restores_exactly_under_another_name(
    mariadb_server: MariadbServer, config: Path, source: str
) -> None:
    meta = _backup(config)
    info, extra = meta["backup_info"], meta["extra"]
    assert meta["file_info"]["name"].endswith("_full.tar.zst")
    assert meta["file_info"]["extension"] == "tar"
    assert info["dump_format"] == "parallel"
    assert info["tool"] == "mariadb-dump"
    assert "--single-transaction" in info["dump_command"]
    assert "format_reason" not in extra  # parallel was configured, not chosen by size
    assert extra["parallel"]["workers"] == 2
    proof = " ".join(extra["parallel"]["snapshot"]["proof"])
    assert "FLUSH TABLES WITH READ LOCK" in proof
    assert "every worker's own snapshot is at binlog" in proof
    binlog = extra["binlog"]
    assert binlog["file"].startswith("binlog.")
    assert binlog["position"] > 0
    assert binlog["gtid"]
    assert mariadb_server.password not in json.dumps(meta)

    target = "par ü copy `x'"
    mariadb_server.drop_db(target)
    try:
        # Safe mode into a new name: restored into a temporary database, then renamed — a
        # database with views and routines is copied, here by the parallel copy (jobs 2).
        code, out = vya(config, "restore", "my", "-d", source, "--latest", "--target", target)
        assert code == 0, out
        assert_databases_equal(mariadb_server, source, mariadb_server, target)
        # The row holding the source's own name was not rewritten.
        rows = mariadb_server.query(
            "SELECT COUNT(*) FROM `all types` WHERE vc = %s", target, (source,)
        )
        assert rows[0][0] == 1
        _no_leftover_temp_dbs(mariadb_server)
    finally:
        mariadb_server.drop_db(target)


def test_parallel_test_mode_then_safe_restore_over_the_existing_database(
    mariadb_server: MariadbServer, config: Path, source: str
) -> None:
    before = snapshot_database(mariadb_server, source)
    _backup(config)
    code, out = vya(config, "restore", "my", "-d", source, "--latest", "--mode", "test", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["row_check"]["ok"] is True
    test_db = result["target_database"]
    try:
        assert_databases_equal(mariadb_server, source, mariadb_server, test_db)
    finally:
        mariadb_server.drop_db(test_db)

    mariadb_server.sql("CREATE TABLE added_later (x INT)", db=source)
    mariadb_server.sql("DELETE FROM ai", db=source)
    code, out = vya(config, "restore", "my", "-d", source, "--latest", "--yes", "--json")
    assert code == 0, out
    assert json.loads(out)["safety_backup"].endswith("_safety.tar.zst")
    assert snapshot_database(mariadb_server, source) == before
    _no_leftover_temp_dbs(mariadb_server)


def test_parallel_restore_onto_server_with_other_defaults_keeps_values(
    mariadb_server: MariadbServer, mariadb_server_alt: MariadbServer, tmp_path: Path, source: str
) -> None:
    config = write_config(
        tmp_path,
        [_instance(mariadb_server, source), mariadb_server_alt.instance_config("alt", jobs=3)],
    )
    _backup(config)
    mariadb_server_alt.drop_db(source)
    try:
        code, out = vya(
            config, "restore", "my", "-d", source, "--latest", "--target-instance", "alt",
            "--mode", "fast", "--jobs", "3",
        )  # fmt: skip
        assert code == 0, out
        assert_databases_equal(mariadb_server, source, mariadb_server_alt, source)
    finally:
        mariadb_server_alt.drop_db(source)


def test_parallel_dump_without_binary_log_records_no_coordinates(
    mariadb_server_alt: MariadbServer, tmp_path: Path
) -> None:
    server = mariadb_server_alt  # latin1, +05:30, no binary log
    engine = MysqlEngine(
        InstanceConfig.model_validate(
            server.instance_config("alt", mysql_format="parallel", jobs=2)
        ),
        server.password,
    )
    source, copy = "alt ü src", "alt ü copy"
    for name in (source, copy):
        server.drop_db(name)
    server.sql(f"CREATE DATABASE {quote_identifier(source)} CHARACTER SET utf8mb4")
    _execute_all(server, source, _tricky_statements(source))
    archive = tmp_path / "dump.tar"
    try:
        with engine.dump(source) as stream, archive.open("wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        assert stream.info["binlog"] is None
        proof = stream.info["parallel"]["snapshot"]["proof"]
        assert len(proof) == 1
        assert "INNODB_TRX" in proof[0]
        properties = engine.database_properties(source)
        with archive.open("rb") as data:
            engine.restore(
                copy, data,
                RestoreOptions(format="parallel", jobs=2, database_properties=properties),
            )  # fmt: skip
        assert_databases_equal(server, source, server, copy)
    finally:
        for name in (source, copy):
            server.drop_db(name)


@pytest.mark.slow
def test_parallel_sakila_round_trip_is_identical(
    mariadb_server: MariadbServer, tmp_path: Path
) -> None:
    sakila = _sakila_dir()
    if sakila is None:
        pytest.skip("Sakila not found: set VYA_SAMPLE_DATASETS to the datasets directory")
    mariadb_server.drop_db("sakila")
    mariadb_server.load_sql(sakila / "sakila-mv-schema.sql")
    mariadb_server.load_sql(sakila / "sakila-mv-data.sql")
    config = write_config(tmp_path, [_instance(mariadb_server, "sakila", jobs=3)])
    try:
        meta = _backup(config)
        assert meta["extra"]["parallel"]["workers"] == 3
        assert meta["stats"]["tables"]["rental"] > 10000
        code, out = vya(
            config, "restore", "my", "-d", "sakila", "--latest", "--target", "sakila par",
            "--mode", "fast",
        )  # fmt: skip
        assert code == 0, out
        assert_databases_equal(mariadb_server, "sakila", mariadb_server, "sakila par")
    finally:
        mariadb_server.drop_db("sakila")
        mariadb_server.drop_db("sakila par")


def test_parallel_snapshot_is_consistent_under_concurrent_writes(
    mariadb_server: MariadbServer, tmp_path: Path
) -> None:
    """Two tables, dumped by two workers, changed together in every transaction: the copy
    must hold their invariant (a + b constant) and the last committed state of both."""
    db, copy = "par bank", "par bank copy"
    for name in (db, copy):
        mariadb_server.drop_db(name)
    mariadb_server.create_db(db)
    mariadb_server.sql(
        "CREATE TABLE a (id INT PRIMARY KEY, v BIGINT);"
        "CREATE TABLE b (id INT PRIMARY KEY, v BIGINT);"
        "INSERT INTO a VALUES (1, 1000000); INSERT INTO b VALUES (1, 0);"
        "CREATE TABLE pad (id INT PRIMARY KEY, t TEXT);"
        "INSERT INTO pad SELECT seq, REPEAT('x', 500) FROM seq_1_to_5000",
        db,
    )
    stop = threading.Event()
    commits = [0]

    def transfer() -> None:
        with contextlib.closing(mariadb_server.connect(db)) as conn, conn.cursor() as cur:
            cur.execute("SET autocommit = 0")
            while not stop.is_set():
                cur.execute("UPDATE a SET v = v - 1")
                cur.execute("UPDATE b SET v = v + 1")
                conn.commit()
                commits[0] += 1

    engine = MysqlEngine(
        InstanceConfig.model_validate(
            mariadb_server.instance_config("my", mysql_format="parallel", jobs=3)
        ),
        mariadb_server.password,
    )
    writer = threading.Thread(target=transfer, daemon=True)
    writer.start()
    try:
        while commits[0] < 200:
            time.sleep(0.01)
        archive = tmp_path / "bank.tar"
        with engine.dump(db) as stream, archive.open("wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        before_end = commits[0]
    finally:
        stop.set()
        writer.join()
    try:
        with archive.open("rb") as data:
            engine.restore(copy, data, RestoreOptions(format="parallel", jobs=3))
        [(total, moved)] = mariadb_server.query(
            "SELECT (SELECT v FROM a) + (SELECT v FROM b), (SELECT v FROM b)", copy
        )
        assert total == 1000000
        assert 200 <= moved <= before_end
        assert stream.info["parallel"]["workers"] == 3
        assert any("binlog" in p for p in stream.info["parallel"]["snapshot"]["proof"])
    finally:
        mariadb_server.drop_db(db)
        mariadb_server.drop_db(copy)


def test_parallel_format_is_chosen_above_the_size_threshold_only(
    mariadb_server: MariadbServer, tmp_path: Path, source: str
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    big = _instance(mariadb_server, source, mysql_format="sql", parallel_dump_above_bytes=1)
    meta = _backup(write_config(small, [big]))
    assert meta["backup_info"]["dump_format"] == "parallel"
    assert meta["file_info"]["name"].endswith("_full.tar.zst")
    assert "parallel_dump_above_bytes (1)" in meta["extra"]["format_reason"]

    large = tmp_path / "large"
    large.mkdir()
    keep = _instance(mariadb_server, source, mysql_format="sql", parallel_dump_above_bytes=2**40)
    meta = _backup(write_config(large, [keep]))
    assert meta["backup_info"]["dump_format"] == "sql"
    assert meta["file_info"]["name"].endswith("_full.sql.zst")
    assert "format_reason" not in meta["extra"]


def _vya_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("vya-mypar-*")}


@pytest.mark.parametrize(
    "dump_options",
    [
        pytest.param(["--where=no_such_column = 1"], id="fails-after-its-snapshot"),
        pytest.param(["--no-such-option"], id="fails-at-start"),
    ],
)
def test_parallel_failing_worker_stores_nothing_and_exits_6(
    mariadb_server: MariadbServer, tmp_path: Path, source: str, dump_options: list[str]
) -> None:
    before = _vya_temp_dirs()
    config = write_config(tmp_path, [_instance(mariadb_server, source, dump_options=dump_options)])
    started = time.monotonic()
    code, out = vya(config, "backup", "my")
    assert code == 6, out
    assert time.monotonic() - started < 30  # no wait for a snapshot that never comes
    assert "mariadb-dump" in out
    stored = [
        p for p in (tmp_path / "backups").rglob("*") if p.is_file() and "_runs" not in p.parts
    ]
    assert stored == []
    assert _vya_temp_dirs() <= before
    # The lock was released: DDL goes through at once.
    mariadb_server.sql(
        "SET SESSION lock_wait_timeout = 5; CREATE TABLE probe (x INT); DROP TABLE probe", source
    )


def _cut_before_manifest(data: Path) -> bytes:
    raw = _decompressed(data)
    offset = 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            if member.name.removeprefix("./") == MANIFEST_NAME:
                offset = member.offset
    assert offset > 0
    return raw[:offset]


def test_parallel_verify_checks_the_archive_and_finds_a_truncated_one(
    mariadb_server: MariadbServer, config: Path, source: str
) -> None:
    meta = _backup(config)
    code, out = vya(config, "verify", "my", "--latest", "--test-restore")
    assert code == 0, out
    data = next((config.parent / "backups").rglob(Path(meta["file_info"]["name"]).name))
    _rewrite_consistently(config.parent / "backups", data, _cut_before_manifest(data))
    code, out = vya(config, "verify", "my", "--latest", "--level", "checksum")
    assert code == 0, out  # checksums agree: only the integrity level can tell
    code, out = vya(config, "verify", "my", "--latest", "--level", "integrity")
    assert code == 8, out
    assert f"has no {MANIFEST_NAME}" in out
    code, out = vya(config, "restore", "my", "-d", source, "--latest", "--target", "never")
    assert code != 0, out
    assert mariadb_server.query("SHOW DATABASES LIKE 'never'") == []


def test_parallel_password_never_reaches_argv_or_environment(
    mariadb_server: MariadbServer,
    config: Path,
    source: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []
    real_popen = subprocess.Popen

    def spy(args: Any, *rest: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_popen(args, *rest, **kwargs)
        argv = [args] if isinstance(args, str) else [str(a) for a in args]
        # Popen returns after the exec: /proc shows the argv everyone on the host can see.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        files = [a.split("=", 1)[1] for a in argv if a.startswith("--defaults-extra-file=")]
        modes = [os.stat(f).st_mode & 0o777 for f in files]
        seen.append({"argv": argv, "cmdline": cmdline, "env": kwargs.get("env"), "cnf": modes})
        return proc

    monkeypatch.setattr(process.subprocess, "Popen", spy)
    meta = _backup(config)
    target = "par argv check"
    mariadb_server.drop_db(target)
    try:
        code, out = vya(
            config, "restore", "my", "-d", source, "--latest", "--target", target, "--mode", "fast"
        )
        assert code == 0, out
    finally:
        mariadb_server.drop_db(target)
    tools = {Path(s["argv"][0]).name for s in seen}
    assert {"mariadb-dump", "mariadb"} <= tools
    workers = [s for s in seen if "--no-create-info" in s["argv"] and "--no-data" not in s["argv"]]
    assert len(workers) == meta["extra"]["parallel"]["workers"] == 2
    password = mariadb_server.password
    for call in seen:
        assert all(password not in a for a in call["argv"])
        assert password.encode() not in call["cmdline"]
        assert "MYSQL_PWD" not in (call["env"] or {})
        assert all(mode == 0o600 for mode in call["cnf"])
    assert password not in meta["backup_info"]["dump_command"]
