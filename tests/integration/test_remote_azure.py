"""Azure Blob storage against Azurite on loopback: block uploads committed only on success,
interrupted uploads that leave no blob, retries, credentials through the CLI, and full
backup → Azure → restore round trips."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from remote_helpers import (
    OBJECT_STORE_CHECKS,
    assert_no_local_files,
    check_backup_ok,
    check_chunked_reads,
    check_encrypted_listing,
    check_interrupted_overwrite_keeps_previous,
    check_interrupted_uploads_leave_nothing,
    check_list_sorted_by_prefix,
    check_lists_and_verifies,
    check_missing_container,
    check_missing_variable_exits_3,
    check_persistent_failure,
    check_remote_test_ok,
    check_restore_after_local_loss,
    check_restore_matches,
    check_small_and_empty_objects,
    demo_with_encryption,
    read_digest,
    vya,
    write_config,
    write_object,
)

from harness.azure import ACCOUNT, ACCOUNT_KEY, Azurite, azurite  # noqa: F401
from vya_backupdb.errors import CredentialError, NotFoundError
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.storage.azure import MIB, AzureStorage

pytestmark = pytest.mark.integration

_counter = iter(range(10**6))
BLOCK = 256 * 1024  # the size of each write
ENV = {"VYA_TEST_AZURE_KEY": ACCOUNT_KEY}


@pytest.fixture
def container(azurite: Azurite) -> str:  # noqa: F811
    return azurite.new_container(f"vya-test-{os.getpid()}-{next(_counter)}")


def _write(storage: AzureStorage, name: str, size: int, fail: bool = False) -> str:
    return write_object(storage, name, size, block=BLOCK, fail=fail)


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
    check_chunked_reads(storage, "h/i/db/x.dump.zst", expected, size, MIB)  # 1 MiB chunks
    assert storage.read_range("h/i/db/x.dump.zst", size, 10) == b""


def test_azure_small_object_is_one_put_blob_without_blocks(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "", part_size=MIB)
    expected = _write(storage, "a/small", 1000)
    committed, uncommitted = _blob(azurite, container, "a/small").get_block_list("all")
    assert len(committed) <= 1 and uncommitted == []  # no staged blocks: one Put Blob
    check_small_and_empty_objects(storage, expected, block=BLOCK)


def test_azure_interrupted_upload_leaves_no_blob_and_no_committed_block_list(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "backups", part_size=MIB)
    check_interrupted_uploads_leave_nothing(storage, 2 * MIB + 10, block=BLOCK)
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
    check_interrupted_overwrite_keeps_previous(storage, MIB, block=BLOCK)


def test_azure_list_follows_pages_in_order(
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    storage = azurite.storage(container, "p", page_size=2)
    check_list_sorted_by_prefix(storage, block=BLOCK)
    info = next(iter(storage.list("other")))
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
    assert read_digest(storage, "x") == expected
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
    check_persistent_failure(storage, 2 * MIB, block=BLOCK)


def test_azure_missing_container_is_a_storage_error_with_a_hint(
    azurite: Azurite,  # noqa: F811
) -> None:
    storage = azurite.storage("no-such-container")
    check_missing_container(storage, "az storage container create", 10, block=BLOCK)


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
def test_azure_keep_local_false_backup_lists_verifies_and_restores_from_the_remote(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = write_config(tmp_path, azurite.remote(container), auto_upload=True, keep_local=False)
    check_backup_ok(config, "--no-users", env=ENV)
    assert_no_local_files(tmp_path)
    names = [b.name for b in azurite.service().get_container_client(container).list_blobs()]
    assert any(n.startswith("vya/testhost/lite/") and n.endswith(".sqlite.zst") for n in names)
    assert any(n.endswith(".sqlite.zst.sha256") for n in names)
    assert any(n.endswith(".metadata.json") for n in names)
    check_lists_and_verifies(config, env=ENV)
    check_restore_matches(tmp_path, config, "--remote", "offsite", target="back.db", env=ENV)


def test_azure_encrypted_backup_via_connection_string_restores_from_remote_exactly(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    encryption = demo_with_encryption(tmp_path)
    remote = {
        "name": "offsite",
        "url": f"az://{container}/enc",
        "connection_string_env": "VYA_TEST_AZURE_CONNECTION",
        "retries": 1,
    }
    config = write_config(tmp_path, remote, auto_upload=True, encryption=encryption)
    env = {"VYA_TEST_AZURE_CONNECTION": azurite.connection_string}
    check_backup_ok(config, "--no-users", env=env)
    check_encrypted_listing(config, env=env)
    check_restore_after_local_loss(tmp_path, config, env=env)


def test_azure_remote_test_reports_every_check_ok(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    config = write_config(tmp_path, azurite.remote(container))
    assert check_remote_test_ok(config, env=ENV) >= OBJECT_STORE_CHECKS
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
    config = write_config(tmp_path, remote)
    check_remote_test_ok(config, env={"VYA_TEST_AZURE_SAS": sas})


def test_azure_wrong_key_through_the_cli_exits_3_without_the_key(
    tmp_path: Path,
    azurite: Azurite,  # noqa: F811
    container: str,
) -> None:
    config = write_config(tmp_path, azurite.remote(container))
    wrong = "B" * 86 + "=="
    code, out = vya(config, "list", "--remote", "offsite", env={"VYA_TEST_AZURE_KEY": wrong})
    assert code == 3, out
    assert "access denied" in out
    assert wrong not in out
    check_missing_variable_exits_3(config, "VYA_TEST_AZURE_KEY")
