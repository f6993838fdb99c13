"""MariaDB ``sql`` backups in per-section frames: row counts taken from the dump stream, and
restores with ``--jobs N`` that load the tables' sections with N clients at once."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import vya
from mysql_compare import compare_databases
from ops_fixtures import load
from test_mysql_engine import TRICKY_DB, _execute_all, _tricky_statements
from test_mysql_restore_stream import _config, _damage_after_check, _engine_log, _leftovers

from harness.mariadb import MariadbServer, quote_identifier
from vya_backupdb.engines.mysql import MysqlEngine
from vya_backupdb.errors import VyaError
from vya_backupdb.jobs.restore import Mode, RestoreJob, RestoreRequest, RestoreResult
from vya_backupdb.storage.local import LocalStorage

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

DB = TRICKY_DB + " sections"
TARGET = "sections ü target"
SECTIONS_LOG = "clients, each reading the script's header and its own tables' frames"
#: A comment line that looks like a section start, inside a trigger body and a routine body
#: (both written raw by mariadb-dump): the scanner must not cut there.
FAKE_MARK = "-- Table structure for table `evil`"


@pytest.fixture
def source(mariadb_server: MariadbServer) -> Iterator[str]:
    """The tricky database plus two tables of several MiB (a foreign key between them, a
    trigger whose body holds a fake section mark), so that the dump has several frames."""
    mariadb_server.drop_db(DB)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(DB)} CHARACTER SET utf8mb4")
    # Without its sequence (a database with sequences is restored by one client: below).
    tricky = [(sql, args) for sql, args in _tricky_statements(DB) if "seq1" not in sql]
    _execute_all(mariadb_server, DB, tricky)
    mariadb_server.sql(
        "CREATE TABLE zz_parent (id INT PRIMARY KEY, body TEXT);"
        "INSERT INTO zz_parent SELECT seq, CONCAT(MD5(seq), REPEAT(MD5(seq * 7), 20),"
        " '\\n-- Table structure for table `x`\\n') FROM seq_1_to_8000;"
        "CREATE TABLE zz_child (id INT PRIMARY KEY, parent INT NOT NULL, note TEXT,"
        " FOREIGN KEY (parent) REFERENCES zz_parent (id));"
        "INSERT INTO zz_child SELECT seq, 1 + seq % 8000, REPEAT(MD5(seq), 25)"
        " FROM seq_1_to_8000;"
        "CREATE TABLE zz_audit (n INT);",
        db=DB,
    )
    mariadb_server.sql(
        "CREATE TRIGGER zz_child_ins AFTER INSERT ON zz_child FOR EACH ROW BEGIN\n"
        f"{FAKE_MARK}\n--\n"
        "INSERT INTO zz_audit VALUES (NEW.id);\nEND",
        db=DB,
    )
    mariadb_server.sql(f"CREATE PROCEDURE zz_proc() BEGIN\n{FAKE_MARK}\nSELECT 1;\nEND", db=DB)
    yield DB
    mariadb_server.drop_db(DB)
    mariadb_server.drop_db(TARGET)


def _backup(config: Path, tmp_path: Path) -> dict[str, Any]:
    code, out = vya(config, "backup", "my", "--no-users")
    assert code == 0, out
    [meta] = (tmp_path / "backups").rglob(f"*{DB[:5]}*_full.metadata.json")
    record: dict[str, Any] = json.loads(meta.read_text())
    return record


def _restore(
    config: Path,
    jobs: int,
    mode: Mode = "fast",
    storage: LocalStorage | None = None,
    progress: list[int] | None = None,
) -> RestoreResult:
    job = RestoreJob(load(config), storage=storage)
    if progress is not None:
        job.progress = progress.append
    request = RestoreRequest(
        instance="my", database=DB, latest=True, target=TARGET, mode=mode, jobs=jobs
    )
    return job.run(request, confirm=lambda _question: True)


def _exact_counts(server: MariadbServer, db: str) -> dict[str, int]:
    tables = server.query(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
        " AND TABLE_TYPE = 'BASE TABLE'",
        args=(db,),
    )
    return {
        name: server.query(f"SELECT COUNT(*) FROM {quote_identifier(db)}.{quote_identifier(name)}")[
            0
        ][0]
        for (name,) in tables
    }


def _assert_one_client_restores_exactly(
    server: MariadbServer,
    source: str,
    config: Path,
    caplog: pytest.LogCaptureFixture,
    jobs: int,
) -> None:
    """``restore --jobs JOBS`` loads the script with one client, exactly."""
    with _engine_log(caplog) as messages:
        result = _restore(config, jobs=jobs)
    assert not any(SECTIONS_LOG in m for m in messages)
    assert compare_databases(server, source, server, TARGET) == []
    assert result.row_check["ok"]


def test_backup_counts_rows_in_the_stream_and_records_sections(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_count_beside(self: MysqlEngine, db: str) -> dict[str, int]:
        raise AssertionError("COUNT(*) beside the dump was not expected")

    monkeypatch.setattr(MysqlEngine, "table_stats", no_count_beside)
    record = _backup(_config(tmp_path, mariadb_server, source), tmp_path)
    assert record["stats"]["tables"] == _exact_counts(mariadb_server, source)
    assert record["stats"]["tables"]["zz_parent"] == 8000
    assert record["stats"]["counts_exact"] is True
    sections = record["extra"]["sql_sections"]
    names = [name for _, kind, name in sections["units"] if kind == "table"]
    assert names == sorted(names) and "weird `name` 'q' \"dq\" ü" in names
    assert "evil" not in names and sections["units"][-1][1] == "tail"
    frames = record["extra"]["frame_index"]["frames"]
    assert frames[0][2] == [] and frames[-1][2] == [sections["tail"]]
    assert len(frames) >= 4  # header, at least two frames of tables, the tail


def test_restore_with_jobs_loads_sections_in_parallel_and_is_exact(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    record = _backup(config, tmp_path)
    size = record["file_info"]["size"]
    reported: list[int] = []
    with _engine_log(caplog) as messages:
        result = _restore(config, jobs=3, progress=reported)
    assert any(SECTIONS_LOG in m for m in messages)
    assert compare_databases(mariadb_server, source, mariadb_server, TARGET) == []
    assert result.row_check["ok"] and result.row_check["tables"] >= 5
    # The progress advanced while the clients read their frames (stored bytes, summed over
    # the readers), never backwards, and ended at the file's size.
    assert reported == sorted(reported) and reported[-1] == size
    assert any(0 < done < size for done in reported)
    # The trigger with the fake mark came through whole, after its table's data.
    [(body,)] = mariadb_server.query(
        "SELECT ACTION_STATEMENT FROM information_schema.TRIGGERS"
        " WHERE TRIGGER_SCHEMA = %s AND TRIGGER_NAME = 'zz_child_ins'",
        args=(TARGET,),
    )
    assert FAKE_MARK in body
    assert mariadb_server.query("SELECT COUNT(*) FROM zz_audit", db=TARGET) == [(0,)]


def test_database_with_a_sequence_is_restored_by_one_client(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (Not used as a column default: MariaDB 10.11's own dump of such a table does not load,
    # "Table 's1' was not locked with LOCK TABLES", whatever restores it.)
    mariadb_server.sql("CREATE SEQUENCE s1 START WITH 100; SELECT NEXTVAL(s1)", db=source)
    config = _config(tmp_path, mariadb_server, source)
    record = _backup(config, tmp_path)
    kinds = [kind for _, kind, _ in record["extra"]["sql_sections"]["units"]]
    assert kinds.count("sequence") == 1
    _assert_one_client_restores_exactly(mariadb_server, source, config, caplog, jobs=3)


def test_restore_with_one_job_reads_the_same_backup_as_one_script(
    mariadb_server: MariadbServer,
    source: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    _backup(config, tmp_path)
    _assert_one_client_restores_exactly(mariadb_server, source, config, caplog, jobs=1)


def test_parallel_restore_of_backup_damaged_after_check_fails_and_keeps_target(
    mariadb_server: MariadbServer, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, mariadb_server, source)
    record = _backup(config, tmp_path)
    [stored] = (tmp_path / "backups").rglob("*_full.sql.zst")
    # Damage the middle of the second frame of tables, as if after the checksum pass.
    frames = record["extra"]["frame_index"]["frames"]
    start, end = frames[2][0], frames[3][0]
    data = bytearray(stored.read_bytes())
    data[(start + end) // 2 : (start + end) // 2 + 64] = b"\xff" * 64
    _damage_after_check(monkeypatch, stored, bytes(data))
    mariadb_server.drop_db(TARGET)
    mariadb_server.sql(f"CREATE DATABASE {quote_identifier(TARGET)}")
    mariadb_server.sql("CREATE TABLE keep_me (x INT); INSERT INTO keep_me VALUES (7)", db=TARGET)
    with pytest.raises(VyaError) as caught:
        _restore(config, jobs=2, mode="safe")
    # zstd frames carry no checksum of their own: the garbage reaches the client, which fails
    # (the whole file's checksum, verified before, is what guards a stored backup).
    assert "mariadb exited with status 1" in caught.value.message
    assert mariadb_server.query("SELECT x FROM keep_me", db=TARGET) == [(7,)]
    assert _leftovers(mariadb_server) == []


def test_counts_are_the_dumps_own_under_concurrent_inserts(
    mariadb_server: MariadbServer, source: str, tmp_path: Path
) -> None:
    """Rows inserted while the dump streams are not in its snapshot: the recorded counts are
    the dump's, so the restore's row check holds (a COUNT(*) beside the dump could not)."""
    stop = threading.Event()

    def insert() -> None:
        with contextlib.closing(mariadb_server.connect(source)) as conn, conn.cursor() as cur:
            n = 100_000
            while not stop.is_set():
                n += 1
                cur.execute("INSERT INTO zz_parent VALUES (%s, 'late')", (n,))

    writer = threading.Thread(target=insert, daemon=True)
    writer.start()
    try:
        config = _config(tmp_path, mariadb_server, source)
        _backup(config, tmp_path)
    finally:
        stop.set()
        writer.join()
    result = _restore(config, jobs=2)
    assert result.row_check["ok"], result.row_check
