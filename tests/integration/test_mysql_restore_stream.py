"""MariaDB single-stream restore: the decompressor feeds the client directly, row counts are
taken while the load goes on, and a stream that stops short never passes for a restore."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import write_config
from mysql_compare import compare_databases
from ops_fixtures import load
from test_mysql_engine import TRICKY_DB, _engine, _execute_all, _tricky_statements

from harness.mariadb import MariadbServer, quote_identifier
from vya_backupdb.engines.base import RestoreOptions
from vya_backupdb.engines.mysql import LoadedTableCounter
from vya_backupdb.errors import IntegrityError
from vya_backupdb.jobs import restore as restore_job
from vya_backupdb.jobs.restore import Mode, RestoreJob, RestoreRequest, RestoreResult
from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file
from vya_backupdb.storage.local import LocalStorage

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

DB = TRICKY_DB + " stream"
TARGET = "stream ü target"
DIRECT_LOG = "zstd streams the backup straight into"


@pytest.fixture
def source(mariadb_server: MariadbServer) -> Iterator[str]:
    """The tricky database plus a larger table, so that the dump spans several zstd blocks."""
    mariadb_server.drop_db(DB)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(DB)} CHARACTER SET utf8mb4")
    _execute_all(mariadb_server, DB, _tricky_statements(DB))
    mariadb_server.sql(
        "CREATE TABLE zz_bulk (id INT PRIMARY KEY, body TEXT);"
        "INSERT INTO zz_bulk SELECT seq, CONCAT(MD5(seq), REPEAT(MD5(seq * 7), 20))"
        " FROM seq_1_to_30000",
        db=DB,
    )
    yield DB
    mariadb_server.drop_db(DB)
    mariadb_server.drop_db(TARGET)


def _config(tmp_path: Path, server: MariadbServer, source: str, **storage: Any) -> Path:
    return write_config(
        tmp_path, [server.instance_config("my", databases=[source], users=False)], **storage
    )


def _backup(config: Path) -> None:
    from cli_helpers import vya

    code, out = vya(config, "backup", "my", "--no-users")
    assert code == 0, out


def _restore(
    config: Path, mode: Mode = "fast", storage: LocalStorage | None = None
) -> tuple[RestoreResult, list[int]]:
    seen: list[int] = []
    job = RestoreJob(load(config), storage=storage, progress=seen.append)
    request = RestoreRequest(instance="my", database=DB, latest=True, target=TARGET, mode=mode)
    return job.run(request, confirm=lambda _question: True), seen


@contextlib.contextmanager
def _engine_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Yield the messages the MySQL engine logs in the block (the CLI's logging set-up may
    stop records from reaching the root logger, so the handler goes on the logger itself)."""
    logger = logging.getLogger("vya_backupdb.engines.mysql")
    messages: list[str] = []
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        messages.extend(r.getMessage() for r in caplog.records if r.name == logger.name)


def _leftovers(server: MariadbServer) -> list[tuple[Any, ...]]:
    return server.query(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
        args=("%\\_\\_vya\\_%",),
    )


def test_mysql_restore_local_zstd_feeds_client_directly_and_is_exact(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    _backup(config)
    [stored] = (tmp_path / "backups").rglob("*_full.sql.zst")
    with _engine_log(caplog) as messages:
        result, progress = _restore(config)
    assert any(DIRECT_LOG in m for m in messages)
    assert compare_databases(mariadb_server, source, mariadb_server, TARGET) == []
    assert result.row_check["ok"] and result.row_check["tables"] >= 3
    # Progress is the decompressor's offset in the stored file: it ends at the file's size.
    assert progress and progress[-1] == stored.stat().st_size
    assert progress == sorted(progress)


def test_mysql_restore_encrypted_backup_uses_in_process_stream_and_is_exact(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if shutil.which("age") is None:
        pytest.skip("the age CLI is not installed")  # bootstrap installs it; CI fails on skips
    key = tmp_path / "age.key"
    secret, public = generate_identity()
    write_identity_file(key, secret, public)
    encryption = {"recipients": [public], "identity_file": str(key)}
    config = _config(tmp_path, mariadb_server, source, encryption=encryption)
    _backup(config)
    assert list((tmp_path / "backups").rglob("*_full.sql.zst.age"))
    with _engine_log(caplog) as messages:
        result, _ = _restore(config, mode="safe")
    assert any("vya-backupdb feeds the backup into" in m for m in messages)
    assert not any(DIRECT_LOG in m for m in messages)
    assert compare_databases(mariadb_server, source, mariadb_server, TARGET) == []
    assert result.row_check["ok"]


def _damage_after_check(monkeypatch: pytest.MonkeyPatch, stored: Path, damaged: bytes) -> None:
    """Damage the backup file between its verification and its restore: the checksum pass
    reads the good bytes, the restore's decompressor reads ``damaged``."""
    checked = restore_job.check_checksum

    def check_then_damage(*args: Any, **kwargs: Any) -> str:
        digest = checked(*args, **kwargs)
        stored.write_bytes(damaged)
        return digest

    monkeypatch.setattr(restore_job, "check_checksum", check_then_damage)


def _statement_prefix(dump: bytes, fraction: float) -> bytes:
    """Return the dump up to the end of a statement line near ``fraction`` of its length."""
    cut = dump.index(b";\n", int(len(dump) * fraction)) + 2
    return dump[:cut]


@pytest.mark.parametrize("damage", ["cut mid-frame", "shorter valid stream"])
def test_mysql_safe_restore_of_backup_damaged_after_check_fails_and_keeps_target(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    damage: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    _backup(config)
    [stored] = (tmp_path / "backups").rglob("*_full.sql.zst")
    size = stored.stat().st_size
    if damage == "cut mid-frame":
        # zstd fails on it after writing part of the script.
        damaged = stored.read_bytes()[: size // 2]
    else:
        # zstd succeeds, the client too (whole statements): only the bytes read tell.
        dump = subprocess.run(["zstd", "-dc", str(stored)], capture_output=True, check=True)
        prefix = _statement_prefix(dump.stdout, 0.5)
        damaged = subprocess.run(
            ["zstd", "-c"], input=prefix, capture_output=True, check=True
        ).stdout
    # The target exists: safe mode must leave it as it was.
    mariadb_server.drop_db(TARGET)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(TARGET)}")
    mariadb_server.sql("CREATE TABLE keep_me (x INT); INSERT INTO keep_me VALUES (7)", db=TARGET)
    _damage_after_check(monkeypatch, stored, damaged)
    with pytest.raises(IntegrityError, match="stopped short") as caught:
        _restore(config, mode="safe")
    if damage == "cut mid-frame":
        assert "zstd exited with status" in caught.value.message
    else:
        assert f"of its {size} bytes were read" in caught.value.message
    assert mariadb_server.query("SELECT x FROM keep_me", db=TARGET) == [(7,)]
    assert _leftovers(mariadb_server) == []


def test_mysql_restore_of_truncated_file_fails_before_touching_target(
    mariadb_server: MariadbServer, source: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    _backup(config)
    [stored] = (tmp_path / "backups").rglob("*_full.sql.zst")
    with stored.open("r+b") as handle:
        handle.truncate(stored.stat().st_size - 100)
    mariadb_server.drop_db(TARGET)
    with pytest.raises(IntegrityError, match="is truncated"):
        _restore(config, mode="fast")
    assert not mariadb_server.query(
        "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", args=(TARGET,)
    )


def test_mysql_loaded_table_counter_counts_only_tables_complete_before_a_later_one(
    mariadb_server: MariadbServer,
) -> None:
    """Tables are counted once a later object exists, never while they may still grow;
    tables that existed before the watch, and the last table, are left to the caller."""
    db = "vya counter ü"
    mariadb_server.drop_db(db)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(db)}")
    mariadb_server.sql("CREATE TABLE was_there (x INT); INSERT INTO was_there VALUES (1)", db=db)
    counter = LoadedTableCounter(mariadb_server.connect, db, interval=0.02).start()
    pause = 0.3  # many polls

    def step(sql: str) -> None:
        mariadb_server.sql(sql, db=db)
        time.sleep(pause)

    try:
        step("CREATE TABLE first (x INT)")
        step("INSERT INTO first SELECT seq FROM seq_1_to_100")
        step("INSERT INTO first SELECT seq FROM seq_1_to_50")  # still growing: not counted yet
        assert counter.counts == {}
        step("CREATE TABLE second (x INT); INSERT INTO second SELECT seq FROM seq_1_to_7")
        assert counter.counts == {"first": 150}
        step("CREATE VIEW v AS SELECT x FROM second")
        assert counter.stop() == {"first": 150, "second": 7}
    finally:
        counter.stop()
        mariadb_server.drop_db(db)


def test_mysql_loaded_table_counter_stops_promptly_when_nothing_happens(
    mariadb_server: MariadbServer,
) -> None:
    db = "vya counter idle"
    mariadb_server.drop_db(db)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(db)}")
    try:
        counter = LoadedTableCounter(mariadb_server.connect, db).start()
        started = time.monotonic()
        assert counter.stop() == {}
        assert time.monotonic() - started < 2
        assert not any(t.name == "mysql-row-count" for t in threading.enumerate())
    finally:
        mariadb_server.drop_db(db)


def test_mysql_restored_table_stats_equal_a_fresh_count_of_every_table(
    mariadb_server: MariadbServer, source: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    _backup(config)
    [stored] = (tmp_path / "backups").rglob("*_full.sql.zst")
    engine = _engine(mariadb_server)
    mariadb_server.drop_db(TARGET)
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(
            subprocess.Popen(["zstd", "-dc", str(stored)], stdout=subprocess.PIPE)
        )
        assert proc.stdout is not None
        engine.restore(TARGET, proc.stdout, RestoreOptions(format="sql"))
    assert engine.restored_table_stats(TARGET) == engine.table_stats(TARGET)
    assert engine.table_stats(TARGET) == engine.table_stats(source)
