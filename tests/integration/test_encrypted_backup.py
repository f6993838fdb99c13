"""Encrypted backups end to end (SQLite, through the CLI): the standard tools decrypt them,
vya restores them exactly, and a missing or wrong key stops before the target is touched."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.jobs.demo import create_sqlite_demo, sqlite_fingerprint
from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed"),
]

runner = CliRunner()


def _keypair(path: Path) -> str:
    secret, public = generate_identity()
    write_identity_file(path, secret, public)
    return public


def _config(tmp_path: Path, encryption: dict[str, Any]) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "testhost",
                "storage": {"base_path": str(tmp_path / "backups"), "encryption": encryption},
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{tmp_path}/data/*.db"]}],
            }
        )
    )
    return config


def _vya(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    # stdout only when it succeeded: log lines go to stderr and would break the JSON.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


@pytest.fixture
def data(tmp_path: Path) -> Path:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    return tmp_path / "data"


def test_encrypted_backup_decrypts_with_age_cli_and_restores_exactly(
    tmp_path: Path, data: Path
) -> None:
    key = tmp_path / "age.key"
    public = _keypair(key)
    config = _config(tmp_path, {"recipients": [public], "identity_file": str(key)})
    code, out = _vya(config, "backup", "lite", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["file"].endswith("_full.sqlite.zst.age")

    stored = tmp_path / "backups" / result["file"]
    assert b"CREATE TABLE" not in stored.read_bytes()
    [meta_path] = (tmp_path / "backups").rglob("*.metadata.json")
    meta_text = meta_path.read_text()
    meta = json.loads(meta_text)
    assert meta["file_info"]["encryption"] == "age"
    assert meta["extra"]["encryption"]["recipients"] == [public]
    assert "AGE-SECRET-KEY" not in meta_text

    # Standard tools alone: age -d | zstd -d gives the SQLite database file.
    age = subprocess.run(
        ["age", "-d", "-i", str(key), str(stored)], capture_output=True, check=True
    )
    plain = subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True, check=True)
    (tmp_path / "by-hand.db").write_bytes(plain.stdout)
    with sqlite3.connect(tmp_path / "by-hand.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sqlite_fingerprint(tmp_path / "by-hand.db") == sqlite_fingerprint(data / "shop.db")

    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--target", "c.db")
    assert code == 0, out
    assert sqlite_fingerprint(data / "c.db") == sqlite_fingerprint(data / "shop.db")


def test_encrypted_backup_wrong_key_fails_before_target_is_touched(
    tmp_path: Path, data: Path
) -> None:
    public = _keypair(tmp_path / "right.key")
    _keypair(tmp_path / "wrong.key")
    config = _config(tmp_path, {"recipients": [public]})
    assert _vya(config, "backup", "lite")[0] == 0

    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--target", "c.db")
    assert code == 3, out
    assert "no decryption key is configured" in out
    assert not (data / "c.db").exists()

    wrong = _config(
        tmp_path, {"recipients": [public], "identity_file": str(tmp_path / "wrong.key")}
    )
    code, out = _vya(wrong, "restore", "lite", "-d", "shop.db", "--latest", "--target", "c.db")
    assert code == 3, out
    assert public in out  # the hint names the recipient the backup needs
    assert not (data / "c.db").exists()


def test_encrypted_backup_after_key_rotation_both_generations_restore(
    tmp_path: Path, data: Path
) -> None:
    old_public = _keypair(tmp_path / "old.key")
    new_public = _keypair(tmp_path / "new.key")
    both = tmp_path / "both.key"
    both.write_text((tmp_path / "old.key").read_text() + (tmp_path / "new.key").read_text())
    assert _vya(_config(tmp_path, {"recipients": [old_public]}), "backup", "lite")[0] == 0
    first = sorted((tmp_path / "backups").rglob("*.age"))
    # The next backup lands in another second: rotate the recipients, keep both identities.
    config = _config(tmp_path, {"recipients": [new_public], "identity_file": str(both)})
    time.sleep(1.1)
    assert _vya(config, "backup", "lite")[0] == 0
    files = sorted((tmp_path / "backups").rglob("*.age"))
    assert len(files) == 2 and files[0] == first[0]
    for number, file in enumerate(files):
        rel = file.relative_to(tmp_path / "backups")
        target = f"gen{number}.db"
        code, out = _vya(config, "restore", "--file", str(rel), "--target", target)
        assert code == 0, out
        assert sqlite_fingerprint(data / target) == sqlite_fingerprint(data / "shop.db")


def test_encrypted_backup_tampered_object_is_refused(tmp_path: Path, data: Path) -> None:
    key = tmp_path / "age.key"
    config = _config(tmp_path, {"recipients": [_keypair(key)], "identity_file": str(key)})
    assert _vya(config, "backup", "lite")[0] == 0
    [stored] = (tmp_path / "backups").rglob("*.age")
    blob = bytearray(stored.read_bytes())
    blob[-40] ^= 0x01
    stored.write_bytes(bytes(blob))
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--target", "c.db")
    assert code == 8, out
    assert not (data / "c.db").exists()
