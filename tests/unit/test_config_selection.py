"""config.selection.select_databases: system databases, include and exclude globs."""

from __future__ import annotations

from typing import Any

import pytest

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.config.selection import select_databases

pytestmark = pytest.mark.unit

ALL = ["app", "crm_eu", "crm_us", "mysql", "information_schema", "template0", "test_x", "app"]


def inst(**kw: Any) -> InstanceConfig:
    return InstanceConfig.model_validate({"id": "i", "type": "mariadb", **kw})


def test_select_databases_default_drops_system_and_duplicates() -> None:
    assert select_databases(ALL, inst()) == ["app", "crm_eu", "crm_us", "test_x"]


def test_select_databases_include_globs_keep_only_matches() -> None:
    assert select_databases(ALL, inst(databases=["crm_*", "app"])) == ["app", "crm_eu", "crm_us"]


def test_select_databases_exclude_globs_win_over_includes() -> None:
    selected = select_databases(ALL, inst(databases=["crm_*"], exclude_databases=["*_us"]))
    assert selected == ["crm_eu"]


def test_select_databases_include_system_databases_flag() -> None:
    selected = select_databases(ALL, inst(include_system_databases=True, exclude_databases=["t*"]))
    assert selected == ["app", "crm_eu", "crm_us", "mysql", "information_schema"]


def test_select_databases_system_database_named_exactly_is_kept() -> None:
    assert select_databases(ALL, inst(databases=["mysql"])) == ["mysql"]
    assert select_databases(ALL, inst(databases=["m*"])) == []


def test_select_databases_globs_are_case_sensitive() -> None:
    assert select_databases(["App", "app"], inst(databases=["app"])) == ["app"]
