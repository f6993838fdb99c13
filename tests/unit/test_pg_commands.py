"""argv builders, TOC selection and helpers of the PostgreSQL engine (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg import sql

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines import process
from vya_backupdb.engines.postgresql import (
    PostgresEngine,
    conninfo_dbname,
    make_pg_dump_command,
    make_pg_dumpall_globals_command,
    make_pg_restore_command,
    make_psql_command,
    parse_toc,
    select_toc_entries,
    setting_statement,
)
from vya_backupdb.errors import ToolMissing

pytestmark = pytest.mark.unit

PASSWORD = "s3cr3t-Pa55"
INSTANCE = InstanceConfig(id="pg1", type="postgresql", host="db.example", port=5433, user="bk")


def _no_password_in_argv(argv: list[str] | tuple[str, ...]) -> None:
    assert not any(PASSWORD in arg for arg in argv)


def test_make_pg_dump_command_custom_uncompressed_password_in_env_only() -> None:
    cmd = make_pg_dump_command("pg_dump", INSTANCE, PASSWORD, "my db", extra=["--no-comments"])
    argv = list(cmd.argv)
    _no_password_in_argv(argv)
    assert argv[:4] == ["pg_dump", "--no-password", "--format=custom", "--compress=0"]
    assert "--no-comments" in argv
    assert argv[-1] == "--dbname=dbname='my db'"
    assert cmd.env["PGPASSWORD"] == PASSWORD
    assert cmd.env["PGHOST"] == "db.example"
    assert cmd.env["PGPORT"] == "5433"
    assert cmd.env["PGUSER"] == "bk"
    assert cmd.env["PGAPPNAME"] == "vya-backupdb"
    assert cmd.env["PGCONNECT_TIMEOUT"] == "10"
    assert PASSWORD not in cmd.display()
    # The archive streams out of its stdout: 1 MiB writes, not 4 KiB ones.
    assert cmd.stdout_buffer == 1024 * 1024
    plain = make_pg_dump_command("pg_dump", INSTANCE, PASSWORD, "db", fmt="plain")
    assert plain.stdout_buffer == 1024 * 1024


def test_make_pg_dump_command_directory_needs_dir_and_uses_jobs(tmp_path: Path) -> None:
    cmd = make_pg_dump_command(
        "pg_dump", INSTANCE, None, "db", fmt="directory", jobs=4, output_dir=tmp_path
    )
    assert "--format=directory" in cmd.argv
    assert "--jobs=4" in cmd.argv
    assert f"--file={tmp_path}" in cmd.argv
    assert "PGPASSWORD" not in cmd.env
    assert cmd.stdout_buffer == 0  # writes files, not its stdout
    with pytest.raises(ValueError, match="output_dir"):
        make_pg_dump_command("pg_dump", INSTANCE, None, "db", fmt="directory")
    with pytest.raises(ValueError, match="format"):
        make_pg_dump_command("pg_dump", INSTANCE, None, "db", fmt="tar")


def test_make_pg_dump_command_plain_format() -> None:
    cmd = make_pg_dump_command("pg_dump", INSTANCE, PASSWORD, "db", fmt="plain")
    assert "--format=plain" in cmd.argv
    assert "--compress=0" not in cmd.argv


def test_make_pg_restore_command_owner_jobs_and_list(tmp_path: Path) -> None:
    archive = tmp_path / "a.dump"
    cmd = make_pg_restore_command(
        "pg_restore", INSTANCE, PASSWORD, "tgt", source=archive, jobs=3,
        list_file=tmp_path / "l", owner="app",
    )  # fmt: skip
    argv = list(cmd.argv)
    _no_password_in_argv(argv)
    expected = ["--no-password", "--exit-on-error", "--jobs=3", f"--use-list={tmp_path / 'l'}",
                "--no-owner", "--role=app", str(archive), "--dbname=dbname='tgt'"]  # fmt: skip
    assert set(expected) <= set(argv)
    assert "datestyle=ISO" in cmd.env["PGOPTIONS"]
    assert "--create" not in argv
    assert cmd.stdin_buffer == 0  # reads its file itself
    from_stdin = make_pg_restore_command("pg_restore", INSTANCE, PASSWORD, "tgt")
    assert from_stdin.stdin_buffer == 1024 * 1024  # a dump streamed into it: 1 MiB reads
    with pytest.raises(ValueError, match="parallel"):
        make_pg_restore_command("pg_restore", INSTANCE, PASSWORD, "tgt", jobs=2)


def test_make_psql_command_stops_on_error_reads_stdin() -> None:
    cmd = make_psql_command("psql", INSTANCE, PASSWORD, "tgt")
    _no_password_in_argv(cmd.argv)
    assert list(cmd.argv[4:6]) == ["-v", "ON_ERROR_STOP=1"]
    assert list(cmd.argv[-2:]) == ["-f", "-"]
    assert "-X" in cmd.argv
    assert cmd.stdin_buffer == 1024 * 1024


def test_make_pg_dumpall_globals_command_uses_maintenance_db() -> None:
    inst = InstanceConfig(id="pg1", type="postgresql", database="admin db")
    cmd = make_pg_dumpall_globals_command("pg_dumpall", inst, PASSWORD)
    assert "--globals-only" in cmd.argv
    assert cmd.argv[-1] == "--dbname=dbname='admin db'"
    _no_password_in_argv(cmd.argv)


def test_libpq_socket_instance_uses_socket_dir_as_host() -> None:
    inst = InstanceConfig(id="pg1", type="postgresql", socket=Path("/run/postgresql"))
    cmd = make_pg_dump_command("pg_dump", inst, None, "db")
    assert cmd.env["PGHOST"] == "/run/postgresql"
    assert cmd.env["PGPORT"] == "5432"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("plain", "dbname='plain'"), ("it's", "dbname='it\\'s'"), ("a\\b", "dbname='a\\\\b'"),
     ("host=evil", "dbname='host=evil'")],
)  # fmt: skip
def test_conninfo_dbname_quotes_any_name(name: str, expected: str) -> None:
    assert conninfo_dbname(name) == expected


def test_setting_statement_list_setting_is_split_per_element() -> None:
    target = sql.Identifier("db")
    text = setting_statement(target, 'search_path="$user", public, "other schema"').as_string(None)
    assert text == "SET \"search_path\" TO '$user', 'public', 'other schema'"
    assert setting_statement(target, "TimeZone=Asia/Kathmandu").as_string(None) == (
        "SET \"TimeZone\" TO 'Asia/Kathmandu'"
    )


TOC = """;
; Archive created at 2026-11-21 06:13:55 UTC
;
3360; 0 0 ENCODING - ENCODING
6; 2615 2200 SCHEMA - app schema postgres
215; 1259 16388 TABLE public a postgres
;	depends on: 6
3364; 0 0 COMMENT public TABLE a postgres
;	depends on: 215
214; 1259 16387 SEQUENCE public a_id_seq postgres
;	depends on: 215
3366; 0 0 SEQUENCE OWNED BY public a_id_seq postgres
;	depends on: 214
216; 1259 16397 TABLE public c postgres
218; 1259 16406 TABLE app schema we ird postgres
;	depends on: 6
3206; 2604 16391 DEFAULT public a id postgres
;	depends on: 215 214 215
3354; 0 16388 TABLE DATA public a postgres
;	depends on: 215
3355; 0 16397 TABLE DATA public c postgres
;	depends on: 216
3357; 0 16406 TABLE DATA app schema we ird postgres
;	depends on: 218
3367; 0 0 SEQUENCE SET public a_id_seq postgres
;	depends on: 214
3209; 2606 16395 CONSTRAINT public a a_pkey postgres
;	depends on: 215
3207; 1259 16396 INDEX public a_b_idx postgres
;	depends on: 215
3210; 2606 16400 FK CONSTRAINT public c c_id_fkey postgres
;	depends on: 215 216 3209
"""


def test_parse_toc_reads_descriptions_and_dependencies() -> None:
    entries = parse_toc(TOC.splitlines())
    by_id = {e.dump_id: e for e in entries}
    assert by_id[3354].desc == "TABLE DATA"
    assert by_id[3366].desc == "SEQUENCE OWNED BY"
    assert by_id[3210].desc == "FK CONSTRAINT"
    assert by_id[3210].deps == (215, 216, 3209)
    assert by_id[218].rest == "app schema we ird postgres"


def test_select_toc_entries_table_brings_its_parts_not_dangling_fk() -> None:
    chosen, missing = select_toc_entries(
        parse_toc(TOC.splitlines()), ["a", "public.nope"], include_prerequisites=False
    )
    assert missing == ["public.nope"]
    assert [e.dump_id for e in chosen] == [215, 3364, 214, 3366, 3206, 3354, 3367, 3209, 3207]


def test_select_toc_entries_both_tables_bring_fk() -> None:
    chosen, _ = select_toc_entries(
        parse_toc(TOC.splitlines()), ["a", "c"], include_prerequisites=False
    )
    assert 3210 in {e.dump_id for e in chosen}
    assert 3355 in {e.dump_id for e in chosen}


def test_select_toc_entries_fresh_target_brings_schema_prerequisite() -> None:
    entries = parse_toc(TOC.splitlines())
    chosen, _ = select_toc_entries(entries, ["app schema.we ird"], include_prerequisites=True)
    assert [e.dump_id for e in chosen] == [6, 218, 3357]
    chosen, _ = select_toc_entries(entries, ["app schema.we ird"], include_prerequisites=False)
    assert [e.dump_id for e in chosen] == [218, 3357]


def test_postgres_engine_pg_dump_missing_names_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(process, "_EXTRA_TOOL_DIRS", [])
    engine = PostgresEngine(INSTANCE, PASSWORD)
    with pytest.raises(ToolMissing) as caught, engine.dump("db"):
        pass
    assert "pg_dump" in caught.value.message
    assert "postgresql-client" in caught.value.hint
