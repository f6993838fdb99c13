"""Writing one backup object through the pipeline, and reading it back verified.

``write_backup_object`` is the one place where a stream becomes a stored backup:
source → count → compress → sha256 → atomic storage writer, then the ``.sha256`` sidecar.
The source's own context (e.g. the dump tool's exit status) is checked *inside* the storage
writer's block, so a failed source can never be committed.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, TypeVar

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import read_text, write_text
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.errors import CredentialError, IntegrityError, StorageError, VyaError
from vya_backupdb.pipeline.codecs import Codec, Readable, aborting, get_codec
from vya_backupdb.pipeline.frames import FrameIndex, FramingWriter, ScanAhead, pump_framed
from vya_backupdb.pipeline.stream import (
    CountingReader,
    HashingReader,
    HashingWriter,
    ReadAhead,
    pump,
    sha256_of_file,
)
from vya_backupdb.storage.base import Storage

if TYPE_CHECKING:
    from vya_backupdb.pipeline.encryption import EncryptionPlan, Identity

S = TypeVar("S", bound=Readable)

#: Returns the decryption identities configured for an instance id (wiring.keys_for).
KeyProvider = Callable[[str], "Sequence[Identity]"]


def _identities(record: BackupRecord, keys: KeyProvider | None) -> Sequence[Identity]:
    if keys is None:
        raise CredentialError(
            f"{record.file_info.name} is encrypted and no key is configured",
            hint="Set storage.encryption.identity_file (or identity_env) to the age key.",
        )
    return keys(record.backup_info.instance)


def _recipients_hint(record: BackupRecord) -> str:
    info = record.extra.get("encryption") or {}
    recipients = ", ".join(info.get("recipients") or []) or "a passphrase"
    return (
        f"This backup was encrypted to: {recipients}. Configure the matching identity in "
        "storage.encryption.identity_file / identity_env (or instances[].encryption)."
    )


@dataclass(frozen=True)
class StoredObject:
    name: str
    raw_bytes: int
    stored_bytes: int
    sha256: str
    #: What the record keeps about the encryption (public recipients), None when not encrypted.
    encryption: dict[str, Any] | None = None
    #: Where the dump's units (tables) start in the stored object, when it was written in
    #: independent frames (pipeline/frames.py); None otherwise.
    frames: FrameIndex | None = None


def unused_names(
    storage: Storage, make: Callable[[datetime], layout.BackupNames], moment: datetime
) -> layout.BackupNames:
    """Return the names for ``moment``, moved on by whole seconds while a backup already has
    them: names have second resolution, and a second backup of the same database in the same
    second must never replace the first."""
    for step in range(3600):
        names = make(moment + timedelta(seconds=step))
        if not storage.exists(names.metadata) and not storage.exists(names.data):
            return names
    raise StorageError(f"no free backup name near {names.stem}")  # pragma: no cover


def write_backup_object(
    storage: Storage,
    names_for: Callable[[S], layout.BackupNames],
    open_source: Callable[[], AbstractContextManager[S]],
    codec: Codec,
    level: int,
    threads: int,
    *,
    progress: Callable[[int], None] | None = None,
    encryption: EncryptionPlan | None = None,
) -> tuple[layout.BackupNames, StoredObject]:
    """Stream a source into storage; return its names and what was stored.

    The source is opened first (its artifact type decides the object name), then read into
    the atomic writer, and *closed inside the writer's block*: when closing raises (the dump
    tool exited non-zero, the run was interrupted), the partial object is discarded and the
    error propagates. A failed dump can therefore never be committed.
    """
    source_cm = open_source()
    source = source_cm.__enter__()
    source_open = True
    ahead: ScanAhead | ReadAhead | None = None
    index: FrameIndex | None = None
    try:
        names = names_for(source)
        with storage.put(names.data) as sink:
            hasher = HashingWriter(sink)
            # Encrypt after compressing (ciphertext does not compress); hash what is stored.
            encryptor = encryption.writer(hasher) if encryption is not None else None
            with aborting(codec.writer(encryptor or hasher, level, threads)) as compressor:
                scanner = getattr(source, "scanner", None)
                # A dump that asks for it is read (and scanned) on a thread of its own, a few
                # chunks ahead: its tool does not wait while a chunk is compressed and stored.
                read_ahead = getattr(source, "read_ahead", False)
                if (
                    scanner is not None
                    and encryptor is None
                    and isinstance(compressor, FramingWriter)
                ):
                    # Independent frames cut where the dump's units start: parallel restore
                    # workers then decompress only their own tables (pipeline/frames.py).
                    if read_ahead:
                        ahead = ScanAhead(source, scanner)
                        scanner = ahead
                    counted = CountingReader(ahead or source, progress)
                    raw, index = pump_framed(counted, compressor, scanner, lambda: hasher.bytes)
                else:
                    ahead = ReadAhead(source) if read_ahead else None
                    raw = pump(CountingReader(ahead or source, progress), compressor)
                    compressor.close()
            if encryptor is not None:
                encryptor.close()
            if ahead is not None:
                ahead.close()  # at the end of the dump: its thread is done
            source_open = False
            source_cm.__exit__(None, None, None)
    except BaseException as exc:
        if source_open:
            # Stop the dump first (its tool is killed): the reading thread then ends.
            source_cm.__exit__(type(exc), exc, exc.__traceback__)
        if ahead is not None:
            ahead.close()
        raise
    try:
        write_text(storage, names.sha256, layout.sidecar_line(hasher.sha256, names.basename))
    except BaseException:
        storage.delete(names.data)
        raise
    meta = encryption.metadata() if encryption is not None else None
    return names, StoredObject(names.data, raw, hasher.bytes, hasher.sha256, meta, index)


def remove_backup(storage: Storage, record_id: str, data_name: str) -> None:
    """Delete a backup's objects: metadata first, so it never shows as good half-deleted."""
    storage.delete(record_id + layout.METADATA_SUFFIX)
    storage.delete(data_name)
    storage.delete(data_name + layout.SHA256_SUFFIX)
    storage.delete(record_id + ".manifest.jsonl.zst")


def check_checksum(
    storage: Storage,
    record: BackupRecord,
    *,
    keys: KeyProvider | None = None,
    check_key: bool = True,
) -> str:
    """Re-hash the stored object and compare with the record and the sidecar.

    For an encrypted backup (and ``check_key``), also open its header with ``keys``, so a
    missing or wrong key stops a restore before its target is touched.
    Return the sha256; raise IntegrityError naming the kind of damage, CredentialError when
    the backup is encrypted and no configured key opens it.
    """
    name = record.file_info.name
    if not storage.exists(name):
        raise IntegrityError(
            f"backup object {name} is missing (its metadata record exists)",
            hint="The file was deleted or moved; pick another backup with: vya-backupdb list",
        )
    size = storage.stat(name).size
    path = storage.local_path(name)
    if path is not None:
        digest = sha256_of_file(path)
    else:
        with storage.get(name) as reader:
            hashing = HashingReader(reader)
            while hashing.read(1024 * 1024):
                pass
        digest = hashing.sha256
    if size != record.file_info.size:
        kind = "truncated" if size < record.file_info.size else "larger than recorded"
        raise IntegrityError(
            f"backup object {name} is {kind}: {size} bytes on storage, "
            f"{record.file_info.size} recorded",
        )
    if digest != record.file_info.sha256:
        raise IntegrityError(
            f"checksum mismatch for {name}: the content changed since the backup "
            f"(sha256 {digest[:16]}…, recorded {record.file_info.sha256[:16]}…)",
        )
    sidecar_name = name + layout.SHA256_SUFFIX
    if not storage.exists(sidecar_name):
        raise IntegrityError(
            f"checksum sidecar {sidecar_name} is missing",
            hint="Recreate it from the record after verifying the data: "
            "vya-backupdb verify --file PATH",
        )
    try:
        side_digest, side_name = layout.parse_sidecar(read_text(storage, sidecar_name))
    except ValueError:
        raise IntegrityError(f"checksum sidecar {sidecar_name} is malformed") from None
    if side_digest != digest or side_name != name.rsplit("/", 1)[-1]:
        raise IntegrityError(
            f"checksum sidecar {sidecar_name} disagrees with the object and its record",
        )
    if check_key and record.file_info.encryption:
        with storage.get(name) as reader:
            decrypt_stream(reader, record, keys)
    return digest


def decrypt_stream(source: Readable, record: BackupRecord, keys: KeyProvider | None) -> Readable:
    from vya_backupdb.pipeline.encryption import NAME, decrypting_reader

    if record.file_info.encryption != NAME:
        raise IntegrityError(
            f"{record.file_info.name} uses unknown encryption {record.file_info.encryption!r}",
            hint="It was written by a newer version of vya-backupdb; upgrade to restore it.",
        )
    try:
        return decrypting_reader(source, _identities(record, keys), record.file_info.name)
    except CredentialError as exc:
        raise CredentialError(exc.message, hint=_recipients_hint(record)) from None


@contextlib.contextmanager
def open_backup_stream(
    storage: Storage,
    record: BackupRecord,
    progress: Callable[[int], None] | None = None,
    *,
    keys: KeyProvider | None = None,
    head_only: bool = False,
) -> Iterator[Readable]:
    """Yield the decrypted, decompressed content of a backup; raise IntegrityError at exit
    when the bytes read do not match the recorded checksum (a second line of defence).

    Encrypted backups are opened with ``keys`` (the identities configured for the record's
    instance, see ``wiring.keys_for``); raise CredentialError (before yielding) when none
    is given or none opens it.

    ``head_only``: the consumer may read just the beginning (a parallel restore reads the
    archive's table of contents here and its data from the frames of the file, verified
    beforehand): when it stops early, the rest is not read and hashed again at exit.
    """
    codec = get_codec(record.file_info.compression)
    with storage.get(record.file_info.name) as raw:
        hashing = HashingReader(raw)
        counted: Readable = CountingReader(hashing, progress)
        if record.file_info.encryption:
            counted = decrypt_stream(counted, record, keys)
        reader = codec.reader(counted)
        # Decompress/decrypt on a thread of its own, overlapping the consumer's writes.
        ahead = ReadAhead(reader) if codec.name != "none" or record.file_info.encryption else None
        try:
            try:
                yield _TranslatingReader(ahead or reader, record.file_info.name)
            finally:
                if ahead is not None:
                    ahead.close()
        except EOFError as exc:
            raise IntegrityError(f"{record.file_info.name}: {exc}") from None
        if head_only and hashing.read(1):
            return
        # Drain what the consumer left (e.g. tar padding) so the hash covers the whole object.
        while hashing.read(1024 * 1024):
            pass
        if hashing.sha256 != record.file_info.sha256:
            raise IntegrityError(
                f"checksum mismatch while reading {record.file_info.name}",
            )


#: Command-line decompressors, per codec: restore workers read a verified local file through
#: them, so the bytes flow from the decompressor straight into the restore tool.
_DECOMPRESSORS: dict[str, list[list[str]]] = {
    "zstd": [["zstd", "-dcq", "--"]],
    "gzip": [["pigz", "-dc", "--"], ["gzip", "-dc", "--"]],
    "xz": [["xz", "-dc", "--"]],
    "bzip2": [["bzip2", "-dc", "--"]],
    "lz4": [["lz4", "-dcq", "--"]],
    "none": [["cat", "--"]],
}


@contextlib.contextmanager
def open_backup_stream_direct(
    storage: Storage,
    record: BackupRecord,
    keys: KeyProvider | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    whole: bool = False,
) -> Iterator[Readable]:
    """Like :func:`open_backup_stream`, for a backup whose checksum was already verified:
    when it is a local, unencrypted file and the codec's command-line decompressor is
    installed, yield that tool's output (a ToolReader that feed() connects straight to the
    next tool: no byte passes through Python); otherwise the in-process stream.

    ``progress`` gets the stored bytes read so far (the tool's offset in the file).
    ``whole``: the consumer reads the stream to its end (a client running a script, whose
    own success cannot tell a whole script from a cut one). Leaving the block then raises
    IntegrityError unless the decompressor exited 0 after reading exactly the recorded size;
    when the consumer failed because the decompressor did, that IntegrityError replaces the
    consumer's error (the in-process stream checks the same through its hash)."""
    import shutil

    from vya_backupdb.engines.process import Command, ToolReader

    path = storage.local_path(record.file_info.name)
    tools = _DECOMPRESSORS.get(record.file_info.compression, [])
    argv = next((t for t in tools if shutil.which(t[0])), None)
    if path is None or record.file_info.encryption or argv is None:
        with open_backup_stream(storage, record, progress, keys=keys) as stream:
            yield stream
        return
    tool = shutil.which(argv[0]) or argv[0]
    if progress is None and not whole:
        with ToolReader(Command([tool, *argv[1:], path]), IntegrityError, direct=True) as reader:
            yield reader
        return
    # The tool reads the file as its stdin: the offset it shares with our descriptor tells
    # how far it has read (no byte passes through Python).
    command = Command([tool, *argv[1:]])
    with (
        open(path, "rb", buffering=0) as handle,
        _OffsetProgress(handle, progress) as offset,
        ToolReader(command, IntegrityError, direct=True, stdin=handle) as reader,
    ):
        if not whole:
            yield reader
            return
        try:
            yield reader
        except VyaError as exc:
            cause = reader.exit_error(broken_pipe_ok=True)
            if cause is not None:
                raise _cut_short(record, cause.message, cause.details) from exc
            raise
        failure = reader.exit_error()
        if failure is not None:
            raise _cut_short(record, failure.message, failure.details)
        if offset.position() != record.file_info.size:
            raise _cut_short(
                record,
                f"{offset.position()} of its {record.file_info.size} bytes were read",
                None,
            )


def _cut_short(record: BackupRecord, what: str, details: str | None) -> IntegrityError:
    return IntegrityError(
        f"restoring {record.file_info.name} stopped short: {what}",
        hint="The file changed or became unreadable after its checksum was verified; the "
        "target may be partly restored. Check the file with: vya-backupdb verify --file PATH",
        details=details,
    )


class _OffsetProgress:
    """Report a file's offset to ``progress`` (when given) every ``interval`` seconds, and
    once at the end."""

    def __init__(
        self, handle: IO[bytes], progress: Callable[[int], None] | None, interval: float = 0.5
    ):
        self._fd = handle.fileno()
        self._progress = progress
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="offset-progress", daemon=True)

    def position(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def _run(self) -> None:
        assert self._progress is not None
        while not self._stop.wait(self._interval):
            self._progress(self.position())

    def __enter__(self) -> _OffsetProgress:
        if self._progress is not None:
            self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._progress is not None:
            self._stop.set()
            self._thread.join()
            if exc_type is None:
                self._progress(self.position())


def frame_index_of(storage: Storage, record: BackupRecord) -> FrameIndex | None:
    """Return the frame index of a backup that a reader can use by range: recorded, for an
    unencrypted local object of the recorded size; None otherwise."""
    index = FrameIndex.from_record(record.extra.get("frame_index"))
    if (
        index is None
        or record.file_info.encryption
        or record.file_info.compression not in ("zstd", "none")
        or index.stored_size != record.file_info.size
        or storage.local_path(record.file_info.name) is None
    ):
        return None
    return index


def block_opener(
    storage: Storage, record: BackupRecord, progress: Callable[[int], None] | None = None
) -> Callable[[set[int]], AbstractContextManager[Readable]] | None:
    """Return ``RestoreOptions.open_blocks`` for a backup: opens its head plus the frames of
    some units, when the backup is framed and readable by range; None otherwise.

    ``progress`` gets the stored bytes all the opened streams read so far (at most the file's
    size: each reader also reads the head), as the restore's single stream would report."""
    index = frame_index_of(storage, record)
    if index is None:
        return None
    shared = _SharedProgress(progress, record.file_info.size) if progress is not None else None
    return lambda units: open_backup_blocks(storage, record, index, units, shared)


class _SharedProgress:
    """Sums the bytes several readers read (on their own threads) into one progress report,
    at most every ``interval`` seconds."""

    def __init__(self, progress: Callable[[int], None], size: int, interval: float = 0.5):
        self._progress = progress
        self._size = size
        self._interval = interval
        self._lock = threading.Lock()
        self._done = 0
        # Not 0.0: the monotonic clock may start near zero (a machine booted minutes ago),
        # and the first read must be reported at once.
        self._last = -math.inf

    def add(self, count: int) -> None:
        with self._lock:
            self._done += count
            now = time.monotonic()
            if now - self._last < self._interval and self._done < self._size:
                return
            self._last = now
            done = min(self._done, self._size)
        self._progress(done)


@contextlib.contextmanager
def open_backup_blocks(
    storage: Storage,
    record: BackupRecord,
    index: FrameIndex,
    units: set[int],
    progress: _SharedProgress | None = None,
) -> Iterator[Readable]:
    """Yield the decompressed head of a framed backup plus only the frames in which
    ``units`` start (see pipeline/frames.py), for a backup whose checksum was already
    verified. zstd frames go through the ``zstd`` tool, whose output feed() hands straight to
    the restore tool; without it (or for the ``none`` codec) they are read in-process."""
    import shutil

    from vya_backupdb.engines.process import Command, ToolReader

    path = storage.local_path(record.file_info.name)
    assert path is not None
    ranges = _RangeReader(path, index.ranges_for(units), progress)
    try:
        zstd = shutil.which("zstd") if record.file_info.compression == "zstd" else None
        if zstd is not None:
            with ToolReader(
                Command([zstd, "-dcq"]), IntegrityError, direct=True, stdin=ranges
            ) as r:
                yield r
            return
        yield _TranslatingReader(
            get_codec(record.file_info.compression).reader(ranges), record.file_info.name
        )
    finally:
        ranges.close()


class _RangeReader:
    """Reads byte ranges ``[start, end)`` of a file one after the other, as one stream."""

    def __init__(
        self, path: str, ranges: list[tuple[int, int]], progress: _SharedProgress | None = None
    ):
        self._handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._ranges = list(reversed(ranges))
        self._left = 0
        self._progress = progress

    def read(self, size: int = -1, /) -> bytes:
        while self._left == 0:
            if not self._ranges:
                return b""
            start, end = self._ranges.pop()
            self._handle.seek(start)
            self._left = end - start
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._handle.read(want)
        if not data:
            raise OSError(f"{self._handle.name} is shorter than its frame index")
        self._left -= len(data)
        if self._progress is not None:
            self._progress.add(len(data))
        return data

    def close(self) -> None:
        self._handle.close()


class _TranslatingReader:
    """Turn decompressor EOFErrors into IntegrityError naming the object."""

    def __init__(self, reader: Readable, name: str):
        self._reader = reader
        self._name = name

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._reader.read(size)
        except EOFError as exc:
            raise IntegrityError(
                f"{self._name} is damaged: {exc}",
                hint="Do not restore this file; pick another with: vya-backupdb list",
            ) from None
        except OSError as exc:  # zlib/lzma/bz2 raise these on corrupt data
            raise IntegrityError(f"{self._name} is damaged: {exc}") from None
