"""Writing one backup object through the pipeline, and reading it back verified.

``write_backup_object`` is the one place where a stream becomes a stored backup:
source → count → compress → sha256 → atomic storage writer, then the ``.sha256`` sidecar.
The source's own context (e.g. the dump tool's exit status) is checked *inside* the storage
writer's block, so a failed source can never be committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import read_text, write_text
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.errors import CredentialError, IntegrityError, StorageError
from vya_backupdb.pipeline.codecs import Codec, Readable, aborting, get_codec
from vya_backupdb.pipeline.stream import (
    CountingReader,
    HashingReader,
    HashingWriter,
    ReadAhead,
    pump,
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
    try:
        names = names_for(source)
        with storage.put(names.data) as sink:
            hasher = HashingWriter(sink)
            # Encrypt after compressing (ciphertext does not compress); hash what is stored.
            encryptor = encryption.writer(hasher) if encryption is not None else None
            with aborting(codec.writer(encryptor or hasher, level, threads)) as compressor:
                raw = pump(CountingReader(source, progress), compressor)
                compressor.close()
            if encryptor is not None:
                encryptor.close()
            source_open = False
            source_cm.__exit__(None, None, None)
    except BaseException as exc:
        if source_open:
            source_cm.__exit__(type(exc), exc, exc.__traceback__)
        raise
    try:
        write_text(storage, names.sha256, layout.sidecar_line(hasher.sha256, names.basename))
    except BaseException:
        storage.delete(names.data)
        raise
    meta = encryption.metadata() if encryption is not None else None
    return names, StoredObject(names.data, raw, hasher.bytes, hasher.sha256, meta)


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
) -> Iterator[Readable]:
    """Yield the decrypted, decompressed content of a backup; raise IntegrityError at exit
    when the bytes read do not match the recorded checksum (a second line of defence).

    Encrypted backups are opened with ``keys`` (the identities configured for the record's
    instance, see ``wiring.keys_for``); raise CredentialError (before yielding) when none
    is given or none opens it.
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
    storage: Storage, record: BackupRecord, keys: KeyProvider | None = None
) -> Iterator[Readable]:
    """Like :func:`open_backup_stream`, for a backup whose checksum was already verified:
    when it is a local, unencrypted file and the codec's command-line decompressor is
    installed, yield that tool's output (a ToolReader that feed() connects straight to the
    next tool: no byte passes through Python); otherwise the in-process stream."""
    import shutil

    from vya_backupdb.engines.process import Command, ToolReader

    path = storage.local_path(record.file_info.name)
    tools = _DECOMPRESSORS.get(record.file_info.compression, [])
    argv = next((t for t in tools if shutil.which(t[0])), None)
    if path is None or record.file_info.encryption or argv is None:
        with open_backup_stream(storage, record, keys=keys) as stream:
            yield stream
        return
    command = Command([shutil.which(argv[0]) or argv[0], *argv[1:], path])
    with ToolReader(command, IntegrityError, direct=True) as reader:
        yield reader


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
