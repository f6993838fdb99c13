"""PostgresEngine against real throwaway servers: exact dump/restore round trips.

Every round trip dumps through the engine into a file, restores the file through the engine into
a *fresh database with a different name* (created by the engine from the recorded properties),
and compares source and copy exactly (tests/integration/pg_compare.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from pg_compare import compare_databases, role_snapshot, table_digests

from harness.postgres import PgServer
from vya_backupdb.engines.base import RestoreOptions
from vya_backupdb.engines.postgresql import PostgresEngine
from vya_backupdb.errors import (
    BackupFailed,
    ConnectionFailed,
    IntegrityError,
    NotFoundError,
    RestoreFailed,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FIXTURES = Path(__file__).with_name("pg_fixtures.sql")
SOURCE_DB = 'vya "tricky" db ünï 🐘'
APP_ROLES = ("vya_app_owner", "vya_app_reader")


def _ensure_roles(server: PgServer, roles: tuple[str, ...] = APP_ROLES) -> None:
    for role in roles:
        server.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role}; END IF; END $$;"
        )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def tricky_db(pg_server: PgServer) -> Iterator[str]:
    """The tricky source database, with non-default database-level properties."""
    _ensure_roles(pg_server)
    pg_server.drop_db(SOURCE_DB)
    pg_server.create_db(
        SOURCE_DB,
        "OWNER vya_app_owner TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
        "ICU_LOCALE 'de-DE' LC_COLLATE 'C' LC_CTYPE 'C' CONNECTION LIMIT 50",
    )
    db = _q(SOURCE_DB)
    pg_server.psql(
        f"COMMENT ON DATABASE {db} IS 'tricky ''db'' comment 🐘';\n"
        f"ALTER DATABASE {db} SET timezone TO 'Asia/Kathmandu';\n"
        f'ALTER DATABASE {db} SET search_path TO "$user", public, "other schema";\n'
        f"ALTER ROLE vya_app_reader IN DATABASE {db} SET work_mem TO '8MB';\n"
        f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC;\n"
        f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO vya_app_reader;\n"
    )
    pg_server.psql(FIXTURES.read_text(), dbname=SOURCE_DB)
    yield SOURCE_DB
    pg_server.drop_db(SOURCE_DB)


def _engine(server: PgServer, **overrides: Any) -> PostgresEngine:
    return PostgresEngine(server.instance("pg-test", **overrides), server.password)


def _dump_to_file(engine: PostgresEngine, db: str, path: Path) -> dict[str, Any]:
    with engine.dump(db) as stream, path.open("wb") as out:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
    return {"extension": stream.extension, "command": stream.command, "tool": stream.tool}


class _Reopener:
    """``RestoreOptions.reopen`` over a dump file: counts the extra streams opened."""

    def __init__(self, path: Path, fail: bool = False):
        self.path = path
        self.fail = fail
        self.opened = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[BinaryIO]:
        self.opened += 1
        if self.fail:
            raise IntegrityError("reopened stream is damaged")
        with self.path.open("rb") as handle:
            yield handle


def _restore_file(engine: PostgresEngine, db: str, path: Path, options: RestoreOptions) -> None:
    with path.open("rb") as handle:
        engine.restore(db, handle, options)


@pytest.mark.parametrize(
    ("fmt", "extension"), [("custom", "dump"), ("plain", "sql"), ("directory", "tar")]
)
def test_postgres_engine_round_trip_into_new_name_is_exact(
    pg_server: PgServer, tricky_db: str, tmp_path: Path, fmt: str, extension: str
) -> None:
    engine = _engine(pg_server, format=fmt, jobs=2)
    props = engine.database_properties(tricky_db)
    dump_file = tmp_path / f"dump.{extension}"
    meta = _dump_to_file(engine, tricky_db, dump_file)
    assert meta["extension"] == extension
    assert meta["tool"] == "pg_dump"
    assert pg_server.password not in meta["command"]
    target = f'restored {fmt} «ünï» "q" 🐘'
    pg_server.drop_db(target)
    try:
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(
                format=fmt,
                database_properties=props,
                source_version_num=engine.version_num,
                jobs=2,
            ),
        )
        assert compare_databases(pg_server, tricky_db, pg_server, target) == []
        # The rows naming the source database were not rewritten by the rename.
        rows = pg_server.psql(
            'SELECT "Ünïcödé Column" FROM "other schema"."Table ""With"" Quotes & ünï 🐘" '
            "WHERE \"Ünïcödé Column\" LIKE '%tricky%' ORDER BY 1",
            dbname=target,
        )
        assert SOURCE_DB in rows
        assert target not in rows
    finally:
        pg_server.drop_db(target)


def test_postgres_engine_missing_target_created_with_source_properties(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    props = engine.database_properties(tricky_db)
    assert props["locale_provider"] == "icu"
    assert props["icu_locale"] == "de-DE"
    assert props["comment"] == "tricky 'db' comment 🐘"
    assert props["connection_limit"] == 50
    dump_file = tmp_path / "x.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    target = "props copy"
    pg_server.drop_db(target)
    try:
        _restore_file(engine, target, dump_file, RestoreOptions(database_properties=props))
        copy = engine.database_properties(target)
        for key in ("owner", "encoding", "collate", "ctype", "locale_provider", "icu_locale",
                    "comment", "acl", "privileges", "settings", "role_settings",
                    "connection_limit", "tablespace"):  # fmt: skip
            assert copy[key] == props[key], key
        assert any("search_path" in s for s in copy["settings"])
        assert copy["role_settings"] == {"vya_app_reader": ["work_mem=8MB"]}
    finally:
        pg_server.drop_db(target)


def test_compare_databases_changed_row_reports_difference(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    dump_file = tmp_path / "x.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    target = "compare detects"
    pg_server.drop_db(target)
    try:
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(database_properties=engine.database_properties(tricky_db)),
        )
        pg_server.psql("UPDATE public.orders SET price = price + 0.01 WHERE id = 7", target)
        pg_server.psql("SELECT setval('public.counter_seq', 1)", target)
        pg_server.psql(
            "CREATE OR REPLACE FUNCTION add_numbers(a integer, b integer) RETURNS integer "
            "LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT a - b $$;"
            "REVOKE SELECT ON public.orders FROM vya_app_reader;"
            "SELECT lo_put((SELECT min(oid) FROM pg_largeobject_metadata), 0, '\\xff');"
            f"COMMENT ON DATABASE {_q(target)} IS 'changed';",
            target,
        )
        differences = compare_databases(pg_server, tricky_db, pg_server, target)
        assert any(d.startswith("table public.orders:") for d in differences), differences
        assert any("public.counter_seq" in d for d in differences), differences
        assert any(d.startswith("routines public.add_numbers") for d in differences), differences
        assert any(d.startswith("grants differ") for d in differences), differences
        assert any(d.startswith("large objects") for d in differences), differences
        assert any(d.startswith("database property comment") for d in differences), differences
        assert any(d.startswith("schema differs") for d in differences), differences
    finally:
        pg_server.drop_db(target)


def test_postgres_engine_restore_on_server_with_other_defaults_keeps_values(
    pg_server: PgServer, pg_server_alt: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    source = _engine(pg_server)
    target_engine = _engine(pg_server_alt)
    globals_file = tmp_path / "users.sql"
    with source.dump_globals() as stream, globals_file.open("wb") as out:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
    with globals_file.open("rb") as handle:
        applied = target_engine.restore_globals(handle, list(APP_ROLES), exclude=[])
    assert sorted(applied) == sorted(APP_ROLES)
    dump_file = tmp_path / "x.dump"
    _dump_to_file(source, tricky_db, dump_file)
    target = "alt copy ünï"
    pg_server_alt.drop_db(target)
    try:
        _restore_file(
            target_engine,
            target,
            dump_file,
            RestoreOptions(database_properties=source.database_properties(tricky_db)),
        )
        assert compare_databases(pg_server, tricky_db, pg_server_alt, target) == []
        # Read in the same pinned session settings, the temporal values are identical.
        query = (
            "SET timezone = 'UTC'; SET datestyle = 'ISO, MDY'; SET intervalstyle = 'postgres'; "
            "SET extra_float_digits = 3; "
            "SELECT c_date, c_timestamp, c_timestamptz, c_timetz, c_interval, c_float8 "
            "FROM all_types ORDER BY id"
        )
        assert pg_server_alt.psql(query, target) == pg_server.psql(query, tricky_db)
        assert "Pacific/Chatham" in pg_server_alt.psql("SHOW timezone")
    finally:
        pg_server_alt.drop_db(target)


def test_postgres_engine_selected_tables_restore_brings_indexes_and_data(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    dump_file = tmp_path / "x.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    target = "selected tables"
    pg_server.drop_db(target)
    tables = ["public.orders", "public.order_lines", 'other schema.Table "With" Quotes & ünï 🐘']
    try:
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(
                tables=tuple(tables),
                database_properties=engine.database_properties(tricky_db),
            ),
        )
        assert compare_databases(pg_server, tricky_db, pg_server, target, tables_only=tables) == []
        restored = set(table_digests(pg_server, target))
        assert restored == set(tables)
        catalog = pg_server.psql(
            "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint "
            "WHERE conrelid IN ('public.orders'::regclass, 'public.order_lines'::regclass);"
            "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
            "WHERE tablename = 'orders';"
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal;"
            "SELECT last_value FROM public.orders_id_seq;",
            target,
        ).split("\n")
        assert "order_lines_order_id_fkey" in catalog[0]
        assert "orders_qty_check" in catalog[0]
        assert catalog[1] == "orders_ident_idx,orders_note_idx,orders_pkey"
        assert catalog[2] == "orders_touch"
        assert catalog[3] == "9000"
    finally:
        pg_server.drop_db(target)


def test_postgres_engine_unknown_table_in_selection_raises_not_found(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    dump_file = tmp_path / "x.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    target = "selected missing"
    pg_server.drop_db(target)
    try:
        with pytest.raises(NotFoundError, match="no_such_table"):
            _restore_file(engine, target, dump_file, RestoreOptions(tables=("no_such_table",)))
        # The database the failed restore created is not left behind.
        assert not pg_server.database_exists(target)
    finally:
        pg_server.drop_db(target)


def test_postgres_engine_table_stats_counts_rows_exactly(
    pg_server: PgServer, tricky_db: str
) -> None:
    stats = _engine(pg_server).table_stats(tricky_db)
    assert stats["public.orders"] == 300
    assert stats["public.order_lines"] == 150
    assert stats["public.all_types"] == 4
    assert stats["public.empty_table"] == 0
    assert stats['other schema.Table "With" Quotes & ünï 🐘'] == 28
    assert stats["public.measurements"] == 600
    assert stats["public.measurements_2024"] == 366


def test_postgres_engine_list_databases_includes_sizes(pg_server: PgServer, tricky_db: str) -> None:
    databases = {d.name: d for d in _engine(pg_server).list_databases()}
    assert databases[tricky_db].size_bytes is not None
    assert databases[tricky_db].size_bytes > 1_000_000
    assert "template0" in databases
    info = _engine(pg_server).server_info()
    assert info.product == "PostgreSQL"
    assert info.version_num == pg_server.version_num


def _create_test_roles(server: PgServer) -> None:
    server.psql(
        'DROP ROLE IF EXISTS vya_g_login, vya_g_group, "vya g \'odd""name";'
        "CREATE ROLE vya_g_group NOLOGIN CREATEDB;"
        "CREATE ROLE vya_g_login LOGIN PASSWORD 'secret-pw' CONNECTION LIMIT 7 "
        "  VALID UNTIL '2031-02-03 04:05:06+00' CREATEROLE;"
        'CREATE ROLE "vya g \'odd""name" LOGIN REPLICATION;'
        "GRANT vya_g_group TO vya_g_login WITH ADMIN OPTION;"
        'GRANT vya_g_group TO "vya g \'odd""name";'
        "ALTER ROLE vya_g_login SET search_path TO 'a', 'b c';"
        "ALTER ROLE vya_g_login SET statement_timeout TO '5min';"
        "COMMENT ON ROLE vya_g_group IS 'multi\nline ''comment''';"
    )


G_ROLES = ["vya_g_group", "vya_g_login", "vya g 'odd\"name"]


def _drop_test_roles(server: PgServer) -> None:
    server.psql('DROP ROLE IF EXISTS vya_g_login, vya_g_group, "vya g \'odd""name";')


def test_postgres_engine_globals_round_trip_restores_identical_roles(
    pg_server: PgServer, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    _create_test_roles(pg_server)
    users = {u.name: u for u in engine.list_users()}
    assert users["vya_g_login"].attributes["member_of"] == ["vya_g_group"]
    assert not users["vya_g_login"].builtin
    assert users["pg_read_all_data"].builtin
    assert users[pg_server.superuser].builtin
    before = role_snapshot(pg_server, G_ROLES)
    assert len(before) == 3
    globals_file = tmp_path / "users.sql"
    with engine.dump_globals() as stream, globals_file.open("wb") as out:
        assert stream.extension == "sql"
        while chunk := stream.read(1 << 16):
            out.write(chunk)
    try:
        _drop_test_roles(pg_server)
        assert role_snapshot(pg_server, G_ROLES) == {}
        with globals_file.open("rb") as handle:
            applied = engine.restore_globals(handle, "all", exclude=[])
        assert set(G_ROLES) <= set(applied)
        assert pg_server.superuser not in applied
        assert role_snapshot(pg_server, G_ROLES) == before
        # Again, onto a server where every role exists: merges, never fails.
        with globals_file.open("rb") as handle:
            engine.restore_globals(handle, "all", exclude=[])
        assert role_snapshot(pg_server, G_ROLES) == before
        # The superuser we connect as still logs in with its password.
        assert engine.server_info().version_num == pg_server.version_num
    finally:
        _drop_test_roles(pg_server)


def test_postgres_engine_globals_selected_user_restores_only_that_user(
    pg_server: PgServer, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    _create_test_roles(pg_server)
    before = role_snapshot(pg_server, G_ROLES)
    globals_file = tmp_path / "users.sql"
    with engine.dump_globals() as stream, globals_file.open("wb") as out:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
    try:
        _drop_test_roles(pg_server)
        with globals_file.open("rb") as handle:
            applied = engine.restore_globals(handle, ["vya g 'odd\"name"], exclude=["vya_g_group"])
        assert applied == ["vya g 'odd\"name"]
        after = role_snapshot(pg_server, G_ROLES)
        assert set(after) == {"vya g 'odd\"name"}
        # Its membership needs vya_g_group, which was excluded: skipped, not failed.
        assert after["vya g 'odd\"name"][:-1] == before["vya g 'odd\"name"][:-1]
        assert after["vya g 'odd\"name"][-1] == []
    finally:
        _drop_test_roles(pg_server)


def test_postgres_engine_dump_nonexistent_database_raises_backup_failed(
    pg_server: PgServer, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    with pytest.raises(BackupFailed) as caught:
        _dump_to_file(engine, "no such db", tmp_path / "x.dump")
    assert "does not exist" in str(caught.value)
    assert caught.value.details and "pg_dump" in caught.value.details


def _children_named(name: str) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ")[-1].split()
            comm = stat.read_text().split("(", 1)[1].split(")", 1)[0]
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and comm == name:
            pids.append(int(stat.parent.name))
    return pids


def test_postgres_engine_killed_pg_dump_raises_backup_failed(
    pg_server: PgServer, tricky_db: str
) -> None:
    engine = _engine(pg_server)
    with (
        pytest.raises(BackupFailed, match="killed by signal SIGKILL"),
        engine.dump(tricky_db) as stream,
    ):
        assert stream.read(1024)
        pids = _children_named("pg_dump")
        assert pids
        for pid in pids:
            os.kill(pid, 9)
        while stream.read(1 << 16):
            pass


def test_postgres_engine_wrong_password_raises_connection_failed_without_password(
    pg_server: PgServer, tmp_path: Path
) -> None:
    wrong = "Wrong-Pa55word-xyz"
    engine = PostgresEngine(pg_server.instance("pg-wrong"), wrong)
    with pytest.raises(ConnectionFailed) as caught:
        engine.server_info()
    error = caught.value
    text = f"{error.message}\n{error.hint}\n{error.details}"
    assert "password authentication failed" in text
    assert "vya-backupdb connection test --instance pg-wrong" in error.hint
    assert wrong not in text
    with pytest.raises(ConnectionFailed) as caught_dump:
        _dump_to_file(engine, "postgres", tmp_path / "x.dump")
    text = f"{caught_dump.value.message}\n{caught_dump.value.hint}\n{caught_dump.value.details}"
    assert wrong not in text
    assert "password authentication failed" in text


def test_postgres_engine_server_down_raises_connection_failed_with_hint(
    pg_server: PgServer,
) -> None:
    from harness.postgres import free_port

    port = free_port()
    engine = PostgresEngine(pg_server.instance("pg-down", port=port), pg_server.password)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        engine.list_databases()
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "pg_isready" in caught.value.hint
    assert pg_server.password not in str(caught.value) + caught.value.hint


def test_postgres_engine_drop_and_rename_database_with_odd_names(pg_server: PgServer) -> None:
    engine = _engine(pg_server)
    old, new = "ren 'a' \"b\" ü", "ren new 🐘"
    for name in (old, new):
        pg_server.drop_db(name)
    pg_server.create_db(old)
    with pg_server.connect(old):  # an open session must not block the rename
        engine.rename_database(old, new)
    assert engine.database_exists(new)
    assert not engine.database_exists(old)
    engine.drop_database(new)
    assert not engine.database_exists(new)


PAGILA = Path(os.environ.get("VYA_SAMPLE_DATASETS", "/work/shared/datasets")) / "pagila"


@pytest.mark.slow
def test_postgres_engine_pagila_round_trip_is_exact(pg_server: PgServer, tmp_path: Path) -> None:
    if not (PAGILA / "pagila-schema.sql").is_file():
        pytest.skip(f"Pagila sample not found in {PAGILA} (set VYA_SAMPLE_DATASETS)")
    pg_server.drop_db("pagila")
    pg_server.create_db("pagila")
    target = "pagila restored"
    pg_server.drop_db(target)
    try:
        pg_server.psql((PAGILA / "pagila-schema.sql").read_text(), "pagila")
        pg_server.psql((PAGILA / "pagila-data.sql").read_text(), "pagila")
        engine = _engine(pg_server)
        dump_file = tmp_path / "pagila.dump"
        _dump_to_file(engine, "pagila", dump_file)
        # Parallel restore from streams (no spool): the schema, then the data shared by two
        # pg_restore workers each reading its own stream, then indexes/constraints/ACLs.
        reopen = _Reopener(dump_file)
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(
                database_properties=engine.database_properties("pagila"),
                jobs=2,
                reopen=reopen,
                table_weights=engine.table_stats("pagila"),
            ),
        )
        assert reopen.opened == 1  # the second worker's stream: the streamed path was taken
        assert compare_databases(pg_server, "pagila", pg_server, target) == []
        assert engine.table_stats(target)["public.rental"] == 16044
    finally:
        pg_server.drop_db(target)
        pg_server.drop_db("pagila")


@pytest.mark.parametrize(("fmt", "extension"), [("custom", "dump"), ("plain", "sql")])
def test_postgres_engine_restore_with_owner_reassigns_ownership(
    pg_server: PgServer, tmp_path: Path, fmt: str, extension: str
) -> None:
    _ensure_roles(pg_server)
    source, target = f"owner src {fmt}", f"owner dst {fmt}"
    for name in (source, target):
        pg_server.drop_db(name)
    pg_server.create_db(source)
    pg_server.psql(
        "CREATE TABLE items (id serial PRIMARY KEY, name text);"
        "INSERT INTO items (name) SELECT 'item ' || i FROM generate_series(1, 50) i;"
        "CREATE VIEW item_names AS SELECT name FROM items;"
        "CREATE FUNCTION n_items() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM items $$;"
        "ALTER TABLE items OWNER TO vya_app_owner;",
        source,
    )
    engine = _engine(pg_server, format=fmt)
    dump_file = tmp_path / f"x.{extension}"
    _dump_to_file(engine, source, dump_file)
    try:
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(
                format=fmt,
                owner="vya_app_reader",
                database_properties=engine.database_properties(source),
            ),
        )
        owners = pg_server.psql(
            "SELECT string_agg(DISTINCT pg_get_userbyid(c.relowner), ',') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public';"
            "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'n_items';"
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database();"
            "SELECT n_items();",
            target,
        ).split()
        assert owners == ["vya_app_reader"] * 3 + ["50"]
        assert (
            compare_databases(pg_server, source, pg_server, target, tables_only=["public.items"])
            == []
        )
    finally:
        pg_server.drop_db(source)
        pg_server.drop_db(target)


def test_postgres_dump_counts_rows_in_its_own_snapshot_under_concurrent_inserts(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    """The row counts a dump comes with are taken in the snapshot pg_dump dumps (exported to
    it with --snapshot): rows inserted meanwhile are in neither, so a restore of the dump
    holds exactly the recorded rows even on a busy server."""
    import threading

    engine = _engine(pg_server)
    assert engine.counts_rows_in_dump()
    stop = threading.Event()
    inserted = [0]

    def insert() -> None:
        with contextlib.closing(pg_server.connect(tricky_db)) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO orders (qty, price, note) VALUES (1, 1, 'late')")
                inserted[0] += 1

    writer = threading.Thread(target=insert, daemon=True)
    writer.start()
    dump_file = tmp_path / "busy.dump"
    try:
        while inserted[0] < 20:
            time.sleep(0.01)
        with engine.dump(tricky_db) as stream, dump_file.open("wb") as out:
            while chunk := stream.read(1 << 12):
                out.write(chunk)
                time.sleep(0.002)  # the dump takes a while: rows keep coming
    finally:
        stop.set()
        writer.join()
    assert "--snapshot=" in stream.command
    counts = stream.row_counts
    assert counts is not None and counts["public.orders"] >= 300
    target = "snapshot counts"
    pg_server.drop_db(target)
    try:
        _restore_file(engine, target, dump_file, RestoreOptions(expected_rows=counts))
        assert engine.table_stats(target) == counts
        # The source moved on: a count beside the dump would have missed these rows.
        assert engine.table_stats(tricky_db)["public.orders"] > counts["public.orders"]
    finally:
        pg_server.drop_db(target)
        pg_server.psql("DELETE FROM orders WHERE note = 'late'", dbname=tricky_db)


def test_postgres_dump_options_with_their_own_snapshot_count_beside(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    engine = _engine(pg_server, dump_options=["--serializable-deferrable"])
    assert not engine.counts_rows_in_dump()
    with engine.dump(tricky_db) as stream:
        while stream.read(1 << 16):
            pass
    assert stream.row_counts is None and "--snapshot" not in stream.command


def test_postgres_restored_row_counts_trust_statistics_only_when_they_agree(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    """The row check after a restore takes a table's count from the server's statistics only
    when they show exactly the recorded rows inserted and none deleted: a wrong record, rows
    deleted, or a restore into a database that already existed get exact counts."""
    engine = _engine(pg_server)
    dump_file = tmp_path / "tricky.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    source_counts = engine.table_stats(tricky_db)
    assert source_counts["public.orders"] == 300
    assert source_counts["public.measurements"] > 0  # a partitioned parent
    recorded = {**source_counts, "public.all_types": source_counts["public.all_types"] + 1}
    target = "stats «row» check"
    pg_server.drop_db(target)
    try:
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(
                database_properties=engine.database_properties(tricky_db),
                expected_rows=recorded,
            ),
        )
        pg_server.psql("DELETE FROM orders WHERE id <= 10", dbname=target)
        restored = engine.restored_table_stats(target)
        # Exact: the wrong record is not echoed back, the deleted rows are seen.
        assert restored["public.all_types"] == source_counts["public.all_types"]
        assert restored["public.orders"] == 290
        assert restored["public.measurements"] == source_counts["public.measurements"]
        assert restored == engine.table_stats(target)
        # A database the restore did not create is never confirmed from statistics.
        pg_server.drop_db(target)
        pg_server.create_db(target, "TEMPLATE template0 ENCODING 'UTF8'")
        _restore_file(engine, target, dump_file, RestoreOptions(expected_rows=source_counts))
        assert target not in engine._restored_expected
        assert engine.restored_table_stats(target) == source_counts
    finally:
        pg_server.drop_db(target)


@pytest.mark.parametrize(
    ("dump_options", "jobs", "streams"),
    [
        # Each data worker reads its own stream (reopen): two extra streams for three jobs.
        ([], 3, 2),
        # Compressed by pg_dump itself: not readable from streams, so spooled (no reopen),
        # losing none of the bytes already read.
        (["--compress=6"], 2, 0),
    ],
    ids=["streamed", "pg-dump-compressed-spooled"],
)
def test_postgres_engine_parallel_restore_is_exact(
    pg_server: PgServer,
    tricky_db: str,
    tmp_path: Path,
    dump_options: list[str],
    jobs: int,
    streams: int,
) -> None:
    """jobs > 1 on a custom dump restores exactly — large objects, sequences, ACLs,
    comments included — with no spool when the archive can be read from streams."""
    engine = _engine(pg_server, dump_options=dump_options)
    dump_file = tmp_path / "tricky.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    target = f"parallel «ünï» {streams}"
    pg_server.drop_db(target)
    reopen = _Reopener(dump_file)
    try:
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(
                database_properties=engine.database_properties(tricky_db),
                source_version_num=engine.version_num,
                jobs=jobs,
                reopen=reopen,
                table_weights=engine.table_stats(tricky_db),
                expected_rows=engine.table_stats(tricky_db),
            ),
        )
        assert reopen.opened == streams
        assert compare_databases(pg_server, tricky_db, pg_server, target) == []
        source_counts = engine.table_stats(tricky_db)
        # The server's statistics of the new database show every loaded table's rows,
        # partitioned parents included (the sum of their leaves): no table is rescanned.
        inserted = engine._inserted_rows(target)
        assert {t: n for t, n in source_counts.items() if n} == {
            t: n for t, n in inserted.items() if n
        }
        assert engine.restored_table_stats(target) == source_counts
        assert target not in engine._restored_expected  # used once
        assert engine.table_stats(target) == source_counts
    finally:
        pg_server.drop_db(target)


def test_postgres_engine_parallel_restore_worker_failure_fails_and_drops_the_new_db(
    pg_server: PgServer, tricky_db: str, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    dump_file = tmp_path / "tricky.dump"
    _dump_to_file(engine, tricky_db, dump_file)
    target = "parallel failing"
    pg_server.drop_db(target)
    with pytest.raises(IntegrityError, match="damaged"):
        _restore_file(
            engine,
            target,
            dump_file,
            RestoreOptions(jobs=2, reopen=_Reopener(dump_file, fail=True)),
        )
    assert not engine.database_exists(target)


def test_postgres_engine_restore_of_a_damaged_archive_fails_cleanly(
    pg_server: PgServer, tmp_path: Path
) -> None:
    engine = _engine(pg_server)
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"PGDMP\x01\x0e\x00" + b"\x00" * 10)
    pg_server.drop_db("from junk")
    with pytest.raises(RestoreFailed):
        _restore_file(engine, "from junk", junk, RestoreOptions(jobs=2, reopen=_Reopener(junk)))
    assert not engine.database_exists("from junk")
