"""Off-site copies: upload / download backups between the local store and a remote, the
automatic upload after a backup, and the conformance check of a remote (``remote test``).

A backup's objects are copied data first, then its ``.sha256`` sidecar (and manifest), and the
metadata record last: a record on the destination always describes a complete object, so an
interrupted copy never looks like a backup.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import Catalog
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.errors import NotFoundError, VyaError
from vya_backupdb.pipeline.stream import CountingReader, HashingReader, pump

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.jobs.backup import RunResult
    from vya_backupdb.storage.base import Storage

log = logging.getLogger("vya.jobs.remote")

MANIFEST_SUFFIX = ".manifest.jsonl.zst"


@dataclass
class TransferResult:
    copied: list[str] = field(default_factory=list)  # record ids
    skipped: list[str] = field(default_factory=list)  # already there, same size
    failed: dict[str, str] = field(default_factory=dict)  # record id -> message
    bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "copied": self.copied,
            "skipped": self.skipped,
            "failed": self.failed,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def record_objects(storage: Storage, record: BackupRecord) -> list[str]:
    """Return the object names of a backup in copy order (the metadata record last)."""
    names = [record.file_info.name, record.file_info.name + layout.SHA256_SUFFIX]
    if storage.exists(record.id + MANIFEST_SUFFIX):
        names.append(record.id + MANIFEST_SUFFIX)
    return [*names, record.id + layout.METADATA_SUFFIX]


def copy_object(source: Storage, target: Storage, name: str) -> int:
    """Stream one object from ``source`` to ``target``; return its size."""
    with source.get(name) as reader, target.put(name) as writer:
        return pump(reader, writer)


def copy_record(
    source: Storage,
    target: Storage,
    record: BackupRecord,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int | None:
    """Copy a backup's objects; return the bytes copied, None when already complete there.

    The data object is verified against the record's sha256 as it streams, so a damaged
    source is never propagated; raise IntegrityError / StorageError.
    """
    from vya_backupdb.errors import IntegrityError

    metadata = record.id + layout.METADATA_SUFFIX
    if not force and target.exists(metadata):
        try:
            if target.stat(record.file_info.name).size == record.file_info.size:
                return None
        except NotFoundError:
            pass
    total = 0
    for name in record_objects(source, record):
        if name == record.file_info.name:
            with source.get(name) as reader, target.put(name) as writer:
                hashing = HashingReader(reader)
                total += pump(CountingReader(hashing, progress), writer)
                if hashing.sha256 != record.file_info.sha256:
                    raise IntegrityError(
                        f"{name} does not match its recorded checksum; not copied",
                        hint="Verify the source copy: vya-backupdb verify",
                    )
        else:
            total += copy_object(source, target, name)
    return total


def transfer(
    source: Storage,
    target: Storage,
    hostname: str,
    *,
    select: Callable[[BackupRecord], bool] = lambda r: True,
    force: bool = False,
    progress: Callable[[BackupRecord], Callable[[int], None] | None] | None = None,
) -> TransferResult:
    """Copy every selected, successful backup from ``source`` to ``target``; ``progress``
    returns the byte-count callback of each backup copied."""
    result = TransferResult()
    t0 = time.monotonic()
    for record in Catalog(source, hostname).records():
        if not record.ok or not select(record):
            continue
        try:
            callback = progress(record) if progress is not None else None
            copied = copy_record(source, target, record, force=force, progress=callback)
        except VyaError as exc:
            log.error("copying %s failed: %s", record.id, exc.message)
            result.failed[record.id] = exc.message
            continue
        if copied is None:
            result.skipped.append(record.id)
        else:
            result.copied.append(record.id)
            result.bytes += copied
    result.seconds = time.monotonic() - t0
    return result


def _selector(names: Iterable[str]) -> Callable[[BackupRecord], bool]:
    wanted = {n.strip("/") for n in names}
    if not wanted:
        return lambda r: True
    return lambda r: bool(
        {r.id, r.file_info.name, r.file_info.name.rsplit("/", 1)[-1], r.backup_info.instance}
        & wanted
    )


ProgressFactory = Callable[[BackupRecord], Callable[[int], None] | None]


def upload(
    loaded: LoadedConfig,
    remote: str,
    names: Iterable[str] = (),
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> TransferResult:
    """Upload local backups (all, or those named by id / file / instance) to ``remote``."""
    from vya_backupdb.storage.local import LocalStorage
    from vya_backupdb.wiring import make_storage

    settings = loaded.settings
    target = make_storage(settings, remote)
    local = LocalStorage(settings.storage.base_path)
    return transfer(
        local, target, settings.hostname, select=_selector(names), force=force, progress=progress
    )


def download(
    loaded: LoadedConfig,
    remote: str,
    names: Iterable[str] = (),
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> TransferResult:
    """Download backups (all, or those named) from ``remote`` into the local store."""
    from vya_backupdb.storage.local import LocalStorage
    from vya_backupdb.wiring import make_storage

    settings = loaded.settings
    source = make_storage(settings, remote)
    local = LocalStorage(settings.storage.base_path)
    return transfer(
        source, local, settings.hostname, select=_selector(names), force=force, progress=progress
    )


def auto_upload(
    loaded: LoadedConfig,
    storage: Storage,
    run: RunResult,
    *,
    progress: ProgressFactory | None = None,
) -> None:
    """After a backup run with ``storage.auto_upload``: copy each new backup to every remote
    other than ``storage`` itself. A failed upload is recorded on that result (warning,
    ``offsite_failed``; the run then exits 9) and logged as an error; the backup itself
    exists and ``remote upload NAME`` copies it later."""
    from vya_backupdb.wiring import make_remote_storage

    settings = loaded.settings
    if not settings.storage.auto_upload or not settings.storage.remotes:
        return
    done = [r for r in run.results if r.status == "success" and r.record is not None]
    if not done:
        return
    for remote in settings.storage.remotes:
        try:
            target = make_remote_storage(remote, settings=settings)
        except VyaError as exc:
            log.error("upload to %s is not possible: %s", remote.name, exc.message)
            for result in done:
                result.warnings.append(f"upload to {remote.name} failed: {exc.message}")
                result.offsite_failed.append(remote.name)
            continue
        if target.description == storage.description:
            continue  # keep_local: false wrote there directly
        for result in done:
            assert result.record is not None
            try:
                callback = progress(result.record) if progress is not None else None
                copy_record(storage, target, result.record, progress=callback)
            except VyaError as exc:
                log.error(
                    "upload of %s to %s failed: %s", result.record.id, remote.name, exc.message
                )
                result.warnings.append(f"upload to {remote.name} failed: {exc.message}")
                result.offsite_failed.append(remote.name)


# -- remote test ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    outcome: str  # ok | failed | unsupported
    detail: str = ""


def conformance_checks(storage: Storage, part_size: int = 8 * 1024 * 1024) -> list[Check]:
    """Exercise a storage the way backups use it; return one Check per capability.

    Works under a private prefix and removes what it wrote.
    """
    prefix = f"_vya_remote_test/{os.getpid()}-{int(time.time())}/"
    small = os.urandom(1000)
    checks: list[Check] = []

    def check(name: str, action: Callable[[], str]) -> bool:
        try:
            detail = action()
        except NotImplementedError as exc:
            checks.append(Check(name, "unsupported", str(exc)))
            return False
        except (VyaError, AssertionError) as exc:
            message = exc.message if isinstance(exc, VyaError) else str(exc)
            checks.append(Check(name, "failed", message))
            return False
        checks.append(Check(name, "ok", detail))
        return True

    def write() -> str:
        t0 = time.monotonic()
        with storage.put(prefix + "small") as writer:
            writer.write(small)
        return f"{len(small)} bytes in {time.monotonic() - t0:.2f}s"

    def read_back() -> str:
        with storage.get(prefix + "small") as reader:
            data = b"".join(iter(lambda: reader.read(65536), b""))
        assert data == small, "the bytes read back differ from those written"
        return "same bytes"

    def listing() -> str:
        names = [o.name for o in storage.list(prefix)]
        assert names == [prefix + "small"], f"list returned {names}"
        return "object listed with its size" if storage.stat(prefix + "small").size == 1000 else ""

    def range_read() -> str:
        reader = getattr(storage, "read_range", None)
        if reader is None:
            raise NotImplementedError("this backend offers no range reads")
        data = reader(prefix + "small", 100, 50)
        assert data == small[100:150], "the range read returned other bytes"
        return "bytes 100-149"

    def interrupted() -> str:
        try:
            with storage.put(prefix + "interrupted") as writer:
                writer.write(small)
                raise _Abort
        except _Abort:
            pass
        assert not storage.exists(prefix + "interrupted"), "a failed put left an object"
        return "no object left behind"

    def multipart() -> str:
        size = part_size + 1024
        block = os.urandom(1024 * 1024)
        t0 = time.monotonic()
        with storage.put(prefix + "large") as writer:
            written = 0
            while written < size:
                chunk = block[: min(len(block), size - written)]
                writer.write(chunk)
                written += len(chunk)
        seconds = time.monotonic() - t0
        assert storage.stat(prefix + "large").size == size, "the large object has another size"
        return (
            f"{size / 1024 / 1024:.0f} MiB at {size / 1024 / 1024 / max(seconds, 1e-6):.1f} MiB/s"
        )

    def delete() -> str:
        for info in list(storage.list(prefix)):
            storage.delete(info.name)
        storage.delete(prefix + "small")  # deleting a missing object is not an error
        assert not list(storage.list(prefix)), "objects remain after delete"
        return "deleted, idempotent"

    if check("write", write):
        check("read back", read_back)
        check("list + stat", listing)
        check("range read", range_read)
    check("interrupted write leaves nothing", interrupted)
    check("large (multipart) write", multipart)
    check("delete", delete)
    return checks


class _Abort(Exception):
    pass


def check_remote(loaded: LoadedConfig, name: str) -> list[Check]:
    """Return the conformance checks of the remote called ``name``."""
    from vya_backupdb.wiring import make_storage, remote_config

    remote = remote_config(loaded.settings, name)
    try:
        storage = make_storage(loaded.settings, name)
    except VyaError as exc:
        return [Check("connect", "failed", exc.message)]
    return conformance_checks(storage, remote.part_size_mib * 1024 * 1024)
