"""Large PostgreSQL databases switch to directory format (pg_dump --jobs) above a size threshold.

A tiny ``directory_format_above_bytes`` makes the test database "large": its backup must be a
``.tar.zst`` directory-format dump recorded as such, restored with ``pg_restore --jobs`` exactly
(pg_compare); below the threshold the configured custom format stays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import vya, write_config
from pg_compare import compare_databases

from harness.postgres import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FIXTURES = Path(__file__).with_name("pg_fixtures.sql")
DB = "big «dir» db"


@pytest.fixture(scope="module")
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


def _backup(config: Path) -> dict[str, Any]:
    code, out = vya(config, "backup", "pg", "--no-users", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["status"] == "success", result
    [meta_path] = (config.parent / "backups").rglob("*_full.metadata.json")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    assert meta["file_info"]["name"] == result["file"]
    return meta


def test_pg_backup_above_threshold_is_directory_format_and_restores_exactly(
    tmp_path: Path, pg_server: PgServer, source: str
) -> None:
    instance = pg_server.instance_config(
        "pg", databases=[source], jobs=2, directory_format_above_bytes=1024
    )
    config = write_config(tmp_path, [instance])
    meta = _backup(config)
    info = meta["backup_info"]
    assert meta["file_info"]["name"].endswith("_full.tar.zst")
    assert meta["file_info"]["extension"] == "tar"
    assert info["dump_format"] == "directory"
    assert "--format=directory" in info["dump_command"]
    assert "--jobs=2" in info["dump_command"]
    assert "directory_format_above_bytes" in meta["extra"]["format_reason"]

    target = "restored «dir» copy"
    pg_server.drop_db(target)
    try:
        code, out = vya(
            config, "restore", "pg", "-d", source, "--latest", "--target", target, "--json"
        )
        assert code == 0, out
        assert json.loads(out)["row_check"]["ok"] is True
        assert compare_databases(pg_server, source, pg_server, target) == []
    finally:
        pg_server.drop_db(target)


def test_pg_backup_below_threshold_keeps_the_configured_format(
    tmp_path: Path, pg_server: PgServer, source: str
) -> None:
    instance = pg_server.instance_config(
        "pg", databases=[source], jobs=2, directory_format_above_bytes=1024**4
    )
    meta = _backup(write_config(tmp_path, [instance]))
    assert meta["backup_info"]["dump_format"] == "custom"
    assert meta["file_info"]["name"].endswith("_full.dump.zst")
    assert "format_reason" not in meta["extra"]
