"""secrets.sources.resolve_password: every source, and how each one fails."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from vya_backupdb.config.models import InstanceConfig, SecretsConfig, Settings
from vya_backupdb.errors import CredentialError
from vya_backupdb.secrets.redaction import clear_registered_secrets, redact
from vya_backupdb.secrets.sources import resolve_password, resolve_password_with_source
from vya_backupdb.secrets.store import encrypt_value, load_master_key, open_store

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    clear_registered_secrets()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(hostname="h", secrets=SecretsConfig(master_key_file=tmp_path / "master.key"))


def inst(**kw: Any) -> InstanceConfig:
    return InstanceConfig.model_validate({"id": "pg1", "type": "postgresql", **kw})


def test_resolve_password_nothing_configured_returns_none(
    settings: Settings, tmp_path: Path
) -> None:
    result = resolve_password_with_source(settings, inst(), tmp_path, {})
    assert result.value is None
    assert "credential store entry 'pg1'" in result.source


def test_resolve_password_from_env(settings: Settings, tmp_path: Path) -> None:
    env = {"PG1_PW": "from-env-pw"}
    assert resolve_password(settings, inst(password_env="PG1_PW"), tmp_path, env) == "from-env-pw"
    assert redact("login with from-env-pw") == "login with ****"


def test_resolve_password_missing_env_names_instance_and_variable(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(CredentialError) as info:
        resolve_password(settings, inst(password_env="NOPE_PW"), tmp_path, {})
    assert "pg1" in info.value.message
    assert "NOPE_PW" in info.value.message
    assert info.value.exit_code == 3


def test_resolve_password_from_file_first_line(settings: Settings, tmp_path: Path) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_text("file-pw\nsecond line\n")
    pw.chmod(0o600)
    assert resolve_password(settings, inst(password_file=pw), tmp_path, {}) == "file-pw"


def test_resolve_password_relative_file_resolves_against_config_dir(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "rel.txt").write_text("rel-pw")
    (tmp_path / "rel.txt").chmod(0o600)
    assert resolve_password(settings, inst(password_file=Path("rel.txt")), tmp_path, {}) == "rel-pw"


def test_resolve_password_world_readable_file_warns(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_text("loose-pw\n")
    pw.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="vya_backupdb.secrets"):
        assert resolve_password(settings, inst(password_file=pw), tmp_path, {}) == "loose-pw"
    assert "0644" in caplog.text
    assert "chmod 600" in caplog.text


def test_resolve_password_missing_file_is_a_credential_error(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(CredentialError, match="cannot read password_file") as info:
        resolve_password(settings, inst(password_file=tmp_path / "absent"), tmp_path, {})
    assert "pg1" in info.value.message


def test_resolve_password_from_command_first_stdout_line(
    settings: Settings, tmp_path: Path
) -> None:
    command = shlex.join([sys.executable, "-c", "print('cmd-pw'); print('ignored')"])
    assert resolve_password(settings, inst(password_command=command), tmp_path, {}) == "cmd-pw"


def test_resolve_password_failing_command_is_a_credential_error(
    settings: Settings, tmp_path: Path
) -> None:
    command = shlex.join(
        [sys.executable, "-c", "import sys; sys.stderr.write('vault locked\\n'); sys.exit(3)"]
    )
    with pytest.raises(CredentialError) as info:
        resolve_password(settings, inst(password_command=command), tmp_path, {})
    assert "password_command failed" in info.value.message
    assert "vault locked" in info.value.message
    assert "pg1" in info.value.message


def test_resolve_password_missing_command_is_a_credential_error(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(CredentialError, match="password_command failed"):
        resolve_password(settings, inst(password_command="/nonexistent/vault-get pg"), tmp_path, {})


def test_resolve_password_command_with_empty_output_is_an_error(
    settings: Settings, tmp_path: Path
) -> None:
    command = shlex.join([sys.executable, "-c", "pass"])
    with pytest.raises(CredentialError, match="printed nothing"):
        resolve_password(settings, inst(password_command=command), tmp_path, {})


def test_resolve_password_unparsable_command_is_an_error(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(CredentialError, match="cannot be parsed"):
        resolve_password(settings, inst(password_command="echo 'unclosed"), tmp_path, {})


def test_resolve_password_encrypted_value(settings: Settings, tmp_path: Path) -> None:
    key = load_master_key(settings, {}, create=True)
    assert key is not None
    value = encrypt_value(key, "enc-pw")
    assert resolve_password(settings, inst(password=value), tmp_path, {}) == "enc-pw"


def test_resolve_password_encrypted_value_with_wrong_key_fails(
    settings: Settings, tmp_path: Path
) -> None:
    value = encrypt_value(Fernet(Fernet.generate_key()), "enc-pw")
    load_master_key(settings, {}, create=True)
    with pytest.raises(CredentialError, match="cannot decrypt the password of instance 'pg1'"):
        resolve_password(settings, inst(password=value), tmp_path, {})


def test_resolve_password_encrypted_value_without_key_fails(
    settings: Settings, tmp_path: Path
) -> None:
    value = encrypt_value(Fernet(Fernet.generate_key()), "enc-pw")
    with pytest.raises(CredentialError, match="no master key"):
        resolve_password(settings, inst(password=value), tmp_path, {})


def test_resolve_password_from_store_uses_credential_name(
    settings: Settings, tmp_path: Path
) -> None:
    open_store(settings, tmp_path, {}, create_key=True).set("shared", "store-pw")
    assert resolve_password(settings, inst(credential="shared"), tmp_path, {}) == "store-pw"


def test_resolve_password_store_with_wrong_key_names_instance(
    settings: Settings, tmp_path: Path
) -> None:
    open_store(settings, tmp_path, {}, create_key=True).set("pg1", "store-pw")
    env = {"VYA_BACKUPDB_MASTER_KEY": Fernet.generate_key().decode()}
    with pytest.raises(CredentialError, match="instance 'pg1': wrong master key"):
        resolve_password(settings, inst(), tmp_path, env)
