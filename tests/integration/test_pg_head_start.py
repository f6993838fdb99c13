"""engines/pg_head.py against a real server: a named database's pg_dump started before the
engine, in a snapshot psql exports; the engine adopts it and counts rows in that snapshot.

A head start must change nothing a backup records or restores: the rows recorded are those of
the dump even on a busy server, a failed start gives way to the ordinary path (and its
errors), and one never adopted leaves no process or session behind.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import write_config

from harness.postgres import PgServer
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines import pg_head
from vya_backupdb.engines.base import RestoreOptions
from vya_backupdb.engines.postgresql import PostgresEngine

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: A quote, an '=' and a space: the name reaches psql and pg_dump as a quoted conninfo.
DB = "head start 'q'=1"


@pytest.fixture
def busy_db(pg_server: PgServer) -> Iterator[str]:
    pg_server.drop_db(DB)
    pg_server.create_db(DB)
    pg_server.psql(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, note text NOT NULL);"
        "INSERT INTO orders (note) SELECT 'o' || g FROM generate_series(1, 2000) g;"
        "CREATE TABLE refs (id int PRIMARY KEY, body jsonb);"
        "INSERT INTO refs SELECT g, jsonb_build_object('n', g) FROM generate_series(1, 77) g;",
        DB,
    )
    yield DB
    pg_server.drop_db(DB)


def _instance(server: PgServer, **overrides: Any) -> InstanceConfig:
    instance: InstanceConfig = server.instance("pg-head", **overrides)
    return instance


def _start(instance: InstanceConfig, password: str | None, db: str) -> pg_head.HeadStart | None:
    return pg_head.start(instance.id, instance, password, db,
                         fmt=instance.format, options=instance.dump_options)  # fmt: skip


def _sessions(server: PgServer, db: str) -> int:
    with contextlib.closing(server.connect()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        ).fetchone()
    return int(row[0])


def _wait_no_sessions(server: PgServer, db: str) -> int:
    deadline = time.monotonic() + 10
    while (left := _sessions(server, db)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_wanted_only_for_a_named_database_whose_format_is_known(pg_server: PgServer) -> None:
    instance = _instance(pg_server)
    assert pg_head.wanted(instance, ("a", "b")) == "a"
    assert pg_head.wanted(instance, ()) is None  # every database: the listing comes first
    sized = _instance(pg_server, directory_format_above_bytes=1)
    assert pg_head.wanted(sized, ("a",)) is None
    assert pg_head.wanted(_instance(pg_server, format="directory"), ("a",)) is None
    own = _instance(pg_server, dump_options=["--serializable-deferrable"])
    assert pg_head.wanted(own, ("a",)) is None
    # The engine resolves the password again: a command is not asked twice.
    command = _instance(pg_server, password_env=None, password_command="echo secret")
    assert pg_head.wanted(command, ("a",)) is None


def test_export_command_keeps_the_password_out_of_argv(pg_server: PgServer) -> None:
    command = pg_head.make_export_command("psql", _instance(pg_server), pg_server.password, DB)
    assert pg_server.password not in " ".join(command.argv)
    assert command.env["PGPASSWORD"] == pg_server.password
    assert pg_server.password not in command.display()


def test_adopted_head_start_dumps_and_counts_in_one_snapshot_under_concurrent_inserts(
    pg_server: PgServer, busy_db: str, tmp_path: Path
) -> None:
    """Rows inserted while the dump runs are neither dumped nor counted: the restore holds
    exactly the recorded rows, and the source has moved on."""
    instance = _instance(pg_server)
    stop = threading.Event()
    inserted = [0]

    def insert() -> None:
        with contextlib.closing(pg_server.connect(busy_db)) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO orders (note) VALUES ('late')")
                inserted[0] += 1

    writer = threading.Thread(target=insert, daemon=True)
    writer.start()
    dump_file = tmp_path / "head.dump"
    try:
        while inserted[0] < 20:
            time.sleep(0.01)
        head = _start(instance, pg_server.password, busy_db)
        assert head is not None
        engine = PostgresEngine(instance, pg_server.password)
        engine.adopt_head_start(head)
        time.sleep(0.2)  # rows keep coming after the snapshot was taken
        with engine.dump(busy_db) as stream, dump_file.open("wb") as out:
            while chunk := stream.read(1 << 12):
                out.write(chunk)
                time.sleep(0.002)
    finally:
        stop.set()
        writer.join()
    started = head._started.result()
    assert started is not None  # the head start's pg_dump is the one that ran
    assert f"--snapshot={started.snapshot}" in stream.command
    counts = stream.row_counts
    assert counts is not None
    assert counts["public.refs"] == 77
    assert counts["public.orders"] >= 2020
    target = "head start restored"
    pg_server.drop_db(target)
    try:
        with dump_file.open("rb") as handle:
            engine.restore(target, handle, RestoreOptions(expected_rows=counts))
        assert engine.table_stats(target) == counts
        assert engine.table_stats(busy_db)["public.orders"] > counts["public.orders"]
    finally:
        pg_server.drop_db(target)
    # The exporting psql ended with the dump: no session of ours is left on the database.
    assert _wait_no_sessions(pg_server, busy_db) == 0


def test_row_counts_beside_the_dump_use_no_parallel_workers(
    pg_server: PgServer, busy_db: str, tmp_path: Path
) -> None:
    """The counts run beside the dump on cores it needs, and parallel workers come out of the
    pool the applications share: one process per count, even where the planner would go
    parallel (here: parallel plans made free). auto_explain logs each count's plan."""
    settings = {
        "parallel_setup_cost": "0",
        "parallel_tuple_cost": "0",
        "min_parallel_table_scan_size": "0",
        "min_parallel_index_scan_size": "0",
        "session_preload_libraries": "'auto_explain'",
        "auto_explain.log_min_duration": "0",
    }
    q = '"' + busy_db.replace('"', '""') + '"'
    pg_server.psql(";".join(f"ALTER DATABASE {q} SET {k} = {v}" for k, v in settings.items()))
    # The planner does go parallel for this count in this database (what the fix prevents):
    with contextlib.closing(pg_server.connect(busy_db)) as conn:
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN SELECT count(*) FROM public.orders").fetchall()
        )
    assert "Workers Planned" in plan
    log = pg_server.base_dir / "server.log"
    offset = log.stat().st_size
    instance = _instance(pg_server)
    engine = PostgresEngine(instance, pg_server.password)
    with engine.dump(busy_db) as stream, (tmp_path / "d.dump").open("wb") as out:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
    assert stream.row_counts == {"public.orders": 2000, "public.refs": 77}
    with log.open("rb") as handle:
        handle.seek(offset)
        logged = handle.read().decode("utf-8", errors="replace")
    counts = [part for part in logged.split("Query Text:") if "SELECT count(*) FROM" in part]
    assert len(counts) >= 2, logged[-2000:]
    assert not [part for part in counts if "Workers" in part or "Gather" in part]


def test_head_start_never_adopted_is_stopped_and_leaves_no_session(
    pg_server: PgServer, busy_db: str
) -> None:
    head = _start(_instance(pg_server), pg_server.password, busy_db)
    assert head is not None
    started = head._started.result()
    assert started is not None
    head.close()
    head.close()  # idempotent
    assert started.reader._proc.poll() is not None  # pg_dump was stopped
    assert head._exporter.poll() is not None
    assert _wait_no_sessions(pg_server, busy_db) == 0


@pytest.mark.parametrize("problem", ["wrong password", "missing database"])
def test_head_start_that_cannot_start_gives_way_to_the_ordinary_path(
    pg_server: PgServer, busy_db: str, problem: str
) -> None:
    password, db = pg_server.password, busy_db
    if problem == "wrong password":
        password = "not-" + pg_server.password
    else:
        db = "no such database here"
    head = _start(_instance(pg_server), password, db)
    assert head is not None
    assert head.adopt() is None  # psql could not export a snapshot: nothing was started
    head.close()
    assert head._exporter.poll() is not None


@pytest.mark.parametrize("same", [True, False])
def test_console_script_head_start_is_taken_only_by_the_same_backup(
    pg_server: PgServer, busy_db: str, tmp_path: Path, same: bool
) -> None:
    """cli/early.py starts the dump before Typer loads; the backup command takes it only for
    the same config, instance and databases — any other is stopped, leaving no session."""
    import os

    from vya_backupdb.cli import early
    from vya_backupdb.config.loader import load_settings

    # (instance_config sets the instance's password variable)
    config = write_config(tmp_path, [pg_server.instance_config("pg-head")])
    environ = dict(os.environ)
    early.start(["-c", str(config), "backup", "pg-head", "-d", busy_db], environ)
    started = early._started
    assert started is not None
    loaded = load_settings(config, None, environ)
    head = early.take(loaded, "pg-head", [busy_db] if same else [busy_db, "other"])
    assert early._started is None  # taken or closed: never twice
    if same:
        assert head is started.head
        assert head.adopt() is not None
        head.close()
    else:
        assert head is None
        assert started.head._exporter.poll() is not None
    assert _wait_no_sessions(pg_server, busy_db) == 0
    early.close()  # nothing left: a no-op


@pytest.mark.parametrize("change", ["user in the file", "password in the environment"])
def test_head_start_from_the_document_is_refused_when_the_validated_commands_differ(
    pg_server: PgServer,
    busy_db: str,
    tmp_path: Path,
    change: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cli/early.py reads the instance from the configuration document before validation;
    the backup takes that dump only when the validated instance gives the very same psql and
    pg_dump commands — here the file or the password changed in between: it is stopped."""
    import os

    import yaml

    from vya_backupdb.cli import early
    from vya_backupdb.config.loader import load_settings

    config = write_config(tmp_path, [pg_server.instance_config("pg-head")])
    environ = dict(os.environ)
    early.start(["-c", str(config), "backup", "pg-head", "-d", busy_db], environ)
    started = early._started
    assert started is not None
    if change == "user in the file":
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
        document["instances"][0]["user"] = "someone_else"
        config.write_text(yaml.safe_dump(document), encoding="utf-8")
    else:
        monkeypatch.setenv(pg_server.password_env, "another password")
    loaded = load_settings(config, None, dict(os.environ))
    assert early.take(loaded, "pg-head", [busy_db]) is None
    assert started.head._exporter.poll() is not None
    assert _wait_no_sessions(pg_server, busy_db) == 0
