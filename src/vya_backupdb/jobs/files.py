"""Files instances: archive + manifest through the same pipeline, and chain-aware restore.

Each files backup stores two objects: the tar archive (compressed like any dump, with its
``.sha256`` sidecar) and the manifest of the whole tree at that moment
(``*.manifest.jsonl.zst``, its sha256 in the record). Incrementals compare with the previous
backup's manifest, differentials with the last full's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vya_backupdb import __version__
from vya_backupdb.catalog import layout
from vya_backupdb.catalog.records import BackupInfo, BackupRecord, FileInfo
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.errors import IntegrityError, UsageError, VyaError
from vya_backupdb.jobs.store import (
    KeyProvider,
    StoredObject,
    check_checksum,
    open_backup_stream,
    unused_names,
)
from vya_backupdb.pipeline.codecs import Readable, aborting, get_codec
from vya_backupdb.pipeline.stream import HashingReader, HashingWriter
from vya_backupdb.storage.base import Storage
from vya_backupdb.wiring import keys_for

if TYPE_CHECKING:
    from vya_backupdb.jobs.backup import BackupJob, BackupRequest, DatabaseResult
    from vya_backupdb.jobs.restore import RestoreJob

log = logging.getLogger("vya.jobs.files")

MANIFEST_CODEC = "zstd"


@dataclass(frozen=True)
class FilesRestoreRequest:
    target: Path | None
    include: tuple[str, ...] = ()
    existing: Literal["overwrite", "skip", "error"] = "error"
    dry_run: bool = False


def _base_record(job: BackupJob, instance: InstanceConfig, strategy: str) -> BackupRecord | None:
    records = [r for r in job.catalog.records(instance.id, layout.FILES_DB, kind="files") if r.ok]
    if strategy == "incremental":
        return records[-1] if records else None
    if strategy == "differential":
        fulls = [r for r in records if r.backup_info.strategy == "full"]
        return fulls[-1] if fulls else None
    return None


@contextlib.contextmanager
def open_manifest(
    storage: Storage, record: BackupRecord, keys: KeyProvider | None = None
) -> Iterator[Readable]:
    """Yield the decompressed manifest of a files backup, checked against its sha256."""
    meta = record.extra.get("manifest") or {}
    name = meta.get("name")
    if not name or not storage.exists(name):
        raise IntegrityError(
            f"the manifest of files backup {record.id} is missing",
            hint="Without it the backup can only be restored whole: "
            "vya-backupdb restore --file ARCHIVE --target DIR",
        )
    with storage.get(name) as raw:
        hashing = HashingReader(raw)
        source: Readable = hashing
        if meta.get("encrypted"):
            from vya_backupdb.jobs.store import decrypt_stream

            source = decrypt_stream(hashing, record, keys)
        yield get_codec(MANIFEST_CODEC).reader(source)
        while hashing.read(1024 * 1024):
            pass
    if hashing.sha256 != meta.get("sha256"):
        raise IntegrityError(f"manifest {name} does not match its recorded checksum")


def backup_files_instance(
    job: BackupJob, instance: InstanceConfig, request: BackupRequest
) -> DatabaseResult:
    from vya_backupdb.engines.files import FilesEngine
    from vya_backupdb.jobs.backup import DatabaseResult

    engine = FilesEngine(instance)
    strategy = request.strategy or instance.strategy
    if strategy not in ("full", "incremental", "differential"):
        raise UsageError(f"unknown strategy {strategy!r}", hint="full, incremental, differential")
    if request.dry_run:
        _entries, size = engine.estimate()
        return DatabaseResult(
            instance.id, layout.FILES_DB, "planned", kind="files", estimated_bytes=size
        )
    started = job.clock()
    t0 = time.monotonic()
    context = {"instance": instance.id, "database": layout.FILES_DB, "dbms": "files"}
    try:
        base = _base_record(job, instance, strategy)
        effective = strategy if base is not None else "full"
        if effective != strategy:
            log.info("no base backup for %s: taking a full backup", strategy, extra=context)
        codec, level, threads, encryption, suffix = job.pipeline_for(instance)
        names = unused_names(
            job.storage,
            lambda moment: layout.database_backup_names(
                job.settings.hostname,
                instance.id,
                layout.FILES_DB,
                moment,
                effective,
                "tar",
                suffix,
            ),
            started,
        )
        manifest_codec = get_codec(MANIFEST_CODEC)
        with contextlib.ExitStack() as stack:
            keys = keys_for(job.settings)
            base_stream = (
                stack.enter_context(open_manifest(job.storage, base, keys)) if base else None
            )
            data_sink = stack.enter_context(job.storage.put(names.data))
            manifest_sink = stack.enter_context(job.storage.put(names.manifest))
            data_hash = HashingWriter(data_sink)
            manifest_hash = HashingWriter(manifest_sink)
            # Encrypt after compressing, the manifest too: file names can be sensitive.
            data_crypt = encryption.writer(data_hash) if encryption else None
            manifest_crypt = encryption.writer(manifest_hash) if encryption else None
            data_writer = stack.enter_context(
                aborting(codec.writer(data_crypt or data_hash, level, threads))
            )
            manifest_writer = manifest_codec.writer(manifest_crypt or manifest_hash, 3, 1)
            # No size estimate (it would walk the tree twice): bytes and rate, no ETA.
            raw = _CountingWriter(data_writer, job._progress(instance.id, layout.FILES_DB, None))
            result = engine.archive(
                raw,
                manifest_writer,
                backup_id=names.stem,
                strategy=effective,  # type: ignore[arg-type]
                base_manifest=base_stream,
            )
            raw.done()
            data_writer.close()
            manifest_writer.close()
            for crypt in (data_crypt, manifest_crypt):
                if crypt is not None:
                    crypt.close()
        stored = StoredObject(names.data, raw.bytes, data_hash.bytes, data_hash.sha256)
        try:
            from vya_backupdb.catalog.catalog import write_text

            write_text(
                job.storage, names.sha256, layout.sidecar_line(stored.sha256, names.basename)
            )
        except BaseException:
            job.storage.delete(names.data)
            job.storage.delete(names.manifest)
            raise
    except VyaError as exc:
        return job._failed(instance, layout.FILES_DB, started, t0, exc, context)
    duration = time.monotonic() - t0
    stats: dict[str, Any] = {
        "files": result.files,
        "dirs": result.dirs,
        "symlinks": result.symlinks,
        "hardlinks": result.hardlinks,
        "bytes_read": result.bytes_read,
        "unchanged": result.unchanged,
        "deleted": result.deleted,
        "entries_total": result.entries_total,
        "warning_count": result.warning_count,
    }
    record = BackupRecord(
        id=names.stem,
        kind="files",
        backup_info=BackupInfo(
            instance=instance.id,
            instance_type="files",
            database=layout.FILES_DB,
            hostname=job.settings.hostname,
            server_product="files",
            tool="vya-tar (PAX)",
            tool_version=__version__,
            dump_command=f"paths={list(instance.paths)} exclude={list(instance.exclude)}",
            dump_format="tar",
            strategy=effective,
            parent_id=base.id if base else None,
            started_at=started,
            finished_at=job.clock(),
            duration_seconds=round(duration, 3),
            status="success",
            vya_version=__version__,
        ),
        file_info=FileInfo(
            name=stored.name,
            size=stored.stored_bytes,
            raw_size=stored.raw_bytes,
            sha256=stored.sha256,
            extension="tar",
            compression=codec.name,
            compression_level=level if codec.name != "none" else None,
            encryption=encryption.name if encryption else None,
        ),
        stats=stats,
        extra={
            "manifest": {
                "name": names.manifest,
                "sha256": manifest_hash.sha256,
                "size": manifest_hash.bytes,
                "compression": MANIFEST_CODEC,
                "encrypted": encryption is not None,
            },
            **({"encryption": encryption.metadata()} if encryption else {}),
            "warnings": result.warnings[:100],
        },
    )
    outcome = job._commit_record(record, stored, instance, layout.FILES_DB, t0, context)
    outcome.kind = "files"
    outcome.warnings = list(result.warnings[:100])
    for warning in result.warnings[:20]:
        log.warning("files backup %s: %s", instance.id, warning, extra=context)
    return outcome


class _CountingWriter:
    """Count the archive's bytes; report them to ``progress`` at most every ``interval`` s."""

    def __init__(
        self, sink: Any, progress: Callable[[int], None] | None = None, interval: float = 0.5
    ):
        self._sink = sink
        self._progress = progress
        self._interval = interval
        self._last = 0.0
        self.bytes = 0

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        self.bytes += len(data)
        if self._progress is not None:
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._progress(self.bytes)
        return len(data)

    def done(self) -> None:
        if self._progress is not None:
            self._progress(self.bytes)

    def flush(self) -> None:
        return None


def restore_files(
    job: RestoreJob, record: BackupRecord, request: FilesRestoreRequest
) -> dict[str, Any]:
    """Restore a files backup (assembling its chain); return a summary dict."""
    from vya_backupdb.engines.files import ChainLink, restore_chain

    chain = job.catalog.chain(record)
    for link in chain:  # every archive is verified before anything is written
        check_checksum(job.storage, link, keys=job.keys)
    target = request.target or Path("/")
    if request.target is not None and not request.dry_run:
        target.mkdir(parents=True, exist_ok=True)
    storage = job.storage

    def opener(link_record: BackupRecord):  # type: ignore[no-untyped-def]
        return lambda: open_backup_stream(storage, link_record, keys=job.keys)

    links = [ChainLink(backup_id=r.id, open_archive=opener(r)) for r in chain]
    listing: list[str] = []
    with open_manifest(storage, record, job.keys) as manifest:
        result = restore_chain(
            links,
            manifest,
            target,
            include=list(request.include),
            existing=request.existing,
            dry_run=request.dry_run,
        )
    if request.dry_run:
        listing = list(result.dry_run_listing)
    return {
        "backup": record.id,
        "chain": [r.id for r in chain],
        "target": str(target),
        "entries": getattr(result, "entries", 0),
        "written": getattr(result, "written", 0),
        "skipped": getattr(result, "skipped", 0),
        "dry_run": request.dry_run,
        "listing": listing,
    }
