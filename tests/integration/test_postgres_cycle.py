"""PostgreSQL through the whole product: CLI → jobs → engine → pipeline → storage → catalog.

Backups go through `vya-backupdb backup`, restores through `vya-backupdb restore` in each
mode, and every restored database is compared exactly with its source (pg_compare).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import vya as _vya
from cli_helpers import write_config as _write_config
from pg_compare import compare_databases, role_snapshot

from harness.postgres import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FIXTURES = Path(__file__).with_name("pg_fixtures.sql")
DB = "shop «ünï» 'q' 🐘"


@pytest.fixture
def source(pg_server: PgServer) -> Iterator[str]:
    for role in ("vya_app_owner", "vya_app_reader"):
        pg_server.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role}; END IF; END $$;"
        )
    pg_server.drop_db(DB)
    pg_server.create_db(DB, "OWNER vya_app_owner")
    pg_server.psql(FIXTURES.read_text(), dbname=DB)
    yield DB
    pg_server.drop_db(DB)


@pytest.fixture
def config(tmp_path: Path, pg_server: PgServer, source: str) -> Path:
    return _write_config(tmp_path, [pg_server.instance_config("pg", databases=[source])])


def test_pg_backup_then_restore_to_new_name_is_exact(
    pg_server: PgServer, config: Path, source: str
) -> None:
    code, out = _vya(config, "backup", "pg", "--json")
    assert code == 0, out
    run = json.loads(out)
    kinds = sorted(r["kind"] for r in run["results"])
    assert kinds == ["database", "users"]
    meta_files = list((config.parent / "backups").rglob("*_full.metadata.json"))
    [meta] = [json.loads(p.read_text()) for p in meta_files]
    assert meta["backup_info"]["tool"] == "pg_dump"
    assert meta["backup_info"]["server_version"].startswith("15")
    assert pg_server.password not in json.dumps(meta)
    assert meta["stats"]["tables"], "row counts captured at dump time"

    target = "restored «ünï» copy"
    pg_server.drop_db(target)
    try:
        code, out = _vya(config, "restore", "pg", "-d", source, "--latest", "--target", target)
        assert code == 0, out
        assert "row counts match" in out
        assert compare_databases(pg_server, source, pg_server, target) == []
    finally:
        pg_server.drop_db(target)


def test_pg_fast_restore_asks_the_server_once_whether_the_target_exists(
    pg_server: PgServer, config: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job knows the target is missing (or has just dropped it): the engine creates it
    without asking again — one connection less before pg_restore starts."""
    from ops_fixtures import load

    from vya_backupdb.engines.postgresql import PostgresEngine
    from vya_backupdb.jobs.restore import RestoreJob, RestoreRequest

    code, out = _vya(config, "backup", "pg", "--no-users")
    assert code == 0, out
    asked: list[str] = []
    exists = PostgresEngine.database_exists

    def counted(self: PostgresEngine, db: str) -> bool:
        asked.append(db)
        return exists(self, db)

    monkeypatch.setattr(PostgresEngine, "database_exists", counted)
    target = "fast «ünï» copy"
    pg_server.drop_db(target)
    request = RestoreRequest(
        instance="pg", database=source, latest=True, target=target, mode="fast", jobs=2
    )
    try:
        for existing in (False, True):  # a new target, then the same one replaced
            asked.clear()
            result = RestoreJob(load(config)).run(request, confirm=lambda _question: True)
            assert asked == [target], existing
            assert result.row_check["ok"]
            assert compare_databases(pg_server, source, pg_server, target) == []
    finally:
        pg_server.drop_db(target)


def test_pg_safe_restore_over_existing_swaps_and_keeps_a_safety_backup(
    pg_server: PgServer, config: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _vya(config, "backup", "pg", "--no-users")[0] == 0
    with pg_server.connect(source) as conn:
        conn.execute("CREATE TABLE added_after_backup (x int)")
    from vya_backupdb.engines import postgresql

    scanned: list[str] = []
    checks: list[tuple[str, list[str]]] = []
    real_count = postgresql._count
    real_check = postgresql.PostgresEngine.restored_table_stats

    def count(conn: Any, schema: str, table: str) -> int:
        scanned.append(f"{schema}.{table}")
        return real_count(conn, schema, table)

    def restored_table_stats(self: postgresql.PostgresEngine, db: str) -> dict[str, int]:
        scanned.clear()
        result = real_check(self, db)
        checks.append((db, list(scanned)))
        return result

    monkeypatch.setattr(postgresql, "_count", count)
    monkeypatch.setattr(postgresql.PostgresEngine, "restored_table_stats", restored_table_stats)
    code, out = _vya(config, "restore", "pg", "-d", source, "--latest", "--yes")
    assert code == 0, out
    assert "safety backup" in out
    assert "row counts match the backup" in out
    # The row check ran on the restored copy before the swap, where the engine knows what it
    # loaded: the tables the server saw loaded whole were not scanned again.
    [(checked_db, counted)] = checks
    assert "__vya_tmp_" in checked_db
    [record] = [
        json.loads(p.read_text()) for p in (config.parent / "backups").rglob("*_full.metadata.json")
    ]
    loaded = {t for t, n in record["stats"]["tables"].items() if n}
    assert loaded and loaded.isdisjoint(counted)
    with pg_server.connect(source) as conn:
        assert conn.execute("SELECT to_regclass('added_after_backup')").fetchone()[0] is None
    # The safety backup is a listed, restorable backup that still has the added table.
    code, out = _vya(config, "list", "pg", "--json")
    strategies = sorted(b["strategy"] for b in json.loads(out)["backups"])
    assert strategies == ["full", "safety"]
    with pg_server.connect() as conn:
        leftovers = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_vya\\_%'"
        ).fetchall()
    assert leftovers == []


def test_pg_test_mode_restores_into_dated_copy_and_checks_counts(
    pg_server: PgServer, config: Path, source: str
) -> None:
    assert _vya(config, "backup", "pg", "--no-users")[0] == 0
    code, out = _vya(config, "restore", "pg", "-d", source, "--latest", "--mode", "test", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["target_database"].startswith(f"{source}_test_")
    assert result["row_check"]["ok"] is True
    try:
        assert (
            compare_databases(
                pg_server, source, pg_server, result["target_database"], check_properties=False
            )
            == []
        )
    finally:
        pg_server.drop_db(result["target_database"])


def test_pg_restore_at_time_picks_the_right_backup(
    pg_server: PgServer, config: Path, source: str
) -> None:
    assert _vya(config, "backup", "pg", "--no-users")[0] == 0
    time.sleep(1.1)
    with pg_server.connect(source) as conn:
        conn.execute("CREATE TABLE second_generation (x int)")
    assert _vya(config, "backup", "pg", "--no-users")[0] == 0
    listing = json.loads(_vya(config, "list", "--json")[1])["backups"]
    first = min(b["started_at"] for b in listing)
    target = "at_copy"
    pg_server.drop_db(target)
    try:
        code, out = _vya(config, "restore", "pg", "-d", source, "--at", first, "--target", target)
        assert code == 0, out
        with pg_server.connect(target) as conn:
            assert conn.execute("SELECT to_regclass('second_generation')").fetchone()[0] is None
    finally:
        pg_server.drop_db(target)


def test_pg_restore_onto_other_server_with_other_defaults_is_exact(
    pg_server: PgServer, pg_server_alt: PgServer, tmp_path: Path, source: str
) -> None:
    config = _write_config(
        tmp_path,
        [
            pg_server.instance_config("pg", databases=[source]),
            pg_server_alt.instance_config("pg-alt"),
        ],
    )
    assert _vya(config, "backup", "pg")[0] == 0
    [users_file] = (tmp_path / "backups").rglob("users_*.sql.zst")
    code, out = _vya(
        config,
        "users",
        "restore",
        "--file",
        str(users_file),
        "--all",
        "--target-instance",
        "pg-alt",
        "--yes",
    )
    assert code == 0, out
    pg_server_alt.drop_db(source)
    try:
        code, out = _vya(
            config, "restore", "pg", "-d", source, "--latest", "--target-instance", "pg-alt"
        )
        assert code == 0, out
        assert compare_databases(pg_server, source, pg_server_alt, source) == []
    finally:
        pg_server_alt.drop_db(source)


def test_pg_users_backup_list_and_selective_restore(pg_server: PgServer, config: Path) -> None:
    pg_server.psql(
        "DROP ROLE IF EXISTS vya_alice; DROP ROLE IF EXISTS vya_bob;"
        "CREATE ROLE vya_alice LOGIN PASSWORD 'alice-secret' VALID UNTIL '2031-01-01';"
        "CREATE ROLE vya_bob NOLOGIN CONNECTION LIMIT 3;"
    )
    before = role_snapshot(pg_server, ["vya_alice", "vya_bob"])
    code, out = _vya(config, "users", "backup", "pg")
    assert code == 0, out
    [users_file] = (config.parent / "backups").rglob("users_*.sql.zst")
    code, out = _vya(config, "users", "list", "--file", str(users_file))
    assert "vya_alice" in out
    assert "vya_bob" in out
    pg_server.psql("DROP ROLE vya_alice; DROP ROLE vya_bob;")
    code, out = _vya(
        config, "users", "restore", "--file", str(users_file), "--user", "vya_alice", "--yes"
    )
    assert code == 0, out
    after = role_snapshot(pg_server, ["vya_alice", "vya_bob"])
    assert after.get("vya_alice") == before["vya_alice"]
    assert "vya_bob" not in after
    # Whole file again, with every role (built-in ones included) already present: no failure.
    code, out = _vya(config, "users", "restore", "--file", str(users_file), "--all", "--yes")
    assert code == 0, out
    assert role_snapshot(pg_server, ["vya_alice", "vya_bob"]) == before
    pg_server.psql("DROP ROLE vya_alice; DROP ROLE vya_bob;")


def test_pg_server_down_gives_troubleshooting_and_exit_4(tmp_path: Path) -> None:
    config = _write_config(
        tmp_path,
        [
            {
                "id": "down",
                "type": "postgresql",
                "host": "127.0.0.1",
                "port": 1,
                "user": "postgres",
                "password_env": "VYA_TEST_DOWN_PW",
            }
        ],
    )
    os.environ["VYA_TEST_DOWN_PW"] = "never-shown-pw-123"
    code, out = _vya(config, "backup", "down")
    assert code == 4, out
    assert "connection test --instance down" in out
    assert "never-shown-pw-123" not in out
    assert not list(tmp_path.rglob("*.dump*"))


def test_pg_unknown_database_exits_2(config: Path) -> None:
    code, out = _vya(config, "backup", "pg", "--database", "does-not-exist")
    assert code == 2, out
    assert "does not exist on instance 'pg'" in out


def test_pg_dump_tool_missing_names_the_debian_package(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    import vya_backupdb.engines.process as process

    monkeypatch.setattr(process, "_EXTRA_TOOL_DIRS", [])
    code, out = _vya(config, "backup", "pg", "--no-users")
    assert code == 5, out
    assert "postgresql-client" in out


def test_pg_failed_dump_leaves_no_backup_and_logs_the_run(
    pg_server: PgServer, tmp_path: Path, source: str
) -> None:
    # A database that pg_dump cannot read fully: a table the login role may not select.
    config = _write_config(tmp_path, [pg_server.instance_config("pg", databases=[source])])
    pg_server.psql(
        "DROP ROLE IF EXISTS vya_weak; CREATE ROLE vya_weak LOGIN PASSWORD 'weak-pw-456';"
        f'GRANT CONNECT ON DATABASE "{source.replace(chr(34), chr(34) * 2)}" TO vya_weak;'
    )
    os.environ["VYA_TEST_WEAK_PW"] = "weak-pw-456"
    config = _write_config(
        tmp_path,
        [
            pg_server.instance_config(
                "pg",
                user="vya_weak",
                password_env="VYA_TEST_WEAK_PW",
                databases=[source],
                users=False,
            )
        ],
    )
    code, out = _vya(config, "backup", "pg")
    assert code != 0, out
    assert "permission denied" in out
    assert "weak-pw-456" not in out
    backups = tmp_path / "backups"
    assert not list(backups.rglob("*.dump*")), "no partial dump may remain"
    assert not list(backups.rglob("*.metadata.json"))
    [run_log] = list(backups.rglob("_runs/*/*.json"))
    assert json.loads(run_log.read_text())["status"] == "failed"
    pg_server.psql("DROP OWNED BY vya_weak; DROP ROLE vya_weak;")


def test_pg_sigterm_during_backup_removes_partial_output(
    pg_server: PgServer, tmp_path: Path
) -> None:
    big = "vya_big_for_sigterm"
    pg_server.drop_db(big)
    pg_server.create_db(big)
    pg_server.psql(
        "CREATE TABLE t AS SELECT g, md5(g::text) || repeat(md5(random()::text), 8) AS v "
        "FROM generate_series(1, 400000) g",
        dbname=big,
    )
    config = _write_config(
        tmp_path,
        [
            pg_server.instance_config(
                "pg", databases=[big], users=False, compression={"algorithm": "xz", "level": 6}
            )
        ],
    )
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vya_backupdb", "--config", str(config), "backup", "pg"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    backups = tmp_path / "backups"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(backups.rglob("*.tmp-*")):
        time.sleep(0.05)
    assert list(backups.rglob("*.tmp-*")), "the backup should be writing by now"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert not list(backups.rglob("*.tmp-*"))
    assert not list(backups.rglob("*.dump*"))
    assert not list(backups.rglob("*.metadata.json"))
    pg_server.drop_db(big)


def test_pg_users_show_grants_lists_roles_and_table_grants(
    pg_server: PgServer, config: Path, source: str
) -> None:
    pg_server.psql(
        "DROP ROLE IF EXISTS vya_dora; CREATE ROLE vya_dora LOGIN IN ROLE vya_app_reader;"
    )
    pg_server.psql("CREATE TABLE shown (x int); GRANT SELECT ON shown TO vya_dora;", dbname=source)
    try:
        code, out = _vya(config, "users", "show-grants", "pg", "--database", source)
        assert code == 0, out
        assert "role vya_dora: LOGIN; member of vya_app_reader" in out
        assert "GRANT SELECT ON public.shown TO vya_dora" in out
    finally:
        pg_server.psql("DROP TABLE shown;", dbname=source)
        pg_server.psql("DROP ROLE vya_dora;")


def test_pg_restore_list_and_restore_by_file(
    pg_server: PgServer, config: Path, source: str
) -> None:
    assert _vya(config, "backup", "pg", "--no-users")[0] == 0
    code, out = _vya(config, "restore", "--list", "pg", "--json")
    assert code == 0, out
    [point] = json.loads(out)
    data_file = config.parent / "backups" / point["file_info"]["name"]
    target = "from_file_copy"
    pg_server.drop_db(target)
    try:
        code, out = _vya(config, "restore", "--file", str(data_file), "--target", target)
        assert code == 0, out
        assert compare_databases(pg_server, source, pg_server, target) == []
    finally:
        pg_server.drop_db(target)
    code, out = _vya(config, "restore", "pg", "-d", source, "--at", "yesterday-ish")
    assert code == 2
    assert "cannot read the time" in out


@pytest.mark.parametrize(
    ("encrypted", "compression"),
    [(True, "zstd"), (False, "zstd"), (False, "gzip"), (False, "none")],
)
def test_pg_parallel_restore_streams_and_is_exact(
    pg_server: PgServer, tmp_path: Path, source: str, encrypted: bool, compression: str
) -> None:
    """restore --jobs 2 of a custom dump: the data workers read their own streams of the
    stored object (no spool) — decrypted in-process, or straight from the command-line
    decompressor when the file is local and unencrypted — and the copy is exact."""
    from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file

    storage: dict[str, object] = {"compression": {"algorithm": compression}}
    if encrypted:
        secret, public = generate_identity()
        key = tmp_path / "age.key"
        write_identity_file(key, secret, public)
        storage["encryption"] = {"recipients": [public], "identity_file": str(key)}
    config = _write_config(
        tmp_path, [pg_server.instance_config("pg", databases=[source])], **storage
    )
    code, out = _vya(config, "backup", "pg", "--no-users")
    assert code == 0, out
    framed = compression in ("zstd", "none") and not encrypted
    _check_frame_index(config, framed, compression)
    target = "parallel «ünï» copy"
    pg_server.drop_db(target)
    try:
        code, out = _vya(
            config, "restore", "pg", "-d", source, "--latest", "--target", target,
            "--jobs", "2", "--mode", "fast", "-y",
        )  # fmt: skip
        assert code == 0, out
        assert "row counts match" in out
        frames = ", each only its tables' frames" if framed else ""
        assert (
            f"2 data worker(s) reading their own streams (no spool){frames}, "
            "each building its tables' indexes" in " ".join(out.split())
        )
        assert compare_databases(pg_server, source, pg_server, target) == []
    finally:
        pg_server.drop_db(target)


def _check_frame_index(config: Path, framed: bool, compression: str) -> None:
    """An unencrypted zstd custom dump is stored in per-table frames: the record's index names
    every data entry (table data, large objects) of the real pg_dump archive, and each frame
    decompresses alone and starts with the data block of the first entry it lists."""
    import zstandard

    from vya_backupdb.engines.pg_archive import read_toc

    [meta] = (config.parent / "backups").rglob("*_full.metadata.json")
    record = json.loads(meta.read_text())
    index = record["extra"].get("frame_index")
    if not framed:
        assert index is None
        return
    stored = (config.parent / "backups" / record["file_info"]["name"]).read_bytes()
    assert index["stored_size"] == len(stored)
    starts = [f[0] for f in index["frames"]] + [len(stored)]
    pieces = [
        zstandard.ZstdDecompressor().decompressobj().decompress(stored[a:b])
        if compression == "zstd"
        else stored[a:b]
        for a, b in itertools.pairwise(starts)
    ]
    toc = read_toc(io.BytesIO(pieces[0]))
    assert toc.rest == b"" and pieces[0] == toc.prefix  # the head frame: header and TOC alone
    with_data = [e.dump_id for e in toc.entries if e.had_dumper]
    desc_of = {e.dump_id: e.desc for e in toc.entries}
    assert {"TABLE DATA", "BLOBS"} <= {e.desc for e in toc.entries if e.had_dumper}
    assert [u for f in index["frames"] for u in f[2]] == with_data
    raw = len(pieces[0])
    for (_, raw_offset, units), piece in zip(index["frames"][1:], pieces[1:], strict=True):
        kind = b"\x03" if desc_of[units[0]] == "BLOBS" else b"\x01"  # large objects / table
        assert piece[:6] == kind + b"\x00" + units[0].to_bytes(4, "little")
        assert raw_offset == raw
        raw += len(piece)
