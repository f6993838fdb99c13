"""Catalog queries over the metadata sidecars kept in storage (the source of truth)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.errors import IntegrityError, NotFoundError, VyaError
from vya_backupdb.storage.base import Storage

log = logging.getLogger(__name__)


def read_text(storage: Storage, name: str, limit: int = 16 * 1024 * 1024) -> str:
    """Return a small object's text (metadata, sidecars); refuse absurdly large ones."""
    with storage.get(name) as reader:
        data = reader.read(limit + 1)
        if len(data) > limit:
            raise IntegrityError(f"{name} is larger than {limit} bytes: not a metadata file")
        while len(data) <= limit and (more := reader.read(limit + 1 - len(data))):
            data += more
    return data.decode("utf-8")


def write_text(storage: Storage, name: str, text: str) -> None:
    with storage.put(name) as writer:
        writer.write(text.encode("utf-8"))


class Catalog:
    """Read and write backup records of one storage."""

    def __init__(self, storage: Storage, hostname: str):
        self.storage = storage
        self.hostname = hostname

    # -- writing -------------------------------------------------------------------------
    def save(self, record: BackupRecord) -> None:
        """Write the record's metadata file (atomically, after its object was committed)."""
        write_text(self.storage, record.id + layout.METADATA_SUFFIX, record.to_json())

    def write_run(self, moment: datetime, run_id: str, payload: dict[str, Any]) -> str:
        name = layout.run_log_name(self.hostname, moment, run_id)
        write_text(self.storage, name, json.dumps(payload, indent=2, default=str) + "\n")
        return name

    # -- reading -------------------------------------------------------------------------
    def load(self, metadata_name: str) -> BackupRecord:
        """Return the record in ``metadata_name``; raise IntegrityError when unreadable."""
        try:
            return BackupRecord.model_validate_json(read_text(self.storage, metadata_name))
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0]
            raise IntegrityError(
                f"metadata file {metadata_name} is damaged or not a VYA record: {first}"
            ) from None

    def iter_metadata_names(self, instance: str | None = None) -> Iterator[str]:
        prefix = (
            layout.instance_prefix(self.hostname, instance)
            if instance
            else f"{layout.safe_component(self.hostname)}/"
        )
        return self._metadata_names(prefix)

    def _metadata_names(self, prefix: str) -> Iterator[str]:
        for info in self.storage.list(prefix):
            if info.name.endswith(layout.METADATA_SUFFIX):
                yield info.name

    def records(
        self,
        instance: str | None = None,
        database: str | None = None,
        kind: str | None = None,
        *,
        include_damaged: list[str] | None = None,
    ) -> list[BackupRecord]:
        """Return matching records sorted oldest first.

        Damaged metadata files are skipped; their names are appended to ``include_damaged``
        when a list is given (so `list` and `verify` can report them).
        """
        found: list[BackupRecord] = []
        for name in self.iter_metadata_names(instance):
            try:
                record = self.load(name)
            except IntegrityError:
                if include_damaged is not None:
                    include_damaged.append(name)
                continue
            info = record.backup_info
            if database is not None and info.database != database:
                continue
            if kind is not None and record.kind != kind:
                continue
            found.append(record)
        found.sort(key=lambda r: (r.backup_info.started_at, r.id))
        return found

    def latest(self, instance: str, database: str, kind: str | None = None) -> BackupRecord:
        """Return the newest successful backup; raise NotFoundError when there is none."""
        found = self._newest(instance, database, kind, lambda r: r.ok)
        if found is None:
            raise NotFoundError(
                f"no successful backup of database {database!r} on instance {instance!r}",
                hint=f"Run: vya-backupdb backup {instance}   (then: vya-backupdb list {instance})",
            )
        return found

    def at(self, instance: str, database: str, moment: datetime) -> BackupRecord:
        """Return the newest successful backup started at or before ``moment``."""
        found = self._newest(instance, database, None, lambda r: r.ok and r.started_at <= moment)
        if found is None:
            raise NotFoundError(
                f"no successful backup of {database!r} on {instance!r} at or before "
                f"{moment.isoformat(timespec='minutes')}",
                hint=f"See the available points with: vya-backupdb list {instance} "
                f"--database '{database}'",
            )
        return found

    def _newest(
        self,
        instance: str,
        database: str,
        kind: str | None,
        accept: Callable[[BackupRecord], bool],
    ) -> BackupRecord | None:
        """The newest (``started_at``, id) record of ``database`` ``accept`` takes, reading
        as few metadata files as the names allow.

        A restore of the latest backup used to read and validate every record of the
        instance, every database's (on object storage, one GET each: thousands at 3 a.m.).
        Names carry the backup's start time (UTC, second resolution, moved on by whole
        seconds only when taken: :func:`vya_backupdb.jobs.store.unused_names`), so a name's
        time is never before its record's start. The records are read newest name first,
        and the search stops at names more than a day older than the best record found —
        a day of margin that no clock or time-zone slip between name and record crosses.
        Names without a time are always read."""
        timed: list[tuple[datetime, str]] = []
        untimed: list[str] = []
        for name in self._names_of_database(instance, database):
            moment = _name_moment(name)
            if moment is None:
                untimed.append(name)
            else:
                timed.append((moment, name))
        timed.sort(reverse=True)
        best: BackupRecord | None = None
        for moment, name in [(None, n) for n in untimed] + timed:
            if moment is not None and best is not None and moment < best.started_at - _NAME_MARGIN:
                break
            try:
                record = self.load(name)
            except IntegrityError:
                continue  # damaged: `list` and `verify` report it
            if record.backup_info.database != database or (kind and record.kind != kind):
                continue
            if accept(record) and (
                best is None or (record.started_at, record.id) > (best.started_at, best.id)
            ):
                best = record
        return best

    def _names_of_database(self, instance: str, database: str) -> Iterator[str]:
        """Metadata names that may hold ``database``'s records: its own folder (format 1),
        or, for the users pseudo-database, the instance's top level."""
        if database != layout.USERS_DB:
            return self._metadata_names(layout.database_prefix(self.hostname, instance, database))
        prefix = layout.instance_prefix(self.hostname, instance)
        return (n for n in self._metadata_names(prefix) if "/" not in n[len(prefix) :])

    def by_id(self, record_id: str) -> BackupRecord:
        return self.load(record_id + layout.METADATA_SUFFIX)

    def by_data_name(self, data_name: str) -> BackupRecord:
        """Return the record of a data object given its storage name."""
        stem = _stem_of(data_name)
        meta = stem + layout.METADATA_SUFFIX
        if not self.storage.exists(meta):
            raise IntegrityError(
                f"{data_name} has no metadata record ({meta} is missing)",
                hint="The backup may be incomplete or was copied without its sidecars; "
                "verify it with: vya-backupdb verify --file PATH",
            )
        return self.load(meta)

    def chain(self, record: BackupRecord) -> list[BackupRecord]:
        """Return the records ``record`` depends on, oldest (the full) first, itself last."""
        chain = [record]
        seen = {record.id}
        current = record
        while current.backup_info.parent_id:
            parent_id = current.backup_info.parent_id
            if parent_id in seen:
                raise IntegrityError(f"backup chain of {record.id} loops at {parent_id}")
            try:
                current = self.by_id(parent_id)
            except NotFoundError:
                raise IntegrityError(
                    f"backup {record.id} depends on {parent_id}, which is missing",
                    hint="Restore an older point whose chain is complete (vya-backupdb list).",
                ) from None
            seen.add(current.id)
            chain.append(current)
        chain.reverse()
        return chain


#: How far before the best record found a name's time may still hide a newer record
#: (see :meth:`Catalog._newest`).
_NAME_MARGIN = timedelta(days=1)
_NAME_TIME = re.compile(r"_(\d{8}_\d{6})(?:_[A-Za-z]+)?\.metadata\.json$")


def _name_moment(name: str) -> datetime | None:
    """The UTC time in a metadata name (``…_YYYYMMDD_HHMMSS[_strategy].metadata.json``)."""
    match = _NAME_TIME.search(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _stem_of(data_name: str) -> str:
    """Return the record stem for a data object name (strip artifact + codec suffixes)."""
    base = data_name
    if base.endswith(layout.SHA256_SUFFIX):
        base = base[: -len(layout.SHA256_SUFFIX)]
    if base.endswith(layout.METADATA_SUFFIX):
        return base[: -len(layout.METADATA_SUFFIX)]
    directory, _, filename = base.rpartition("/")
    # The stem is everything before the first '.' that follows the strategy word.
    for marker in ("_full.", "_incremental.", "_differential.", "_safety.", "users_"):
        if marker == "users_" and filename.startswith("users_"):
            stem_name = filename.split(".", 1)[0]
            break
        if marker in filename:
            stem_name = filename[: filename.index(marker) + len(marker) - 1]
            break
    else:
        stem_name = filename.split(".", 1)[0]
    return f"{directory}/{stem_name}" if directory else stem_name


def relative_name(storage_root: Path, path: Path) -> str | None:
    """Return ``path`` relative to a local storage root, or None when it is outside."""
    try:
        return path.resolve().relative_to(storage_root.resolve()).as_posix()
    except ValueError:
        return None


def record_operation(
    catalog: Catalog,
    operation: str,
    results: list[dict[str, Any]],
    *,
    started_at: datetime,
    finished_at: datetime,
    run_id: str,
) -> str | None:
    """Write a run log for a non-backup operation (``restore``), so the metrics see it.

    ``results`` items carry instance, database, status (success|failed), duration_seconds and
    error_type. Return the run log name, or None when it could not be written (logged).
    """
    payload = {
        "run_id": run_id,
        "operation": operation,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "results": results,
    }
    try:
        return catalog.write_run(started_at, run_id, payload)
    except VyaError as exc:
        log.warning("could not write the %s run log: %s", operation, exc.message)
        return None
