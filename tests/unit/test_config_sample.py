"""config.sample and the generated documents stay in step with the models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vya_backupdb.config.models import InstanceConfig, Settings
from vya_backupdb.config.sample import (
    REFERENCE_BEGIN,
    REFERENCE_END,
    reference_markdown,
    render_value,
    sample_config,
    update_reference,
)
from vya_backupdb.errors import EXIT_CODES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_validates_as_settings() -> None:
    settings = Settings.model_validate(yaml.safe_load(sample_config()))
    assert {i.type for i in settings.instances} == {"postgresql", "mariadb", "sqlite", "files"}


def test_sample_config_documents_every_instance_key() -> None:
    text = sample_config()
    for name in InstanceConfig.model_fields:
        assert f"{name}:" in text, name


def test_sample_config_lines_fit_in_100_columns() -> None:
    assert max(len(line) for line in sample_config().splitlines()) <= 100


def test_sample_config_environments_apply(tmp_path: Path) -> None:
    from vya_backupdb.config.loader import load_settings

    path = tmp_path / "config.yaml"
    path.write_text(sample_config())
    prod = load_settings(path, "prod", {}).settings
    assert prod.instance("pg-main").host == "db1.example.com"
    staging = load_settings(path, "staging", {}).settings
    assert staging.storage.base_path == Path("/srv/backups-staging")


def test_config_example_yaml_equals_generator_output() -> None:
    committed = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    assert committed == sample_config(), (
        "config.example.yaml is stale: run .venv/bin/python -m vya_backupdb.config.sample"
    )


def test_configuration_doc_embeds_current_reference() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert REFERENCE_BEGIN in doc
    assert REFERENCE_END in doc
    assert update_reference(doc) == doc, (
        "docs/configuration.md is stale: run .venv/bin/python -m vya_backupdb.config.sample docs"
    )
    for name in Settings.model_fields:
        assert f"`{name}`" in reference_markdown()


def test_exit_codes_doc_lists_every_code() -> None:
    doc = (ROOT / "docs" / "exit-codes.md").read_text(encoding="utf-8")
    for code, (name, _meaning) in EXIT_CODES.items():
        assert f"| {code} | `{name}` |" in doc, code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain/path", "plain/path"),
        ("yes", '"yes"'),
        ("007", '"007"'),
        ("has: colon", '"has: colon"'),
        (None, "null"),
        (True, "true"),
        ([1, "a"], "[1, a]"),
        ({"k": "v"}, "{k: v}"),
    ],
)
def test_render_value_is_yaml_that_reads_back(value: object, expected: str) -> None:
    assert render_value(value) == expected
    assert yaml.safe_load(f"k: {expected}")["k"] == value
