"""The cleanup use case: apply the retention policy to the catalog — decide, then act.

``plan`` reduces the catalog records to retention candidates and asks the (pure) policy for a
decision with reasons on each; nothing is touched, so a dry run shows exactly what a real run
does. ``apply`` deletes what the plan says, newest first (an incremental before the backup it
depends on) and, for each backup, its metadata record *first*: an interrupted cleanup can leave
an orphaned object behind (``verify`` reports it) but never a record that `list` shows as a
good backup whose data is gone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.config.retention import RetentionConfig
from vya_backupdb.errors import VyaError
from vya_backupdb.jobs.store import remove_backup
from vya_backupdb.policies.retention import (
    Candidate,
    Decision,
    RetentionSummary,
    decide,
    summarize,
)
from vya_backupdb.wiring import make_catalog, make_storage

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.storage.base import Storage

log = logging.getLogger("vya.jobs.cleanup")


@dataclass(frozen=True)
class CleanupEntry:
    """One backup with the policy's decision on it."""

    record: BackupRecord
    decision: Decision

    @property
    def keep(self) -> bool:
        return self.decision.keep

    def as_dict(self) -> dict[str, Any]:
        info = self.record.backup_info
        return {
            "id": self.record.id,
            "kind": self.record.kind,
            "instance": info.instance,
            "database": info.database,
            "strategy": info.strategy,
            "started_at": info.started_at.isoformat(),
            "status": info.status,
            "file": self.record.file_info.name,
            "size_bytes": self.decision.candidate.size_bytes,
            "action": "keep" if self.keep else "delete",
            "reasons": list(self.decision.reasons),
        }


@dataclass
class CleanupPlan:
    now: datetime
    entries: list[CleanupEntry] = field(default_factory=list)
    #: Metadata files that cannot be read: never deleted, reported so someone looks at them.
    damaged: list[str] = field(default_factory=list)

    @property
    def to_delete(self) -> list[CleanupEntry]:
        return [e for e in self.entries if not e.keep]

    @property
    def kept(self) -> list[CleanupEntry]:
        return [e for e in self.entries if e.keep]

    def summary(self) -> RetentionSummary:
        return summarize(e.decision for e in self.entries)

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "backups": [e.as_dict() for e in self.entries],
            "summary": self.summary(),
            "damaged": self.damaged,
        }


@dataclass
class CleanupResult:
    plan: CleanupPlan
    deleted: list[CleanupEntry] = field(default_factory=list)
    freed_bytes: int = 0
    errors: list[tuple[CleanupEntry, VyaError]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "deleted": [e.record.id for e in self.deleted],
            "freed_bytes": self.freed_bytes,
            "errors": [{"id": e.record.id, "error": err.message} for e, err in self.errors],
        }


def candidate_of(record: BackupRecord, size_bytes: int) -> Candidate:
    """Return the retention view of a catalog record."""
    info = record.backup_info
    return Candidate(
        id=record.id,
        instance=info.instance,
        database=info.database,
        started_at=info.started_at,
        status=info.status,
        strategy=info.strategy,
        parent_id=info.parent_id,
        size_bytes=size_bytes,
    )


class CleanupJob:
    """Plans and applies retention. Never prints."""

    def __init__(
        self,
        loaded: LoadedConfig,
        storage: Storage | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        remote_retention: RetentionConfig | None = None,
    ):
        self.loaded = loaded
        self.settings = loaded.settings
        #: A remote's own retention (storage.remotes[].retention) replaces the instances'.
        self.remote_retention = remote_retention
        self.storage = storage or make_storage(self.settings)
        self.catalog = make_catalog(self.settings, self.storage)
        self.clock = clock

    def plan(self, instance: str | None = None, now: datetime | None = None) -> CleanupPlan:
        """Return the decision on every backup of ``instance`` (default: every configured
        instance) under its retention policy. Raise NotFoundError for an unknown instance.

        Backups of instances that are no longer configured are left alone: without the
        instance there is no policy that could justify deleting them.
        """
        moment = now or self.clock()
        instances = (
            [self.settings.instance(instance)] if instance else list(self.settings.instances)
        )
        plan = CleanupPlan(now=moment)
        for inst in instances:
            records = self.catalog.records(inst.id, include_damaged=plan.damaged)
            if not records:
                continue
            candidates = [candidate_of(r, self._size_of(r)) for r in records]
            decisions = decide(self.policy_for(inst), candidates, moment)
            plan.entries.extend(CleanupEntry(r, d) for r, d in zip(records, decisions, strict=True))
        return plan

    def policy_for(self, instance: InstanceConfig) -> RetentionConfig:
        """Return the remote's retention when cleaning a remote that has one, else the
        instance's own, else the global default."""
        return self.remote_retention or instance.retention or self.settings.retention

    def apply(self, plan: CleanupPlan) -> CleanupResult:
        """Delete every backup the plan says to delete; return what was deleted and freed.

        Newest first, so an incremental goes before the backup it depends on; per backup the
        metadata record goes first (see the module docstring). A backup that cannot be deleted
        is reported in ``errors`` and the others proceed.
        """
        result = CleanupResult(plan)
        doomed = sorted(
            plan.to_delete, key=lambda e: (e.record.started_at, e.record.id), reverse=True
        )
        for entry in doomed:
            record = entry.record
            try:
                remove_backup(self.storage, record.id, record.file_info.name)
                manifest = (record.extra.get("manifest") or {}).get("name")
                if manifest:
                    self.storage.delete(str(manifest))
            except VyaError as exc:
                log.error("could not delete backup %s: %s", record.id, exc.message)
                result.errors.append((entry, exc))
                continue
            log.info(
                "deleted backup %s (%s)",
                record.id,
                entry.decision.reason,
                extra={
                    "instance": record.backup_info.instance,
                    "database": record.backup_info.database,
                    "operation": "cleanup",
                    "status": "deleted",
                },
            )
            result.deleted.append(entry)
            result.freed_bytes += entry.decision.candidate.size_bytes
        return result

    def run(self, instance: str | None = None, *, dry_run: bool = False) -> CleanupResult:
        """Plan and (unless ``dry_run``) apply under the instances' run locks, so a backup
        in progress never sees its base deleted; return the result (nothing deleted when
        dry). Raise LockBusy when a run of one of the instances is in progress."""
        if dry_run:
            return CleanupResult(self.plan(instance))
        from vya_backupdb.jobs.locks import instance_locks

        names = [self.settings.instance(instance).id] if instance else []
        names = names or [i.id for i in self.settings.instances]
        with instance_locks(self.settings.storage.base_path, names, command="cleanup"):
            return self.apply(self.plan(instance))

    def _size_of(self, record: BackupRecord) -> int:
        """Return the bytes a backup occupies: data, sidecar, manifest and metadata."""
        size = record.file_info.size
        size += len(layout.sidecar_line(record.file_info.sha256, _basename(record)).encode())
        manifest = record.extra.get("manifest") or {}
        size += int(manifest.get("size") or 0)
        with contextlib.suppress(VyaError):
            size += self.storage.stat(record.id + layout.METADATA_SUFFIX).size
        return size


def _basename(record: BackupRecord) -> str:
    return record.file_info.name.rsplit("/", 1)[-1]
