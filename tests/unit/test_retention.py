"""Retention policy: which backups survive, and why.

A simulated catalog of 400 days (daily backups, hourly ones on some days, gaps of several days,
failed and partial runs, incremental and differential chains) is judged by several policies.
Each outcome is checked twice: against a hand-written list of survivors (worked out from the
calendar, not from the code) and against a brute-force reference implementation written
differently from the one under test (buckets built as dictionaries, chains closed by a
fixed-point loop).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vya_backupdb.config.retention import RetentionConfig
from vya_backupdb.policies.retention import (
    Candidate,
    Decision,
    GfsRetention,
    RetentionPolicy,
    decide,
    summarize,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 4, 8, 12, 0, tzinfo=UTC)
START = date(2025, 3, 5)  # day 0; day 399 is 2026-04-08
DAYS = 400
GAPS = set(range(50, 55)) | set(range(200, 210)) | set(range(390, 393))
HOURLY_DAYS = {d for d in range(DAYS) if d % 60 == 10} | {(date(2025, 12, 31) - START).days}


def at(day: date, hour: int, minute: int = 0, tz: ZoneInfo | None = None) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=tz or UTC)


def success(
    ident: str,
    when: datetime,
    *,
    instance: str = "pg1",
    database: str = "app",
    strategy: str = "full",
    parent: str | None = None,
    size: int = 100,
    status: str = "success",
) -> Candidate:
    return Candidate(
        id=ident,
        instance=instance,
        database=database,
        started_at=when,
        status=status,
        strategy=strategy,
        parent_id=parent,
        size_bytes=size,
    )


def failed(ident: str, when: datetime, **kwargs: object) -> Candidate:
    return success(ident, when, status="failed", **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the simulation


def simulate_app() -> list[Candidate]:
    """pg1/app: daily 01:00 UTC; failures every 7th day (retried every 14th); hourly days."""
    out: list[Candidate] = []
    for d in range(DAYS):
        day = START + timedelta(days=d)
        stamp = day.strftime("%Y%m%d")
        size = 1000 + d
        if d in GAPS:
            continue
        if d == 394:
            out.append(success(f"app-{stamp}-0100", at(day, 1), status="partial", size=size))
            continue
        if d % 7 == 3:
            out.append(failed(f"app-{stamp}-0100", at(day, 1), size=0))
            if d % 14 == 3:
                out.append(success(f"app-{stamp}-0300", at(day, 3), size=size))
        else:
            out.append(success(f"app-{stamp}-0100", at(day, 1), size=size))
        if d in HOURLY_DAYS:
            out.extend(
                success(f"app-{stamp}-{hour:02d}00", at(day, hour), size=size)
                for hour in range(4, 24)
            )
    out.append(failed("app-20260408-1100", at(NOW.date(), 11), size=0))
    return out


def simulate_crm() -> list[Candidate]:
    """pg1/crm: a backup every 10th day at 23:30 UTC; judged separately from app."""
    return [
        success(
            f"crm-{(START + timedelta(days=d)):%Y%m%d}",
            at(START + timedelta(days=d), 23, 30),
            database="crm",
        )
        for d in range(0, DAYS, 10)
    ]


def simulate_files() -> list[Candidate]:
    """files1/etc: full on Sundays, incrementals chained on the previous success otherwise.

    files1/srv: full on the 1st of each month, differentials on that full otherwise.
    """
    out: list[Candidate] = []
    last_success: str | None = None
    month_full: str | None = None
    for d in range(DAYS):
        if d in GAPS:
            continue
        day = START + timedelta(days=d)
        when = at(day, 2)
        ident = f"etc-{day:%Y%m%d}"
        if day.isoweekday() == 7 or last_success is None:
            kind, parent = "full", None
        else:
            kind, parent = "incremental", last_success
        if d % 11 == 5:
            out.append(failed(ident, when, instance="files1", database="etc", strategy=kind))
        else:
            out.append(
                success(
                    ident, when, instance="files1", database="etc", strategy=kind, parent=parent
                )
            )
            last_success = ident
        srv = f"srv-{day:%Y%m%d}"
        if day.day == 1 or month_full is None:
            out.append(success(srv, when, instance="files1", database="srv"))
            month_full = srv
        else:
            out.append(
                success(
                    srv,
                    when,
                    instance="files1",
                    database="srv",
                    strategy="differential",
                    parent=month_full,
                )
            )
    return out


CATALOG: list[Candidate] = simulate_app() + simulate_crm() + simulate_files()


# --------------------------------------------------------------------------- the reference


def reference_keep(config: RetentionConfig, cands: Sequence[Candidate], now: datetime) -> set[str]:
    """Return the ids a correct policy keeps, computed the slow and obvious way."""
    if (
        config.retention_days is None
        and config.keep_last is None
        and config.keep_daily is None
        and config.keep_weekly is None
        and config.keep_monthly is None
        and config.keep_yearly is None
    ):
        return {c.id for c in cands}
    zone = ZoneInfo(config.timezone)
    keys: list[tuple[int | None, Callable[[datetime], object]]] = [
        (config.keep_daily, lambda t: t.date()),
        (config.keep_weekly, lambda t: t.isocalendar()[:2]),
        (config.keep_monthly, lambda t: (t.year, t.month)),
        (config.keep_yearly, lambda t: t.year),
    ]
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in cands:
        groups[(c.instance, c.database)].append(c)
    keep: set[str] = set()
    for group in groups.values():
        ok = sorted((c for c in group if c.status == "success"), key=lambda c: (c.started_at, c.id))
        for c in group:
            if c.status in ("failed", "partial"):
                if now - c.started_at < timedelta(days=config.keep_failed_days):
                    keep.add(c.id)
            elif c.status != "success":
                keep.add(c.id)
        if config.keep_last:
            keep |= {c.id for c in ok[-config.keep_last :]}
        for count, key in keys:
            if not count:
                continue
            newest_in: dict[object, Candidate] = {}
            for c in ok:  # oldest first, so the last write per bucket is its newest
                newest_in[key(c.started_at.astimezone(zone))] = c
            best = sorted(newest_in.values(), key=lambda c: (c.started_at, c.id), reverse=True)
            keep |= {c.id for c in best[:count]}
        if config.retention_days is not None:
            limit = timedelta(days=config.retention_days)
            keep |= {c.id for c in ok if now - c.started_at < limit}
        if ok:
            keep.add(ok[-1].id)
    by_id = {c.id: c for c in cands}

    def close() -> None:
        walkers = {i for i in keep if by_id[i].status != "failed"}
        changed = True
        while changed:
            changed = False
            for i in list(walkers):
                parent = by_id[i].parent_id
                if parent in by_id and parent not in walkers:
                    keep.add(parent)
                    walkers.add(parent)
                    changed = True

    close()
    for group in groups.values():
        ok = sorted((c for c in group if c.status == "success"), key=lambda c: (c.started_at, c.id))
        missing = config.min_backups - sum(1 for c in ok if c.id in keep)
        for c in reversed(ok):
            if missing <= 0:
                break
            if c.id not in keep:
                keep.add(c.id)
                missing -= 1
    close()
    return keep


def kept(decisions: Sequence[Decision], **where: str) -> set[str]:
    return {
        d.candidate.id
        for d in decisions
        if d.keep and all(getattr(d.candidate, k) == v for k, v in where.items())
    }


def reasons_of(decisions: Sequence[Decision], ident: str) -> tuple[str, ...]:
    (match,) = [d for d in decisions if d.candidate.id == ident]
    return match.reasons


POLICIES = {
    "keep_last": RetentionConfig(keep_last=5),
    "gfs": RetentionConfig(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3),
    "gfs_berlin": RetentionConfig(
        keep_last=2, keep_daily=10, keep_weekly=8, keep_monthly=6, timezone="Europe/Berlin"
    ),
    "days_and_min": RetentionConfig(retention_days=30, min_backups=3),
    "days_and_gfs": RetentionConfig(
        retention_days=14, keep_weekly=10, keep_yearly=5, keep_failed_days=2
    ),
    "zeros": RetentionConfig(keep_last=0, keep_daily=0, min_backups=0),
    "nothing": RetentionConfig(),
}


# --------------------------------------------------------------------------- 400 days


def test_simulation_shape_has_gaps_failures_hourly_and_chains() -> None:
    statuses = {c.status for c in CATALOG}
    strategies = {c.strategy for c in CATALOG}
    assert statuses == {"success", "failed", "partial"}
    assert strategies == {"full", "incremental", "differential"}
    assert len({c.id for c in CATALOG}) == len(CATALOG)
    app_days = {c.started_at.date() for c in CATALOG if c.database == "app"}
    assert len(app_days) == DAYS - len(GAPS)
    assert sum(1 for c in CATALOG if c.database == "app") > 500  # hourly days included


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_decide_simulated_400_days_matches_reference(name: str) -> None:
    config = POLICIES[name]
    decisions = decide(config, CATALOG, NOW)
    assert [d.candidate for d in decisions] == CATALOG
    assert kept(decisions) == reference_keep(config, CATALOG, NOW)
    for d in decisions:
        assert d.reasons, d
        prefix = "kept: " if d.keep else "deleted: "
        assert all(r.startswith(prefix) for r in d.reasons), d


@pytest.mark.parametrize("now", [NOW, NOW + timedelta(days=45), NOW + timedelta(days=800)])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_decide_simulated_at_later_clock_matches_reference(name: str, now: datetime) -> None:
    config = POLICIES[name]
    assert kept(decide(config, CATALOG, now)) == reference_keep(config, CATALOG, now)


def test_keep_last_simulated_app_keeps_five_newest_successful_and_recent_failures() -> None:
    decisions = decide(RetentionConfig(keep_last=5), CATALOG, NOW)
    assert kept(decisions, database="app") == {
        "app-20260408-0100",
        "app-20260407-0100",
        "app-20260406-0100",
        "app-20260405-0100",
        "app-20260404-0300",  # the 01:00 run failed and was retried
        # not successful, younger than keep_failed_days=7:
        "app-20260408-1100",
        "app-20260404-0100",
        "app-20260403-0100",  # partial
    }
    assert reasons_of(decisions, "app-20260408-0100") == (
        "kept: last 1 of 5",
        "kept: newest successful",
    )
    assert reasons_of(decisions, "app-20260404-0300") == ("kept: last 5 of 5",)
    assert reasons_of(decisions, "app-20260408-1100") == ("kept: failed run younger than 7 days",)
    assert reasons_of(decisions, "app-20260403-0100") == (
        "kept: partial backup younger than 7 days",
    )
    assert reasons_of(decisions, "app-20260328-0100") == ("deleted: failed run older than 7 days",)
    assert reasons_of(decisions, "app-20260402-0100") == ("deleted: not selected by keep_last 5",)


def test_gfs_simulated_app_keeps_exactly_the_calendar_survivors() -> None:
    config = RetentionConfig(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3)
    decisions = decide(config, CATALOG, NOW)
    successful_kept = {
        d.candidate.id for d in decisions if d.keep and d.candidate.status == "success"
    }
    assert successful_kept & {c.id for c in CATALOG if c.database == "app"} == {
        # daily: the 7 most recent days that have a backup (03-30..04-01 is a gap, 04-03 only
        # has a partial one)
        "app-20260408-0100",
        "app-20260407-0100",
        "app-20260406-0100",
        "app-20260405-0100",
        "app-20260404-0300",
        "app-20260402-0100",
        "app-20260329-0100",
        # weekly 2026-W15, W14, W13 are above; W12:
        "app-20260322-0100",
        # monthly 2026-04 and 2026-03 are above; then February (the 28th failed, no retry) ...
        "app-20260227-0100",
        "app-20260130-0100",  # the 31st failed, no retry
        "app-20251231-2300",  # New Year's Eve was an hourly day
        "app-20251130-0100",
        "app-20251031-0100",
        "app-20250920-0300",  # 09-21..09-30 is a gap; the 20th was retried at 03:00
        "app-20250831-0100",
        "app-20250731-0100",
        "app-20250630-0100",
        "app-20250531-0300",
        # yearly 2026 and 2025 are above; there is no third year
    }
    assert reasons_of(decisions, "app-20260408-0100") == (
        "kept: daily 2026-04-08",
        "kept: weekly 2026-W15",
        "kept: monthly 2026-04",
        "kept: yearly 2026",
        "kept: newest successful",
    )
    assert reasons_of(decisions, "app-20260405-0100") == (
        "kept: daily 2026-04-05",
        "kept: weekly 2026-W14",
    )
    assert reasons_of(decisions, "app-20260329-0100") == (
        "kept: daily 2026-03-29",
        "kept: weekly 2026-W13",
        "kept: monthly 2026-03",
    )
    assert reasons_of(decisions, "app-20251231-2300") == (
        "kept: monthly 2025-12",
        "kept: yearly 2025",
    )
    assert reasons_of(decisions, "app-20251231-2200") == (
        "deleted: not selected by keep_daily 7, keep_weekly 4, keep_monthly 12, keep_yearly 3",
    )


def test_gfs_simulated_crm_is_judged_apart_from_app() -> None:
    decisions = decide(RetentionConfig(keep_daily=3, keep_monthly=2), CATALOG, NOW)
    # crm has no gaps: days 0, 10, ... 390 (2026-03-30)
    assert kept(decisions, database="crm") == {
        "crm-20260330",  # daily + monthly 2026-03
        "crm-20260320",  # daily
        "crm-20260310",  # daily
        "crm-20260228",  # monthly 2026-02
    }


def test_retention_days_all_old_keeps_min_backups_newest() -> None:
    later = datetime(2027, 6, 1, tzinfo=UTC)
    decisions = decide(RetentionConfig(retention_days=30, min_backups=3), CATALOG, later)
    assert kept(decisions, database="app") == {
        "app-20260408-0100",
        "app-20260407-0100",
        "app-20260406-0100",
    }
    assert reasons_of(decisions, "app-20260408-0100") == ("kept: newest successful",)
    assert reasons_of(decisions, "app-20260407-0100") == ("kept: min_backups 3",)
    assert reasons_of(decisions, "app-20260406-0100") == ("kept: min_backups 3",)
    assert reasons_of(decisions, "app-20260405-0100") == ("deleted: older than 30 days",)
    assert reasons_of(decisions, "app-20260408-1100") == ("deleted: failed run older than 7 days",)
    # incremental chain: the 3 newest of files1/etc plus everything back to their full
    etc = sorted(
        (c for c in CATALOG if c.database == "etc" and c.status == "success"),
        key=lambda c: c.started_at,
    )
    last_full = max(i for i, c in enumerate(etc) if c.strategy == "full")
    assert kept(decisions, database="etc") == {c.id for c in etc[last_full:]}


def test_retention_days_simulated_keeps_younger_than_window_only() -> None:
    decisions = decide(RetentionConfig(retention_days=3, min_backups=0), CATALOG, NOW)
    # 2026-04-05 01:00 is 3 days 11 hours old: outside; the window is counted in 24-hour days
    assert kept(decisions, database="app", status="success") == {
        "app-20260408-0100",
        "app-20260407-0100",
        "app-20260406-0100",
    }
    assert reasons_of(decisions, "app-20260406-0100") == ("kept: younger than 3 days",)


# --------------------------------------------------------------------------- age boundaries


def test_retention_days_exactly_d_days_old_is_deleted_one_second_less_kept() -> None:
    cands = [
        success("newest", NOW),
        success("edge", NOW - timedelta(days=5)),
        success("inside", NOW - timedelta(days=5) + timedelta(seconds=1)),
    ]
    decisions = decide(RetentionConfig(retention_days=5, min_backups=0), cands, NOW)
    assert kept(decisions) == {"newest", "inside"}
    assert reasons_of(decisions, "edge") == ("deleted: older than 5 days",)


def test_keep_failed_days_exactly_n_days_old_is_deleted_one_second_less_kept() -> None:
    cands = [
        success("ok", NOW),
        failed("edge", NOW - timedelta(days=7)),
        failed("inside", NOW - timedelta(days=7) + timedelta(seconds=1)),
        success("partial-edge", NOW - timedelta(days=7), status="partial"),
    ]
    decisions = decide(RetentionConfig(keep_last=1), cands, NOW)
    assert kept(decisions) == {"ok", "inside"}
    assert reasons_of(decisions, "inside") == ("kept: failed run younger than 7 days",)
    assert reasons_of(decisions, "partial-edge") == ("deleted: partial backup older than 7 days",)


def test_decide_future_backup_counts_as_young() -> None:
    # clock skew between hosts: a record "from the future" is young, never negative-old garbage
    cands = [success("future", NOW + timedelta(hours=2)), success("now", NOW)]
    decisions = decide(RetentionConfig(retention_days=1), cands, NOW)
    assert kept(decisions) == {"future", "now"}
    assert reasons_of(decisions, "future") == (
        "kept: younger than 1 day",
        "kept: newest successful",
    )


# --------------------------------------------------------------------------- floors


def test_min_backups_failed_runs_never_count() -> None:
    old = datetime(2026, 1, 1, 1, tzinfo=UTC)
    cands = [success(f"ok{i}", old + timedelta(days=i)) for i in range(5)]
    cands += [failed(f"bad{i}", NOW - timedelta(hours=i + 1)) for i in range(10)]
    decisions = decide(RetentionConfig(retention_days=7, min_backups=3), cands, NOW)
    assert kept(decisions) == {"ok4", "ok3", "ok2"} | {f"bad{i}" for i in range(10)}
    assert reasons_of(decisions, "ok3") == ("kept: min_backups 3",)
    assert reasons_of(decisions, "ok1") == ("deleted: older than 7 days",)


def test_min_backups_larger_than_catalog_keeps_all_successful() -> None:
    cands = [success(f"ok{i}", NOW - timedelta(days=100 + i)) for i in range(4)]
    decisions = decide(RetentionConfig(retention_days=1, min_backups=10), cands, NOW)
    assert kept(decisions) == {"ok0", "ok1", "ok2", "ok3"}


def test_min_backups_counts_parents_kept_for_a_chain() -> None:
    cands = [
        success("full", NOW - timedelta(days=40)),
        success("inc1", NOW - timedelta(days=39), strategy="incremental", parent="full"),
        success("older", NOW - timedelta(days=50)),
    ]
    decisions = decide(RetentionConfig(keep_last=1, min_backups=2), cands, NOW)
    # inc1 (newest) + full (its parent) already make 2: "older" is not needed
    assert kept(decisions) == {"inc1", "full"}
    assert reasons_of(decisions, "full") == ("kept: parent of inc1",)


def test_newest_successful_policy_zero_still_kept() -> None:
    cands = [
        success("s1", NOW - timedelta(days=3)),
        success("s2", NOW - timedelta(days=2)),
        failed("f1", NOW - timedelta(days=20)),  # newest overall is a failure
        failed("f2", NOW - timedelta(hours=1)),
    ]
    config = RetentionConfig(
        keep_last=0,
        keep_daily=0,
        keep_weekly=0,
        keep_monthly=0,
        keep_yearly=0,
        retention_days=0,
        min_backups=0,
        keep_failed_days=0,
    )
    decisions = decide(config, cands, NOW)
    assert kept(decisions) == {"s2"}
    assert reasons_of(decisions, "s2") == ("kept: newest successful",)
    assert reasons_of(decisions, "s1") == (
        "deleted: older than 0 days",
        "deleted: not selected by keep_last 0, keep_daily 0, keep_weekly 0, keep_monthly 0, "
        "keep_yearly 0",
    )
    assert reasons_of(decisions, "f2") == ("deleted: failed run older than 0 days",)


def test_newest_successful_only_failures_keeps_none_of_them_after_window() -> None:
    cands = [failed(f"f{i}", NOW - timedelta(days=10 + i)) for i in range(3)]
    decisions = decide(RetentionConfig(keep_last=3), cands, NOW)
    assert kept(decisions) == set()


def test_no_policy_keeps_everything_including_failures() -> None:
    decisions = decide(RetentionConfig(min_backups=0, keep_failed_days=0), CATALOG, NOW)
    assert all(d.keep and d.reasons == ("kept: no retention policy",) for d in decisions)
    assert not RetentionConfig().has_rules
    assert RetentionConfig(keep_yearly=0).has_rules


# --------------------------------------------------------------------------- chains


def chain_catalog() -> list[Candidate]:
    day = timedelta(days=1)
    base = NOW - 20 * day

    def files(ident: str, offset: int, strategy: str, parent: str | None = None) -> Candidate:
        return success(
            ident,
            base + offset * day,
            instance="files1",
            database="etc",
            strategy=strategy,
            parent=parent,
        )

    return [
        files("F1", 0, "full"),
        files("I1", 1, "incremental", "F1"),
        files("I2", 2, "incremental", "I1"),
        files("I3", 3, "incremental", "I2"),
        files("F2", 10, "full"),
        files("D1", 11, "differential", "F2"),
        files("D2", 12, "differential", "F2"),
    ]


def test_chain_newest_differential_keeps_its_full_only() -> None:
    decisions = decide(RetentionConfig(keep_last=1), chain_catalog(), NOW)
    assert kept(decisions) == {"D2", "F2"}
    assert reasons_of(decisions, "F2") == ("kept: parent of D2",)
    assert reasons_of(decisions, "D1") == ("deleted: not selected by keep_last 1",)


def test_chain_kept_incremental_keeps_every_ancestor_transitively() -> None:
    cands = chain_catalog()[:4]  # F1 <- I1 <- I2 <- I3
    decisions = decide(RetentionConfig(keep_last=1), cands, NOW)
    assert kept(decisions) == {"F1", "I1", "I2", "I3"}
    assert reasons_of(decisions, "I2") == ("kept: parent of I3",)
    assert reasons_of(decisions, "I1") == ("kept: parent of I2",)
    assert reasons_of(decisions, "F1") == ("kept: parent of I1",)


def test_chain_parent_older_than_window_is_kept_with_both_reasons() -> None:
    cands = chain_catalog()
    # I3 (17 days old) and I2 (18) are inside a 19-day window; I1 (19: not younger) and F1 not
    decisions = decide(RetentionConfig(retention_days=19), cands, NOW)
    assert kept(decisions) == {c.id for c in cands}
    assert reasons_of(decisions, "I2") == ("kept: younger than 19 days", "kept: parent of I3")
    assert reasons_of(decisions, "I1") == ("kept: parent of I2",)
    assert reasons_of(decisions, "F1") == ("kept: parent of I1",)


def test_chain_deleted_full_takes_no_kept_dependant_along() -> None:
    decisions = decide(RetentionConfig(keep_last=2), chain_catalog(), NOW)
    assert kept(decisions) == {"D2", "D1", "F2"}
    deleted = {d.candidate.id for d in decisions if not d.keep}
    assert deleted == {"F1", "I1", "I2", "I3"}


def test_chain_failed_child_does_not_protect_parent() -> None:
    cands = [
        success("old-full", NOW - timedelta(days=30)),
        success("new-full", NOW - timedelta(days=2)),
        failed("bad-inc", NOW - timedelta(days=1), strategy="incremental", parent="old-full"),
    ]
    decisions = decide(RetentionConfig(keep_last=1), cands, NOW)
    assert kept(decisions) == {"new-full", "bad-inc"}


def test_chain_failed_parent_of_kept_child_is_walked_further() -> None:
    # odd but possible: a kept child names a failed record (itself kept for its age) as parent
    cands = [
        success("root", NOW - timedelta(days=30)),
        failed("mid", NOW - timedelta(days=3), strategy="incremental", parent="root"),
        success("leaf", NOW - timedelta(days=2), strategy="incremental", parent="mid"),
    ]
    decisions = decide(RetentionConfig(keep_last=1), cands, NOW)
    assert kept(decisions) == {"root", "mid", "leaf"}
    assert reasons_of(decisions, "mid") == (
        "kept: failed run younger than 7 days",
        "kept: parent of leaf",
    )
    assert reasons_of(decisions, "root") == ("kept: parent of mid",)


def test_chain_odd_input_cycles_missing_parents_and_duplicates_do_not_raise() -> None:
    cands = [
        success("a", NOW - timedelta(days=40), parent="b"),
        success("b", NOW - timedelta(days=41), parent="a"),
        success("c", NOW - timedelta(days=1), parent="a"),
        success("orphan", NOW - timedelta(days=2), parent="gone"),
        success("dup", NOW - timedelta(days=60)),
        success("dup", NOW - timedelta(days=61)),
        success("x", NOW - timedelta(days=3), status="running"),
    ]
    decisions = decide(RetentionConfig(keep_last=2), cands, NOW)
    assert [d.candidate for d in decisions] == cands
    assert [d.keep for d in decisions] == [True, True, True, True, False, False, True]
    assert reasons_of(decisions, "x") == ("kept: unknown status 'running'",)


def test_chain_parent_in_other_group_is_kept() -> None:
    cands = [
        success("base", NOW - timedelta(days=90), database="a"),
        success("newer", NOW - timedelta(days=80), database="a"),
        success("child", NOW - timedelta(days=1), database="b", parent="base"),
    ]
    decisions = decide(RetentionConfig(keep_last=1), cands, NOW)
    assert kept(decisions) == {"base", "newer", "child"}


# --------------------------------------------------------------------------- calendars


def test_daily_buckets_counts_only_days_with_backups() -> None:
    days = [date(2026, 3, d) for d in (1, 2, 3, 20, 21)]  # a 16-day gap
    cands = [success(f"d{d:%m%d}", at(d, 1)) for d in days]
    decisions = decide(RetentionConfig(keep_daily=4), cands, NOW)
    assert kept(decisions) == {"d0321", "d0320", "d0303", "d0302"}


def test_daily_buckets_keep_newest_of_each_day() -> None:
    day = date(2026, 4, 7)
    cands = [success(f"h{h:02d}", at(day, h)) for h in range(24)]
    cands.append(success("prev", at(day - timedelta(days=1), 23, 59)))
    decisions = decide(RetentionConfig(keep_daily=2), cands, NOW)
    assert kept(decisions) == {"h23", "prev"}
    assert reasons_of(decisions, "prev") == ("kept: daily 2026-04-06",)


def test_daily_buckets_use_policy_timezone_not_utc() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = date(2026, 6, 10)
    cands = [
        success("early", at(day, 0, 30, berlin)),  # 2026-06-09 22:30 UTC
        success("late", at(day, 23, 30, berlin)),  # 2026-06-10 21:30 UTC
        success("before", at(day - timedelta(days=1), 23, 30, berlin)),  # 06-09 21:30 UTC
    ]
    now = datetime(2026, 6, 12, tzinfo=UTC)
    local = decide(RetentionConfig(keep_daily=5, timezone="Europe/Berlin"), cands, now)
    in_utc = decide(RetentionConfig(keep_daily=5), cands, now)
    assert kept(local) == {"late", "before"}
    assert reasons_of(local, "late") == ("kept: daily 2026-06-10", "kept: newest successful")
    assert kept(in_utc) == {"late", "early"}  # in UTC, "early" is the newest of 06-09


@pytest.mark.parametrize(
    ("first", "count"),
    [(date(2026, 3, 25), 8), (date(2026, 10, 21), 8)],
    ids=["spring-forward", "fall-back"],
)
def test_daily_buckets_across_berlin_dst_change_land_on_local_day(first: date, count: int) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    days = [first + timedelta(days=i) for i in range(count)]
    cands = [success(f"d{d:%m%d}", at(d, 0, 30, berlin)) for d in days]
    # a second backup on the change day, after the change (03:30 CEST / 02:30 second CET)
    change = date(first.year, first.month, 29 if first.month == 3 else 25)
    extra = datetime.combine(change, time(3, 30) if first.month == 3 else time(2, 30, fold=1))
    cands.append(success("after-change", extra.replace(tzinfo=berlin)))
    now = datetime.combine(days[-1] + timedelta(days=1), time(12), tzinfo=UTC)
    decisions = decide(RetentionConfig(keep_daily=count, timezone="Europe/Berlin"), cands, now)
    expected = {f"d{d:%m%d}" for d in days if d != change} | {"after-change"}
    assert kept(decisions) == expected
    assert reasons_of(decisions, "after-change")[0] == f"kept: daily {change:%Y-%m-%d}"
    for d in days:
        if d != change:
            assert reasons_of(decisions, f"d{d:%m%d}")[0] == f"kept: daily {d:%Y-%m-%d}"


def test_daily_buckets_sao_paulo_dst_end_at_midnight_repeats_previous_day() -> None:
    # 2019-02-17 00:00 -02 became 2019-02-16 23:00 -03: the hour 23:00-00:00 happened twice,
    # both times on local day 02-16, while UTC already says 02-17.
    sp = ZoneInfo("America/Sao_Paulo")
    first = datetime(2019, 2, 17, 1, 30, tzinfo=UTC)  # 23:30 -02 (first pass)
    second = datetime(2019, 2, 17, 2, 30, tzinfo=UTC)  # 23:30 -03 (second pass)
    nxt = datetime(2019, 2, 17, 3, 30, tzinfo=UTC)  # 00:30 -03 on 02-17
    assert first.astimezone(sp).date() == second.astimezone(sp).date() == date(2019, 2, 16)
    cands = [success("first", first), success("second", second), success("next", nxt)]
    now = datetime(2019, 2, 20, tzinfo=UTC)
    decisions = decide(RetentionConfig(keep_daily=3, timezone="America/Sao_Paulo"), cands, now)
    assert kept(decisions) == {"second", "next"}
    assert reasons_of(decisions, "second") == ("kept: daily 2019-02-16",)


def test_daily_buckets_sao_paulo_dst_start_skipped_midnight() -> None:
    # 2018-11-04 00:00 -03 jumped to 01:00 -02: a run "at 00:30" ran at 01:30 local that day
    sp = ZoneInfo("America/Sao_Paulo")
    cands = [
        success("nov03", datetime(2018, 11, 3, 0, 30, tzinfo=sp)),
        success("nov04", datetime(2018, 11, 4, 1, 30, tzinfo=sp)),
        success("nov05", datetime(2018, 11, 5, 0, 30, tzinfo=sp)),
    ]
    now = datetime(2018, 11, 6, tzinfo=UTC)
    decisions = decide(RetentionConfig(keep_daily=3, timezone="America/Sao_Paulo"), cands, now)
    assert reasons_of(decisions, "nov04") == ("kept: daily 2018-11-04",)
    assert reasons_of(decisions, "nov03") == ("kept: daily 2018-11-03",)


def test_daily_buckets_local_date_going_backwards_still_one_per_day() -> None:
    # Sitka moved from Asian to American time in 1867: local dates went back a day, so a later
    # instant has an earlier local date. Comparing with the previous key only would keep two
    # backups of 10-19.
    sitka = ZoneInfo("America/Sitka")
    cands = [
        success("a", datetime(1867, 10, 18, 23, tzinfo=UTC)),  # local 10-19 (+14:58)
        success("b", datetime(1867, 10, 19, 1, tzinfo=UTC)),  # local 10-18 (-09:01)
        success("c", datetime(1867, 10, 19, 23, tzinfo=UTC)),  # local 10-19 (-09:01)
    ]
    assert [c.started_at.astimezone(sitka).day for c in cands] == [19, 18, 19]
    now = datetime(1867, 10, 25, tzinfo=UTC)
    decisions = decide(RetentionConfig(keep_daily=5, timezone="America/Sitka"), cands, now)
    assert kept(decisions) == {"b", "c"}
    assert reasons_of(decisions, "b") == ("kept: daily 1867-10-18",)


def test_weekly_buckets_iso_year_boundary() -> None:
    cands = [
        success("thu", at(date(2026, 12, 31), 1)),  # 2026-W53
        success("sat", at(date(2027, 1, 2), 1)),  # 2026-W53 too
        success("mon", at(date(2027, 1, 4), 1)),  # 2027-W01
        success("old", at(date(2025, 12, 29), 1)),  # Monday of 2026-W01
    ]
    now = datetime(2027, 1, 5, tzinfo=UTC)
    decisions = decide(RetentionConfig(keep_weekly=3, keep_yearly=3), cands, now)
    assert kept(decisions) == {"mon", "sat", "thu", "old"}
    assert reasons_of(decisions, "sat") == ("kept: weekly 2026-W53",)
    assert reasons_of(decisions, "thu") == ("kept: yearly 2026",)
    assert reasons_of(decisions, "mon") == (
        "kept: weekly 2027-W01",
        "kept: yearly 2027",
        "kept: newest successful",
    )
    assert reasons_of(decisions, "old") == ("kept: weekly 2026-W01", "kept: yearly 2025")


def test_monthly_and_yearly_buckets_count_only_periods_with_backups() -> None:
    cands = [
        success("2023-06", at(date(2023, 6, 1), 1)),
        success("2023-12", at(date(2023, 12, 31), 1)),
        success("2026-01", at(date(2026, 1, 15), 1)),
        success("2026-03", at(date(2026, 3, 1), 1)),
        success("2026-03b", at(date(2026, 3, 31), 1)),
    ]
    decisions = decide(RetentionConfig(keep_monthly=3, keep_yearly=2), cands, NOW)
    assert kept(decisions) == {"2026-03b", "2026-01", "2023-12"}
    assert reasons_of(decisions, "2023-12") == ("kept: monthly 2023-12", "kept: yearly 2023")


# --------------------------------------------------------------------------- contract


def test_decide_naive_now_raises_value_error() -> None:
    with pytest.raises(ValueError, match="now is a naive datetime"):
        decide(RetentionConfig(keep_last=1), [], datetime(2026, 1, 1))


def test_decide_naive_started_at_raises_value_error_naming_backup() -> None:
    cands = [success("naive-one", datetime(2026, 1, 1))]
    with pytest.raises(ValueError, match="'naive-one'"):
        decide(RetentionConfig(), cands, NOW)


def test_decide_empty_candidates_returns_empty() -> None:
    assert decide(RetentionConfig(keep_last=3), [], NOW) == []


def test_decide_input_order_does_not_change_outcome() -> None:
    config = POLICIES["gfs_berlin"]
    shuffled = CATALOG[:]
    random.Random(7).shuffle(shuffled)
    first = {(d.candidate.id, d.keep, d.reasons) for d in decide(config, CATALOG, NOW)}
    again = {(d.candidate.id, d.keep, d.reasons) for d in decide(config, shuffled, NOW)}
    assert first == again


def test_gfs_retention_is_a_retention_policy() -> None:
    policy: RetentionPolicy = GfsRetention(RetentionConfig(keep_last=1))
    decisions = policy.decide(chain_catalog(), NOW)
    assert kept(decisions) == {"D2", "F2"}
    assert decisions[0].reason == "deleted: not selected by keep_last 1"


def test_summarize_counts_and_bytes() -> None:
    cands = [
        success("a", NOW - timedelta(days=1), size=10),
        success("b", NOW - timedelta(days=2), size=200),
        success("c", NOW - timedelta(days=3), size=3000),
        failed("f", NOW - timedelta(days=30), size=0),
    ]
    summary = summarize(decide(RetentionConfig(keep_last=1), cands, NOW))
    assert summary == {
        "total": 4,
        "kept": 1,
        "deleted": 3,
        "kept_bytes": 10,
        "freed_bytes": 3200,
    }


# --------------------------------------------------------------------------- config model


def test_retention_config_unknown_timezone_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        RetentionConfig(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="unknown time zone"):
        RetentionConfig(timezone="../../etc/passwd")


@pytest.mark.parametrize(
    "field",
    [
        "retention_days",
        "min_backups",
        "keep_last",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "keep_failed_days",
    ],
)
def test_retention_config_negative_count_rejected(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        RetentionConfig.model_validate({field: -1})


def test_retention_config_unknown_key_and_mutation_rejected() -> None:
    with pytest.raises(ValidationError, match="keep_hourly"):
        RetentionConfig.model_validate({"keep_hourly": 3})
    config = RetentionConfig(keep_last=1, timezone="America/Sao_Paulo")
    with pytest.raises(ValidationError):
        config.keep_last = 2  # type: ignore[misc]
    assert config.zone == ZoneInfo("America/Sao_Paulo")
    assert RetentionConfig().min_backups == 1
    assert RetentionConfig().keep_failed_days == 7


def test_retention_config_field_descriptions_present() -> None:
    missing = [n for n, f in RetentionConfig.model_fields.items() if not f.description]
    assert missing == []
    assert "keep everything" in (RetentionConfig.model_fields["retention_days"].description or "")


# --------------------------------------------------------------------------- properties

GROUPS = [("pg1", "app"), ("pg1", "crm"), ("files1", "etc")]
ZONES = ["UTC", "Europe/Berlin", "America/Sao_Paulo", "Pacific/Auckland", "Asia/Kolkata"]
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
small = st.none() | st.integers(min_value=0, max_value=8)

configs = st.builds(
    RetentionConfig,
    retention_days=st.none() | st.integers(min_value=0, max_value=90),
    min_backups=st.integers(min_value=0, max_value=6),
    keep_last=small,
    keep_daily=small,
    keep_weekly=small,
    keep_monthly=small,
    keep_yearly=small,
    timezone=st.sampled_from(ZONES),
    keep_failed_days=st.integers(min_value=0, max_value=14),
)


@st.composite
def catalogs(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(min_value=0, max_value=40))
    out: list[Candidate] = []
    for i in range(count):
        instance, database = draw(st.sampled_from(GROUPS))
        minutes = draw(st.integers(min_value=0, max_value=800 * 24 * 60))
        status = draw(st.sampled_from(["success"] * 4 + ["failed", "partial", "running"]))
        parent = draw(st.none() | st.integers(min_value=0, max_value=max(count - 1, 0)))
        out.append(
            Candidate(
                id=f"b{i}",
                instance=instance,
                database=database,
                started_at=EPOCH + timedelta(minutes=minutes),
                status=status,
                strategy="full" if parent is None else "incremental",
                parent_id=None if parent is None or parent == i else f"b{parent}",
                size_bytes=draw(st.integers(min_value=0, max_value=10**9)),
            )
        )
    return out


clocks = st.integers(min_value=0, max_value=900 * 24).map(lambda h: EPOCH + timedelta(hours=h))
PROPERTY = settings(max_examples=150, deadline=None)


def newest_successful(cands: Sequence[Candidate]) -> dict[tuple[str, str], list[Candidate]]:
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in sorted(cands, key=lambda c: (c.started_at, c.id), reverse=True):
        if c.status == "success":
            groups[(c.instance, c.database)].append(c)
    return groups


@PROPERTY
@given(configs, catalogs(), clocks, st.randoms(use_true_random=False))
def test_decide_property_deterministic_and_order_independent(
    config: RetentionConfig, cands: list[Candidate], now: datetime, rnd: random.Random
) -> None:
    first = decide(config, cands, now)
    assert decide(config, cands, now) == first
    shuffled = cands[:]
    rnd.shuffle(shuffled)
    by_id = {d.candidate.id: (d.keep, d.reasons) for d in first}
    assert {d.candidate.id: (d.keep, d.reasons) for d in decide(config, shuffled, now)} == by_id


@PROPERTY
@given(configs, catalogs(), clocks)
def test_decide_property_matches_reference(
    config: RetentionConfig, cands: list[Candidate], now: datetime
) -> None:
    decisions = decide(config, cands, now)
    assert [d.candidate for d in decisions] == cands
    assert kept(decisions) == reference_keep(config, cands, now)


@PROPERTY
@given(configs, catalogs(), clocks)
def test_decide_property_safety_invariants_hold(
    config: RetentionConfig, cands: list[Candidate], now: datetime
) -> None:
    decisions = decide(config, cands, now)
    keep = kept(decisions)
    by_id = {c.id: c for c in cands}
    for group in newest_successful(cands).values():
        assert group[0].id in keep  # the newest successful backup survives
        if config.keep_last is not None:
            assert {c.id for c in group[: config.keep_last]} <= keep
        assert sum(1 for c in group if c.id in keep) >= min(config.min_backups, len(group))
    for c in cands:  # no kept (non-failed) backup loses its parent
        if c.id in keep and c.status != "failed" and c.parent_id in by_id:
            assert c.parent_id in keep
    for d in decisions:
        assert d.reasons
        assert all(r.startswith("kept: " if d.keep else "deleted: ") for r in d.reasons)
    summary = summarize(decisions)
    assert summary["kept"] + summary["deleted"] == summary["total"] == len(cands)
    assert summary["kept_bytes"] + summary["freed_bytes"] == sum(c.size_bytes for c in cands)


def test_docs_worked_example_decisions_match_docs_retention_md() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    rows = {
        "2026-02-20 01:00": "success",
        "2026-02-27 01:00": "success",
        "2026-03-20 01:00": "success",
        "2026-03-27 01:00": "success",
        "2026-03-28 01:00": "success",
        "2026-03-29 00:30": "success",
        "2026-04-02 01:00": "success",
        "2026-04-03 01:00": "failed",
        "2026-04-06 01:00": "success",
        "2026-04-06 13:00": "success",
        "2026-04-07 01:00": "success",
        "2026-04-08 01:00": "failed",
    }
    cands = [
        success(
            stamp,
            datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=berlin),
            status=status,
            size=10**9,
        )
        for stamp, status in rows.items()
    ]
    config = RetentionConfig(
        keep_last=2, keep_daily=4, keep_weekly=3, keep_monthly=2, timezone="Europe/Berlin"
    )
    decisions = decide(config, cands, datetime(2026, 4, 8, 12, tzinfo=berlin))
    assert kept(decisions) == {
        "2026-04-08 01:00",
        "2026-04-07 01:00",
        "2026-04-06 13:00",
        "2026-04-03 01:00",
        "2026-04-02 01:00",
        "2026-03-29 00:30",
    }
    assert reasons_of(decisions, "2026-03-29 00:30") == (
        "kept: daily 2026-03-29",
        "kept: weekly 2026-W13",
        "kept: monthly 2026-03",
    )
    assert summarize(decisions)["freed_bytes"] == 6 * 10**9
