"""The direct restore stream with progress and ``whole``: the decompressor reads the stored file
as its stdin, its offset is the progress, and a stream that stops short is an IntegrityError."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_jobs_store import _store

from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.engines.process import Command, ToolReader, feed
from vya_backupdb.errors import IntegrityError, RestoreFailed, UsageError
from vya_backupdb.jobs.store import open_backup_stream_direct
from vya_backupdb.storage.local import LocalStorage

pytestmark = pytest.mark.unit

DATA = b"".join(b"INSERT INTO t VALUES (%d);\n" % i for i in range(300_000))


@pytest.fixture
def stored(tmp_path: Path) -> tuple[LocalStorage, BackupRecord, Path]:
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")  # bootstrap installs it; CI fails on skips
    storage = LocalStorage(tmp_path / "store")
    record = _store(storage, DATA)
    path = storage.local_path(record.file_info.name)
    assert path is not None
    return storage, record, Path(path)


def _copy_into(out: Path) -> Command:
    return Command(["sh", "-c", f'cat > "{out}"'])


def test_direct_stream_progress_is_the_decompressors_offset(
    stored: tuple[LocalStorage, BackupRecord, Path], tmp_path: Path
) -> None:
    storage, record, _ = stored
    seen: list[int] = []
    out = tmp_path / "out"
    with open_backup_stream_direct(storage, record, progress=seen.append, whole=True) as stream:
        assert isinstance(stream, ToolReader) and stream.direct
        feed(_copy_into(out), stream, RestoreFailed)
    assert out.read_bytes() == DATA
    assert seen[-1] == record.file_info.size
    assert seen == sorted(seen)


def test_direct_stream_whole_decompressor_failure_after_consumer_success_raises(
    stored: tuple[LocalStorage, BackupRecord, Path], tmp_path: Path
) -> None:
    storage, record, path = stored
    path.write_bytes(path.read_bytes()[: record.file_info.size // 2])  # damaged after the check
    with (
        pytest.raises(IntegrityError, match="stopped short: zstd exited with status"),
        open_backup_stream_direct(storage, record, whole=True) as stream,
    ):
        feed(_copy_into(tmp_path / "out"), stream, RestoreFailed)


def test_direct_stream_whole_consumer_failing_on_cut_input_reports_the_cause(
    stored: tuple[LocalStorage, BackupRecord, Path], tmp_path: Path
) -> None:
    storage, record, path = stored
    path.write_bytes(path.read_bytes()[: record.file_info.size // 2])
    out = tmp_path / "out"
    # Like a client choking on the half statement at the end of its input.
    consumer = Command(["sh", "-c", f'cat > "{out}"; test "$(tail -c 1 "{out}" | wc -l)" -eq 1'])
    with (
        pytest.raises(IntegrityError, match="stopped short") as caught,
        open_backup_stream_direct(storage, record, whole=True) as stream,
    ):
        feed(consumer, stream, RestoreFailed)
    assert isinstance(caught.value.__cause__, RestoreFailed)


def test_direct_stream_whole_shorter_valid_file_raises_with_bytes_read(
    stored: tuple[LocalStorage, BackupRecord, Path], tmp_path: Path
) -> None:
    storage, record, path = stored
    prefix = DATA[: DATA.index(b"\n", len(DATA) // 3) + 1]
    path.write_bytes(subprocess.run(["zstd", "-c"], input=prefix, capture_output=True).stdout)
    with (
        pytest.raises(IntegrityError, match=f"of its {record.file_info.size} bytes were read"),
        open_backup_stream_direct(storage, record, whole=True) as stream,
    ):
        feed(_copy_into(tmp_path / "out"), stream, RestoreFailed)


def test_direct_stream_whole_consumer_failure_of_its_own_is_kept(
    stored: tuple[LocalStorage, BackupRecord, Path],
) -> None:
    storage, record, _ = stored
    # The consumer stops at once: the decompressor fails to write, which is not its fault.
    with (
        pytest.raises(RestoreFailed, match="exited with status 3"),
        open_backup_stream_direct(storage, record, whole=True) as stream,
    ):
        feed(Command(["sh", "-c", "exit 3"]), stream, RestoreFailed)


def test_direct_stream_without_whole_keeps_tolerating_early_stop(
    stored: tuple[LocalStorage, BackupRecord, Path],
) -> None:
    storage, record, _ = stored
    seen: list[int] = []
    with open_backup_stream_direct(storage, record, progress=seen.append) as stream:
        tail = feed(Command(["head", "-c", "5"]), stream, RestoreFailed, may_stop_reading=True)
    assert tail == "INSER"


@pytest.mark.timeout(30)
def test_direct_stream_whole_error_before_any_read_propagates_at_once(
    stored: tuple[LocalStorage, BackupRecord, Path],
) -> None:
    """An engine refusing the restore before reading (e.g. --tables for MySQL) must not wait
    for a decompressor blocked on its full pipe."""
    storage, record, _ = stored
    started = time.monotonic()
    with (
        pytest.raises(UsageError, match="refused"),
        open_backup_stream_direct(storage, record, progress=lambda _n: None, whole=True),
    ):
        raise UsageError("refused")
    assert time.monotonic() - started < 5
