"""The directory-format threshold for large PostgreSQL databases: the pure choice and its config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.postgresql import choose_dump_format

pytestmark = pytest.mark.unit

GiB = 1024**3


@pytest.mark.parametrize(
    ("configured", "size", "threshold", "expected"),
    [
        ("custom", 11 * GiB, 10 * GiB, "directory"),
        ("plain", 11 * GiB, 10 * GiB, "directory"),
        ("custom", 10 * GiB, 10 * GiB, "custom"),  # "above": equal stays
        ("custom", 1 * GiB, 10 * GiB, "custom"),
        ("plain", None, 10 * GiB, "plain"),  # size unknown (no CONNECT privilege)
        ("custom", 11 * GiB, None, "custom"),  # no threshold configured
        ("directory", 1, 10 * GiB, "directory"),
    ],
)
def test_choose_dump_format_for_size_and_threshold_picks_directory_above_it(
    configured: str, size: int | None, threshold: int | None, expected: str
) -> None:
    assert choose_dump_format(configured, size, threshold) == expected  # type: ignore[arg-type]


def test_instance_config_threshold_on_a_postgresql_instance_is_accepted() -> None:
    instance = InstanceConfig.model_validate(
        {"id": "pg", "type": "postgresql", "directory_format_above_bytes": 10 * GiB}
    )
    assert instance.directory_format_above_bytes == 10 * GiB


def test_instance_config_threshold_on_a_mysql_instance_is_rejected() -> None:
    with pytest.raises(ValidationError, match="postgresql instances only"):
        InstanceConfig.model_validate(
            {"id": "my", "type": "mariadb", "directory_format_above_bytes": 10 * GiB}
        )
