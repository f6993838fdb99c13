"""Catalog.latest / Catalog.at read the newest names first and stop early — and pick exactly the
record the full scan (every record, sorted by start time and id) picks."""

from __future__ import annotations

import random
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import IO

import pytest

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import Catalog
from vya_backupdb.catalog.records import BackupInfo, BackupRecord, FileInfo
from vya_backupdb.errors import NotFoundError
from vya_backupdb.storage.memory import MemoryStorage

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


class CountingStorage(MemoryStorage):
    """Memory storage that counts the metadata files read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, name: str) -> AbstractContextManager[IO[bytes]]:
        if name.endswith(layout.METADATA_SUFFIX):
            self.reads.append(name)
        return super().get(name)


def _save(
    catalog: Catalog,
    database: str,
    started: datetime,
    *,
    status: str = "success",
    strategy: str = "full",
    kind: str = "database",
) -> BackupRecord:
    """Save a record the way a backup names it: the start time, moved on by whole seconds
    while the name is taken (jobs/store.py unused_names)."""
    for step in range(100):
        moment = started + timedelta(seconds=step)
        if database == layout.USERS_DB:
            names = layout.users_backup_names("h", "i", moment, ".zst")
        else:
            names = layout.database_backup_names(
                "h", "i", database, moment, strategy, "sql", ".zst"
            )
        if not catalog.storage.exists(names.metadata):
            break
    record = BackupRecord(
        id=names.stem,
        kind=kind,  # type: ignore[arg-type]
        backup_info=BackupInfo(
            instance="i",
            instance_type="postgresql",
            database=database,
            hostname="h",
            started_at=started,
            finished_at=started + timedelta(minutes=1),
            duration_seconds=60.0,
            status=status,  # type: ignore[arg-type]
            vya_version="t",
        ),
        file_info=FileInfo(
            name=names.data,
            size=1,
            raw_size=1,
            sha256="0" * 64,
            extension="sql",
            compression="zstd",
        ),
    )
    catalog.save(record)
    return record


def _full_scan(
    catalog: Catalog, database: str, moment: datetime | None = None
) -> BackupRecord | None:
    """What latest/at returned before: every record of the instance, filtered and sorted."""
    ok = [
        r
        for r in catalog.records("i", database)
        if r.ok and (moment is None or r.started_at <= moment)
    ]
    return ok[-1] if ok else None


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(CountingStorage(), "h")


def _reads(catalog: Catalog) -> list[str]:
    storage = catalog.storage
    assert isinstance(storage, CountingStorage)
    return storage.reads


def test_latest_reads_the_newest_names_only(catalog: Catalog) -> None:
    for day in range(60):
        for db in ("app", "billing", "audit"):
            _save(catalog, db, T0 + timedelta(days=day, minutes=7))
    newest = _save(catalog, "app", T0 + timedelta(days=60))
    _reads(catalog).clear()

    assert catalog.latest("i", "app").id == newest.id
    # The newest and those within the day of margin before it; never the other databases'.
    assert 1 <= len(_reads(catalog)) <= 2
    assert all("/app/" in name for name in _reads(catalog))


def test_latest_skips_failed_and_damaged_and_other_kinds(catalog: Catalog) -> None:
    good = _save(catalog, "app", T0)
    _save(catalog, "app", T0 + timedelta(hours=1), status="failed")
    damaged = _save(catalog, "app", T0 + timedelta(hours=2))
    catalog.storage.delete(damaged.id + layout.METADATA_SUFFIX)
    with catalog.storage.put(damaged.id + layout.METADATA_SUFFIX) as writer:
        writer.write(b"{not json")

    assert catalog.latest("i", "app").id == good.id
    with pytest.raises(NotFoundError, match="no successful backup of database 'app'"):
        catalog.latest("i", "app", kind="files")
    with pytest.raises(NotFoundError):
        catalog.latest("i", "nothing-here")


def test_same_second_backups_pick_the_later_start(catalog: Catalog) -> None:
    """Three backups in one second: names move on by a second each; the later start wins,
    whatever name it got."""
    first = _save(catalog, "app", T0 + timedelta(microseconds=900_000))
    second = _save(catalog, "app", T0 + timedelta(microseconds=100_000))
    # ``second`` started earlier but took the later name (first's name was taken).
    assert second.id > first.id
    full = _full_scan(catalog, "app")
    assert full is not None
    assert catalog.latest("i", "app").id == first.id == full.id


def test_at_picks_the_newest_at_or_before_the_moment(catalog: Catalog) -> None:
    records = [_save(catalog, "app", T0 + timedelta(days=d)) for d in range(10)]
    _reads(catalog).clear()
    moment = T0 + timedelta(days=4, hours=12)
    assert catalog.at("i", "app", moment).id == records[4].id
    assert catalog.at("i", "app", records[7].started_at).id == records[7].id
    with pytest.raises(NotFoundError, match="at or before"):
        catalog.at("i", "app", T0 - timedelta(seconds=1))


def test_users_records_live_at_the_instance_top_level(catalog: Catalog) -> None:
    _save(catalog, "app", T0 + timedelta(days=2))
    users = _save(catalog, layout.USERS_DB, T0 + timedelta(days=1), kind="users")
    _save(catalog, layout.USERS_DB, T0, kind="users")
    assert catalog.latest("i", layout.USERS_DB, kind="users").id == users.id


def test_a_name_without_a_time_is_always_read(catalog: Catalog) -> None:
    """A record copied in under another name (no time in it) still counts."""
    _save(catalog, "app", T0)
    odd = _save(catalog, "app", T0 + timedelta(days=3))
    with catalog.storage.get(odd.id + layout.METADATA_SUFFIX) as reader:
        text = reader.read()
    catalog.storage.delete(odd.id + layout.METADATA_SUFFIX)
    with catalog.storage.put("h/i/app/imported.metadata.json") as writer:
        writer.write(text)
    assert catalog.latest("i", "app").id == odd.id


@pytest.mark.parametrize("seed", range(20))
def test_latest_and_at_agree_with_the_full_scan(catalog: Catalog, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 40)):
        db = rng.choice(("app", "app", "other"))
        started = T0 + timedelta(seconds=rng.choice((0, 1, 2, 3, 3600, 86_400)) * rng.random())
        started += timedelta(days=rng.randint(0, 5))
        status = rng.choice(("success", "success", "failed"))
        _save(catalog, db, started, status=status, strategy=rng.choice(("full", "safety")))
    expected = _full_scan(catalog, "app")
    if expected is None:
        with pytest.raises(NotFoundError):
            catalog.latest("i", "app")
    else:
        assert catalog.latest("i", "app").id == expected.id
    for _ in range(5):
        moment = T0 + timedelta(seconds=rng.uniform(-10, 7 * 86_400))
        expected = _full_scan(catalog, "app", moment)
        if expected is None:
            with pytest.raises(NotFoundError):
                catalog.at("i", "app", moment)
        else:
            assert catalog.at("i", "app", moment).id == expected.id
