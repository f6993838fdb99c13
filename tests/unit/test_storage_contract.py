"""One contract suite for every storage backend (STYLE rule 3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.azure import azurite  # noqa: F401 - fixture
from harness.gcs import gcs_server  # noqa: F401 - fixture
from harness.s3 import new_bucket, s3_client, s3_endpoint  # noqa: F401 - fixture
from harness.sftp import sftp_server  # noqa: F401 - fixture
from vya_backupdb.errors import NotFoundError, StorageError
from vya_backupdb.storage.base import Storage
from vya_backupdb.storage.local import LocalStorage
from vya_backupdb.storage.memory import MemoryStorage

pytestmark = pytest.mark.unit


_REMOTE = [pytest.mark.integration]


@pytest.fixture(
    params=[
        "local",
        "memory",
        pytest.param("s3", marks=_REMOTE),
        pytest.param("sftp", marks=_REMOTE),
        pytest.param("azure", marks=_REMOTE),
        pytest.param("gcs", marks=_REMOTE),
    ]
)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "store")
    elif request.param == "memory":
        yield MemoryStorage()
    elif request.param == "s3":
        from vya_backupdb.storage.remote import RetryingStorage
        from vya_backupdb.storage.s3 import S3Storage

        # One bucket per test: the contract cases assume an empty store.
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = new_bucket(endpoint, f"contract-{abs(hash(request.node.nodeid)) % 10**12}")
        yield RetryingStorage(S3Storage(s3_client(endpoint), bucket, "vya/prefix"), retries=2)
    elif request.param in ("azure", "gcs"):
        from vya_backupdb.storage.remote import RetryingStorage

        # One container / bucket per test: the contract cases assume an empty store.
        unique = f"contract-{abs(hash(request.node.nodeid)) % 10**12}"
        if request.param == "azure":
            emulator = request.getfixturevalue("azurite")
            inner = emulator.storage(emulator.new_container(unique), "vya/prefix", retries=2)
        else:
            emulator = request.getfixturevalue("gcs_server")
            inner = emulator.storage(emulator.new_bucket(unique), "vya/prefix", retries=2)
        yield RetryingStorage(inner, retries=2)
    else:
        from vya_backupdb.storage.remote import RetryingStorage

        server = request.getfixturevalue("sftp_server")
        yield RetryingStorage(server.storage(tmp_path.name), retries=2)


def _put(storage: Storage, name: str, data: bytes) -> None:
    with storage.put(name) as writer:
        writer.write(data)


def _get(storage: Storage, name: str) -> bytes:
    with storage.get(name) as reader:
        return reader.read(-1) if False else b"".join(iter(lambda: reader.read(4096), b""))


def test_storage_put_then_get_returns_same_bytes(storage: Storage) -> None:
    _put(storage, "h/i/db/2026-01-01/x.dump.zst", b"\x00data\xff")
    assert _get(storage, "h/i/db/2026-01-01/x.dump.zst") == b"\x00data\xff"
    assert storage.stat("h/i/db/2026-01-01/x.dump.zst").size == 6
    assert storage.exists("h/i/db/2026-01-01/x.dump.zst")


def test_storage_failed_put_leaves_no_object(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.put("a/b.sql") as writer:
        writer.write(b"partial")
        raise RuntimeError("dump died")
    assert not storage.exists("a/b.sql")
    assert list(storage.list("")) == []


def test_storage_list_is_sorted_and_filtered_by_prefix(storage: Storage) -> None:
    for name in ("h/i2/x", "h/i/b", "h/i/a", "other/z"):
        _put(storage, name, b"1")
    assert [o.name for o in storage.list("h/i/")] == ["h/i/a", "h/i/b"]
    assert [o.name for o in storage.list("h/")] == ["h/i/a", "h/i/b", "h/i2/x"]


def test_storage_delete_is_idempotent(storage: Storage) -> None:
    _put(storage, "d/x", b"1")
    storage.delete("d/x")
    storage.delete("d/x")
    assert not storage.exists("d/x")


def test_storage_get_missing_raises_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError), storage.get("nope"):
        pass
    with pytest.raises(NotFoundError):
        storage.stat("nope")


def test_local_storage_rejects_escaping_names(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(StorageError), storage.put("../evil"):
        pass


def test_local_storage_hides_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "x.dump.tmp-abc").write_bytes(b"half")
    assert list(storage.list("")) == []


def test_local_storage_object_mode_is_not_world_readable(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    _put(storage, "a/b", b"secret dump")
    assert (tmp_path / "a" / "b").stat().st_mode & 0o007 == 0
