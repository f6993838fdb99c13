"""The verify use case: is a stored backup intact, readable, and really restorable?

Levels, each including the ones before it (docs/verification.md):

- ``checksum``: the record is consistent (format version, required fields, names), the object
  exists, is as large as recorded, and hashes to the sha256 of its record and of its sidecar.
- ``integrity``: the whole object is decompressed and the dump format is checked: a PostgreSQL
  custom archive is read completely by ``pg_restore``; a directory-format tar lists completely
  and its ``toc.dat`` passes ``pg_restore --list``; plain SQL and MySQL dumps end with their
  tool's completion trailer; a MySQL parallel-format tar lists completely, holds its manifest
  (written last), every file it lists with the recorded size and every table recorded; a
  SQLite copy passes ``PRAGMA integrity_check``; a files archive lists completely and agrees
  with its manifest.
- ``test-restore``: the backup is restored into a temporary database (or directory), the row
  counts are compared with those captured at dump time, each table is read, the restore is
  timed, and the temporary database is dropped in every case (failure and Ctrl-C included).

A storage scan also finds objects without a record and metadata files that cannot be read.
Each kind of damage has its own message; the outcome is written into the backup's record.
Memory stays bounded: everything is streamed, SQLite copies are spooled to a temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import read_text, relative_name
from vya_backupdb.catalog.records import FORMAT_VERSION, BackupRecord, Verification
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import Engine, RestoreOptions
from vya_backupdb.engines.pg_commands import PG_CLIENT_PACKAGE
from vya_backupdb.engines.process import Command, Readable, feed, find_tool, run
from vya_backupdb.errors import (
    IntegrityError,
    NotFoundError,
    RestoreFailed,
    UsageError,
    VyaError,
)
from vya_backupdb.jobs.store import (
    block_opener,
    check_checksum,
    open_backup_stream,
    open_backup_stream_direct,
)
from vya_backupdb.pipeline.codecs import CODECS
from vya_backupdb.pipeline.stream import sha256_of
from vya_backupdb.wiring import keys_for, make_catalog, make_engine, make_storage

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.storage.base import Storage

log = logging.getLogger("vya.jobs.verify")

Level = Literal["checksum", "integrity", "test-restore"]
LEVELS: tuple[Level, ...] = ("checksum", "integrity", "test-restore")
Outcome = Literal["ok", "failed", "error"]
EngineFactory = Callable[["LoadedConfig", InstanceConfig], Engine]
#: (record, stage "integrity" | "test-restore") -> callback of the stored bytes read, or None.
VerifyProgress = Callable[[BackupRecord, str], Callable[[int], None] | None]

#: The last lines pg_dump / mariadb-dump write when they finished normally.
PG_PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
MYSQL_TRAILER = b"-- Dump completed on"
TAIL_BYTES = 8192
MANIFEST_SUFFIX = ".manifest.jsonl.zst"
#: Prefix of the temporary databases of test restores (also how leftovers are recognised).
TEMP_DB_PREFIX = "vya_verify_"
_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- results


@dataclass
class VerifyResult:
    """The verification of one backup, or of one object that has no record."""

    name: str  # the data object (or the damaged metadata file) verified
    level: str
    outcome: Outcome  # ok | failed (damage found) | error (could not check, e.g. no connection)
    message: str = ""
    record: BackupRecord | None = None
    error: VyaError | None = None
    restore_seconds: float | None = None
    row_check: dict[str, Any] | None = None
    recorded: bool = False  # the outcome was written into the backup's record

    @property
    def instance(self) -> str:
        return self.record.backup_info.instance if self.record else ""

    @property
    def database(self) -> str:
        return self.record.backup_info.database if self.record else ""

    def as_dict(self) -> dict[str, Any]:
        record = self.record
        return {
            "id": record.id if record else None,
            "instance": self.instance or None,
            "database": self.database or None,
            "kind": record.kind if record else None,
            "started_at": record.started_at.isoformat() if record else None,
            "file": self.name,
            "level": self.level,
            "outcome": self.outcome,
            "message": self.message,
            "error_type": type(self.error).__name__ if self.error else None,
            "restore_seconds": self.restore_seconds,
            "row_check": self.row_check,
            "recorded": self.recorded,
        }


@dataclass
class VerifyReport:
    results: list[VerifyResult] = field(default_factory=list)

    @property
    def failed(self) -> list[VerifyResult]:
        return [r for r in self.results if r.outcome != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """Return 0 when all is well, 8 when damage was found, else the error's exit code."""
        if any(r.outcome == "failed" for r in self.results):
            return IntegrityError.exit_code
        codes = [r.error.exit_code for r in self.results if r.error is not None]
        return codes[0] if codes else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": len(self.results),
            "failed": len(self.failed),
            "results": [r.as_dict() for r in self.results],
        }


# --------------------------------------------------------------------------- pure helpers


def effective_level(level: str | None, test_restore: bool, default: str) -> Level:
    """Return the level to run; raise UsageError for an unknown level name."""
    chosen = "test-restore" if test_restore else (level or default)
    if chosen not in LEVELS:
        raise UsageError(
            f"unknown verification level {chosen!r}",
            hint="Use one of: checksum, integrity, test-restore",
        )
    return chosen


def temp_database_name(database: str, moment: datetime, token: str | None = None) -> str:
    """Return ``vya_verify_{db}_{YYYYMMDDHHMMSS}_{token}``: ASCII, at most 63 bytes.

    Only letters, digits and ``_`` are kept from ``db`` so the name is valid unquoted on every
    DBMS; the random token keeps two concurrent verifications apart.
    """
    token = token or secrets.token_hex(2)
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", database).strip("_") or "db"
    suffix = f"_{moment:%Y%m%d%H%M%S}_{token}"
    budget = 63 - len(TEMP_DB_PREFIX) - len(suffix)
    return f"{TEMP_DB_PREFIX}{cleaned[:budget]}{suffix}"


def make_pg_restore_read_command(pg_restore: str) -> Command:
    """Return ``pg_restore`` reading a custom archive from stdin completely, output discarded.

    ``--list`` stops after the table of contents (and then breaks the pipe of whoever feeds
    it); converting the whole archive to a script that goes to /dev/null reads every data block
    too, so a damaged block is found as well.
    """
    return Command([pg_restore, "--file=/dev/null"])


def make_pg_restore_list_command(pg_restore: str, directory: Path) -> Command:
    """Return ``pg_restore --list`` of a directory-format dump (it reads only toc.dat)."""
    return Command([pg_restore, "--list", str(directory)])


def compare_row_counts(expected: dict[str, int], actual: dict[str, int]) -> dict[str, Any]:
    """Return the row check: tables compared and those whose count differs (or is missing)."""
    mismatched = {
        table: {"expected": rows, "actual": actual.get(table)}
        for table, rows in sorted(expected.items())
        if actual.get(table) != rows
    }
    extra = sorted(set(actual) - set(expected))
    return {"tables": len(expected), "mismatched": mismatched, "unexpected": extra}


def _shown(rows: int | None) -> str:
    return "no table" if rows is None else str(rows)


def _describe_mismatch(check: dict[str, Any]) -> str:
    parts = [
        f"{table} (expected {v['expected']}, got {_shown(v['actual'])})"
        for table, v in list(check["mismatched"].items())[:5]
    ]
    parts += [f"{table} (not in the backup's record)" for table in check["unexpected"][:5]]
    more = len(check["mismatched"]) + len(check["unexpected"]) - len(parts)
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


class _TailKeeper:
    """Pass a stream through while keeping its last bytes (for trailer checks)."""

    def __init__(self, source: Readable, keep: int = TAIL_BYTES):
        self._source = source
        self._keep = keep
        self.tail = b""

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        if data:
            self.tail = (self.tail + data)[-self._keep :]
        return data


# --------------------------------------------------------------------------- the job


class VerifyJob:
    """Verifies backups and records the outcome in their metadata. Never prints."""

    def __init__(
        self,
        loaded: LoadedConfig,
        storage: Storage | None = None,
        *,
        engine_factory: EngineFactory = make_engine,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: VerifyProgress | None = None,
    ):
        self.loaded = loaded
        self.settings = loaded.settings
        self.storage = storage or make_storage(self.settings)
        self.catalog = make_catalog(self.settings, self.storage)
        self.keys = keys_for(self.settings)
        self.engine_factory = engine_factory
        self.clock = clock
        self.progress = progress

    def _progress(self, record: BackupRecord, stage: str) -> Callable[[int], None] | None:
        """Return the callback for the stored bytes of one full read of ``record``."""
        return self.progress(record, stage) if self.progress is not None else None

    # -- entry points ----------------------------------------------------------------------
    def level_for(self, level: str | None = None, test_restore: bool = False) -> Level:
        return effective_level(level, test_restore, self.settings.verification.level)

    def verify_record(
        self,
        record: BackupRecord,
        level: str | None = None,
        test_restore: bool = False,
        *,
        save: bool = True,
    ) -> VerifyResult:
        """Return the verification of one backup (written into its record when ``save``).

        Damage gives outcome ``failed`` (IntegrityError); a check that could not run (server
        unreachable, tool missing) gives ``error`` and is not recorded. KeyboardInterrupt
        propagates after the temporary database of a test restore was dropped.
        """
        chosen = self.level_for(level, test_restore)
        result = VerifyResult(record.file_info.name, chosen, "ok", record=record)
        try:
            self._check_metadata(record)
            self._check_checksum(record)
            if chosen in ("integrity", "test-restore"):
                self._check_integrity(record)
            if chosen == "test-restore":
                result.message = self._test_restore(record, result)
        except IntegrityError as exc:
            result.outcome, result.error, result.message = "failed", exc, exc.message
        except RestoreFailed as exc:
            # The backup passed its checksum yet does not restore: as bad as damage.
            damage = IntegrityError(
                f"test restore of {record.file_info.name} failed: {exc.message}",
                hint="The backup may be incomplete, or the scratch instance may lack a role, "
                "locale or extension the backup needs. Keep an older good backup.",
                details=exc.details,
            )
            result.outcome, result.error, result.message = "failed", damage, damage.message
        except VyaError as exc:
            result.outcome, result.error, result.message = "error", exc, exc.message
        log.log(
            logging.INFO if result.outcome == "ok" else logging.ERROR,
            "verify %s (%s): %s%s",
            record.file_info.name,
            chosen,
            result.outcome,
            f": {result.message}" if result.message else "",
            extra={
                "instance": record.backup_info.instance,
                "database": record.backup_info.database,
                "operation": "verify",
                "status": result.outcome,
            },
        )
        if save and result.outcome != "error":
            self._save(result)
        return result

    def verify_file(
        self, path: Path, level: str | None = None, test_restore: bool = False
    ) -> VerifyResult:
        """Return the verification of the backup stored at ``path`` (data, sidecar or
        metadata file); an object without a record gives a failed result. Raise
        NotFoundError when ``path`` is not inside the storage."""
        name = self._storage_name(path)
        meta = self._metadata_name_for(name)
        chosen = self.level_for(level, test_restore)
        if meta is None or not self.storage.exists(meta):
            return self._orphan_result(name, chosen)
        try:
            record = self.catalog.load(meta)
        except IntegrityError as exc:
            return VerifyResult(meta, chosen, "failed", exc.message, error=exc)
        return self.verify_record(record, chosen)

    def verify_instance(
        self,
        instance: str,
        database: str | None = None,
        *,
        level: str | None = None,
        test_restore: bool = False,
        latest: bool = False,
    ) -> VerifyReport:
        """Return the verification of every backup of ``instance`` (or only the newest one
        of each database with ``latest``), plus objects without a record and damaged
        metadata files. Raise NotFoundError for an unknown instance without backups."""
        damaged: list[str] = []
        records = self.catalog.records(instance, database, include_damaged=damaged)
        if not records and not damaged:
            self.settings.instance(instance)  # raises NotFoundError for unknown names
        if database is not None:
            prefix = layout.database_prefix(self.settings.hostname, instance, database)
        else:
            prefix = layout.instance_prefix(self.settings.hostname, instance)
        return self._verify_set(records, damaged, prefix, level, test_restore, latest)

    def verify_all(
        self, *, level: str | None = None, test_restore: bool = False, latest: bool = False
    ) -> VerifyReport:
        """Return the verification of every backup in the storage (see verify_instance)."""
        damaged: list[str] = []
        records = self.catalog.records(include_damaged=damaged)
        prefix = f"{layout.safe_component(self.settings.hostname)}/"
        return self._verify_set(records, damaged, prefix, level, test_restore, latest)

    def _verify_set(
        self,
        records: list[BackupRecord],
        damaged: list[str],
        prefix: str,
        level: str | None,
        test_restore: bool,
        latest: bool,
    ) -> VerifyReport:
        chosen = self.level_for(level, test_restore)
        report = VerifyReport()
        if latest:
            newest: dict[tuple[str, str, str], BackupRecord] = {}
            for record in records:  # oldest first: the last one seen wins
                if record.ok:
                    info = record.backup_info
                    newest[(info.instance, info.database, record.kind)] = record
            selected = sorted(newest.values(), key=lambda r: (r.started_at, r.id))
        else:
            # A failed run's record describes no backup: there is nothing to verify.
            selected = [r for r in records if r.ok]
        for record in selected:
            report.results.append(self.verify_record(record, chosen))
        for name in damaged:
            try:
                self.catalog.load(name)
                message = f"metadata file {name} could not be read"
                error = IntegrityError(message)
            except IntegrityError as exc:
                error = exc
            report.results.append(VerifyResult(name, chosen, "failed", error.message, error=error))
        for name in self._orphans(records, damaged, prefix):
            report.results.append(self._orphan_result(name, chosen))
        return report

    # -- storage scan ----------------------------------------------------------------------
    def _orphans(
        self, records: list[BackupRecord], damaged: list[str], prefix: str
    ) -> Iterator[str]:
        """Yield objects under ``prefix`` that no record accounts for (metadata files and run
        logs excluded; objects of a damaged metadata file are reported with it)."""
        known: set[str] = set()
        for record in self.catalog.records():  # all of them: a prefix may hide a parent
            known.add(record.file_info.name)
            known.add(record.file_info.name + layout.SHA256_SUFFIX)
            manifest = (record.extra.get("manifest") or {}).get("name")
            if manifest:
                known.add(str(manifest))
        stems = [d[: -len(layout.METADATA_SUFFIX)] for d in damaged]
        runs = f"{layout.safe_component(self.settings.hostname)}/_runs/"
        for info in self.storage.list(prefix):
            name = info.name
            if name in known or name.endswith(layout.METADATA_SUFFIX) or name.startswith(runs):
                continue
            if any(name.startswith(stem + ".") for stem in stems):
                continue
            yield name

    def _orphan_result(self, name: str, level: str) -> VerifyResult:
        if name.endswith(layout.SHA256_SUFFIX) or name.endswith(MANIFEST_SUFFIX):
            what = "checksum sidecar" if name.endswith(layout.SHA256_SUFFIX) else "manifest"
            message = f"{what} {name} belongs to no backup: its object and metadata record are gone"
            hint = (
                "A cleanup or a deletion was interrupted; the file is of no use and can be deleted."
            )
        else:
            meta = self._metadata_name_for(name) or name + layout.METADATA_SUFFIX
            message = f"backup object {name} has no metadata record ({meta} is missing)"
            hint = (
                "The record was deleted (an interrupted cleanup deletes it first) or the file "
                "was copied without it. It cannot be listed or restored by name; restore it "
                "with standard tools (docs/on-disk-format.md) or delete it."
            )
        error = IntegrityError(message, hint=hint)
        return VerifyResult(name, level, "failed", message, error=error)

    def _storage_name(self, path: Path) -> str:
        root = self.settings.storage.base_path
        name = relative_name(root, path) if path.is_absolute() or path.exists() else None
        if name is None and self.storage.exists(path.as_posix()):
            name = path.as_posix()
        if name is None or not self.storage.exists(name):
            raise NotFoundError(
                f"{path} is not a backup file inside the storage {root}",
                hint="Give a file listed by: vya-backupdb list",
            )
        return name

    def _metadata_name_for(self, name: str) -> str | None:
        """Return the metadata name of a data, sidecar, manifest or metadata object."""
        if name.endswith(layout.METADATA_SUFFIX):
            return name
        for suffix in (layout.SHA256_SUFFIX, MANIFEST_SUFFIX):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                if suffix == MANIFEST_SUFFIX:
                    return name + layout.METADATA_SUFFIX
        directory, _, base = name.rpartition("/")
        for marker in ("_full.", "_incremental.", "_differential.", "_safety."):
            if marker in base:
                stem = base[: base.index(marker) + len(marker) - 1]
                break
        else:
            if not base.startswith("users_") or "." not in base:
                return None
            stem = base.split(".", 1)[0]
        return f"{directory}/{stem}{layout.METADATA_SUFFIX}" if directory else stem

    # -- metadata and checksum -------------------------------------------------------------
    def _check_metadata(self, record: BackupRecord) -> None:
        """Raise IntegrityError when the record is inconsistent in itself."""
        meta = record.id + layout.METADATA_SUFFIX
        info, file = record.backup_info, record.file_info
        if record.format_version > FORMAT_VERSION or record.format_version < 1:
            raise IntegrityError(
                f"metadata file {meta} has format version {record.format_version}, which this "
                f"program does not know (it reads version {FORMAT_VERSION})",
                hint="Upgrade vya-backupdb to read it, then verify again.",
            )
        problems: list[str] = []
        if not file.name.startswith(record.id + "."):
            problems.append(f"its object {file.name} does not belong to it")
        if not _SHA256.match(file.sha256):
            problems.append(f"its sha256 {file.sha256!r} is not a sha256")
        if file.size < 0 or file.raw_size < 0:
            problems.append("it records a negative size")
        if file.compression not in CODECS:
            problems.append(f"its compression {file.compression!r} is unknown")
        if info.finished_at < info.started_at:
            problems.append("it finished before it started")
        if not info.instance or not info.database:
            problems.append("it names no instance or database")
        if record.kind == "files":
            manifest = record.extra.get("manifest") or {}
            if not manifest.get("name") or not manifest.get("sha256"):
                problems.append("it names no manifest")
        if info.status != "success":
            problems.append(f"the backup is recorded as {info.status}")
        if problems:
            raise IntegrityError(
                f"metadata file {meta} is inconsistent: {'; '.join(problems)}",
                hint="The record was edited by hand or written by a failed run; do not "
                "restore from it. Pick another backup with: vya-backupdb list",
            )

    def _check_checksum(self, record: BackupRecord) -> None:
        """Re-hash the object; when it disagrees, tell whether the object, its sidecar or its
        metadata is at fault. Raise IntegrityError."""
        try:
            check_checksum(self.storage, record, keys=self.keys)
        except IntegrityError as exc:
            blamed = self._blame_metadata(record)
            if blamed is not None:
                raise blamed from None
            raise exc from None

    def _blame_metadata(self, record: BackupRecord) -> IntegrityError | None:
        """Return the error to report when the object matches its sidecar but not its record
        (the metadata was edited or belongs to another object), else None."""
        name = record.file_info.name
        if not self.storage.exists(name):
            return None
        size = self.storage.stat(name).size
        with self.storage.get(name) as reader:
            digest, _ = sha256_of(reader)
        sidecar_digest = None
        sidecar = name + layout.SHA256_SUFFIX
        if self.storage.exists(sidecar):
            with contextlib.suppress(ValueError, IntegrityError, UnicodeDecodeError):
                sidecar_digest = layout.parse_sidecar(read_text(self.storage, sidecar))[0]
        meta = record.id + layout.METADATA_SUFFIX
        hint = (
            "The object itself matches its checksum sidecar: the metadata file was edited or "
            "belongs to another backup. The data can still be restored with standard tools "
            "(docs/on-disk-format.md); take a new backup to get a consistent record."
        )
        if digest != record.file_info.sha256 and digest == sidecar_digest:
            return IntegrityError(
                f"metadata file {meta} disagrees with the object: it records sha256 "
                f"{record.file_info.sha256[:16]}…, but {name} and its sidecar have "
                f"{digest[:16]}…",
                hint=hint,
            )
        if digest == record.file_info.sha256 and size != record.file_info.size:
            return IntegrityError(
                f"metadata file {meta} disagrees with the object: it records a size of "
                f"{record.file_info.size} bytes, {name} has {size} (and matches the recorded "
                "checksum)",
                hint=hint,
            )
        return None

    # -- integrity -------------------------------------------------------------------------
    def _check_integrity(self, record: BackupRecord) -> None:
        """Decompress the whole object and check its format; raise IntegrityError."""
        info = record.backup_info
        fmt = info.dump_format or record.file_info.extension
        name = record.file_info.name
        with open_backup_stream(
            self.storage, record, self._progress(record, "integrity"), keys=self.keys
        ) as stream:
            if record.kind == "files":
                members = _list_tar(stream, name)
            elif record.kind == "users":
                _drain(stream)
            elif info.instance_type == "postgresql" and fmt == "custom":
                _check_pg_custom(stream, name)
            elif info.instance_type == "postgresql" and fmt == "directory":
                _check_pg_directory(stream, name)
            elif info.instance_type == "postgresql" and fmt == "plain":
                _check_trailer(stream, name, PG_PLAIN_TRAILER, "pg_dump")
            elif info.instance_type in ("mysql", "mariadb") and fmt == "parallel":
                from vya_backupdb.engines.mysql_parallel import check_parallel_archive

                check_parallel_archive(stream, name, _expected_tables(record))
            elif info.instance_type in ("mysql", "mariadb"):
                _check_trailer(stream, name, MYSQL_TRAILER, "mariadb-dump/mysqldump")
            elif info.instance_type == "sqlite":
                with _spooled_sqlite(stream) as path:
                    _check_sqlite(path, name)
            else:
                _drain(stream)
        if record.kind == "files":
            self._check_files_manifest(record, members)

    def _check_files_manifest(self, record: BackupRecord, members: int) -> None:
        from vya_backupdb.engines.files import read_manifest
        from vya_backupdb.jobs.files import open_manifest

        own = 0
        with open_manifest(self.storage, record, self.keys) as manifest:
            for entry in read_manifest(manifest):
                if entry.backup == record.id:
                    own += 1
        if own != members:
            raise IntegrityError(
                f"files archive {record.file_info.name} holds {members} entries but its "
                f"manifest says {own} were written to it",
            )

    # -- test restore ----------------------------------------------------------------------
    def _test_restore(self, record: BackupRecord, result: VerifyResult) -> str:
        """Restore into a temporary place, compare, clean up; return a note for the result."""
        if record.kind == "users":
            return "users files are checked to the integrity level (no test restore)"
        if record.kind == "files":
            return self._test_restore_files(record, result)
        if record.backup_info.instance_type == "sqlite":
            return self._test_restore_sqlite(record, result)
        return self._test_restore_server(record, result)

    def _scratch_target(self, record: BackupRecord) -> InstanceConfig:
        scratch = self.settings.verification.scratch_instance
        source_type = record.backup_info.instance_type
        target = self.settings.instance(scratch or record.backup_info.instance)
        families = ({"postgresql"}, {"mysql", "mariadb"})
        if not any({target.type, source_type} <= family for family in families):
            raise UsageError(
                f"cannot test-restore a {source_type} backup on {target.type} instance "
                f"{target.id!r}",
                hint="Set verification.scratch_instance to an instance of the same DBMS.",
            )
        return target

    def _test_restore_server(self, record: BackupRecord, result: VerifyResult) -> str:
        target = self._scratch_target(record)
        engine = self.engine_factory(self.loaded, target)
        temp_db = temp_database_name(record.backup_info.database, self.clock())
        if engine.database_exists(temp_db):
            raise UsageError(f"temporary database {temp_db!r} already exists on {target.id!r}")
        reporting = self._progress(record, "test-restore")
        options = RestoreOptions(
            jobs=target.jobs,
            format=record.backup_info.dump_format or "custom",
            database_properties=dict(record.extra.get("database_properties") or {}),
            source_version_num=record.extra.get("server_version_num"),
            # As a real restore: parallel workers read their own streams, no spool.
            reopen=lambda: open_backup_stream_direct(self.storage, record, self.keys),
            table_weights=dict(record.stats.get("tables", {})),
            open_blocks=block_opener(self.storage, record, reporting),
        )
        log.info("test restore of %s into %s on %s", record.id, temp_db, target.id)
        try:
            started = time.monotonic()
            with open_backup_stream(self.storage, record, reporting, keys=self.keys) as stream:
                engine.restore(temp_db, stream, options)
            result.restore_seconds = round(time.monotonic() - started, 3)
            check = compare_row_counts(_expected_tables(record), engine.table_stats(temp_db))
            check["sampled"] = sample_tables(engine, temp_db)
            result.row_check = check
        finally:
            _drop_temporary(engine, temp_db)
        _raise_on_mismatch(record, check)
        return f"restored into {temp_db} on {target.id} in {result.restore_seconds:.1f}s"

    def _test_restore_sqlite(self, record: BackupRecord, result: VerifyResult) -> str:
        started = time.monotonic()
        with (
            open_backup_stream(
                self.storage, record, self._progress(record, "test-restore"), keys=self.keys
            ) as stream,
            _spooled_sqlite(stream) as path,
        ):
            _check_sqlite(path, record.file_info.name)
            result.restore_seconds = round(time.monotonic() - started, 3)
            from vya_backupdb.engines.sqlite import table_counts

            check = compare_row_counts(_expected_tables(record), table_counts(path))
            check["sampled"] = _sample_sqlite(path)
        result.row_check = check
        _raise_on_mismatch(record, check)
        return f"restored into a temporary file in {result.restore_seconds:.1f}s"

    def _test_restore_files(self, record: BackupRecord, result: VerifyResult) -> str:
        from vya_backupdb.jobs.files import FilesRestoreRequest, open_manifest, restore_files
        from vya_backupdb.jobs.restore import RestoreJob

        job = RestoreJob(self.loaded, storage=self.storage, clock=self.clock)
        with tempfile.TemporaryDirectory(prefix="vya-verify-") as tmp:
            started = time.monotonic()
            restore_files(job, record, FilesRestoreRequest(target=Path(tmp), existing="error"))
            result.restore_seconds = round(time.monotonic() - started, 3)
            with open_manifest(self.storage, record, self.keys) as manifest:
                check = compare_tree(manifest, Path(tmp))
        result.row_check = check
        if check["mismatched"]:
            raise IntegrityError(
                f"test restore of files backup {record.file_info.name} differs from its "
                f"manifest in {check['mismatched']} of {check['entries']} entries: "
                + "; ".join(check["examples"]),
            )
        return (
            f"restored {check['entries']} entries into a temporary directory in "
            f"{result.restore_seconds:.1f}s"
        )

    # -- recording -------------------------------------------------------------------------
    def _save(self, result: VerifyResult) -> None:
        record = result.record
        if record is None:
            return
        meta = record.id + layout.METADATA_SUFFIX
        # Never resurrect a record that was deleted meanwhile (e.g. by a cleanup).
        if not self.storage.exists(meta):
            return
        outcome: Literal["ok", "failed"] = "ok" if result.outcome == "ok" else "failed"
        verification = Verification(
            verified_at=self.clock(),
            level=result.level,
            outcome=outcome,
            message=result.message[:1000],
            restore_seconds=result.restore_seconds,
        )
        updated = record.model_copy(update={"verification": verification})
        try:
            self.catalog.save(updated)
        except VyaError as exc:
            log.warning("could not record the verification of %s: %s", record.id, exc.message)
            return
        result.record = updated
        result.recorded = True


# --------------------------------------------------------------------------- format checks


def _drain(stream: Readable) -> int:
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
    return total


def _check_trailer(stream: Readable, name: str, trailer: bytes, tool: str) -> None:
    keeper = _TailKeeper(stream)
    _drain(keeper)
    if trailer not in keeper.tail:
        raise IntegrityError(
            f"dump {name} is incomplete: it does not end with {tool}'s completion line "
            f"{trailer.decode()!r}",
            hint="The dump tool stopped early (killed, disk full) before the backup was "
            "recorded, or the file was cut. Do not restore it; pick another with: "
            "vya-backupdb list",
        )


def _check_pg_custom(stream: Readable, name: str) -> None:
    pg_restore = find_tool(["pg_restore"], PG_CLIENT_PACKAGE)
    try:
        feed(make_pg_restore_read_command(pg_restore), stream, IntegrityError, stdout_tail=False)
    except IntegrityError as exc:
        if exc.message.startswith(f"{name}"):
            raise  # the decompressor's own message
        raise IntegrityError(
            f"PostgreSQL archive {name} is damaged: {exc.message}",
            details=exc.details,
        ) from None


def _list_tar(
    stream: Readable, name: str, keep: Callable[[str], bool] | None = None, into: Path | None = None
) -> int:
    """Return the number of members of a tar stream, read to its end; extract the members
    ``keep`` selects into ``into``. Raise IntegrityError when the tar is damaged."""
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                count += 1
                if keep is not None and into is not None and member.isfile() and keep(member.name):
                    source = tar.extractfile(member)
                    assert source is not None
                    target = into / Path(member.name).name
                    with target.open("wb") as out:
                        while chunk := source.read(_CHUNK):
                            out.write(chunk)
                # Stream mode remembers every member; forget them to keep memory bounded.
                tar.members.clear()
            _drain(stream)  # end-of-archive padding, so the hash check covers everything
    except tarfile.TarError as exc:
        raise IntegrityError(f"tar archive {name} is damaged: {exc}") from None
    if count == 0:
        raise IntegrityError(f"tar archive {name} is empty")
    return count


def _check_pg_directory(stream: Readable, name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="vya-verify-toc-") as tmp:
        _list_tar(stream, name, keep=lambda m: m.lstrip("./") == "toc.dat", into=Path(tmp))
        toc = Path(tmp) / "toc.dat"
        if not toc.is_file():
            raise IntegrityError(
                f"directory-format dump {name} has no toc.dat: it is not a pg_dump directory"
            )
        pg_restore = find_tool(["pg_restore"], PG_CLIENT_PACKAGE)
        try:
            run(make_pg_restore_list_command(pg_restore, Path(tmp)), IntegrityError)
        except IntegrityError as exc:
            raise IntegrityError(
                f"the table of contents of {name} is damaged: {exc.message}", details=exc.details
            ) from None


@contextlib.contextmanager
def _spooled_sqlite(stream: Readable) -> Iterator[Path]:
    """Yield a temporary file holding the stream (SQLite cannot read a pipe)."""
    with tempfile.TemporaryDirectory(prefix="vya-verify-") as tmp:
        path = Path(tmp) / "verify.sqlite"
        with path.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
        yield path


def _check_sqlite(path: Path, name: str) -> None:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            verdict = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchmany(5)]
    except sqlite3.Error as exc:
        raise IntegrityError(f"SQLite backup {name} is not a valid database: {exc}") from None
    if verdict != ["ok"]:
        raise IntegrityError(
            f"SQLite backup {name} fails PRAGMA integrity_check: {'; '.join(map(str, verdict))}"
        )


# --------------------------------------------------------------------------- test restore


def _expected_tables(record: BackupRecord) -> dict[str, int]:
    tables = record.stats.get("tables") or {}
    return {str(k): int(v) for k, v in dict(tables).items()}


def _raise_on_mismatch(record: BackupRecord, check: dict[str, Any]) -> None:
    if check["mismatched"] or check["unexpected"]:
        raise IntegrityError(
            f"test restore of {record.file_info.name}: row counts differ from those recorded "
            f"at dump time in {len(check['mismatched']) + len(check['unexpected'])} table(s): "
            f"{_describe_mismatch(check)}",
            hint="The backup does not hold what was dumped (or its record was edited). Do not "
            "rely on it; take a new backup and verify it.",
        )


def _drop_temporary(engine: Engine, db: str) -> None:
    """Drop the temporary database of a test restore; never raise (it runs in a finally)."""
    try:
        if engine.database_exists(db):
            engine.drop_database(db)
    except VyaError as exc:
        log.warning("could not drop temporary database %s: %s (drop it by hand)", db, exc.message)


def sample_tables(engine: Engine, db: str) -> int:
    """Read one row of every table of ``db``; return the number of tables read.

    Raise IntegrityError when a table cannot be read. Uses the engine's ``sample_tables``
    when it offers one, else the PostgreSQL / MySQL connection of the engine.
    """
    own = getattr(engine, "sample_tables", None)
    if callable(own):
        return int(own(db))
    connect = getattr(engine, "_connect", None)
    if connect is None:
        return 0
    try:
        if engine.kind == "postgresql":
            return _sample_postgres(connect, db)
        if engine.kind in ("mysql", "mariadb"):
            return _sample_mysql(connect, db)
    except IntegrityError:
        raise
    except Exception as exc:  # a driver error here means a table that cannot be read
        raise IntegrityError(
            f"a table of the test-restored database {db} cannot be read: {exc}"
        ) from None
    return 0


def _sample_postgres(connect: Any, db: str) -> int:
    from psycopg import sql

    with connect(db) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname !~ '^pg_(toast|temp_)' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            conn.execute(
                sql.SQL("SELECT * FROM {}.{} LIMIT 1").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchall()
    return len(tables)


def _sample_mysql(connect: Any, db: str) -> int:
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW FULL TABLES WHERE Table_type <> 'VIEW'")
            tables = [str(row[0]) for row in cur.fetchall()]
            for table in tables:
                quoted = "`" + table.replace("`", "``") + "`"
                cur.execute(f"SELECT * FROM {quoted} LIMIT 1")  # noqa: S608 - quoted identifier
                cur.fetchall()
    finally:
        conn.close()
    return len(tables)


def _sample_sqlite(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        tables = [
            str(row[0])
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            conn.execute(f"SELECT * FROM {quoted} LIMIT 1").fetchall()  # noqa: S608
    return len(tables)


def compare_tree(manifest: Readable, root: Path, limit: int = 10) -> dict[str, Any]:
    """Compare a restored tree under ``root`` with a manifest, entry by entry.

    Return ``{"entries", "mismatched", "examples"}``: type, size, permission bits, content
    sha256 (streamed) and link targets are compared; entries whose content could not be read at
    backup time are skipped, device files are only checked when running as root.
    """
    from vya_backupdb.engines.files import read_manifest

    base = os.fsencode(root)
    entries = mismatched = 0
    examples: list[str] = []
    for entry in read_manifest(manifest):
        entries += 1
        if entry.backup is None or (entry.type == "other" and os.geteuid() != 0):
            continue
        path = os.path.join(base, entry.path.lstrip(b"/"))
        problem = _entry_problem(entry, path, base)
        if problem:
            mismatched += 1
            if len(examples) < limit:
                examples.append(f"{os.fsdecode(entry.path)}: {problem}")
    return {"entries": entries, "mismatched": mismatched, "examples": examples}


def _entry_problem(entry: Any, path: bytes, base: bytes) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    expected = {
        "file": stat.S_ISREG,
        "hardlink": stat.S_ISREG,
        "dir": stat.S_ISDIR,
        "symlink": stat.S_ISLNK,
    }.get(entry.type)
    if expected is not None and not expected(st.st_mode):
        return f"not a {entry.type}"
    if entry.type == "symlink":
        target = os.readlink(path)
        return None if target == entry.link else f"links to {target!r}, not {entry.link!r}"
    if entry.type == "hardlink":
        source = os.path.join(base, (entry.link or b"").lstrip(b"/"))
        return (
            None
            if os.path.exists(source) and os.path.samefile(source, path)
            else ("not linked to " + os.fsdecode(entry.link or b""))
        )
    if stat.S_IMODE(st.st_mode) != entry.mode:
        return f"mode {stat.S_IMODE(st.st_mode):o}, expected {entry.mode:o}"
    if entry.type == "file":
        if st.st_size != entry.size:
            return f"size {st.st_size}, expected {entry.size}"
        if entry.sha256 and entry.warning is None:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                return "content differs (sha256)"
    return None
