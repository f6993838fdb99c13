"""SqliteEngine without the CLI: discovery, errors, restore validation, rename/drop."""

from __future__ import annotations

import io
import sqlite3
from datetime import UTC
from pathlib import Path

import pytest

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import RestoreOptions
from vya_backupdb.engines.sqlite import SqliteEngine
from vya_backupdb.errors import NotFoundError, RestoreFailed, UsageError
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.jobs.restore import _short, parse_at

pytestmark = pytest.mark.unit


def _engine(*patterns: str) -> SqliteEngine:
    return SqliteEngine(InstanceConfig(id="lite", type="sqlite", paths=list(patterns)))


def test_sqlite_engine_lists_matched_files_with_sizes(tmp_path: Path) -> None:
    create_sqlite_demo(tmp_path / "a.db")
    create_sqlite_demo(tmp_path / "sub" / "b.db")
    engine = _engine(f"{tmp_path}/**/*.db")
    names = [d.name for d in engine.list_databases()]
    assert names == ["a.db", "b.db"]
    assert engine.database_exists("a.db")
    assert engine.table_stats("a.db") == {"customers": 3, "orders": 500}
    assert engine.database_properties("a.db")["encoding"] == "UTF-8"
    assert engine.server_info().product == "SQLite"


def test_sqlite_engine_same_name_in_two_dirs_is_a_usage_error(tmp_path: Path) -> None:
    create_sqlite_demo(tmp_path / "x" / "app.db")
    create_sqlite_demo(tmp_path / "y" / "app.db")
    with pytest.raises(UsageError, match="two SQLite files"):
        _engine(f"{tmp_path}/*/app.db").list_databases()


def test_sqlite_engine_unknown_database_names_the_matches(tmp_path: Path) -> None:
    create_sqlite_demo(tmp_path / "a.db")
    with pytest.raises(NotFoundError, match=r"zzz\.db") as caught:
        _engine(f"{tmp_path}/*.db").path_of("zzz.db")
    assert "a.db" in caught.value.hint


def test_sqlite_restore_refuses_a_non_sqlite_stream_and_keeps_target(tmp_path: Path) -> None:
    create_sqlite_demo(tmp_path / "a.db")
    engine = _engine(f"{tmp_path}/*.db")
    before = (tmp_path / "a.db").read_bytes()
    with pytest.raises(RestoreFailed):
        engine.restore("a.db", io.BytesIO(b"not a database at all" * 100), RestoreOptions())
    assert (tmp_path / "a.db").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp-*"))


def test_sqlite_rename_and_drop(tmp_path: Path) -> None:
    create_sqlite_demo(tmp_path / "a.db")
    engine = _engine(f"{tmp_path}/*.db")
    engine.rename_database("a.db", "b.db")
    assert engine.database_exists("b.db")
    engine.drop_database("b.db")
    assert engine.list_databases() == []


def test_sqlite_target_path_needs_a_location(tmp_path: Path) -> None:
    engine = _engine(f"{tmp_path}/*.db")
    with pytest.raises(UsageError, match="cannot tell where") as caught:
        engine.target_path("new.db", RestoreOptions())
    assert "--target" in caught.value.hint
    assert engine.target_path(str(tmp_path / "x.db"), RestoreOptions()) == tmp_path / "x.db"


def test_sqlite_has_no_users(tmp_path: Path) -> None:
    engine = _engine(f"{tmp_path}/*.db")
    assert engine.list_users() == []
    with pytest.raises(UsageError):
        engine.dump_globals()


def test_parse_at_accepts_local_and_offset_times() -> None:
    assert parse_at("2026-11-20T02:30:00+00:00").tzinfo == UTC
    assert parse_at("2026-11-20 02:30").tzinfo == UTC
    with pytest.raises(UsageError, match="cannot read the time"):
        parse_at("last tuesday")


def test_short_keeps_generated_names_within_63_bytes() -> None:
    name = _short("ü" * 50 + "__vya_tmp_20261121")
    assert len(name.encode()) <= 63
    assert name.endswith("__vya_tmp_20261121")
    assert _short("short") == "short"


def test_sqlite_dump_is_a_consistent_copy(tmp_path: Path) -> None:
    create_sqlite_demo(tmp_path / "a.db")
    engine = _engine(f"{tmp_path}/*.db")
    with engine.dump("a.db") as stream:
        data = b"".join(iter(lambda: stream.read(65536), b""))
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(data)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
