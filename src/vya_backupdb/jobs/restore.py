"""The restore use case: pick a backup, verify it, then restore it in one of three modes.

- ``safe`` (default): take a safety backup of an existing target, restore into a temporary
  database, and swap it into place only when the restore succeeded.
- ``fast``: restore directly into the target (dropped first when it exists).
- ``test``: restore into ``{db}_test_{YYYYMMDD_HHMMSS}``, compare row counts with the record,
  and keep it for inspection.

The checksum is verified before anything touches the target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vya_backupdb.background import Background
from vya_backupdb.catalog.catalog import record_operation, relative_name
from vya_backupdb.catalog.layout import new_run_id
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import Engine, RestoreOptions
from vya_backupdb.errors import NotFoundError, RestoreFailed, UsageError, VyaError
from vya_backupdb.jobs.store import (
    block_opener,
    check_checksum,
    frame_index_of,
    open_backup_stream,
    open_backup_stream_direct,
)
from vya_backupdb.storage.local import LocalStorage
from vya_backupdb.wiring import keys_for, make_catalog, make_engine, make_storage

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.storage.base import Storage

log = logging.getLogger("vya.jobs.restore")

Mode = Literal["safe", "fast", "test"]


@dataclass(frozen=True)
class RestoreRequest:
    instance: str | None
    database: str | None = None
    latest: bool = False
    file: Path | None = None
    at: datetime | None = None
    target: str | None = None
    target_instance: str | None = None
    tables: tuple[str, ...] = ()
    recreate: bool = False
    owner: str | None = None
    mode: Mode = "safe"
    jobs: int | None = None


@dataclass
class RestoreResult:
    record: BackupRecord
    target_instance: str
    target_database: str
    mode: str
    duration_seconds: float
    safety_backup: str | None = None
    row_check: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": self.record.id,
            "file": self.record.file_info.name,
            "target_instance": self.target_instance,
            "target_database": self.target_database,
            "mode": self.mode,
            "duration_seconds": round(self.duration_seconds, 3),
            "safety_backup": self.safety_backup,
            "row_check": self.row_check,
        }


Confirm = Callable[[str], bool]


def parse_at(text: str) -> datetime:
    """Parse "YYYY-MM-DD HH:MM[:SS]" (local time unless an offset is given); raise UsageError."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read the time {text!r}",
            hint='Use "YYYY-MM-DD HH:MM" (local time) or ISO 8601 with an offset.',
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the operator's local time zone
    return moment.astimezone(UTC)


class RestoreJob:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        storage: Storage | None = None,
        progress: Callable[[int], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.loaded = loaded
        self.settings = loaded.settings
        self.storage = storage or make_storage(self.settings)
        #: Where the backup's bytes are read from (a local copy of a remote one, see
        #: _readable_copy); safety backups are written to ``storage``.
        self.source = self.storage
        self.keys = keys_for(self.settings)
        self.catalog = make_catalog(self.settings, self.storage)
        self.progress = progress
        self.clock = clock

    # -- choosing the backup ---------------------------------------------------------------
    def find_record(self, request: RestoreRequest) -> BackupRecord:
        """Return the record the request names; raise NotFoundError / UsageError."""
        if request.file is not None:
            return self.record_for_file(request.file)
        if request.instance is None:
            raise UsageError("name the instance (or give --file PATH)")
        instance = self.settings.instance(request.instance)
        database = request.database
        if database is None:
            if instance.type == "files":
                from vya_backupdb.catalog.layout import FILES_DB

                database = FILES_DB
            else:
                raise UsageError(
                    "--database is required for database instances",
                    hint=f"See what exists with: vya-backupdb list {instance.id}",
                )
        if request.at is not None:
            return self.catalog.at(instance.id, database, request.at)
        if request.latest:
            return self.catalog.latest(instance.id, database, kind=None)
        raise UsageError('say which backup: --latest, --at "YYYY-MM-DD HH:MM" or --file PATH')

    def record_for_file(self, path: Path) -> BackupRecord:
        root = self.settings.storage.base_path
        name = relative_name(root, path) if path.is_absolute() or path.exists() else None
        if name is None:
            candidate = path.as_posix()
            if self.storage.exists(candidate):
                name = candidate
        if name is None:
            raise NotFoundError(
                f"{path} is not a backup inside the storage {root}",
                hint="Give a file listed by: vya-backupdb list   (or copy it under base_path)",
            )
        if not self.storage.exists(name):
            raise NotFoundError(f"backup file not found: {path}")
        return self.catalog.by_data_name(name)

    # -- running ---------------------------------------------------------------------------
    def run(self, request: RestoreRequest, confirm: Confirm) -> RestoreResult:
        """Restore as requested; every attempt (success or failure) lands in the run log, so
        metrics and audits see restores too."""
        started_at = self.clock()
        t0 = time.monotonic()
        entry: dict[str, Any] = {
            "instance": request.target_instance or request.instance,
            "database": request.target or request.database,
            "status": "failed",
            "error_type": None,
        }
        try:
            result = self._run(request, confirm)
        except VyaError as exc:
            entry["error_type"] = type(exc).__name__
            entry["error"] = exc.message
            raise
        else:
            entry.update(
                instance=result.target_instance,
                database=result.target_database,
                status="success",
                backup=result.record.id,
                mode=result.mode,
            )
            return result
        finally:
            entry["duration_seconds"] = round(time.monotonic() - t0, 3)
            if not (entry["status"] == "failed" and entry["error_type"] == "UsageError"):
                record_operation(
                    self.catalog,
                    "restore",
                    [entry],
                    started_at=started_at,
                    finished_at=self.clock(),
                    run_id=new_run_id(started_at),
                )

    def _run(self, request: RestoreRequest, confirm: Confirm) -> RestoreResult:
        record = self.find_record(request)
        if record.kind == "files":
            raise UsageError("use the files restore for files backups")
        if record.kind == "users":
            raise UsageError(
                f"{record.file_info.name} is a users file",
                hint="Restore users with: vya-backupdb users restore --file PATH --all",
            )
        if not record.ok:
            raise RestoreFailed(f"backup {record.id} is recorded as failed: it cannot be restored")
        with self._readable_copy(record) as source:
            self.source = source
            return self._run_record(record, request, confirm)

    @contextlib.contextmanager
    def _readable_copy(self, record: BackupRecord) -> Iterator[Storage]:
        """Yield the storage to read the backup from: the store itself when it is local;
        for a remote, a temporary local copy of the stored (compressed, encrypted) object,
        downloaded once — instead of once for the checksum, once for the restore and once
        more per parallel worker. Needs free space for the stored size in $TMPDIR."""
        name = record.file_info.name
        if self.storage.local_path(name) is not None:
            yield self.storage
            return
        from vya_backupdb.catalog.layout import SHA256_SUFFIX
        from vya_backupdb.jobs.remote import copy_object

        with tempfile.TemporaryDirectory(prefix="vya-restore-") as tmp:
            local = LocalStorage(Path(tmp))
            log.info(
                "downloading %s (%d bytes) from %s",
                name,
                record.file_info.size,
                self.storage.description,
                extra={"operation": "restore", "instance": record.backup_info.instance},
            )
            copy_object(self.storage, local, name)
            if self.storage.exists(name + SHA256_SUFFIX):
                copy_object(self.storage, local, name + SHA256_SUFFIX)
            yield local

    def _run_record(
        self, record: BackupRecord, request: RestoreRequest, confirm: Confirm
    ) -> RestoreResult:
        # Integrity first: nothing touches the target before the checksum matches. The file
        # is read on a thread while the engine and its driver load (neither holds the GIL
        # for long); a damaged backup is still the error reported first.
        checksum = Background(lambda: check_checksum(self.source, record, keys=self.keys))
        try:
            engine, target_inst, options = self._engine_for(record, request)
        except BaseException:
            checksum.result()
            raise
        checksum.result()
        database = record.backup_info.database
        started = time.monotonic()
        if request.mode == "test":
            target_db = f"{database}_test_{self.clock():%Y%m%d_%H%M%S}"
            self._restore_into(engine, record, target_db, options)
            counts = self._row_check(engine, record, target_db)
            _refuse_wrong_counts(
                counts, record, f"{target_db!r}, kept for inspection, holds", "Inspect it, then "
            )
            return RestoreResult(
                record,
                target_inst.id,
                target_db,
                "test",
                time.monotonic() - started,
                row_check=counts,
            )
        target_db = request.target or database
        exists = engine.database_exists(target_db)
        if request.tables:
            # Selective restore adds the chosen tables to the target (created when missing);
            # swapping would replace the whole database with just those tables.
            if exists and not confirm(
                f"Restore tables {', '.join(request.tables)} into the existing database "
                f"{target_db!r} on {target_inst.id!r}?"
            ):
                raise UsageError("restore cancelled: the target was left untouched", hint="")
            options = dataclasses.replace(options, target_missing=not exists)
            self._restore_into(engine, record, target_db, options)
            return RestoreResult(
                record, target_inst.id, target_db, "tables", time.monotonic() - started
            )
        if exists and not confirm(
            f"Database {target_db!r} exists on instance {target_inst.id!r}: replace it with "
            f"the backup of {record.started_at:%Y-%m-%d %H:%M} UTC?"
        ):
            raise UsageError("restore cancelled: the target was left untouched", hint="")
        safety = None
        if request.mode == "fast":
            if exists:
                engine.drop_database(target_db)
            # Missing now: the engine need not ask the server again before creating it.
            options = dataclasses.replace(options, target_missing=True)
            self._restore_into(engine, record, target_db, options)
            counts = self._row_check(engine, record, target_db)
            _refuse_wrong_counts(
                counts,
                record,
                f"{target_db!r} (fast mode: the previous database is gone) holds",
                "",
            )
        else:
            if exists:
                safety = self._safety_backup(engine, target_inst, target_db)
            counts = self._safe_swap(engine, record, target_db, options, exists)
        return RestoreResult(
            record,
            target_inst.id,
            target_db,
            request.mode,
            time.monotonic() - started,
            safety_backup=safety,
            row_check=counts,
        )

    def _engine_for(
        self, record: BackupRecord, request: RestoreRequest
    ) -> tuple[Engine, InstanceConfig, RestoreOptions]:
        source_instance = self.settings.instance(record.backup_info.instance)
        target_inst = (
            self.settings.instance(request.target_instance)
            if request.target_instance
            else source_instance
        )
        if target_inst.type != source_instance.type and not (
            {target_inst.type, source_instance.type} <= {"mysql", "mariadb"}
        ):
            raise UsageError(
                f"cannot restore a {source_instance.type} backup into "
                f"{target_inst.type} instance {target_inst.id!r}"
            )
        engine = make_engine(self.loaded, target_inst)
        return engine, target_inst, self._options(record, request, target_inst)

    def _options(
        self, record: BackupRecord, request: RestoreRequest, target: InstanceConfig
    ) -> RestoreOptions:
        extra = record.extra
        index = frame_index_of(self.source, record)
        return RestoreOptions(
            tables=request.tables,
            owner=request.owner,
            jobs=request.jobs or target.jobs,
            format=record.backup_info.dump_format or "custom",
            database_properties=dict(extra.get("database_properties", {})),
            source_version_num=extra.get("server_version_num"),
            # Parallel workers read their own streams of the backup (no spool to disk).
            reopen=lambda: open_backup_stream_direct(self.source, record, self.keys),
            table_weights=dict(record.stats.get("tables", {})),
            open_blocks=block_opener(self.source, record, self.progress),
            frames=tuple(index.frames) if index is not None else (),
            sections=dict(extra.get("sql_sections") or {}),
            expected_rows=dict(record.stats.get("tables", {})),
        )

    def _restore_into(
        self, engine: Engine, record: BackupRecord, db: str, options: RestoreOptions
    ) -> None:
        log.info(
            "restoring %s into %s",
            record.id,
            db,
            extra={"instance": record.backup_info.instance, "database": db, "operation": "restore"},
        )
        section_plan = getattr(engine, "section_plan", None)
        plan = section_plan(options) if section_plan is not None else None
        if plan is not None:
            # Several clients, each reading the header plus its tables' frames of the file.
            engine.restore_sections(db, plan, options)  # type: ignore[attr-defined]
            self._progress_done(record)
            return
        if _is_mysql(engine) and options.format != "parallel":
            # One client reads the whole script: the checksum is verified, so a local file's
            # decompressor can write straight into it, as `zstd -dc FILE | mariadb DB` would.
            opened = open_backup_stream_direct(
                self.source, record, self.keys, progress=self.progress, whole=True
            )
        else:
            # With frames, a parallel restore reads only the archive's head from this stream.
            opened = open_backup_stream(
                self.source,
                record,
                self.progress,
                keys=self.keys,
                head_only=options.open_blocks is not None,
            )
        with opened as stream:
            engine.restore(db, stream, options)
        self._progress_done(record)

    def _progress_done(self, record: BackupRecord) -> None:
        """Report the whole file restored: parallel workers read only the frames they need
        (e.g. not those of the archive's table of contents), so their sum may stop short."""
        if self.progress is not None:
            self.progress(record.file_info.size)

    def _safe_swap(
        self,
        engine: Engine,
        record: BackupRecord,
        target_db: str,
        options: RestoreOptions,
        exists: bool,
    ) -> dict[str, Any]:
        """Restore into a temporary database and swap it in; return the row check (taken on
        the temporary database, before the swap: the engine spares the tables it counted or
        saw loaded during its restore there, which a check after the rename could not)."""
        if engine.kind == "sqlite":
            # SQLite restores write a temp file and rename it into place: already atomic.
            self._restore_into(engine, record, target_db, options)
            return self._row_check(engine, record, target_db)
        stamp = f"{self.clock():%Y%m%d%H%M%S}"
        temp_db = _short(f"{target_db}__vya_tmp_{stamp}")
        old_db = _short(f"{target_db}__vya_old_{stamp}")
        try:
            self._restore_into(engine, record, temp_db, options)
            counts = self._row_check(engine, record, temp_db)
            # Not swapped in: the target is left as it was.
            _refuse_wrong_counts(
                counts,
                record,
                f"the restored copy (dropped; {target_db!r} was left untouched) held",
                "",
            )
        except BaseException:
            self._drop_quietly(engine, temp_db)
            raise
        if exists:
            engine.rename_database(target_db, old_db)
            try:
                engine.rename_database(temp_db, target_db)
            except VyaError:
                engine.rename_database(old_db, target_db)  # put the original back
                self._drop_quietly(engine, temp_db)
                raise
            self._drop_quietly(engine, old_db)
        else:
            engine.rename_database(temp_db, target_db)
        return counts

    @staticmethod
    def _drop_quietly(engine: Engine, db: str) -> None:
        try:
            if engine.database_exists(db):
                engine.drop_database(db)
        except VyaError as exc:
            log.warning("could not drop temporary database %s: %s", db, exc.message)

    def _safety_backup(self, engine: Engine, instance: InstanceConfig, db: str) -> str:
        from vya_backupdb.jobs.backup import BackupJob

        job = BackupJob(self.loaded, storage=self.storage, clock=self.clock)
        result = job.backup_database(engine, engine.server_info(), instance, db, strategy="safety")
        if result.status != "success" or result.record is None:
            reason = result.error.message if result.error else "unknown error"
            raise RestoreFailed(
                f"the safety backup of the existing database {db!r} failed: {reason}",
                hint="Nothing was changed. Fix the cause, or use --mode fast to skip the "
                "safety backup (the existing database is then lost).",
            )
        return result.record.file_info.name

    @staticmethod
    def _row_check(engine: Engine, record: BackupRecord, db: str) -> dict[str, Any]:
        expected: dict[str, int] = dict(record.stats.get("tables", {}))
        # The same exact counts; engines spare what they can: MariaDB counts each table during
        # the restore (while later ones load), PostgreSQL takes the tables its statistics show
        # loaded whole into the database it created; the rest is counted now.
        restored = getattr(engine, "restored_table_stats", None)
        actual = restored(db) if restored is not None else engine.table_stats(db)
        mismatched = {
            t: {"expected": n, "actual": actual.get(t)}
            for t, n in expected.items()
            if actual.get(t) != n
        }
        exact = bool(record.stats.get("counts_exact"))
        return {
            "tables": len(expected),
            "mismatched": mismatched,
            "ok": not mismatched,
            "exact": exact,
        }


def _refuse_wrong_counts(
    counts: dict[str, Any], record: BackupRecord, holding: str, advice: str
) -> None:
    """Fail the restore when its tables hold other row counts than the dump's own counts (a
    record whose counts were taken beside the dump only warns: rows written meanwhile).

    ``holding`` says where the rows are now (``… holds``), ``advice`` how to go on."""
    if counts.get("ok") or not counts.get("exact"):
        return
    mismatched: dict[str, dict[str, Any]] = counts["mismatched"]
    shown = ", ".join(
        f"{table} (expected {c['expected']}, got {c['actual']})"
        for table, c in list(mismatched.items())[:5]
    )
    more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
    raise RestoreFailed(
        f"{holding} other row counts than backup {record.id} recorded from the dump itself, "
        f"in {len(mismatched)} table(s): {shown}{more}",
        hint=f"{advice}compare those tables with the source, or restore an earlier backup "
        f"(see: vya-backupdb list {record.backup_info.instance} --database "
        f"'{record.backup_info.database}'). Likely causes: triggers or rules of the target "
        "firing during the load, row-level security hiding rows from the restoring user, a "
        "restore tool older than the dump's.",
    )


def _is_mysql(engine: Engine) -> bool:
    return engine.kind in ("mysql", "mariadb")


def _short(name: str, limit: int = 63) -> str:
    """Keep generated database names within PostgreSQL's 63-byte identifier limit."""
    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    return encoded[-limit:].decode("utf-8", errors="ignore")


def list_restore_points(
    loaded: LoadedConfig, instance: str | None, database: str | None
) -> list[BackupRecord]:
    catalog = make_catalog(loaded.settings)
    if instance:
        loaded.settings.instance(instance)
    records = [r for r in catalog.records(instance, database) if r.ok and r.kind == "database"]
    if not records and database:
        raise NotFoundError(f"no backups of database {database!r}")
    return records
