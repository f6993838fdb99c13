from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import _stem_of

pytestmark = pytest.mark.unit

MOMENT = datetime(2026, 11, 21, 6, 30, 5, tzinfo=UTC)


def test_layout_database_names_follow_the_spec() -> None:
    names = layout.database_backup_names("host1", "pg01", "app", MOMENT, "full", "dump", ".zst")
    assert names.data == "host1/pg01/app/2026-11-21/app_20261121_063005_full.dump.zst"
    assert names.sha256 == names.data + ".sha256"
    assert names.metadata == "host1/pg01/app/2026-11-21/app_20261121_063005_full.metadata.json"


def test_layout_users_names_follow_the_spec() -> None:
    names = layout.users_backup_names("host1", "my01", MOMENT, ".gz")
    assert names.data == "host1/my01/users_20261121_063005.sql.gz"


@pytest.mark.parametrize(
    "name", ["../etc", "a/b", "weird %2F", ".hidden", "tab\tname", "ünï 🚀 'q' \"d\""]
)
def test_safe_component_never_escapes_and_round_trips(name: str) -> None:
    component = layout.safe_component(name)
    assert "/" not in component and not component.startswith(".")
    assert layout.unsafe_component(component) == name


def test_sidecar_is_sha256sum_compatible() -> None:
    line = layout.sidecar_line("a" * 64, "x.dump.zst")
    assert line == "a" * 64 + "  x.dump.zst\n"
    assert layout.parse_sidecar(line) == ("a" * 64, "x.dump.zst")
    with pytest.raises(ValueError, match="sha256"):
        layout.parse_sidecar("garbage")


@pytest.mark.parametrize(
    ("data", "stem"),
    [
        (
            "h/i/db/2026-11-21/db_20261121_063005_full.dump.zst",
            "h/i/db/2026-11-21/db_20261121_063005_full",
        ),
        (
            "h/i/d.b/2026-11-21/d.b_20261121_063005_full.sql.gz",
            "h/i/d.b/2026-11-21/d.b_20261121_063005_full",
        ),
        ("h/i/users_20261121_063005.sql.zst", "h/i/users_20261121_063005"),
        (
            "h/i/f/2026-11-21/files_20261121_063005_incremental.tar.zst.sha256",
            "h/i/f/2026-11-21/files_20261121_063005_incremental",
        ),
    ],
)
def test_stem_of_data_names(data: str, stem: str) -> None:
    assert _stem_of(data) == stem
