"""Shared steps of the remote storage tests (S3, Azure Blob, GCS, SFTP).

Two kinds: storage-level checks that write and read objects through a backend directly, and
CLI round trips on a config with one sqlite instance ``lite`` and one remote entry, the
remote's credentials passed in ``env``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.errors import NotFoundError, StorageError
from vya_backupdb.jobs.demo import create_sqlite_demo, sqlite_fingerprint
from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file

runner = CliRunner()

#: The checks ``remote test`` runs on an object store (at least these).
OBJECT_STORE_CHECKS = {"write", "read back", "range read", "large (multipart) write", "delete"}


# -- storage level ---------------------------------------------------------------------------
def write_object(storage: Any, name: str, size: int, *, block: int, fail: bool = False) -> str:
    """Write ``size`` random bytes to ``name`` in writes of ``block`` bytes; return their
    sha256. ``fail``: raise RuntimeError inside the ``with`` block after the last write."""
    digest = hashlib.sha256()
    data = os.urandom(block)
    with storage.put(name) as writer:
        written = 0
        while written < size:
            chunk = data[: min(block, size - written)]
            writer.write(chunk)
            digest.update(chunk)
            written += len(chunk)
        if fail:
            raise RuntimeError("dump died")
    return digest.hexdigest()


def read_digest(storage: Any, name: str) -> str:
    """Return the sha256 of ``name`` read through ``storage.get`` in 100,000-byte reads."""
    digest = hashlib.sha256()
    with storage.get(name) as reader:
        while chunk := reader.read(100_000):
            digest.update(chunk)
    return digest.hexdigest()


def check_interrupted_uploads_leave_nothing(storage: Any, big: int, *, block: int) -> None:
    """An upload of ``big`` bytes and one of 1000 bytes, both interrupted: no object."""
    with pytest.raises(RuntimeError):
        write_object(storage, "a/big.dump", big, block=block, fail=True)
    with pytest.raises(RuntimeError):
        write_object(storage, "a/small.dump", 1000, block=block, fail=True)
    assert not storage.exists("a/big.dump")
    assert not storage.exists("a/small.dump")
    assert list(storage.list("")) == []


def check_interrupted_overwrite_keeps_previous(storage: Any, part: int, *, block: int) -> None:
    """An interrupted overwrite of ``x`` (parts of ``part`` bytes) leaves the first version."""
    first = write_object(storage, "x", 2 * part + 1, block=block)
    with pytest.raises(RuntimeError):
        write_object(storage, "x", 3 * part, block=block, fail=True)
    assert read_digest(storage, "x") == first
    assert storage.stat("x").size == 2 * part + 1


def check_chunked_reads(storage: Any, name: str, expected: str, size: int, chunk: int) -> None:
    """``name`` (``size`` bytes, sha256 ``expected``) reads back exactly, at most ``chunk``
    bytes per read, and ranged reads across a chunk boundary agree with it."""
    assert read_digest(storage, name) == expected
    assert storage.stat(name).size == size
    with storage.get(name) as reader:
        head = reader.read(chunk + 10)  # never more than one chunk per read
    assert len(head) == chunk
    assert storage.read_range(name, chunk - 5, 10) == b"".join(
        (head[-5:], storage.read_range(name, chunk, 5))
    )


def check_small_and_empty_objects(storage: Any, expected: str, *, block: int) -> None:
    """``a/small`` (sha256 ``expected``) reads back; an empty object round-trips."""
    assert read_digest(storage, "a/small") == expected
    write_object(storage, "a/empty", 0, block=block)
    assert storage.stat("a/empty").size == 0
    assert read_digest(storage, "a/empty") == hashlib.sha256(b"").hexdigest()


def check_list_sorted_by_prefix(storage: Any, *, block: int) -> None:
    """Names written in random order list sorted, filtered by prefix, with their size."""
    names = [f"h/i/{n}" for n in ("e", "a", "d", "b", "c")] + ["h/j/z", "other"]
    for name in names:
        write_object(storage, name, 10, block=block)
    assert [o.name for o in storage.list("h/i/")] == sorted(names)[:5]
    assert [o.name for o in storage.list("")] == sorted(names)
    assert next(iter(storage.list("other"))).size == 10


def check_persistent_failure(storage: Any, size: int, *, block: int) -> None:
    """A write whose every attempt fails: StorageError after 2 attempts, and no object."""
    with pytest.raises(StorageError, match="after 2 attempt"):
        write_object(storage, "x", size, block=block)
    assert not storage.exists("x")


def check_missing_container(storage: Any, hint: str, size: int, *, block: int) -> None:
    """Listing a missing bucket / container is a StorageError (not NotFound) whose hint
    contains ``hint``; writing to it fails too."""
    with pytest.raises(StorageError) as caught:
        list(storage.list(""))
    assert not isinstance(caught.value, NotFoundError)
    assert "does not exist" in caught.value.message
    assert hint in caught.value.hint
    with pytest.raises(StorageError, match="does not exist"):
        write_object(storage, "x", size, block=block)


# -- through the CLI -------------------------------------------------------------------------
def write_config(tmp_path: Path, remote: Mapping[str, object], **storage: Any) -> Path:
    """Write a config (host ``testhost``, sqlite instance ``lite`` on ``tmp_path/data``) whose
    only remote is ``remote``; ``storage``: more keys of the storage section."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "testhost",
                "storage": {
                    "base_path": str(tmp_path / "backups"),
                    "remotes": [dict(remote)],
                    **storage,
                },
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{tmp_path}/data/*.db"]}],
            }
        )
    )
    return config


def vya(config: Path, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI on ``config`` with ``env`` added to the environment; return (exit code,
    stdout when it succeeded, else stdout and stderr)."""
    result = runner.invoke(app, ["--config", str(config), *args], env=dict(env or {}))
    # stdout only: log lines go to stderr and would break the JSON.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def demo_with_encryption(tmp_path: Path) -> dict[str, object]:
    """Create the sqlite demo database and an age identity; return the encryption section."""
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    secret, public = generate_identity()
    write_identity_file(tmp_path / "age.key", secret, public)
    return {"recipients": [public], "identity_file": str(tmp_path / "age.key")}


def assert_no_local_files(tmp_path: Path) -> None:
    local = tmp_path / "backups"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))


def check_backup_ok(config: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
    """``backup lite --json *args`` succeeds with no warning."""
    code, out = vya(config, "backup", "lite", *args, "--json", env=env)
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["status"] == "success" and result["warnings"] == [], result


def check_encrypted_listing(config: Path, env: Mapping[str, str] | None = None) -> None:
    """The remote lists one backup, encrypted with age, with a sidecar checksum."""
    code, out = vya(config, "list", "--remote", "offsite", "--json", env=env)
    assert code == 0, out
    [entry] = json.loads(out)["backups"]
    assert entry["encryption"] == "age" and entry["checksum"] == "sidecar"


def check_lists_and_verifies(config: Path, env: Mapping[str, str] | None = None) -> None:
    """The remote lists one backup of shop.db, and verifying it there is ok."""
    code, out = vya(config, "list", "--remote", "offsite", "--json", env=env)
    assert code == 0, out
    [entry] = json.loads(out)["backups"]
    assert entry["database"] == "shop.db"
    code, out = vya(config, "verify", "lite", "--remote", "offsite", "--json", env=env)
    assert code == 0, out
    assert [r["outcome"] for r in json.loads(out)["results"]] == ["ok"]


def check_restore_matches(
    tmp_path: Path,
    config: Path,
    *args: str,
    target: str,
    env: Mapping[str, str] | None = None,
) -> None:
    """``restore lite -d shop.db --latest *args --target target`` rebuilds shop.db exactly."""
    code, out = vya(
        config, "restore", "lite", "-d", "shop.db", "--latest", *args, "--target", target,
        env=env,
    )  # fmt: skip
    assert code == 0, out
    data = tmp_path / "data"
    assert sqlite_fingerprint(data / target) == sqlite_fingerprint(data / "shop.db")


def check_restore_after_local_loss(
    tmp_path: Path, config: Path, env: Mapping[str, str] | None = None
) -> None:
    """With the local store gone, a restore from remote ``offsite`` rebuilds shop.db exactly."""
    shutil.rmtree(tmp_path / "backups")  # the local disk died
    check_restore_matches(tmp_path, config, "--remote", "offsite", target="back.db", env=env)


def check_remote_test_ok(
    config: Path, name: str = "offsite", env: Mapping[str, str] | None = None
) -> set[str]:
    """``remote test NAME`` passes every check; return the checks' names."""
    code, out = vya(config, "remote", "test", name, "--json", env=env)
    assert code == 0, out
    checks = {c["name"]: c["outcome"] for c in json.loads(out)}
    assert set(checks.values()) == {"ok"}
    return set(checks)


def check_missing_variable_exits_3(config: Path, variable: str) -> None:
    """Without the remote's credential variable, a remote listing exits 3 naming it."""
    code, out = vya(config, "list", "--remote", "offsite", env={})
    assert code == 3, out
    assert variable in out
