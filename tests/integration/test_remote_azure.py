"""Azure Blob storage against Azurite on loopback: block uploads committed only on success,
interrupted uploads that leave no blob, retries, credentials through the CLI, and full
backup → Azure → restore round trips."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.exceptions import ServiceResponseError
from typer.testing import CliRunner

from harness.azure import ACCOUNT, ACCOUNT_KEY, Azurite, azurite  # noqa: F401
from vya_backupdb.cli.app import app
from vya_backupdb.errors import CredentialError, NotFoundError, StorageError
from vya_backupdb.jobs.demo import create_sqlite_demo, sqlite_fingerprint
from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file
from vya_backupdb.storage.azure import MIB, AzureStorage

pytestmark = pytest.mark.integration

runner = CliRunner()
_counter = iter(range(10**6))


@pytest.fixture
def container(azurite: Azurite) -> str:  # noqa: F811
    return azurite.new_container(f"vya-test-{os.getpid()}-{next(_counter)}")


def _write(storage: AzureStorage, name: str, size: int, fail: bool = False) -> str:
    digest = hashlib.sha256()
    block = os.urandom(256 * 1024)
    with storage.put(name) as writer:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            writer.write(chunk)
            digest.update(chunk)
            written += len(chunk)
        if fail:
            raise RuntimeError("dump died")
    return digest.hexdigest()


def _read(storage: Any, name: str) -> str:
    digest = hashlib.sha256()
    with storage.get(name) as reader:
        while chunk := reader.read(100_000):
            digest.update(chunk)
    return digest.hexdigest()


def _blob(azurite: Azurite, container: str, key: str) -> Any:  # noqa: F811
    return azurite.service().get_container_client(container).get_blob_client(key)


def test_azure_block_upload_commits_blocks_and_reads_back_exactly(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "backups", part_size=MIB)
    size = 3 * MIB + 123
    expected = _write(storage, "h/i/db/x.dump.zst", size)
    committed, uncommitted = _blob(azurite, container, "backups/h/i/db/x.dump.zst").get_block_list(
        "all"
    )
    assert [b.size for b in committed] == [MIB, MIB, MIB, 123]  # one block per part
    assert uncommitted == []
    assert _read(storage, "h/i/db/x.dump.zst") == expected  # read in 1 MiB ranged chunks
    assert storage.stat("h/i/db/x.dump.zst").size == size
    with storage.get("h/i/db/x.dump.zst") as reader:
        head = reader.read(MIB + 10)  # never more than one chunk per read
    assert len(head) == MIB
    assert storage.read_range("h/i/db/x.dump.zst", MIB - 5, 10) == b"".join(
        (head[-5:], storage.read_range("h/i/db/x.dump.zst", MIB, 5))
    )
    assert storage.read_range("h/i/db/x.dump.zst", size, 10) == b""


def test_azure_small_object_is_one_put_blob_without_blocks(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "", part_size=MIB)
    expected = _write(storage, "a/small", 1000)
    committed, uncommitted = _blob(azurite, container, "a/small").get_block_list("all")
    assert len(committed) <= 1 and uncommitted == []  # no staged blocks: one Put Blob
    assert _read(storage, "a/small") == expected
    _write(storage, "a/empty", 0)
    assert storage.stat("a/empty").size == 0
    assert _read(storage, "a/empty") == hashlib.sha256(b"").hexdigest()


def test_azure_interrupted_upload_leaves_no_blob_and_no_committed_block_list(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "backups", part_size=MIB)
    with pytest.raises(RuntimeError):
        _write(storage, "a/big.dump", 2 * MIB + 10, fail=True)
    with pytest.raises(RuntimeError):
        _write(storage, "a/small.dump", 1000, fail=True)
    assert not storage.exists("a/big.dump")
    assert not storage.exists("a/small.dump")
    assert list(storage.list("")) == []
    # The two full parts were staged, but no block list was ever committed.
    committed, uncommitted = _blob(azurite, container, "backups/a/big.dump").get_block_list("all")
    assert committed == []
    assert [b.size for b in uncommitted] == [MIB, MIB]
    with pytest.raises(NotFoundError), storage.get("a/big.dump"):
        pass


def test_azure_interrupted_overwrite_keeps_the_previous_blob_intact(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "", part_size=MIB)
    first = _write(storage, "x", 2 * MIB + 1)
    with pytest.raises(RuntimeError):
        _write(storage, "x", 3 * MIB, fail=True)
    assert _read(storage, "x") == first
    assert storage.stat("x").size == 2 * MIB + 1


def test_azure_list_follows_pages_in_order(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "p", page_size=2)
    names = [f"h/i/{n}" for n in ("e", "a", "d", "b", "c")] + ["h/j/z", "other"]
    for name in names:
        _write(storage, name, 10)
    assert [o.name for o in storage.list("h/i/")] == sorted(names)[:5]
    assert [o.name for o in storage.list("")] == sorted(names)
    info = next(iter(storage.list("other")))
    assert info.size == 10
    assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=5)


class _FlakyContainer:
    """The real container client; its blobs' ``method`` fails ``failures`` times, the way the
    SDK reports a connection dropped before the answer (ServiceResponseError)."""

    def __init__(self, container: Any, method: str, failures: int):
        self._container = container
        self.method = method
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def get_blob_client(self, key: str) -> Any:
        return _FlakyBlob(self._container.get_blob_client(key), self)


class _FlakyBlob:
    def __init__(self, blob: Any, owner: _FlakyContainer):
        self._blob = blob
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._blob, name)
        if name != self._owner.method:
            return real

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if self._owner.failures > 0:
                self._owner.failures -= 1
                raise ServiceResponseError("Connection reset by peer")
            return real(*args, **kwargs)

        return flaky


def _flaky_storage(
    azurite: Azurite,  # noqa: F811
    container: str,
    method: str,
    failures: int,
    retries: int,
) -> tuple[AzureStorage, _FlakyContainer]:
    real = azurite.storage(container, "p")
    flaky = _FlakyContainer(real.container, method, failures)
    return AzureStorage(flaky, "p", part_size=MIB, retries=retries), flaky


def test_azure_transient_block_and_commit_failures_are_retried(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage, flaky = _flaky_storage(azurite, container, "stage_block", 2, retries=3)
    expected = _write(storage, "x", 2 * MIB + 5)
    assert flaky.failures == 0
    flaky.method, flaky.failures = "commit_block_list", 1
    _write(storage, "y", MIB + 1)
    assert flaky.failures == 0
    assert _read(storage, "x") == expected
    assert storage.stat("y").size == MIB + 1


def test_azure_dropped_download_resumes_from_the_offset_reached(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage, flaky = _flaky_storage(azurite, container, "download_blob", 0, retries=2)
    expected = _write(storage, "x", 3 * MIB)
    digest = hashlib.sha256()
    with storage.get("x") as reader:
        digest.update(reader.read(MIB))
        flaky.failures = 2  # the next chunk's first two requests fail
        while chunk := reader.read(MIB):
            digest.update(chunk)
    assert flaky.failures == 0
    assert digest.hexdigest() == expected


def test_azure_persistent_failure_gives_storage_error_and_no_blob(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage, _ = _flaky_storage(azurite, container, "stage_block", 100, retries=1)
    with pytest.raises(StorageError, match="after 2 attempt"):
        _write(storage, "x", 2 * MIB)
    assert not storage.exists("x")


def test_azure_missing_container_is_a_storage_error_with_a_hint(
    azurite: Azurite,  # noqa: F811
) -> None:
    storage = azurite.storage("no-such-container")
    with pytest.raises(StorageError) as caught:
        list(storage.list(""))
    assert not isinstance(caught.value, NotFoundError)
    assert "does not exist" in caught.value.message
    assert "az storage container create" in caught.value.hint
    with pytest.raises(StorageError, match="does not exist"):
        _write(storage, "x", 10)


def test_azure_wrong_account_key_is_a_credential_error(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    from vya_backupdb.config.remote import RemoteConfig

    remote = RemoteConfig.model_validate(azurite.remote(container))
    wrong = "A" * 86 + "=="  # valid base64, not the account's key
    storage = AzureStorage.from_config(remote, {"VYA_TEST_AZURE_KEY": wrong})
    with pytest.raises(CredentialError) as caught:
        storage.stat("anything")
    assert "access denied" in caught.value.message
    assert wrong not in caught.value.message + caught.value.hint


# -- through the CLI -------------------------------------------------------------------------
def _config(
    tmp_path: Path,
    remote: dict[str, object],
    **storage: Any,
) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "testhost",
                "storage": {"base_path": str(tmp_path / "backups"), "remotes": [remote], **storage},
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{tmp_path}/data/*.db"]}],
            }
        )
    )
    return config


def _vya(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    env = {"VYA_TEST_AZURE_KEY": ACCOUNT_KEY} if env is None else env
    result = runner.invoke(app, ["--config", str(config), *args], env=env)
    # stdout only: log lines go to stderr and would break the JSON.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_azure_keep_local_false_backup_lists_verifies_and_restores_from_the_remote(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = _config(tmp_path, azurite.remote(container), auto_upload=True, keep_local=False)
    code, out = _vya(config, "backup", "lite", "--no-users", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["status"] == "success" and result["warnings"] == []
    local = tmp_path / "backups"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))
    names = [b.name for b in azurite.service().get_container_client(container).list_blobs()]
    assert any(n.startswith("vya/testhost/lite/") and n.endswith(".sqlite.zst") for n in names)
    assert any(n.endswith(".sqlite.zst.sha256") for n in names)
    assert any(n.endswith(".metadata.json") for n in names)

    code, out = _vya(config, "list", "--remote", "offsite", "--json")
    assert code == 0, out
    [entry] = json.loads(out)["backups"]
    assert entry["database"] == "shop.db"

    code, out = _vya(config, "verify", "lite", "--remote", "offsite", "--json")
    assert code == 0, out
    assert [r["outcome"] for r in json.loads(out)["results"]] == ["ok"]

    code, out = _vya(
        config, "restore", "lite", "-d", "shop.db", "--latest", "--remote", "offsite",
        "--target", "back.db",
    )  # fmt: skip
    assert code == 0, out
    data = tmp_path / "data"
    assert sqlite_fingerprint(data / "back.db") == sqlite_fingerprint(data / "shop.db")


def test_azure_encrypted_backup_via_connection_string_restores_from_remote_exactly(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    secret, public = generate_identity()
    write_identity_file(tmp_path / "age.key", secret, public)
    encryption = {"recipients": [public], "identity_file": str(tmp_path / "age.key")}
    remote = {
        "name": "offsite",
        "url": f"az://{container}/enc",
        "connection_string_env": "VYA_TEST_AZURE_CONNECTION",
        "retries": 1,
    }
    config = _config(tmp_path, remote, auto_upload=True, encryption=encryption)
    env = {"VYA_TEST_AZURE_CONNECTION": azurite.connection_string}
    code, out = _vya(config, "backup", "lite", "--no-users", "--json", env=env)
    assert code == 0, out
    [result] = json.loads(out)["results"]
    assert result["warnings"] == []

    code, out = _vya(config, "list", "--remote", "offsite", "--json", env=env)
    assert code == 0, out
    [entry] = json.loads(out)["backups"]
    assert entry["encryption"] == "age" and entry["checksum"] == "sidecar"

    shutil.rmtree(tmp_path / "backups")  # the local disk died
    code, out = _vya(
        config, "restore", "lite", "-d", "shop.db", "--latest", "--remote", "offsite",
        "--target", "back.db", env=env,
    )  # fmt: skip
    assert code == 0, out
    data = tmp_path / "data"
    assert sqlite_fingerprint(data / "back.db") == sqlite_fingerprint(data / "shop.db")


def test_azure_remote_test_reports_every_check_ok(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    config = _config(tmp_path, azurite.remote(container))
    code, out = _vya(config, "remote", "test", "offsite", "--json")
    assert code == 0, out
    checks = {c["name"]: c["outcome"] for c in json.loads(out)}
    assert set(checks.values()) == {"ok"}
    assert {"write", "read back", "range read", "large (multipart) write", "delete"} <= set(checks)
    assert list(azurite.service().get_container_client(container).list_blobs()) == []


def test_azure_remote_test_with_a_sas_token_reports_every_check_ok(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(
            read=True, add=True, create=True, write=True, delete=True, list=True
        ),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    remote = {
        "name": "offsite",
        "url": f"azure://{container}/sas",
        "endpoint_url": azurite.endpoint,
        "account_name": ACCOUNT,
        "sas_token_env": "VYA_TEST_AZURE_SAS",
        "retries": 1,
    }
    config = _config(tmp_path, remote)
    code, out = _vya(config, "remote", "test", "offsite", "--json", env={"VYA_TEST_AZURE_SAS": sas})
    assert code == 0, out
    assert {c["outcome"] for c in json.loads(out)} == {"ok"}


def test_azure_wrong_key_through_the_cli_exits_3_without_the_key(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    config = _config(tmp_path, azurite.remote(container))
    wrong = "B" * 86 + "=="
    code, out = _vya(config, "list", "--remote", "offsite", env={"VYA_TEST_AZURE_KEY": wrong})
    assert code == 3, out
    assert "access denied" in out
    assert wrong not in out
    code, out = _vya(config, "list", "--remote", "offsite", env={})
    assert code == 3, out
    assert "VYA_TEST_AZURE_KEY" in out
