"""Retention: decide which backups a cleanup keeps and which it deletes, with the reasons.

A pure function of the catalog records (reduced to :class:`Candidate`) and a clock: no I/O,
no deletion. The cleanup job acts on the decisions; ``--dry-run`` prints them.

Semantics (docs/retention.md has a worked example):

* Backups are evaluated per (instance, database) group; ordering is by ``started_at`` (ties
  broken by id), newest first.
* Only ``success`` backups are selected by the rules and counted by ``min_backups``.
  ``failed`` and ``partial`` ones are kept while younger than ``keep_failed_days`` and deleted
  after ("deleted: failed run older than 7 days"); they never count towards a minimum. A record
  with any other status (e.g. a run still in progress) is kept: deleting is irreversible, and a
  status we do not understand is no evidence the backup is garbage.
* ``keep_last N`` keeps the N newest successful backups ("kept: last 2 of 5").
* ``keep_daily N`` keeps the newest successful backup of each of the N most recent calendar
  days *that have one* ("kept: daily 2026-04-05"); likewise ``keep_weekly`` with ISO weeks
  ("kept: weekly 2026-W14", so 2027-01-01 is in 2026-W53), ``keep_monthly`` ("2026-04") and
  ``keep_yearly`` ("2026"). Days, weeks, months and years begin at local midnight in the
  configured time zone, so a backup at 00:30 Berlin time belongs to that Berlin day whatever
  its UTC date or the daylight-saving offset. These are restic's semantics: days without a
  backup do not use up the count (after a ten-day outage ``keep_daily 7`` still leaves seven
  daily restore points, where counting calendar days would leave none), and the rules are
  independent, so one backup may be kept by several rules and lists every reason. (borg
  differs: a backup taken by an earlier rule does not count for a later one.)
* ``retention_days D`` keeps every successful backup younger than D x 24 hours
  ("kept: younger than 30 days"). All rules combine with OR.
* The newest successful backup is always kept ("kept: newest successful"), even when every
  rule says 0.
* ``min_backups N``: when fewer than N successful backups would be kept, the newest
  successful ones not yet kept are added until N are ("kept: min_backups 3").
* Chains: a kept backup keeps the backup named by its ``parent_id``, transitively
  ("kept: parent of <child id>"), whatever that parent's age or status, so a kept incremental
  or differential is always restorable; dependency wins over deletion. Consequently a deleted
  backup never has a kept dependant. Failed records do not protect their parent (a failed run
  has nothing to restore). Parents are looked up among all candidates, not only the group.
* No rule configured at all (``RetentionConfig.has_rules`` is False): everything is kept
  ("kept: no retention policy"), failed records included.
* Every timestamp (``now`` and each ``started_at``) must be timezone-aware; a naive one raises
  ValueError naming the backup. Nothing else about odd input raises: duplicate ids, unknown
  parents, cycles in ``parent_id`` and backups dated in the future are handled.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol, TypedDict
from zoneinfo import ZoneInfo

from vya_backupdb.config.retention import GFS_FIELDS, RetentionConfig

Status = Literal["success", "failed", "partial"] | str

_SUCCESS = "success"
#: Statuses whose records expire after ``keep_failed_days``; the value is how reasons name them.
_EXPIRING = {"failed": "failed run", "partial": "partial backup"}


@dataclass(frozen=True)
class Candidate:
    """The minimal view of a catalog record the policy needs."""

    id: str
    instance: str
    database: str
    started_at: datetime  # tz-aware
    status: Status
    strategy: str  # full | incremental | differential (database dumps: full)
    parent_id: str | None = None  # incremental/differential: the backup it depends on
    size_bytes: int = 0


@dataclass(frozen=True)
class Decision:
    """Keep or delete one candidate, with every reason that applied."""

    candidate: Candidate
    keep: bool
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        """Return the reasons joined for a one-line display."""
        return "; ".join(self.reasons)


class RetentionPolicy(Protocol):
    """What the cleanup job needs from a retention policy."""

    def decide(self, candidates: Sequence[Candidate], now: datetime) -> list[Decision]:
        """Return one decision per candidate, in the candidates' order."""
        ...


class RetentionSummary(TypedDict):
    total: int
    kept: int
    deleted: int
    kept_bytes: int
    freed_bytes: int


def _bucket_rules() -> tuple[tuple[str, str, Callable[[datetime], str]], ...]:
    # (config field, reason word, bucket key of a local datetime). ISO week via isocalendar()
    # rather than strftime("%G-W%V"), which is not portable to every libc.
    def week(local: datetime) -> str:
        iso = local.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"

    return (
        ("keep_daily", "daily", lambda local: local.strftime("%Y-%m-%d")),
        ("keep_weekly", "weekly", week),
        ("keep_monthly", "monthly", lambda local: local.strftime("%Y-%m")),
        ("keep_yearly", "yearly", lambda local: f"{local.year:04d}"),
    )


_BUCKET_RULES = _bucket_rules()


def _days(count: int) -> str:
    return "1 day" if count == 1 else f"{count} days"


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} is a naive datetime ({value.isoformat()}); retention needs timezone-aware "
            "datetimes (e.g. datetime.now(timezone.utc)) to compare and bucket backups"
        )


class _Verdicts:
    """The reasons gathered so far, indexed by position (ids may repeat in odd input)."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = candidates
        self.kept: list[list[str]] = [[] for _ in candidates]
        by_id: defaultdict[str, list[int]] = defaultdict(list)
        for index, candidate in enumerate(candidates):
            by_id[candidate.id].append(index)
        self.by_id: dict[str, list[int]] = dict(by_id)

    def keep(self, index: int, reason: str) -> None:
        """Record a reason to keep the candidate at ``index`` (once, in order of discovery)."""
        reasons = self.kept[index]
        if reason not in reasons:
            reasons.append(reason)

    def is_kept(self, index: int) -> bool:
        return bool(self.kept[index])


class GfsRetention:
    """Retention by age (``retention_days``), GFS buckets and ``keep_last``, built from config.

    See the module docstring for the exact semantics.
    """

    def __init__(self, config: RetentionConfig) -> None:
        self.config = config
        self._zone = ZoneInfo(config.timezone)

    def decide(self, candidates: Sequence[Candidate], now: datetime) -> list[Decision]:
        """Return one decision per candidate, in the candidates' order.

        Raise ValueError when ``now`` or a candidate's ``started_at`` is naive.
        """
        _require_aware(now, "now")
        for candidate in candidates:
            _require_aware(candidate.started_at, f"started_at of backup {candidate.id!r}")
        if not self.config.has_rules:
            return [Decision(c, True, ("kept: no retention policy",)) for c in candidates]

        verdicts = _Verdicts(candidates)
        groups: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        for index, candidate in enumerate(candidates):
            groups[(candidate.instance, candidate.database)].append(index)
        newest_first = {
            key: sorted(
                indices,
                key=lambda i: (candidates[i].started_at, candidates[i].id),
                reverse=True,
            )
            for key, indices in groups.items()
        }

        for ordered in newest_first.values():
            self._apply_rules(verdicts, ordered, now)
        # Parents first, then the minimum: a parent kept for a chain is a successful backup
        # that already counts, so the minimum does not keep more than it must.
        self._keep_parents(verdicts, range(len(candidates)))
        for ordered in newest_first.values():
            self._apply_minimum(verdicts, ordered)
        self._keep_parents(verdicts, range(len(candidates)))

        return [
            Decision(c, True, tuple(verdicts.kept[i]))
            if verdicts.is_kept(i)
            else Decision(c, False, self._deletion_reasons(c))
            for i, c in enumerate(candidates)
        ]

    def _apply_rules(self, verdicts: _Verdicts, ordered: list[int], now: datetime) -> None:
        config = self.config
        candidates = verdicts.candidates
        successful = [i for i in ordered if candidates[i].status == _SUCCESS]

        for index in ordered:
            status = candidates[index].status
            if status == _SUCCESS:
                continue
            label = _EXPIRING.get(status)
            if label is None:
                verdicts.keep(index, f"kept: unknown status {status!r}")
            elif now - candidates[index].started_at < timedelta(days=config.keep_failed_days):
                verdicts.keep(index, f"kept: {label} younger than {_days(config.keep_failed_days)}")

        if config.keep_last is not None:
            for rank, index in enumerate(successful[: config.keep_last], start=1):
                verdicts.keep(index, f"kept: last {rank} of {config.keep_last}")

        for field, word, bucket_of in _BUCKET_RULES:
            count: int | None = getattr(config, field)
            if not count:
                continue
            # A set rather than "differs from the previous key": a DST change that moves local
            # time back across midnight can make local dates non-monotonic in UTC order.
            seen: set[str] = set()
            for index in successful:
                bucket = bucket_of(candidates[index].started_at.astimezone(self._zone))
                if bucket in seen:
                    continue
                seen.add(bucket)
                verdicts.keep(index, f"kept: {word} {bucket}")
                if len(seen) >= count:
                    break

        if config.retention_days is not None:
            window = timedelta(days=config.retention_days)
            for index in successful:
                if now - candidates[index].started_at < window:
                    verdicts.keep(index, f"kept: younger than {_days(config.retention_days)}")

        if successful:
            verdicts.keep(successful[0], "kept: newest successful")

    def _apply_minimum(self, verdicts: _Verdicts, ordered: list[int]) -> None:
        minimum = self.config.min_backups
        candidates = verdicts.candidates
        successful = [i for i in ordered if candidates[i].status == _SUCCESS]
        kept = sum(1 for i in successful if verdicts.is_kept(i))
        for index in successful:
            if kept >= minimum:
                break
            if not verdicts.is_kept(index):
                verdicts.keep(index, f"kept: min_backups {minimum}")
                kept += 1

    @staticmethod
    def _keep_parents(verdicts: _Verdicts, seeds: Iterable[int]) -> None:
        candidates = verdicts.candidates
        # Newest children first, breadth first: the order of "parent of" reasons then depends
        # on the backups, never on the order the catalog listed them in.
        pending = deque(
            sorted(
                (i for i in seeds if verdicts.is_kept(i) and candidates[i].status != "failed"),
                key=lambda i: (candidates[i].started_at, candidates[i].id),
                reverse=True,
            )
        )
        # Whatever a chain pulls in is walked further, even a failed record that was already
        # kept for its age and so was no seed; the set also ends cycles in parent_id.
        walked = set(pending)
        while pending:
            child = candidates[pending.popleft()]
            if child.parent_id is None:
                continue
            for parent in verdicts.by_id.get(child.parent_id, ()):
                verdicts.keep(parent, f"kept: parent of {child.id}")
                if parent not in walked:
                    walked.add(parent)
                    pending.append(parent)

    def _deletion_reasons(self, candidate: Candidate) -> tuple[str, ...]:
        config = self.config
        label = _EXPIRING.get(candidate.status)
        if label is not None:
            return (f"deleted: {label} older than {_days(config.keep_failed_days)}",)
        reasons: list[str] = []
        if config.retention_days is not None:
            reasons.append(f"deleted: older than {_days(config.retention_days)}")
        rules = [
            f"{name} {getattr(config, name)}"
            for name in GFS_FIELDS
            if getattr(config, name) is not None
        ]
        if rules:
            reasons.append(f"deleted: not selected by {', '.join(rules)}")
        return tuple(reasons)


def decide(
    config: RetentionConfig, candidates: Sequence[Candidate], now: datetime
) -> list[Decision]:
    """Return one decision per candidate (in their order) under ``config`` at time ``now``.

    Raise ValueError when ``now`` or a candidate's ``started_at`` is a naive datetime.
    """
    return GfsRetention(config).decide(candidates, now)


def summarize(decisions: Iterable[Decision]) -> RetentionSummary:
    """Return counts of kept and deleted backups, the bytes kept and the bytes freed."""
    summary = RetentionSummary(total=0, kept=0, deleted=0, kept_bytes=0, freed_bytes=0)
    for decision in decisions:
        summary["total"] += 1
        size = max(decision.candidate.size_bytes, 0)
        if decision.keep:
            summary["kept"] += 1
            summary["kept_bytes"] += size
        else:
            summary["deleted"] += 1
            summary["freed_bytes"] += size
    return summary
