"""Users and roles: back up, list, restore (onto servers that have built-in accounts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.engines.base import UserSelection
from vya_backupdb.errors import UsageError
from vya_backupdb.jobs.backup import BackupJob, BackupRequest, DatabaseResult, resolve_instances
from vya_backupdb.jobs.restore import RestoreJob
from vya_backupdb.jobs.store import check_checksum, open_backup_stream
from vya_backupdb.wiring import make_engine

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig


def backup_users(loaded: LoadedConfig, instances: tuple[str, ...]) -> list[DatabaseResult]:
    """Back up the users file of each named (or every) server instance."""
    job = BackupJob(loaded)
    results = []
    for instance in resolve_instances(loaded, instances):
        if not instance.is_server:
            if instances:
                raise UsageError(f"instance {instance.id!r} ({instance.type}) has no users")
            continue
        engine = make_engine(loaded, instance)
        results.append(job.backup_users(engine, engine.server_info(), instance))
    return results


def users_record(loaded: LoadedConfig, file: Path) -> BackupRecord:
    """Return the record of a users file; raise UsageError when it is not one."""
    record = RestoreJob(loaded).record_for_file(file)
    if record.kind != "users":
        raise UsageError(
            f"{file} is a {record.kind} backup, not a users file",
            hint="Users files are named users_YYYYMMDD_HHMMSS.sql.*; see: vya-backupdb list",
        )
    return record


def restore_users(
    loaded: LoadedConfig,
    file: Path,
    users: UserSelection,
    exclude: list[str],
    target_instance: str | None,
    confirm: Callable[[str], bool],
) -> list[str]:
    """Apply a users file to the source (or target) instance; return the names applied."""
    job = RestoreJob(loaded)
    record = users_record(loaded, file)
    check_checksum(job.storage, record, keys=job.keys)
    instance = loaded.settings.instance(target_instance or record.backup_info.instance)
    what = "all users" if users == "all" else ", ".join(users)
    if not confirm(f"Apply {what} from {record.file_info.name} to instance {instance.id!r}?"):
        raise UsageError("users restore cancelled: nothing was changed", hint="")
    engine = make_engine(loaded, instance)
    with open_backup_stream(job.storage, record, keys=job.keys) as stream:
        return engine.restore_globals(stream, users, exclude)


__all__ = ["BackupRequest", "backup_users", "restore_users", "users_record"]
