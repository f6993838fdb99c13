"""The config, credentials and connection commands through the CLI, in an isolated HOME/cwd."""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.cli.config_cmd import Check, exit_code_for
from vya_backupdb.observability.logging import ROOT_LOGGER
from vya_backupdb.secrets.redaction import clear_registered_secrets

pytestmark = pytest.mark.unit

SECRET = "Cli-S3cret-pw"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cwd and HOME with no VYA_* variables."""
    for name in list(os.environ):
        if name.startswith("VYA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    clear_registered_secrets()


def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), input=stdin)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(work: Path, instances: str = "", extra: str = "") -> Path:
    path = work / "config.yaml"
    path.write_text(
        f"hostname: testhost\nstorage:\n  base_path: {work / 'backups'}\n{extra}"
        f"instances:\n{instances or '  []'}\n"
    )
    return path


PG_ENV = (
    "  - id: pg\n    type: postgresql\n    host: 127.0.0.1\n    port: {port}\n"
    "    password_env: CLI_PG_PW\n"
)


def test_config_init_writes_valid_example_and_refuses_overwrite(home: Path) -> None:
    result = run("config", "init")
    assert result.exit_code == 0, result.output
    assert "wrote config.yaml" in result.stdout
    assert (home / "config.yaml").read_text().startswith("# VYA BackupDB configuration")
    again = run("config", "init")
    assert again.exit_code == 2
    assert "already exists" in again.stderr
    assert run("config", "init", "--force").exit_code == 0


def test_config_validate_example_passes_with_warnings(home: Path) -> None:
    run("config", "init", "--output", "etc/vya.yaml")
    result = run("--config", "etc/vya.yaml", "config", "validate")
    assert result.exit_code == 0, result.output
    assert "✅ schema" in result.stdout
    assert "⚠️" in result.stdout
    assert "Summary:" in result.stdout
    assert "0 failed" in result.stdout


def test_config_validate_without_file_exits_2_with_search_paths(home: Path) -> None:
    if Path("/etc/vya-backupdb/config.yaml").exists():  # pragma: no cover - machine specific
        pytest.skip("a system-wide config exists on this machine")
    result = run("config", "validate")
    assert result.exit_code == 2
    assert "no configuration file found" in result.stderr
    assert "config init" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("instances: [\n", "invalid YAML"),
        ("storage:\n  bse_path: /x\n", "storage.bse_path: unknown key"),
        ("instances:\n  - id: a\n    type: postgresql\n    port: many\n", "instances[0].port"),
        ("instances:\n  - id: a\n    type: postgresql\n    port: 65536\n", "65535"),
    ],
)
def test_config_validate_bad_config_exits_2_with_clear_message(
    home: Path, text: str, expected: str
) -> None:
    (home / "config.yaml").write_text(text)
    result = run("config", "validate")
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "config.yaml" in result.stderr
    assert "hint:" in result.stderr
    assert "Traceback" not in result.output


def test_config_validate_missing_credential_exits_3(home: Path) -> None:
    write_config(home, PG_ENV.format(port=closed_port()))
    result = run("config", "validate")
    assert result.exit_code == 3, result.output
    assert "❌ pg: instance 'pg': password_env names CLI_PG_PW, which is not set" in result.stdout


def test_config_validate_unwritable_base_path_exits_2(home: Path) -> None:
    (home / "blocker").write_text("")
    path = home / "config.yaml"
    path.write_text(f"storage:\n  base_path: {home / 'blocker' / 'sub'}\n")
    result = run("config", "validate")
    assert result.exit_code == 2
    assert "❌ storage" in result.stdout


def test_config_validate_connect_unreachable_exits_4_with_troubleshooting(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_PG_PW", SECRET)
    port = closed_port()
    write_config(home, PG_ENV.format(port=port))
    result = run("config", "validate", "--connect")
    assert result.exit_code == 4, result.output
    assert f"❌ pg: unreachable: TCP 127.0.0.1:{port}" in result.stdout
    assert "Troubleshooting:" in result.stdout
    assert f"next: pg_isready -h 127.0.0.1 -p {port}" in result.stdout
    assert SECRET not in result.output


def test_connection_test_unreachable_exits_4(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLI_PG_PW", SECRET)
    write_config(home, PG_ENV.format(port=closed_port()))
    result = run("connection", "test", "--instance", "pg")
    assert result.exit_code == 4
    assert "Troubleshooting:" in result.stdout
    assert SECRET not in result.output


def test_connection_test_unknown_instance_exits_2(home: Path) -> None:
    write_config(home, PG_ENV.format(port=1))
    result = run("connection", "test", "--instance", "nope")
    assert result.exit_code == 2
    assert "unknown instance 'nope'" in result.stderr


def test_connection_test_sqlite_lists_files(home: Path) -> None:
    import sqlite3

    sqlite3.connect(home / "a.db").close()
    write_config(home, "  - id: lite\n    type: sqlite\n    paths: ['*.db']\n")
    result = run("connection", "test")
    assert result.exit_code == 0, result.output
    assert "✅ lite: SQLite" in result.stdout
    assert "a.db" in result.stdout


def test_config_show_masks_every_secret(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("VYA_BACKUPDB_MASTER_KEY", key)
    write_config(home)  # encrypt reads the key location from the config
    encrypted = run("credentials", "encrypt", "--stdin", stdin=SECRET + "\n")
    assert encrypted.exit_code == 0, encrypted.output
    token = encrypted.stdout.strip()
    assert token.startswith("enc:")
    instances = (
        f"  - id: pg\n    type: postgresql\n    password: {token}\n"
        f"  - id: my\n    type: mariadb\n    password_command: echo {SECRET}\n"
    )
    write_config(home, instances, extra="environments:\n  prod:\n    hostname: prodhost\n")
    result = run("--env", "prod", "config", "show")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert token not in result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["hostname"] == "prodhost"
    assert shown["instances"][0]["password"] == "****"
    assert shown["instances"][1]["password_command"] == "****"
    assert "# environment: prod" in result.stdout


def test_credentials_set_list_remove_cycle_with_private_modes(home: Path) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    result = run("credentials", "set", "pg", "--stdin", stdin=SECRET + "\n")
    assert result.exit_code == 0, result.output
    secrets_dir = home / ".secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets_dir / "credentials.json").stat().st_mode) == 0o600
    key_file = Path(os.environ["HOME"]) / ".local/share/vya-backupdb/master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SECRET not in (secrets_dir / "credentials.json").read_text()
    listed = run("credentials", "list")
    assert "pg  (used by: pg)" in listed.stdout
    assert SECRET not in listed.output
    validate = run("config", "validate")
    assert "✅ pg: password from credential store entry 'pg'" in validate.stdout
    assert run("credentials", "remove", "pg").exit_code == 0
    missing = run("credentials", "remove", "pg")
    assert missing.exit_code == 2
    assert "no credential 'pg'" in missing.stderr


def test_credentials_set_prompts_twice_without_echo(home: Path) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    result = run("credentials", "set", "pg", stdin=f"{SECRET}\n{SECRET}\n")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output


def test_credentials_set_unknown_instance_exits_2(home: Path) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    result = run("credentials", "set", "typo", "--stdin", stdin="x\n")
    assert result.exit_code == 2
    assert "no instance is named 'typo'" in result.stderr


def test_credentials_set_empty_secret_exits_2(home: Path) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    assert run("credentials", "set", "pg", "--stdin", stdin="\n").exit_code == 2


def test_wrong_master_key_exits_3_with_clear_message(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    assert run("credentials", "set", "pg", "--stdin", stdin=SECRET + "\n").exit_code == 0
    monkeypatch.setenv("VYA_BACKUPDB_MASTER_KEY", Fernet.generate_key().decode())
    result = run("connection", "test")
    assert result.exit_code == 3, result.output
    assert "wrong master key" in result.stdout
    validate = run("config", "validate")
    assert validate.exit_code == 3
    assert "wrong master key" in validate.stdout


def test_unreadable_secrets_file_exits_3(home: Path) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    # As root permissions do not block reading; a directory in the file's place does.
    (home / ".secrets" / "credentials.json").mkdir(parents=True)
    result = run("credentials", "list")
    assert result.exit_code == 3
    assert "cannot read the credential store" in result.stderr
    validate = run("config", "validate")
    assert validate.exit_code == 3


def test_corrupt_secrets_file_exits_3(home: Path) -> None:
    write_config(home, "  - id: pg\n    type: postgresql\n")
    (home / ".secrets").mkdir()
    (home / ".secrets" / "credentials.json").write_text("{oops")
    result = run("credentials", "list")
    assert result.exit_code == 3
    assert "corrupt" in result.stderr


def test_log_format_json_with_file_writes_json_lines(home: Path) -> None:
    import sqlite3

    sqlite3.connect(home / "a.db").close()
    write_config(home, "  - id: lite\n    type: sqlite\n    paths: ['*.db']\n")
    log_file = home / "log" / "vya.jsonl"
    result = run("--log-format", "json", "--log-file", str(log_file), "connection", "test")
    assert result.exit_code == 0, result.output
    import json

    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(e.get("instance") == "lite" and e["component"] == "cli.connection" for e in entries)


def test_exit_code_for_orders_categories() -> None:
    ok = Check("ok", "config", "a", "")
    assert exit_code_for([ok]) == 0
    assert exit_code_for([ok, Check("fail", "connection", "x", "")]) == 4
    assert (
        exit_code_for([Check("fail", "connection", "x", ""), Check("fail", "credentials", "y", "")])
        == 3
    )
    assert (
        exit_code_for([Check("fail", "credentials", "y", ""), Check("fail", "config", "z", "")])
        == 2
    )
    assert exit_code_for([Check("warn", "tools", "t", "")]) == 0
