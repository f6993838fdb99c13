"""A restore whose tables hold other row counts than the dump's own counts fails (exit 7):
safe mode leaves the target as it was, fast and test modes say where the rows are. Counts
taken beside the dump (rows may have been written meanwhile) only warn, as before."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import vya, write_config

from harness.postgres import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SOURCE = "rc_source"
TARGET = "rc_target"


@pytest.fixture
def config(tmp_path: Path, pg_server: PgServer) -> Iterator[Path]:
    for db in (SOURCE, TARGET):
        pg_server.drop_db(db)
    pg_server.create_db(SOURCE)
    pg_server.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g;"
        "CREATE TABLE u (id int);"
        "INSERT INTO u SELECT generate_series(1, 5);",
        dbname=SOURCE,
    )
    # The database a safe restore must not touch when it refuses.
    pg_server.create_db(TARGET)
    pg_server.psql("CREATE TABLE keep_me (note text); INSERT INTO keep_me VALUES ('old');", TARGET)
    path = write_config(tmp_path, [pg_server.instance_config("pg", users=False)])
    code, out = vya(path, "backup", "pg", "-d", SOURCE)
    assert code == 0, out
    yield path
    for db in _databases(pg_server):
        if db.startswith(("rc_", f"{SOURCE}_test_")):
            pg_server.drop_db(db)


def _databases(pg_server: PgServer) -> list[str]:
    out = pg_server.psql("SELECT datname FROM pg_database ORDER BY 1")
    return [line.strip() for line in out.splitlines() if line.strip()]


def _edit_record(config: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    [path] = (config.parent / "backups").rglob("*_full.metadata.json")
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2))
    return record


def _expect_one_row_more(record: dict[str, Any]) -> None:
    record["stats"]["tables"]["public.t"] += 1


def test_backup_records_the_counts_as_the_dumps_own(config: Path) -> None:
    record = _edit_record(config, lambda r: None)
    assert record["stats"]["tables"] == {"public.t": 100, "public.u": 5}
    assert record["stats"]["counts_exact"] is True


def test_safe_restore_with_other_counts_leaves_the_target_untouched(
    config: Path, pg_server: PgServer
) -> None:
    _edit_record(config, _expect_one_row_more)
    code, out = vya(config, "restore", "pg", "-d", SOURCE, "--latest", "--target", TARGET, "--yes")
    assert code == 7, out
    flat = " ".join(out.split())
    assert "public.t (expected 101, got 100)" in flat
    assert f"'{TARGET}' was left untouched" in flat
    assert "vya-backupdb list pg" in flat  # the next command to try
    assert "Traceback" not in out
    # The old database is still in place, and no temporary copy is left behind.
    assert pg_server.psql("SELECT note FROM keep_me", TARGET).strip() == "old"
    assert [d for d in _databases(pg_server) if "__vya_" in d] == []


def test_fast_and_test_restores_with_other_counts_fail_and_say_where_the_rows_are(
    config: Path, pg_server: PgServer
) -> None:
    _edit_record(config, _expect_one_row_more)
    code, out = vya(
        config, "restore", "pg", "-d", SOURCE, "--latest", "--target", TARGET, "--mode", "fast",
        "--yes",
    )  # fmt: skip
    assert code == 7, out
    flat = " ".join(out.split())
    assert "fast mode" in flat and "public.t (expected 101, got 100)" in flat

    code, out = vya(config, "restore", "pg", "-d", SOURCE, "--latest", "--mode", "test")
    assert code == 7, out
    assert "kept for inspection" in " ".join(out.split())
    [kept] = [d for d in _databases(pg_server) if d.startswith(f"{SOURCE}_test_")]
    assert pg_server.psql("SELECT count(*) FROM t", kept).strip() == "100"


def test_counts_taken_beside_the_dump_only_warn(config: Path, pg_server: PgServer) -> None:
    """A record without the marker (older backups, counts taken beside the dump) restores
    and warns, as before: rows written during the backup are not an error."""

    def beside(record: dict[str, Any]) -> None:
        _expect_one_row_more(record)
        del record["stats"]["counts_exact"]

    _edit_record(config, beside)
    code, out = vya(config, "restore", "pg", "-d", SOURCE, "--latest", "--target", TARGET, "--yes")
    assert code == 0, out
    assert "row counts differ" in out
    assert pg_server.psql("SELECT count(*) FROM t", TARGET).strip() == "100"
