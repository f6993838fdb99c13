"""verify against real backups: each kind of damage has its own message and exit code 8.

SQLite (no server, fast) covers every kind of damage and every level; PostgreSQL and MariaDB
(throwaway servers) cover their dump formats and the test restore, which must leave no
temporary database behind — also when the check fails or is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from harness.mariadb import MariadbServer
from harness.postgres import PgServer
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.cli.app import app
from vya_backupdb.config.loader import load_settings
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import Engine, RestoreOptions
from vya_backupdb.engines.process import Readable
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.jobs.verify import TEMP_DB_PREFIX, VerifyJob, temp_database_name
from vya_backupdb.pipeline.codecs import get_codec
from vya_backupdb.wiring import make_engine

pytestmark = pytest.mark.integration

runner = CliRunner()


def _vya(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    # JSON goes to stdout alone; log lines and rendered errors go to stderr.
    return result.exit_code, result.stdout if "--json" in args else result.output


def _write_config(tmp_path: Path, instances: list[dict[str, Any]], **extra: Any) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "testhost",
                "storage": {"base_path": str(tmp_path / "backups")},
                "instances": instances,
                **extra,
            }
        )
    )
    return config


def _only(base: Path, pattern: str) -> Path:
    [found] = sorted(base.rglob(pattern))
    return found


def _data_file(base: Path) -> Path:
    metadata = _only(base, "*.metadata.json")
    name = json.loads(metadata.read_text())["file_info"]["name"]
    return metadata.parent / name.rsplit("/", 1)[-1]


def _edit_metadata(base: Path, change: Callable[[dict[str, Any]], None]) -> None:
    metadata = _only(base, "*.metadata.json")
    record = json.loads(metadata.read_text())
    change(record)
    metadata.write_text(json.dumps(record, indent=2))


def _rewrite_consistently(base: Path, data: Path, raw: bytes) -> None:
    """Replace a backup's content by ``raw`` with checksums, sidecar and record all agreeing,
    so only the integrity level can tell that the content is bad."""
    codec = get_codec("zstd")

    class Sink:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def write(self, chunk: bytes, /) -> int:
            self.chunks.append(chunk)
            return len(chunk)

        def flush(self) -> None:
            return None

    sink = Sink()
    writer = codec.writer(sink, 3, 1)
    writer.write(raw)
    writer.close()
    stored = b"".join(sink.chunks)
    data.write_bytes(stored)
    digest = hashlib.sha256(stored).hexdigest()
    Path(str(data) + ".sha256").write_text(f"{digest}  {data.name}\n")

    def change(record: dict[str, Any]) -> None:
        record["file_info"]["sha256"] = digest
        record["file_info"]["size"] = len(stored)

    _edit_metadata(base, change)


def _decompressed(data: Path) -> bytes:
    """The whole content: a backup may be several zstd frames (docs/on-disk-format.md)."""
    import io

    reader = get_codec("zstd").reader(io.BytesIO(data.read_bytes()))
    return b"".join(iter(lambda: reader.read(1 << 20), b""))


# --------------------------------------------------------------------------- SQLite


@pytest.fixture
def lite(tmp_path: Path) -> Path:
    """Return the config of a SQLite instance with one backup of shop.db."""
    data = tmp_path / "data"
    create_sqlite_demo(data / "shop.db")
    config = _write_config(tmp_path, [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}])
    code, out = _vya(config, "backup", "lite")
    assert code == 0, out
    return config


def _flip_byte(base: Path) -> None:
    data = _data_file(base)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))


def _truncate(base: Path) -> None:
    data = _data_file(base)
    data.write_bytes(data.read_bytes()[:-100])


def _remove_sidecar(base: Path) -> None:
    Path(str(_data_file(base)) + ".sha256").unlink()


def _edit_sidecar(base: Path) -> None:
    sidecar = Path(str(_data_file(base)) + ".sha256")
    _digest, name = sidecar.read_text().split("  ")
    sidecar.write_text(f"{'0' * 64}  {name}")


def _edit_metadata_sha(base: Path) -> None:
    _edit_metadata(base, lambda r: r["file_info"].update(sha256="ab" * 32))


def _edit_metadata_size(base: Path) -> None:
    _edit_metadata(base, lambda r: r["file_info"].update(size=r["file_info"]["size"] + 7))


def _remove_metadata(base: Path) -> None:
    _only(base, "*.metadata.json").unlink()


def _remove_object(base: Path) -> None:
    _data_file(base).unlink()


def _garble_metadata(base: Path) -> None:
    _only(base, "*.metadata.json").write_text('{"format_version": 1, "id": ')


def _future_format(base: Path) -> None:
    _edit_metadata(base, lambda r: r.update(format_version=99))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped-byte": (_flip_byte, "checksum mismatch for "),
    "truncated": (_truncate, " is truncated: "),
    "missing-sidecar": (_remove_sidecar, ".sha256 is missing"),
    "edited-sidecar": (_edit_sidecar, ".sha256 disagrees with the object and its record"),
    "metadata-sha256": (_edit_metadata_sha, "disagrees with the object: it records sha256"),
    "metadata-size": (_edit_metadata_size, "disagrees with the object: it records a size of"),
    "object-without-record": (_remove_metadata, "has no metadata record"),
    "record-without-object": (_remove_object, "is missing (its metadata record exists)"),
    "garbled-metadata": (_garble_metadata, "is damaged or not a VYA record"),
    "unknown-format-version": (_future_format, "has format version 99"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_damaged_sqlite_backup_exits_8_with_its_message(lite: Path, damage: str) -> None:
    base = lite.parent / "backups"
    apply, message = DAMAGE[damage]
    apply(base)
    code, out = _vya(lite, "verify", "lite", "--level", "checksum")
    assert code == 8, out
    assert message in out
    code, out = _vya(lite, "verify", "lite", "--json")
    assert code == 8
    payload = json.loads(out[: out.rindex("}") + 1])
    assert payload["ok"] is False
    assert any(message in r["message"] for r in payload["results"])


def test_verify_valid_sqlite_backup_is_ok_at_every_level_and_listed(lite: Path) -> None:
    for level in ("checksum", "integrity", "test-restore"):
        code, out = _vya(lite, "verify", "lite", "--level", level, "--json")
        assert code == 0, out
        [result] = json.loads(out)["results"]
        assert result["outcome"] == "ok" and result["level"] == level and result["recorded"]
    assert result["row_check"]["mismatched"] == {} and result["row_check"]["sampled"] == 2
    assert result["restore_seconds"] is not None
    code, out = _vya(lite, "list", "--json")
    [entry] = json.loads(out)["backups"]
    assert entry["verification"] == "ok" and entry["verified_at"] is not None
    record = json.loads(_only(lite.parent / "backups", "*.metadata.json").read_text())
    assert record["verification"]["level"] == "test-restore"
    assert record["verification"]["restore_seconds"] is not None


def test_verify_file_option_checks_one_backup(lite: Path) -> None:
    data = _data_file(lite.parent / "backups")
    code, out = _vya(lite, "verify", "--file", str(data), "--json")
    assert code == 0, out
    assert json.loads(out)["results"][0]["file"].endswith(".sqlite.zst")
    _remove_metadata(lite.parent / "backups")
    code, out = _vya(lite, "verify", "--file", str(data))
    assert code == 8
    assert "has no metadata record" in out


def test_verify_sqlite_content_damage_is_found_only_from_integrity_level(lite: Path) -> None:
    base = lite.parent / "backups"
    data = _data_file(base)
    raw = bytearray(_decompressed(data))
    page_size = int.from_bytes(raw[16:18], "big")
    # Scribble over the b-tree header of page 2 (the first table's root page).
    raw[page_size : page_size + 12] = b"\xff" * 12
    _rewrite_consistently(base, data, bytes(raw))
    code, out = _vya(lite, "verify", "lite", "--level", "checksum")
    assert code == 0, out
    code, out = _vya(lite, "verify", "lite", "--level", "integrity")
    assert code == 8, out
    assert "SQLite backup" in out and ("integrity_check" in out or "not a valid database" in out)
    code, out = _vya(lite, "list", "--json")
    assert json.loads(out)["backups"][0]["verification"] == "failed"


def test_verify_test_restore_with_edited_row_counts_fails(lite: Path) -> None:
    base = lite.parent / "backups"
    _edit_metadata(base, lambda r: r["stats"]["tables"].update(orders=499))
    code, out = _vya(lite, "verify", "lite", "--test-restore")
    assert code == 8, out
    assert "row counts differ" in out and "orders (expected 499, got 500)" in out


def test_verify_unknown_level_exits_2(lite: Path) -> None:
    code, out = _vya(lite, "verify", "lite", "--level", "deep")
    assert code == 2
    assert "unknown verification level 'deep'" in out


def test_verify_needs_exactly_one_target(lite: Path) -> None:
    code, out = _vya(lite, "verify")
    assert code == 2 and "exactly one" in out


def test_backup_with_verify_flag_records_the_verification(lite: Path) -> None:
    code, out = _vya(lite, "backup", "lite", "--verify", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["verification"] == "ok"


def test_backup_auto_verify_failure_fails_the_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    create_sqlite_demo(data / "shop.db")
    config = _write_config(
        tmp_path,
        [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}],
        verification={"auto_verify": True, "level": "test-restore"},
    )
    from vya_backupdb.jobs import verify as verify_module

    # Simulate a backup whose restored content differs from what was counted at dump time.
    monkeypatch.setattr(verify_module, "_expected_tables", lambda record: {"orders": 1})
    code, out = _vya(config, "backup", "lite", "--json")
    assert code == 8, out
    [result] = json.loads(out[: out.rindex("}") + 1])["results"]
    assert result["status"] == "failed" and result["error_type"] == "IntegrityError"
    assert "row counts differ" in result["error"]


def test_verify_files_backup_test_restore_matches_manifest(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(70000))
    (tree / "sub" / "b.bin").chmod(0o640)
    (tree / "link").symlink_to("a.txt")
    os.link(tree / "a.txt", tree / "hard.txt")
    config = _write_config(tmp_path, [{"id": "docs", "type": "files", "paths": [str(tree)]}])
    code, out = _vya(config, "backup", "docs")
    assert code == 0, out
    code, out = _vya(config, "verify", "docs", "--test-restore", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["outcome"] == "ok", result
    assert result["row_check"]["mismatched"] == 0 and result["row_check"]["entries"] >= 5
    _only(tmp_path / "backups", "*.manifest.jsonl.zst").unlink()
    code, out = _vya(config, "verify", "docs")
    assert code == 8
    assert "manifest of files backup" in out and "is missing" in out


# --------------------------------------------------------------------------- servers


class InterruptingEngine:
    """The real engine, except that restore raises KeyboardInterrupt once it has run: the
    temporary database exists when the interruption arrives (like Ctrl-C mid-check)."""

    def __init__(self, inner: Engine):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def restore(self, db: str, stream: Readable, options: RestoreOptions) -> None:
        self._inner.restore(db, stream, options)
        raise KeyboardInterrupt


def _interrupting_factory(loaded: Any, instance: InstanceConfig) -> Engine:
    return InterruptingEngine(make_engine(loaded, instance))  # type: ignore[return-value]


def _pg_temp_dbs(server: PgServer) -> list[str]:
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (TEMP_DB_PREFIX + "%",)
        ).fetchall()
    return [r[0] for r in rows]


def _mariadb_temp_dbs(server: MariadbServer) -> list[str]:
    rows = server.query("SHOW DATABASES LIKE %s", args=(TEMP_DB_PREFIX + "%",))
    return [str(r[0]) for r in rows]


def test_temp_database_name_fits_63_bytes() -> None:
    from datetime import UTC, datetime

    name = temp_database_name("ü" * 80 + "-x", datetime(2026, 4, 5, 1, 2, 3, tzinfo=UTC), "abcd")
    assert name.startswith(TEMP_DB_PREFIX) and name.endswith("_20260405010203_abcd")
    assert len(name.encode()) <= 63 and name.isascii()


@pytest.fixture
def pg_setup(tmp_path: Path, pg_server: PgServer) -> Iterator[tuple[Path, PgServer]]:
    db = f"vfy_{os.getpid()}_{tmp_path.name[-6:]}".replace("-", "_")
    server = pg_server
    server.drop_db(db)
    server.create_db(db)
    server.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text);"
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 300) g;"
        "CREATE SCHEMA s; CREATE TABLE s.notes (body text);"
        "INSERT INTO s.notes VALUES ('x'), ('y');",
        db,
    )
    instances = [
        # jobs 2: test restores of the custom dump take the streamed parallel path.
        server.instance_config(fmt, databases=[db], format=fmt, users=False, jobs=2)
        for fmt in ("custom", "plain", "directory")
    ]
    config = _write_config(tmp_path, instances)
    for fmt in ("custom", "plain", "directory"):
        code, out = _vya(config, "backup", fmt)
        assert code == 0, out
    yield config, server
    server.drop_db(db)


@pytest.mark.postgres
def test_verify_postgres_backups_of_every_format_pass_test_restore(
    pg_setup: tuple[Path, PgServer],
) -> None:
    config, server = pg_setup
    for fmt in ("custom", "plain", "directory"):
        code, out = _vya(config, "verify", fmt, "--test-restore", "--json")
        assert code == 0, out
        [result] = json.loads(out)["results"]
        assert result["outcome"] == "ok", result
        assert result["row_check"]["tables"] == 2 and result["row_check"]["sampled"] == 2
        assert result["restore_seconds"] > 0
    assert _pg_temp_dbs(server) == []
    code, out = _vya(config, "list", "--json")
    assert {e["verification"] for e in json.loads(out)["backups"]} == {"ok"}


@pytest.mark.postgres
def test_verify_postgres_format_damage_is_found_by_integrity(
    pg_setup: tuple[Path, PgServer],
) -> None:
    config, _server = pg_setup
    base = config.parent / "backups"
    custom = _only(base, "*_full.dump.zst")
    raw = _decompressed(custom)
    _rewrite_consistently(base / "testhost" / "custom", custom, raw[: len(raw) - 200])
    plain = _only(base, "*_full.sql.zst")
    text = _decompressed(plain)
    cut = text[: text.rindex(b"-- PostgreSQL database dump complete")]
    _rewrite_consistently(base / "testhost" / "plain", plain, cut)
    code, out = _vya(config, "verify", "custom", "--level", "checksum")
    assert code == 0, out
    code, out = _vya(config, "verify", "custom")
    assert code == 8, out
    assert "PostgreSQL archive" in out and "is damaged: pg_restore" in out
    code, out = _vya(config, "verify", "plain")
    assert code == 8, out
    assert "does not end with pg_dump's completion line" in out
    code, out = _vya(config, "verify", "directory")
    assert code == 0, out


@pytest.mark.postgres
def test_verify_postgres_flipped_byte_exits_8(pg_setup: tuple[Path, PgServer]) -> None:
    config, _server = pg_setup
    _flip_byte(config.parent / "backups" / "testhost" / "directory")
    code, out = _vya(config, "verify", "directory", "--test-restore")
    assert code == 8 and "checksum mismatch" in out


@pytest.mark.postgres
def test_verify_postgres_failed_test_restore_leaves_no_temp_database(
    pg_setup: tuple[Path, PgServer],
) -> None:
    config, server = pg_setup
    _edit_metadata(
        config.parent / "backups" / "testhost" / "custom",
        lambda r: r["stats"]["tables"].update({"public.items": 301}),
    )
    code, out = _vya(config, "verify", "custom", "--test-restore")
    assert code == 8, out
    assert "public.items (expected 301, got 300)" in out
    assert _pg_temp_dbs(server) == []
    code, out = _vya(config, "list", "custom", "--json")
    assert json.loads(out)["backups"][0]["verification"] == "failed"


@pytest.mark.postgres
def test_verify_postgres_interrupted_test_restore_drops_temp_database(
    pg_setup: tuple[Path, PgServer],
) -> None:
    config, server = pg_setup
    loaded = load_settings(config, None)
    job = VerifyJob(loaded, engine_factory=_interrupting_factory)
    [record] = job.catalog.records("custom")
    with pytest.raises(KeyboardInterrupt):
        job.verify_record(record, test_restore=True)
    assert _pg_temp_dbs(server) == []
    # An interrupted check is no verdict: the record stays unverified.
    assert job.catalog.records("custom")[0].verification is None


@pytest.mark.postgres
def test_verify_postgres_test_restore_runs_on_scratch_instance(
    tmp_path: Path, pg_setup: tuple[Path, PgServer]
) -> None:
    config, server = pg_setup
    settings = yaml.safe_load(config.read_text())
    settings["instances"].append(server.instance_config("scratch"))
    settings["verification"] = {"scratch_instance": "scratch"}
    config.write_text(yaml.safe_dump(settings))
    used: list[str] = []

    def factory(loaded: Any, instance: InstanceConfig) -> Engine:
        used.append(instance.id)
        return make_engine(loaded, instance)

    job = VerifyJob(load_settings(config, None), engine_factory=factory)
    [record] = job.catalog.records("plain")
    result = job.verify_record(record, "test-restore")
    assert result.outcome == "ok", result.message
    assert used == ["scratch"]
    assert "on scratch" in result.message


@pytest.fixture
def mariadb_setup(
    tmp_path: Path, mariadb_server: MariadbServer
) -> Iterator[tuple[Path, MariadbServer]]:
    db = f"vfy_{tmp_path.name[-8:]}".replace("-", "_")
    server = mariadb_server
    server.drop_db(db)
    server.create_db(db)
    server.sql(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40));"
        "INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_250;"
        "CREATE TABLE empty_one (x INT);",
        db,
    )
    config = _write_config(tmp_path, [server.instance_config("mdb", databases=[db], users=False)])
    code, out = _vya(config, "backup", "mdb")
    assert code == 0, out
    yield config, server
    server.drop_db(db)


@pytest.mark.mysql
def test_verify_mariadb_backup_passes_test_restore_and_leaves_nothing(
    mariadb_setup: tuple[Path, MariadbServer],
) -> None:
    config, server = mariadb_setup
    code, out = _vya(config, "verify", "mdb", "--test-restore", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["outcome"] == "ok", result
    assert result["row_check"]["tables"] == 2 and result["row_check"]["sampled"] == 2
    assert _mariadb_temp_dbs(server) == []


@pytest.mark.mysql
def test_verify_mariadb_failed_and_interrupted_test_restores_leave_no_temp_database(
    mariadb_setup: tuple[Path, MariadbServer],
) -> None:
    config, server = mariadb_setup
    base = config.parent / "backups"
    _edit_metadata(base, lambda r: r["stats"]["tables"].update(items=7))
    code, out = _vya(config, "verify", "mdb", "--test-restore")
    assert code == 8, out
    assert "items (expected 7, got 250)" in out
    assert _mariadb_temp_dbs(server) == []
    job = VerifyJob(load_settings(config, None), engine_factory=_interrupting_factory)
    [record] = job.catalog.records("mdb")
    with pytest.raises(KeyboardInterrupt):
        job.verify_record(record, test_restore=True)
    assert _mariadb_temp_dbs(server) == []


@pytest.mark.mysql
def test_verify_mariadb_dump_without_trailer_fails_integrity(
    mariadb_setup: tuple[Path, MariadbServer],
) -> None:
    config, _server = mariadb_setup
    base = config.parent / "backups"
    data = _data_file(base)
    text = _decompressed(data)
    _rewrite_consistently(base, data, text[: text.rindex(b"-- Dump completed on")])
    code, out = _vya(config, "verify", "mdb", "--level", "checksum")
    assert code == 0, out
    code, out = _vya(config, "verify", "mdb")
    assert code == 8, out
    assert "does not end with mariadb-dump/mysqldump's completion line" in out


def _record_of(job: VerifyJob) -> BackupRecord:
    [record] = job.catalog.records()
    return record


def test_verify_job_save_false_leaves_record_untouched(lite: Path) -> None:
    job = VerifyJob(load_settings(lite, None))
    result = job.verify_record(_record_of(job), "checksum", save=False)
    assert result.outcome == "ok" and not result.recorded
    assert _record_of(job).verification is None


def test_verify_latest_checks_only_the_newest_backup_of_each_database(lite: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from vya_backupdb.jobs.backup import BackupJob, BackupRequest

    earlier = datetime.now(UTC) - timedelta(days=1)
    BackupJob(load_settings(lite, None), clock=lambda: earlier).run(BackupRequest())
    code, out = _vya(lite, "verify", "lite", "--json")
    assert code == 0 and json.loads(out)["checked"] == 2
    code, out = _vya(lite, "verify", "lite", "--latest", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["started_at"] > earlier.isoformat()
