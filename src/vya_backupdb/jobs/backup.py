"""The backup use case: every selected database of every selected instance, one object each.

Per database: table stats → dump → compress → sha256 → atomic store → sidecar → record.
One failure never stops the others; each outcome is a :class:`DatabaseResult`, and the run
(successes and failures) is written to the run log in storage.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vya_backupdb import __version__
from vya_backupdb.background import Background
from vya_backupdb.catalog import layout
from vya_backupdb.catalog.records import BackupInfo, BackupRecord, FileInfo
from vya_backupdb.config.models import SYSTEM_DATABASES, InstanceConfig
from vya_backupdb.config.selection import select_databases
from vya_backupdb.engines.base import DumpStream, Engine, ServerInfo
from vya_backupdb.errors import BackupFailed, NotFoundError, StorageError, UsageError, VyaError
from vya_backupdb.jobs.store import (
    StoredObject,
    remove_backup,
    unused_names,
    write_backup_object,
)
from vya_backupdb.wiring import (
    compression_for,
    encryption_for,
    make_catalog,
    make_engine,
    make_storage,
    prefetch_dump_tool,
)

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.engines.pg_head import HeadStart
    from vya_backupdb.pipeline.codecs import Codec
    from vya_backupdb.pipeline.encryption import EncryptionPlan
    from vya_backupdb.storage.base import Storage

log = logging.getLogger("vya.jobs.backup")

ProgressFactory = Callable[[str, str, int | None], Callable[[int], None] | None]


@dataclass(frozen=True)
class BackupRequest:
    instances: tuple[str, ...] = ()  # empty: all configured instances
    databases: tuple[str, ...] = ()  # empty: every selected database of each instance
    dry_run: bool = False
    users: bool | None = None  # None: per instance config
    strategy: str | None = None  # files instances: override the configured strategy
    jobs: int | None = None  # parallel workers; None: parallel.max_workers of the config
    verify: bool | None = None  # None: verification.auto_verify of the config


@dataclass
class DatabaseResult:
    instance: str
    database: str
    status: str  # success | failed | planned
    kind: str = "database"
    record: BackupRecord | None = None
    error: VyaError | None = None
    size_bytes: int = 0
    raw_bytes: int = 0
    estimated_bytes: int | None = None
    duration_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    #: Remotes the auto-upload could not copy this backup to (the backup itself exists).
    offsite_failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "database": self.database,
            "kind": self.kind,
            "status": self.status,
            "file": self.record.file_info.name if self.record else None,
            "size_bytes": self.size_bytes,
            "raw_bytes": self.raw_bytes,
            "estimated_bytes": self.estimated_bytes,
            "duration_seconds": round(self.duration_seconds, 3),
            "error": self.error.message if self.error else None,
            "error_type": type(self.error).__name__ if self.error else None,
            "stderr_tail": self.error.details if self.error else None,
            "warnings": self.warnings,
            "offsite_failed": self.offsite_failed,
            "verification": (
                self.record.verification.outcome
                if self.record is not None and self.record.verification is not None
                else None
            ),
        }


@dataclass
class RunResult:
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    results: list[DatabaseResult] = field(default_factory=list)
    run_log: str | None = None
    interrupted: bool = False

    @property
    def failed(self) -> list[DatabaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def offsite_failed(self) -> list[str]:
        """Remotes that missed at least one backup of this run (auto_upload)."""
        return sorted({name for r in self.results for name in r.offsite_failed})

    @property
    def exit_code(self) -> int:
        """0, or for failed backups their common exit code (6 when they differ), or 9
        (storage) when every backup succeeded but an off-site copy failed, or 130."""
        if self.failed:
            codes = {r.error.exit_code for r in self.failed if r.error is not None}
            return codes.pop() if len(codes) == 1 else BackupFailed.exit_code
        if self.interrupted:
            return 130
        return StorageError.exit_code if self.offsite_failed else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "status": "interrupted" if self.interrupted else "success" if self.ok else "failed",
            "results": [r.as_dict() for r in self.results],
        }


def unexpected(exc: Exception) -> BackupFailed:
    """Wrap a driver or OS error that escaped an engine into a BackupFailed (redacted)."""
    from vya_backupdb.secrets.redaction import redact

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return BackupFailed(
        f"{type(exc).__name__}: {redact(first)}",
        hint="Check the login role's privileges on every table (pg: pg_read_all_data; "
        "MySQL: SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES), then run: "
        "vya-backupdb connection test",
    )


def resolve_instances(loaded: LoadedConfig, names: tuple[str, ...]) -> list[InstanceConfig]:
    """Return the named instances (all when none named); raise NotFoundError."""
    settings = loaded.settings
    if not names:
        if not settings.instances:
            raise UsageError(
                "no instances are configured",
                hint="Add one under 'instances:' (see: vya-backupdb config init).",
            )
        return list(settings.instances)
    return [settings.instance(name) for name in names]


def select_instance_databases(
    engine: Engine, instance: InstanceConfig, requested: tuple[str, ...]
) -> list[tuple[str, int | None]]:
    """Return (name, estimated size) of the databases to back up; raise NotFoundError when a
    requested database does not exist on the server."""
    # Named databases: only they are looked up and sized (the whole list only for the hint).
    available = {d.name: d.size_bytes for d in engine.list_databases(requested or None)}
    if requested:
        missing = [db for db in requested if db not in available]
        if missing:
            every = [d.name for d in engine.list_databases()]
            shown = sorted(n for n in every if n not in SYSTEM_DATABASES)
            raise NotFoundError(
                f"database {missing[0]!r} does not exist on instance {instance.id!r}",
                hint=f"Databases there: {', '.join(shown) or '(none)'}",
            )
        return [(db, available[db]) for db in requested]
    return [(db, available[db]) for db in select_databases(sorted(available), instance)]


class BackupJob:
    """Runs one backup request. The core never prints: progress goes through callbacks."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        storage: Storage | None = None,
        progress: ProgressFactory | None = None,
        upload_progress: Callable[[BackupRecord], Callable[[int], None] | None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        head_starts: Sequence[HeadStart] = (),
    ):
        """``head_starts``: dumps the caller started already (engines/pg_head.py); the run
        adopts those of its databases and closes them all, used or not."""
        self.loaded = loaded
        self.settings = loaded.settings
        self.storage = storage or make_storage(self.settings)
        self.catalog = make_catalog(self.settings, self.storage)
        self.progress = progress
        #: Progress of the automatic copies to the remotes (auto_upload), per backup.
        self.upload_progress = upload_progress
        self.clock = clock
        #: Dumps started before their engine (closed at the end of the run, used or not).
        self._head_starts: list[HeadStart] = list(head_starts)

    def run(self, request: BackupRequest) -> RunResult:
        run = RunResult(run_id=layout.new_run_id(self.clock()), started_at=self.clock())
        try:
            instances = resolve_instances(self.loaded, request.instances)
            workers = request.jobs or self.settings.parallel.max_workers
            try:
                results = self._run_tasks(instances, request, max(1, workers))
            finally:
                for head in self._head_starts:
                    head.close()  # a dump started early that never ran is stopped here
                self._head_starts.clear()
            self._verify_results(results, request)
            run.results.extend(results)
            storage = self.settings.storage
            if not request.dry_run and storage.auto_upload and storage.remotes:
                from vya_backupdb.jobs.remote import auto_upload

                auto_upload(self.loaded, self.storage, run, progress=self.upload_progress)
        except KeyboardInterrupt:
            run.finished_at = self.clock()
            run.interrupted = True
            if not request.dry_run:
                self._write_run_log(run)
            raise
        run.finished_at = self.clock()
        if not request.dry_run:
            run.run_log = self._write_run_log(run)
            if self.settings.cleanup.after_backup:
                self._cleanup(run)
        return run

    def _run_tasks(
        self, instances: list[InstanceConfig], request: BackupRequest, workers: int
    ) -> list[DatabaseResult]:
        """Plan every instance, then run its databases (and users) on ``workers`` threads.

        Results keep the planned order whatever order the work finishes in; one failure
        never stops the others.
        """
        slots: list[DatabaseResult | Callable[[], DatabaseResult]] = []
        for instance in instances:
            slots.extend(self.plan_instance(instance, request))
        tasks = [(i, t) for i, t in enumerate(slots) if callable(t)]
        done: dict[int, DatabaseResult] = {}
        if workers == 1 or len(tasks) <= 1:
            for index, task in tasks:
                done[index] = task()
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vya-backup") as pool:
                futures = {pool.submit(task): index for index, task in tasks}
                try:
                    for future in as_completed(futures):
                        done[futures[future]] = future.result()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        return [done[i] if callable(slot) else slot for i, slot in enumerate(slots)]

    def _verify_results(self, results: list[DatabaseResult], request: BackupRequest) -> None:
        """Verify each new backup when asked (--verify or verification.auto_verify); a backup
        that fails its verification becomes a failed result."""
        wanted = (
            self.settings.verification.auto_verify if request.verify is None else request.verify
        )
        if not wanted or request.dry_run:
            return
        from vya_backupdb.jobs.verify import VerifyJob

        verifier = VerifyJob(self.loaded, self.storage, clock=self.clock)
        for result in results:
            if result.status != "success" or result.record is None:
                continue
            outcome = verifier.verify_record(result.record)
            result.record = outcome.record or result.record
            if outcome.outcome != "ok" and outcome.error is not None:
                result.status = "failed"
                result.error = outcome.error

    def _cleanup(self, run: RunResult) -> None:
        """Apply retention to the instances just backed up; never fail the backup run."""
        from vya_backupdb.jobs.cleanup import CleanupJob

        job = CleanupJob(self.loaded, self.storage, clock=self.clock)
        for instance in sorted({r.instance for r in run.results if r.status == "success"}):
            try:
                done = job.apply(job.plan(instance))
            except VyaError as exc:
                log.warning("cleanup after backup of %s failed: %s", instance, exc.message)
                continue
            log.info(
                "cleanup of %s: %d backup(s) deleted, %d bytes freed",
                instance,
                len(done.deleted),
                done.freed_bytes,
                extra={"instance": instance, "operation": "cleanup"},
            )
            for _entry, error in done.errors:
                log.warning("cleanup of %s: %s", instance, error.message)

    def _write_run_log(self, run: RunResult) -> str | None:
        try:
            return self.catalog.write_run(run.started_at, run.run_id, run.as_dict())
        except VyaError as exc:  # a run log that cannot be written must not hide results
            log.warning("could not write the run log: %s", exc.message)
            return None

    # -- one instance ----------------------------------------------------------------------
    def plan_instance(
        self, instance: InstanceConfig, request: BackupRequest
    ) -> list[DatabaseResult | Callable[[], DatabaseResult]]:
        """Return, per database of the instance, a finished result (planned / failed) or the
        work that produces it."""
        if instance.type == "files":
            from vya_backupdb.jobs.files import backup_files_instance

            return [lambda: backup_files_instance(self, instance, request)]
        head: HeadStart | None = None
        try:
            if not request.dry_run:
                # A named PostgreSQL database's pg_dump starts now (unless the caller started
                # it), and runs while the driver is imported and the database listed.
                head = self._head_start(instance, request.databases)
                prefetch_dump_tool(instance)  # its --version runs while the engine is imported
            engine = make_engine(self.loaded, instance, head)
            # Listing first: PostgreSQL's engine then knows the server's version from that
            # connection, without one more.
            databases = select_instance_databases(engine, instance, request.databases)
            server = engine.server_info()
        except Exception as exc:
            if not isinstance(exc, VyaError):
                exc = unexpected(exc)
            log.error(
                "instance %s: %s",
                instance.id,
                exc.message,
                extra={"instance": instance.id, "operation": "backup", "status": "failed"},
            )
            return [DatabaseResult(instance.id, "*", "failed", error=exc)]
        users = self._users_wanted(instance, request) and instance.is_server
        if request.dry_run:
            planned: list[DatabaseResult | Callable[[], DatabaseResult]] = [
                DatabaseResult(instance.id, db, "planned", estimated_bytes=size)
                for db, size in databases
            ]
            if users:
                planned.append(DatabaseResult(instance.id, "(users)", "planned", kind="users"))
            return planned
        work: list[DatabaseResult | Callable[[], DatabaseResult]] = [
            functools.partial(self.backup_database, engine, server, instance, db, size)
            for db, size in databases
        ]
        if users:
            work.append(functools.partial(self.backup_users, engine, server, instance))
        return work

    def _head_start(self, instance: InstanceConfig, databases: tuple[str, ...]) -> HeadStart | None:
        """Return the head start given for ``instance``, or start one (engines/pg_head.py)."""
        from vya_backupdb.engines import pg_head

        given = [head for head in self._head_starts if head.instance_id == instance.id]
        if given:
            return given[0]
        started = pg_head.start_named(self.loaded, instance, databases)
        if started is not None:
            self._head_starts.append(started)
        return started

    def backup_instance(
        self, instance: InstanceConfig, request: BackupRequest
    ) -> list[DatabaseResult]:
        """Back up one instance, one database after another."""
        return [
            s if isinstance(s, DatabaseResult) else s()
            for s in self.plan_instance(instance, request)
        ]

    def pipeline_for(
        self, instance: InstanceConfig
    ) -> tuple[Codec, int, int, EncryptionPlan | None, str]:
        """Return (codec, level, threads, encryption, file suffix) for the instance's objects."""
        codec, level, threads = compression_for(self.settings, instance)
        encryption = encryption_for(self.settings, instance)
        return (
            codec,
            level,
            threads,
            encryption,
            codec.suffix + (encryption.suffix if encryption else ""),
        )

    @staticmethod
    def _users_wanted(instance: InstanceConfig, request: BackupRequest) -> bool:
        return instance.users if request.users is None else request.users

    # -- one database ----------------------------------------------------------------------
    def backup_database(
        self,
        engine: Engine,
        server: ServerInfo,
        instance: InstanceConfig,
        database: str,
        estimate: int | None = None,
        strategy: str = "full",
    ) -> DatabaseResult:
        started = self.clock()
        t0 = time.monotonic()
        context = {"instance": instance.id, "database": database, "dbms": instance.type}
        log.info(
            "backing up %s/%s", instance.id, database, extra={**context, "operation": "backup"}
        )
        # The exact row counts and the database's properties are read on their own connections
        # while the dump starts and streams (they used to delay its start).
        # (Engines that count with the dump — MariaDB in its stream, PostgreSQL in its exported
        # snapshot — give the dump's own counts.)
        in_stream = getattr(engine, "counts_rows_in_dump", None)
        counting = (
            None
            if in_stream is not None and in_stream()
            else Background(lambda: engine.table_stats(database), "row-counts")
        )
        describing = Background(lambda: engine.database_properties(database), "db-properties")
        try:
            captured: dict[str, DumpStream] = {}

            def names_for(stream: DumpStream) -> layout.BackupNames:
                captured["stream"] = stream
                # Properties that cannot be read stop the dump before any byte is stored.
                describing.result()
                set_timeout = getattr(stream.reader, "set_timeout", None)
                if instance.timeout_seconds and set_timeout is not None:
                    set_timeout(instance.timeout_seconds)
                return unused_names(
                    self.storage,
                    lambda moment: layout.database_backup_names(
                        self.settings.hostname,
                        instance.id,
                        database,
                        moment,
                        strategy,
                        stream.extension,
                        suffix,
                    ),
                    started,
                )

            try:
                codec, level, threads, encryption, suffix = self.pipeline_for(instance)
                names, stored = write_backup_object(
                    self.storage,
                    names_for,
                    lambda: engine.dump(database),
                    codec,
                    level,
                    threads,
                    progress=self._progress(instance.id, database, estimate),
                    encryption=encryption,
                )
            except Exception:
                describing.result()  # its error first: the properties used to be read first
                raise
            exact = False
            try:
                properties = describing.result()
                if counting is not None:
                    stats = counting.result()
                else:
                    counted = captured["stream"].row_counts
                    exact = counted is not None and captured["stream"].counts_exact
                    stats = counted if counted is not None else engine.table_stats(database)
            except BaseException:
                remove_backup(self.storage, names.stem, names.data)
                raise
        except VyaError as exc:
            return self._failed(instance, database, started, t0, exc, context)
        except Exception as exc:  # a driver error (e.g. permission denied) must not stop others
            return self._failed(instance, database, started, t0, unexpected(exc), context)
        except KeyboardInterrupt:
            log.error("backup of %s/%s interrupted", instance.id, database, extra=context)
            raise
        dump = captured["stream"]
        record = self._record(
            kind="database",
            instance=instance,
            database=database,
            server=server,
            names=names,
            stored=stored,
            started=started,
            duration=time.monotonic() - t0,
            dump=dump,
            codec_name=codec.name,
            level=level,
            strategy=strategy,
            stats={
                "tables": stats,
                "table_count": len(stats),
                "rows": sum(stats.values()),
                # The dump's own counts: a restore holding others is refused (jobs/restore.py).
                "counts_exact": exact,
            },
            extra={
                "database_properties": properties,
                **dump.info,
                **({"frame_index": stored.frames.as_record()} if stored.frames else {}),
            },
        )
        return self._commit_record(record, stored, instance, database, t0, context)

    def _commit_record(
        self,
        record: BackupRecord,
        stored: StoredObject,
        instance: InstanceConfig,
        database: str,
        t0: float,
        context: dict[str, str],
    ) -> DatabaseResult:
        try:
            self.catalog.save(record)
        except BaseException:
            self.storage.delete(stored.name)
            self.storage.delete(stored.name + layout.SHA256_SUFFIX)
            raise
        duration = time.monotonic() - t0
        ratio = stored.raw_bytes / stored.stored_bytes if stored.stored_bytes else 0.0
        log.info(
            "backed up %s/%s: %d bytes (%.1fx) in %.1fs",
            instance.id,
            database,
            stored.stored_bytes,
            ratio,
            duration,
            extra={
                **context,
                "operation": "backup",
                "status": "success",
                "duration_seconds": round(duration, 3),
                "size_bytes": stored.stored_bytes,
                "compression_ratio": round(ratio, 2),
                "file": stored.name,
            },
        )
        return DatabaseResult(
            instance.id,
            database,
            "success",
            kind=record.kind,
            record=record,
            size_bytes=stored.stored_bytes,
            raw_bytes=stored.raw_bytes,
            duration_seconds=duration,
        )

    def _failed(
        self,
        instance: InstanceConfig,
        database: str,
        started: datetime,
        t0: float,
        exc: VyaError,
        context: dict[str, str],
    ) -> DatabaseResult:
        duration = time.monotonic() - t0
        log.error(
            "backup of %s/%s failed: %s",
            instance.id,
            database,
            exc.message,
            extra={
                **context,
                "operation": "backup",
                "status": "failed",
                "duration_seconds": round(duration, 3),
                "error_type": type(exc).__name__,
            },
        )
        return DatabaseResult(instance.id, database, "failed", error=exc, duration_seconds=duration)

    def backup_users(
        self, engine: Engine, server: ServerInfo, instance: InstanceConfig
    ) -> DatabaseResult:
        started = self.clock()
        t0 = time.monotonic()
        context = {"instance": instance.id, "database": layout.USERS_DB, "dbms": instance.type}
        try:
            users = engine.list_users()
            codec, level, threads, encryption, suffix = self.pipeline_for(instance)
            captured: dict[str, DumpStream] = {}

            def names_for(stream: DumpStream) -> layout.BackupNames:
                captured["stream"] = stream
                return unused_names(
                    self.storage,
                    lambda moment: layout.users_backup_names(
                        self.settings.hostname, instance.id, moment, suffix
                    ),
                    started,
                )

            names, stored = write_backup_object(
                self.storage,
                names_for,
                engine.dump_globals,
                codec,
                level,
                threads,
                encryption=encryption,
            )
        except VyaError as exc:
            return self._failed(instance, layout.USERS_DB, started, t0, exc, context)
        except Exception as exc:
            return self._failed(instance, layout.USERS_DB, started, t0, unexpected(exc), context)
        record = self._record(
            kind="users",
            instance=instance,
            database=layout.USERS_DB,
            server=server,
            names=names,
            stored=stored,
            started=started,
            duration=time.monotonic() - t0,
            dump=captured["stream"],
            codec_name=codec.name,
            level=level,
            strategy="full",
            stats={"users": [u.name for u in users], "user_count": len(users)},
            extra={"builtin_users": [u.name for u in users if u.builtin]},
        )
        result = self._commit_record(record, stored, instance, layout.USERS_DB, t0, context)
        result.kind = "users"
        return result

    def _record(
        self,
        *,
        kind: str,
        instance: InstanceConfig,
        database: str,
        server: ServerInfo,
        names: layout.BackupNames,
        stored: StoredObject,
        started: datetime,
        duration: float,
        dump: DumpStream,
        codec_name: str,
        level: int,
        strategy: str,
        stats: dict[str, Any],
        extra: dict[str, Any],
    ) -> BackupRecord:
        return BackupRecord(
            id=names.stem,
            kind=kind,
            backup_info=BackupInfo(
                instance=instance.id,
                instance_type=instance.type,
                database=database,
                hostname=self.settings.hostname,
                server_product=server.product,
                server_version=server.version,
                tool=dump.tool,
                tool_version=dump.tool_version,
                dump_command=dump.command,
                dump_format=dump.format,
                strategy=strategy,
                started_at=started,
                finished_at=started.fromtimestamp(started.timestamp() + duration, UTC),
                duration_seconds=round(duration, 3),
                status="success",
                vya_version=__version__,
            ),
            file_info=FileInfo(
                name=stored.name,
                size=stored.stored_bytes,
                raw_size=stored.raw_bytes,
                sha256=stored.sha256,
                extension=dump.extension,
                compression=codec_name,
                compression_level=level if codec_name != "none" else None,
                encryption="age" if stored.encryption else None,
            ),
            stats=stats,
            extra={
                **extra,
                "server_version_num": server.version_num,
                **({"encryption": stored.encryption} if stored.encryption else {}),
            },
        )

    def _progress(
        self, instance: str, database: str, estimate: int | None
    ) -> Callable[[int], None] | None:
        return self.progress(instance, database, estimate) if self.progress else None
