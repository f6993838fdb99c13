"""Schedule windows: when a schedule is due, and whether a run now is within its tolerance.

Pure functions over :class:`~vya_backupdb.config.ops.ScheduleConfig` and a clock; no I/O.
Times are computed on the local wall clock of the schedule's IANA time zone (zoneinfo), then
converted to UTC, which is what callers compare and store. Daylight-saving rules:

* a wall time that does not exist (spring forward, e.g. 02:30 on the night clocks jump from
  02:00 to 03:00) runs once, one gap later (03:30 local): a backup is never silently skipped;
* a wall time that happens twice (fall back) runs once, at its first occurrence.

Cron expressions (5 fields, names and macros such as ``@daily`` allowed) are parsed by
``croniter`` and evaluated with the same wall-clock rules; as in cron, when both day-of-month
and day-of-week are restricted a day matching either one is due.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from vya_backupdb.config.ops import ScheduleConfig

#: How far :func:`next_due` / :func:`previous_due` search before declaring a schedule dead
#: (8 years covers a 29 February every leap year).
SEARCH_DAYS = 366 * 8 + 2

#: A timer that fires a hair early (clock rounding) still belongs to the coming due time.
#: Timers and cron never fire earlier than that; the daemon wakes exactly at the due time.
EARLY_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression: the allowed values of each field (None = any)."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...] | None  # day of month
    months: tuple[int, ...] | None
    weekdays: tuple[int, ...] | None  # 0=Monday … 6=Sunday (converted from cron's 0=Sunday)

    def day_matches(self, day: date) -> bool:
        """Return True when ``day`` is a run day (cron's OR rule when both day fields are set)."""
        if self.months is not None and day.month not in self.months:
            return False
        dom_ok = self.days is None or day.day in self.days
        dow_ok = self.weekdays is None or day.weekday() in self.weekdays
        if self.days is not None and self.weekdays is not None:
            return dom_ok or dow_ok
        return dom_ok and dow_ok


def _field(values: list[Any], low: int, high: int) -> tuple[int, ...] | None:
    if values == ["*"]:
        return None
    result = sorted({int(v) for v in values})
    if result == list(range(low, high + 1)):
        return None
    return tuple(result)


@lru_cache(maxsize=128)
def parse_cron(expression: str) -> CronSpec:
    """Return the parsed 5-field cron ``expression``; raise ValueError when it is invalid."""
    from croniter import croniter

    text = " ".join(expression.split())
    if not text.startswith("@") and len(text.split(" ")) != 5:
        raise ValueError(
            f"cron expression {expression!r} must have 5 fields: minute hour day month weekday"
        )
    try:
        fields, nth = croniter.expand(text)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None
    if nth or any(isinstance(v, str) and v != "*" for f in fields for v in f):
        raise ValueError(
            f"cron expression {expression!r} uses L or # (last day, n-th weekday), "
            "which schedules do not support"
        )
    minutes = _field(fields[0], 0, 59)
    hours = _field(fields[1], 0, 23)
    cron_dow = _field(fields[4], 0, 6)
    return CronSpec(
        expression=text,
        minutes=minutes if minutes is not None else tuple(range(60)),
        hours=hours if hours is not None else tuple(range(24)),
        days=_field(fields[2], 1, 31),
        months=_field(fields[3], 1, 12),
        # cron: 0=Sunday; ours (and date.weekday()): 0=Monday.
        weekdays=None if cron_dow is None else tuple(sorted((d - 1) % 7 for d in cron_dow)),
    )


def validate_cron(expression: str) -> str:
    """Return ``expression`` normalized (single spaces); raise ValueError when it is invalid."""
    return parse_cron(expression).expression


def wall_to_utc(day: date, at: time, zone: ZoneInfo) -> datetime:
    """Return the UTC instant of wall time ``at`` on ``day`` in ``zone`` (fold=0: gaps shift
    forward by their length; repeated times take their first occurrence)."""
    return datetime.combine(day, at.replace(fold=0), tzinfo=zone).astimezone(UTC)


def _day_times(schedule: ScheduleConfig, day: date) -> list[time]:
    """Return the wall times due on ``day`` (empty when the day is not a run day)."""
    if schedule.cron is not None:
        spec = parse_cron(schedule.cron)
        if not spec.day_matches(day):
            return []
        return [time(h, m) for h in spec.hours for m in spec.minutes]
    if day.weekday() not in schedule.weekdays:
        return []
    hour, minute = schedule.hour_minute
    return [time(hour, minute)]


def _dues_on(schedule: ScheduleConfig, day: date, zone: ZoneInfo) -> list[datetime]:
    # A set: two wall times pushed across a gap may land on the same instant.
    return sorted({wall_to_utc(day, at, zone) for at in _day_times(schedule, day)})


def due_times(schedule: ScheduleConfig, start: datetime, end: datetime) -> Iterator[datetime]:
    """Yield the due instants (UTC) in ``(start, end]``, oldest first."""
    zone = ZoneInfo(schedule.timezone)
    _require_aware(start, end)
    # One day of margin either side: a UTC range spans other local dates.
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    while day <= last:
        for due in _dues_on(schedule, day, zone):
            if start < due <= end:
                yield due
        day += timedelta(days=1)


def next_due(schedule: ScheduleConfig, after: datetime) -> datetime:
    """Return the first due instant (UTC) strictly after ``after``; raise ValueError when the
    schedule never fires (e.g. cron '0 0 31 2 *')."""
    zone = ZoneInfo(schedule.timezone)
    _require_aware(after)
    day = after.astimezone(zone).date() - timedelta(days=1)
    for _ in range(SEARCH_DAYS):
        for due in _dues_on(schedule, day, zone):
            if due > after:
                return due
        day += timedelta(days=1)
    raise ValueError(f"schedule {schedule.effective_name!r} never fires")


def previous_due(schedule: ScheduleConfig, at: datetime) -> datetime | None:
    """Return the last due instant (UTC) at or before ``at``, or None when there is none
    within the search horizon."""
    zone = ZoneInfo(schedule.timezone)
    _require_aware(at)
    day = at.astimezone(zone).date() + timedelta(days=1)
    for _ in range(SEARCH_DAYS):
        for due in reversed(_dues_on(schedule, day, zone)):
            if due <= at:
                return due
        day -= timedelta(days=1)
    return None


@dataclass(frozen=True)
class WindowDecision:
    """Whether a run at ``now`` belongs to a due time of the schedule, and why."""

    due: datetime | None  # the due time the run belongs to (UTC)
    in_window: bool
    reason: str


def window_decision(schedule: ScheduleConfig, now: datetime) -> WindowDecision:
    """Return whether a run starting at ``now`` is within the tolerance of a due time.

    A due time up to ``EARLY_SLACK`` in the future counts (a timer that fires a little early);
    one more than ``tolerance_minutes`` in the past is missed.
    """
    _require_aware(now)
    tolerance = timedelta(minutes=schedule.tolerance_minutes)
    upcoming = next_due(schedule, now)
    if upcoming - now <= EARLY_SLACK:
        return WindowDecision(upcoming, True, f"due at {upcoming.isoformat()} (early)")
    due = previous_due(schedule, now)
    if due is None:
        return WindowDecision(None, False, "no due time before now")
    late = now - due
    if late <= tolerance:
        return WindowDecision(due, True, f"due at {due.isoformat()}, {_minutes(late)} late")
    return WindowDecision(
        due,
        False,
        f"last due time {due.isoformat()} was {_minutes(late)} ago, more than the tolerance "
        f"of {schedule.tolerance_minutes} min; next due {upcoming.isoformat()}",
    )


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:.0f} min"


def _require_aware(*moments: datetime) -> None:
    for moment in moments:
        if moment.tzinfo is None:
            raise ValueError("schedule computations need timezone-aware datetimes")


# -- systemd OnCalendar --------------------------------------------------------------------

_DOW_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _calendar_list(values: tuple[int, ...] | None, width: int = 2) -> str:
    if values is None:
        return "*"
    return ",".join(f"{v:0{width}d}" for v in values)


def on_calendar(schedule: ScheduleConfig) -> list[str]:
    """Return the systemd ``OnCalendar=`` values (several when cron's day OR rule needs two),
    in the schedule's own time zone (systemd ≥ 235 accepts a trailing IANA zone)."""
    zone = schedule.timezone
    if schedule.cron is None:
        hour, minute = schedule.hour_minute
        days = "" if len(schedule.weekdays) == 7 else _weekday_list(schedule.weekdays) + " "
        return [f"{days}*-*-* {hour:02d}:{minute:02d}:00 {zone}"]
    spec = parse_cron(schedule.cron)
    hours = _calendar_list(spec.hours if len(spec.hours) < 24 else None)
    minutes = _calendar_list(spec.minutes if len(spec.minutes) < 60 else None)
    months = _calendar_list(spec.months)
    clock = f"{hours}:{minutes}:00 {zone}"
    if spec.days is not None and spec.weekdays is not None:
        return [
            f"*-{months}-{_calendar_list(spec.days)} {clock}",
            f"{_weekday_list(spec.weekdays)} *-{months}-* {clock}",
        ]
    dows = "" if spec.weekdays is None else _weekday_list(spec.weekdays) + " "
    return [f"{dows}*-{months}-{_calendar_list(spec.days)} {clock}"]


def _weekday_list(days: list[int] | tuple[int, ...]) -> str:
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


# -- cron entries ----------------------------------------------------------------------------


def cron_times(schedule: ScheduleConfig, host_zone: ZoneInfo, start: datetime) -> list[str]:
    """Return crontab time fields (``"M H D Mon DOW"``) that fire at every due time.

    Classic cron runs in the host's time zone. When the schedule's zone is the host's, the
    entry is exact. Otherwise the entry fires at every host wall time (minute, hour) on which
    a due time falls during the coming year, and ``run --scheduled`` keeps only the run that
    is due (the window check), so DST changes on either side stay correct.
    """
    if _same_zone(schedule.timezone, getattr(host_zone, "key", None)):
        if schedule.cron is not None:
            return [parse_cron(schedule.cron).expression]
        hour, minute = schedule.hour_minute
        dows = (
            "*"
            if len(schedule.weekdays) == 7
            else ",".join(str((d + 1) % 7) for d in schedule.weekdays)
        )
        return [f"{minute} {hour} * * {dows}"]
    slots: dict[int, set[int]] = {}
    for due in due_times(schedule, start, start + timedelta(days=366)):
        local = due.astimezone(host_zone)
        slots.setdefault(local.minute, set()).add(local.hour)
        if len(slots) > 60:  # pragma: no cover - every minute: can't get broader
            break
    by_hours: dict[tuple[int, ...], list[int]] = {}
    for minute, hours in slots.items():
        by_hours.setdefault(tuple(sorted(hours)), []).append(minute)
    return [
        f"{_cron_list(minutes, 60)} {_cron_list(hours, 24)} * * *"
        for hours, minutes in sorted(by_hours.items(), key=lambda kv: (min(kv[1]), kv[0]))
    ]


def _cron_list(values: list[int] | tuple[int, ...], size: int) -> str:
    return "*" if len(set(values)) == size else ",".join(str(v) for v in sorted(values))


_UTC_NAMES = frozenset(
    {
        "UTC",
        "Etc/UTC",
        "Etc/UCT",
        "UCT",
        "Etc/Universal",
        "Universal",
        "Etc/Zulu",
        "Zulu",
        "GMT",
        "Etc/GMT",
        "Etc/GMT0",
        "GMT0",
        "Etc/Greenwich",
    }
)


def _same_zone(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and (a == b or (a in _UTC_NAMES and b in _UTC_NAMES))
