"""The store step: a failed source is never committed; damage is named precisely."""

from __future__ import annotations

import contextlib
import io
import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.records import BackupInfo, BackupRecord, FileInfo
from vya_backupdb.errors import BackupFailed, IntegrityError
from vya_backupdb.jobs.store import (
    check_checksum,
    open_backup_stream,
    open_backup_stream_direct,
    write_backup_object,
)
from vya_backupdb.pipeline.codecs import get_codec
from vya_backupdb.storage.memory import MemoryStorage

pytestmark = pytest.mark.unit

MOMENT = datetime(2026, 11, 21, 2, 30, tzinfo=UTC)
NAMES = layout.database_backup_names("h", "i", "db", MOMENT, "full", "sql", ".zst")


def _names_for(_source: object) -> layout.BackupNames:
    return NAMES


@contextlib.contextmanager
def _failing_source() -> Iterator[io.BytesIO]:
    # Like a dump tool that wrote output, then exited non-zero: the error surfaces at exit.
    yield io.BytesIO(b"CREATE TABLE half_written (")
    raise BackupFailed("pg_dump exited with status 1: connection lost")


@contextlib.contextmanager
def _good_source(data: bytes) -> Iterator[io.BytesIO]:
    yield io.BytesIO(data)


def _store(storage: MemoryStorage, data: bytes) -> BackupRecord:
    names, stored = write_backup_object(
        storage, _names_for, lambda: _good_source(data), get_codec("zstd"), 3, 1
    )
    return BackupRecord(
        id=names.stem,
        kind="database",
        backup_info=BackupInfo(
            instance="i",
            instance_type="sqlite",
            database="db",
            hostname="h",
            started_at=MOMENT,
            finished_at=MOMENT,
            duration_seconds=0.1,
            vya_version="t",
        ),
        file_info=FileInfo(
            name=stored.name,
            size=stored.stored_bytes,
            raw_size=stored.raw_bytes,
            sha256=stored.sha256,
            extension="sql",
            compression="zstd",
        ),
    )


def test_write_backup_object_failed_source_leaves_nothing() -> None:
    storage = MemoryStorage()
    with pytest.raises(BackupFailed, match="exited with status 1"):
        write_backup_object(storage, _names_for, _failing_source, get_codec("zstd"), 3, 1)
    assert list(storage.list("")) == []


def test_write_backup_object_writes_object_and_sidecar() -> None:
    storage = MemoryStorage()
    record = _store(storage, b"SELECT 1;\n" * 1000)
    assert record.file_info.raw_size == 10_000
    assert storage.exists(NAMES.sha256)
    assert check_checksum(storage, record) == record.file_info.sha256
    with open_backup_stream(storage, record) as stream:
        assert stream.read(100_000) == b"SELECT 1;\n" * 1000


def _tamper(storage: MemoryStorage, name: str, data: bytes) -> None:
    with storage.put(name) as writer:
        writer.write(data)


def _content(storage: MemoryStorage, name: str) -> bytes:
    with storage.get(name) as reader:
        return reader.read(10**8)


def test_check_checksum_flipped_byte_is_a_checksum_mismatch() -> None:
    storage = MemoryStorage()
    record = _store(storage, b"data" * 5000)
    raw = bytearray(_content(storage, NAMES.data))
    raw[len(raw) // 2] ^= 0x01
    _tamper(storage, NAMES.data, bytes(raw))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        check_checksum(storage, record)


def test_check_checksum_truncated_object_says_truncated() -> None:
    storage = MemoryStorage()
    record = _store(storage, bytes(range(256)) * 500)
    _tamper(storage, NAMES.data, _content(storage, NAMES.data)[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        check_checksum(storage, record)


def test_check_checksum_missing_sidecar_is_reported() -> None:
    storage = MemoryStorage()
    record = _store(storage, b"x" * 100)
    storage.delete(NAMES.sha256)
    with pytest.raises(IntegrityError, match=r"sidecar .* is missing"):
        check_checksum(storage, record)


def test_check_checksum_edited_sidecar_is_reported() -> None:
    storage = MemoryStorage()
    record = _store(storage, b"x" * 100)
    _tamper(storage, NAMES.sha256, layout.sidecar_line("0" * 64, NAMES.basename).encode())
    with pytest.raises(IntegrityError, match="disagrees"):
        check_checksum(storage, record)


def test_check_checksum_missing_object_is_reported() -> None:
    storage = MemoryStorage()
    record = _store(storage, b"x" * 100)
    storage.delete(NAMES.data)
    with pytest.raises(IntegrityError, match="is missing"):
        check_checksum(storage, record)


def test_direct_stream_of_a_local_file_is_the_decompressor_and_feeds_a_tool(
    tmp_path: Path,
) -> None:
    """A verified local zstd backup is read by `zstd -dc`, whose output feed() hands to the
    next tool directly; that tool may stop early (head) without failing anything."""
    from vya_backupdb.engines.process import Command, ToolReader, feed
    from vya_backupdb.storage.local import LocalStorage

    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")  # bootstrap installs it; CI fails on skips
    storage = LocalStorage(tmp_path / "store")
    data = b"".join(b"row %d\n" % i for i in range(200_000))
    record = _store(storage, data)
    with open_backup_stream_direct(storage, record) as stream:
        assert isinstance(stream, ToolReader) and stream.direct
        out = tmp_path / "out"
        feed(Command(["sh", "-c", f"cat > {out}"]), stream, IntegrityError)
    assert out.read_bytes() == data
    with open_backup_stream_direct(storage, record) as stream:
        tail = feed(Command(["head", "-c", "6"]), stream, IntegrityError, may_stop_reading=True)
    assert tail == "row 0\n"


def test_direct_stream_falls_back_to_in_process_when_not_a_local_file() -> None:
    from vya_backupdb.engines.process import ToolReader

    storage = MemoryStorage()
    record = _store(storage, b"SELECT 1;\n" * 10)
    with open_backup_stream_direct(storage, record) as stream:
        assert not isinstance(stream, ToolReader)
        assert stream.read(1000) == b"SELECT 1;\n" * 10


def test_readers_on_several_threads_report_one_progress_that_never_passes_the_size() -> None:
    import threading

    from vya_backupdb.jobs.store import _SharedProgress

    reported: list[int] = []
    shared = _SharedProgress(reported.append, size=10_000, interval=3600)

    def reader() -> None:
        for _ in range(100):
            shared.add(60)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The first read is reported at once, then nothing until the interval passes or the
    # sum reaches the size (3 × 6,000 bytes read: the head is read by every reader).
    assert reported[0] == 60
    assert reported[1:] and all(done == 10_000 for done in reported[1:])


def test_check_checksum_of_a_local_file_hashes_it_in_pieces_and_finds_a_flipped_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vya_backupdb.pipeline import stream
    from vya_backupdb.storage.local import LocalStorage

    monkeypatch.setattr(stream, "FILE_HASH_CHUNK", 4096)  # many pieces, one partial at the end
    storage = LocalStorage(tmp_path)
    record = _store(storage, bytes(range(256)) * 4099)  # type: ignore[arg-type]
    assert storage.local_path(record.file_info.name) is not None
    assert check_checksum(storage, record) == record.file_info.sha256
    path = tmp_path / record.file_info.name
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        check_checksum(storage, record)


class _CountingStorage(MemoryStorage):
    """Counts the bytes read from its objects."""

    def __init__(self) -> None:
        super().__init__()
        self.read_bytes = 0

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[io.BufferedIOBase]:  # type: ignore[override]
        with super().get(name) as reader:
            outer = self

            class _Counted:
                def read(self, size: int = -1, /) -> bytes:
                    data = reader.read(size)
                    outer.read_bytes += len(data)
                    return data

            yield _Counted()  # type: ignore[misc]


def test_stream_opened_for_its_head_only_is_not_read_to_the_end_at_exit() -> None:
    # Incompressible, so the stored object is several read-ahead chunks long.
    data = random.Random(7).randbytes(12 * 1024 * 1024)
    storage = _CountingStorage()
    record = _store(storage, data)
    with open_backup_stream(storage, record, head_only=True) as stream:
        assert stream.read(1000) == data[:1000]
    assert 0 < storage.read_bytes < record.file_info.size / 2
    storage.read_bytes = 0
    with open_backup_stream(storage, record) as stream:  # the default drains and re-hashes
        assert stream.read(1000) == data[:1000]
    assert storage.read_bytes == record.file_info.size


def test_stream_opened_for_its_head_only_still_checks_what_it_read_whole() -> None:
    storage = MemoryStorage()
    record = _store(storage, b"row\n" * 10_000)
    bad = record.model_copy(
        update={"file_info": record.file_info.model_copy(update={"sha256": "0" * 64})}
    )
    with (
        pytest.raises(IntegrityError, match="checksum mismatch"),
        open_backup_stream(storage, bad, head_only=True) as stream,
    ):
        while stream.read(4096):
            pass
