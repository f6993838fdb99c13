"""secrets.store: the machine key and the encrypted credential store."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from vya_backupdb.config.models import SecretsConfig, Settings
from vya_backupdb.errors import CredentialError
from vya_backupdb.secrets.store import (
    CredentialStore,
    decrypt_value,
    encrypt_value,
    load_master_key,
    master_key_path,
    open_store,
    secrets_directory,
)

pytestmark = pytest.mark.unit


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        hostname="h",
        secrets=SecretsConfig(directory=tmp_path / "sec", master_key_file=tmp_path / "k/m.key"),
    )


def test_load_master_key_created_on_first_use_with_mode_0600(settings: Settings) -> None:
    assert load_master_key(settings, {}) is None
    key = load_master_key(settings, {}, create=True)
    path = master_key_path(settings)
    assert key is not None
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    again = load_master_key(settings, {})
    assert again is not None
    assert again.decrypt(key.encrypt(b"x")) == b"x"


def test_load_master_key_is_random_not_derived_from_hostname(tmp_path: Path) -> None:
    keys = {
        (tmp_path / f"k{i}").read_bytes()
        if load_master_key(
            Settings(hostname="same", secrets=SecretsConfig(master_key_file=tmp_path / f"k{i}")),
            {},
            create=True,
        )
        else b""
        for i in range(3)
    }
    assert len(keys) == 3


def test_load_master_key_env_variable_overrides_file(settings: Settings) -> None:
    env_key = Fernet.generate_key().decode()
    key = load_master_key(settings, {"VYA_BACKUPDB_MASTER_KEY": env_key}, create=True)
    assert key is not None
    assert Fernet(env_key.encode()).decrypt(key.encrypt(b"ok")) == b"ok"
    assert not master_key_path(settings).exists()


def test_load_master_key_malformed_env_key_is_a_credential_error(settings: Settings) -> None:
    with pytest.raises(CredentialError, match="not a valid key") as info:
        load_master_key(settings, {"VYA_BACKUPDB_MASTER_KEY": "hostname-derived"})
    assert info.value.exit_code == 3
    assert "hostname-derived" not in info.value.message


def test_load_master_key_malformed_file_is_a_credential_error(settings: Settings) -> None:
    path = master_key_path(settings)
    path.parent.mkdir(parents=True)
    path.write_text("garbage\n")
    with pytest.raises(CredentialError, match=str(path)):
        load_master_key(settings, {})


def test_store_set_get_roundtrip_with_private_modes(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.set("pg", "s3cr3t-pw")
    store.set("my", "other")
    assert store.get("pg") == "s3cr3t-pw"
    assert store.names() == ["my", "pg"]
    assert mode(store.directory) == 0o700
    assert mode(store.path) == 0o600
    raw = store.path.read_text()
    assert "s3cr3t-pw" not in raw
    assert store.get("absent") is None
    assert store.mode_problems() == []


def test_store_tightens_an_existing_loose_directory(settings: Settings, tmp_path: Path) -> None:
    directory = secrets_directory(settings, tmp_path)
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.set("pg", "pw")
    assert mode(directory) == 0o700


def test_store_mode_problems_reports_loose_file(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.set("pg", "pw")
    store.path.chmod(0o644)
    assert any("0644" in p for p in store.mode_problems())


def test_store_remove_returns_whether_it_existed(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.set("pg", "pw")
    assert store.remove("pg") is True
    assert store.remove("pg") is False
    assert store.names() == []


def test_store_wrong_master_key_is_reported_as_such(settings: Settings, tmp_path: Path) -> None:
    open_store(settings, tmp_path, {}, create_key=True).set("pg", "pw")
    other = {"VYA_BACKUPDB_MASTER_KEY": Fernet.generate_key().decode()}
    store = open_store(settings, tmp_path, other)
    with pytest.raises(CredentialError, match="wrong master key") as info:
        store.get("pg")
    assert info.value.exit_code == 3
    with pytest.raises(CredentialError, match="wrong master key"):
        store.set("new", "x")  # never mixes two keys in one file


def test_store_without_key_cannot_be_read(settings: Settings, tmp_path: Path) -> None:
    open_store(settings, tmp_path, {}, create_key=True).set("pg", "pw")
    master_key_path(settings).unlink()
    store = open_store(settings, tmp_path, {})
    with pytest.raises(CredentialError, match="no master key"):
        store.get("pg")


def test_store_corrupt_file_is_a_credential_error(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.set("pg", "pw")
    store.path.write_text("{not json")
    with pytest.raises(CredentialError, match="corrupt") as info:
        store.get("pg")
    assert "mv " in info.value.hint


def test_store_wrong_structure_is_a_credential_error(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.directory.mkdir(parents=True)
    store.path.write_text(json.dumps({"credentials": ["a"]}))
    with pytest.raises(CredentialError, match="unexpected structure"):
        store.names()


def test_store_unreadable_file_is_a_credential_error(settings: Settings, tmp_path: Path) -> None:
    # Running as root, permissions do not stop reading: a directory in the file's place does.
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.path.mkdir(parents=True)
    with pytest.raises(CredentialError, match="cannot read the credential store"):
        store.get("pg")


def test_store_tampered_entry_cannot_be_decrypted(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings, tmp_path, {}, create_key=True)
    store.set("pg", "pw")
    data = json.loads(store.path.read_text())
    data["credentials"]["pg"] = data["credentials"]["pg"][:-8] + "AAAAAAA="
    store.path.write_text(json.dumps(data))
    with pytest.raises(CredentialError, match="cannot decrypt credential 'pg'"):
        store.get("pg")


def test_encrypt_value_roundtrip_and_wrong_key() -> None:
    key = Fernet(Fernet.generate_key())
    value = encrypt_value(key, "pa55")
    assert value.startswith("enc:")
    assert "pa55" not in value
    assert decrypt_value(key, value, "x") == "pa55"
    with pytest.raises(CredentialError, match="cannot decrypt the thing"):
        decrypt_value(Fernet(Fernet.generate_key()), value, "the thing")


def test_secrets_directory_defaults_beside_config(tmp_path: Path) -> None:
    assert secrets_directory(Settings(hostname="h"), tmp_path) == tmp_path / ".secrets"


def test_credential_store_names_empty_without_file(tmp_path: Path) -> None:
    assert CredentialStore(tmp_path / "none", None).names() == []
