"""config.loader: locating, parsing, overlays, VYA_ overrides and the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vya_backupdb.config.loader import (
    CONFIG_SEARCH_PATHS,
    apply_env_overrides,
    deep_merge,
    format_key_path,
    load_settings,
    locate_config,
)
from vya_backupdb.errors import ConfigError

pytestmark = pytest.mark.unit

PG = "  - id: pg\n    type: postgresql\n    host: db1\n    port: 5432\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, env: str | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env, environ or {})
    assert info.value.exit_code == 2
    return info.value.message + "\n" + (info.value.details or "")


def test_load_settings_valid_yaml_returns_settings_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, f"hostname: h1\ninstances:\n{PG}")
    loaded = load_settings(path, None, {})
    assert loaded.settings.hostname == "h1"
    assert loaded.settings.instances[0].port == 5432
    assert loaded.path == path
    assert loaded.directory == tmp_path


def test_load_settings_empty_file_gives_defaults(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path, ""), None, {})
    assert loaded.settings.instances == []


def test_load_settings_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "hostname: h1\nstorage:\n  base_path: [unclosed\ninstances: []\n")
    message = error_of(path)
    assert str(path) in message
    assert "line 4" in message
    assert "invalid YAML" in message
    assert "Traceback" not in message


def test_load_settings_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, "hostname: h1\nstorage:\n  base_pth: /x\n")
    message = error_of(path)
    assert "storage.base_pth" in message
    assert "line 3" in message
    assert "unknown key" in message
    assert "did you mean 'base_path'" in message


def test_load_settings_wrong_type_shows_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path, f"instances:\n{PG}  - id: my\n    type: mariadb\n    port: abc\n")
    message = error_of(path)
    assert "instances[1].port" in message
    assert "instance 'my'" in message
    assert "line 8" in message
    assert "valid integer" in message
    assert "found 'abc'" in message


def test_load_settings_port_out_of_range_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "instances:\n  - id: pg\n    type: postgresql\n    port: 70000\n")
    message = error_of(path)
    assert "instances[0].port" in message
    assert "less than or equal to 65535" in message
    assert "70000" in message
    assert "line 4" in message


def test_load_settings_unknown_instance_type_lists_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "instances:\n  - id: x\n    type: oracle\n")
    message = error_of(path)
    assert "instances[0].type" in message
    assert "'postgresql'" in message
    assert "found 'oracle'" in message


def test_load_settings_missing_required_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "instances:\n  - type: postgresql\n")
    message = error_of(path)
    assert "instances[0].id" in message
    assert "required key is missing" in message
    assert "line 2" in message


def test_load_settings_plain_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(
        tmp_path, "instances:\n  - id: pg\n    type: postgresql\n    password: Sup3rS3cret\n"
    )
    message = error_of(path)
    assert "plain-text passwords are not accepted" in message
    assert "Sup3rS3cret" not in message


def test_load_settings_several_problems_are_all_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "bogus: 1\ninstances:\n  - id: pg\n    type: postgresql\n    port: 0\n")
    message = error_of(path)
    assert "2 problems" in message
    assert "bogus" in message
    assert "instances[0].port" in message


def test_load_settings_top_level_list_is_rejected(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "- a\n- b\n"))
    assert "top level must be a mapping" in message


def test_load_settings_json_config_with_error_has_line(tmp_path: Path) -> None:
    data = {"hostname": "h", "instances": [{"id": "pg", "type": "postgresql", "port": -1}]}
    path = write(tmp_path, json.dumps(data, indent=2), "config.json")
    message = error_of(path)
    assert "instances[0].port" in message
    assert "line 7" in message


def test_load_settings_malformed_json_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "hostname": "h",\n}\n', "config.json")
    message = error_of(path)
    assert "invalid JSON" in message
    assert "line 3" in message


def test_load_settings_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"hostname: \xff\xfe\n")
    assert "not UTF-8" in error_of(path)


def test_load_settings_no_file_found_lists_searched_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if Path("/etc/vya-backupdb/config.yaml").exists():  # pragma: no cover - machine specific
        pytest.skip("a system-wide config exists on this machine")
    with pytest.raises(ConfigError) as info:
        load_settings(None, None, {})
    assert "no configuration file found" in info.value.message
    assert "/etc/vya-backupdb/config.yaml" in info.value.message
    assert "config init" in info.value.hint


def test_locate_config_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        locate_config(tmp_path / "nope.yaml", {})


def test_locate_config_env_variable_wins_over_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "hostname: cwd\n")
    other = write(tmp_path, "hostname: env\n", "other.yaml")
    assert locate_config(None, {"VYA_BACKUPDB_CONFIG": str(other)}) == other
    assert locate_config(None, {}) == tmp_path / "config.yaml"
    assert locate_config(other, {"VYA_BACKUPDB_CONFIG": "/nonexistent"}) == other


def test_locate_config_home_file_found_after_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home_cfg = tmp_path / "home/.config/vya-backupdb/config.yaml"
    home_cfg.parent.mkdir(parents=True)
    home_cfg.write_text("hostname: home\n")
    assert locate_config(None, {}) == home_cfg
    assert CONFIG_SEARCH_PATHS[0] == Path("config.yaml")


def test_load_settings_environment_overlay_merges_instances_by_id(tmp_path: Path) -> None:
    text = (
        f"hostname: base\ninstances:\n{PG}"
        "environments:\n  prod:\n    hostname: prodhost\n"
        "    instances:\n      - id: pg\n        port: 6432\n"
        "      - id: extra\n        type: mariadb\n"
    )
    loaded = load_settings(write(tmp_path, text), "prod", {})
    settings = loaded.settings
    assert loaded.env == "prod"
    assert settings.hostname == "prodhost"
    assert [i.id for i in settings.instances] == ["pg", "extra"]
    assert settings.instances[0].port == 6432
    assert settings.instances[0].host == "db1"  # kept from the base


def test_load_settings_unknown_environment_lists_known_ones(tmp_path: Path) -> None:
    text = "environments:\n  dev: {}\n  prod: {}\n"
    message = error_of(write(tmp_path, text), env="staging")
    assert "unknown environment 'staging'" in message
    assert "dev, prod" in message


def test_load_settings_overlay_error_mentions_environment(tmp_path: Path) -> None:
    text = (
        f"instances:\n{PG}environments:\n  prod:\n    instances:\n      - id: pg\n        port: 0\n"
    )
    message = error_of(write(tmp_path, text), env="prod")
    assert "environment 'prod'" in message
    assert "instances[0].port" in message


def test_load_settings_env_overrides_apply_after_overlay(tmp_path: Path) -> None:
    text = f"hostname: base\ninstances:\n{PG}environments:\n  prod:\n    hostname: prodhost\n"
    environ = {
        "VYA_HOSTNAME": "fromenv",
        "VYA_STORAGE__BASE_PATH": "/srv/b",
        "VYA_STORAGE__COMPRESSION__LEVEL": "9",
        "VYA_INSTANCES__PG__PORT": "5433",
        "VYA_INSTANCES__0__DATABASES": "[app, crm_*]",
        "VYA_TEST_PG_MAIN_PASSWORD": "not-an-override",
        "VYA_BACKUPDB_MASTER_KEY": "ignored-here",
    }
    settings = load_settings(write(tmp_path, text), "prod", environ).settings
    assert settings.hostname == "fromenv"
    assert settings.storage.base_path == Path("/srv/b")
    assert settings.storage.compression.level == 9
    assert settings.instances[0].port == 5433
    assert settings.instances[0].databases == ["app", "crm_*"]


def test_apply_env_overrides_matches_dashed_instance_ids() -> None:
    data = {"instances": [{"id": "pg-main.1", "type": "postgresql"}]}
    result = apply_env_overrides(data, {"VYA_INSTANCES__PG_MAIN_1__USER": "bob"})
    assert result["instances"][0]["user"] == "bob"
    assert "user" not in data["instances"][0]  # input untouched


def test_apply_env_overrides_unknown_instance_is_an_error() -> None:
    data = {"instances": [{"id": "pg", "type": "postgresql"}]}
    with pytest.raises(ConfigError, match="no instance matches 'NOPE'") as info:
        apply_env_overrides(data, {"VYA_INSTANCES__NOPE__PORT": "1"})
    assert "VYA_INSTANCES__NOPE__PORT" in info.value.message


def test_load_settings_invalid_env_override_is_reported_like_the_file(tmp_path: Path) -> None:
    message = error_of(
        write(tmp_path, f"instances:\n{PG}"), environ={"VYA_INSTANCES__PG__PORT": "99999"}
    )
    assert "instances[0].port" in message
    assert "99999" in message


def test_load_settings_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    text = (
        "storage:\n  base_path: backups\nsecrets:\n  directory: sec\n"
        "  master_key_file: keys/master.key\nlogging:\n  file: logs/vya.log\n"
        "instances:\n  - id: lite\n    type: sqlite\n    paths: [data/*.db, /abs/x.db]\n"
        "  - id: pg\n    type: postgresql\n    password_file: pw.txt\n"
    )
    settings = load_settings(write(sub, text), None, {}).settings
    assert settings.storage.base_path == sub / "backups"
    assert settings.secrets.directory == sub / "sec"
    assert settings.secrets.master_key_file == sub / "keys/master.key"
    assert settings.logging.file == sub / "logs/vya.log"
    assert settings.instances[0].paths == [str(sub / "data/*.db"), "/abs/x.db"]
    assert settings.instances[1].password_file == sub / "pw.txt"


def test_deep_merge_replaces_scalars_and_plain_lists() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base["a"]["c"] == [1, 2]


def test_format_key_path_renders_indices() -> None:
    assert format_key_path(("instances", 1, "port")) == "instances[1].port"
    assert format_key_path(()) == "(top level)"
