"""`vya-backupdb status`: is every database protected right now?

Per instance and database: age of the newest good backup, its size and the change against the
previous one, the newest verification, whether the newest attempt failed, and a verdict
(ok / warning / critical) against ``status`` thresholds. The overall exit code follows the
Nagios plugin convention (0 ok, 1 warning, 2 critical, 3 unknown) so any Nagios-style monitor
(Icinga, Zabbix, Sensu, check_by_ssh) can run the command as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.errors import VyaError

if TYPE_CHECKING:
    from vya_backupdb.catalog.catalog import Catalog
    from vya_backupdb.config.models import Settings
    from vya_backupdb.config.ops import StatusThresholds

VERDICTS = ("ok", "warning", "critical", "unknown")
NAGIOS_EXIT = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
_RANK = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


def worst(verdicts: list[str]) -> str:
    """Return the most severe verdict (unknown > critical > warning > ok); ok when empty."""
    return max(verdicts, key=lambda v: _RANK[v], default="ok")


@dataclass
class DatabaseStatus:
    instance: str
    database: str
    verdict: str = "ok"
    reasons: list[str] = field(default_factory=list)
    last_success_at: datetime | None = None
    age_hours: float | None = None
    size_bytes: int | None = None
    previous_size_bytes: int | None = None
    size_change_percent: float | None = None
    backups: int = 0
    last_verified_at: datetime | None = None
    verification: str | None = None  # ok | failed
    last_attempt_failed: bool = False

    def flag(self, verdict: str, reason: str) -> None:
        self.verdict = worst([self.verdict, verdict])
        self.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "database": self.database,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "age_hours": None if self.age_hours is None else round(self.age_hours, 2),
            "size_bytes": self.size_bytes,
            "previous_size_bytes": self.previous_size_bytes,
            "size_change_percent": None
            if self.size_change_percent is None
            else round(self.size_change_percent, 1),
            "backups": self.backups,
            "last_verified_at": self.last_verified_at.isoformat()
            if self.last_verified_at
            else None,
            "verification": self.verification,
            "last_attempt_failed": self.last_attempt_failed,
        }


@dataclass
class StatusReport:
    checked_at: datetime
    databases: list[DatabaseStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the check itself could not run fully

    @property
    def verdict(self) -> str:
        if self.problems:
            return "unknown"
        return worst([d.verdict for d in self.databases])

    @property
    def exit_code(self) -> int:
        return NAGIOS_EXIT[self.verdict]

    def summary(self) -> str:
        """Return the Nagios-style first line, e.g. 'WARNING - 1 warning, 3 ok'."""
        counts = {v: sum(1 for d in self.databases if d.verdict == v) for v in VERDICTS}
        parts = [f"{n} {v}" for v, n in counts.items() if n]
        text = f"{self.verdict.upper()} - {', '.join(parts) or 'nothing configured'}"
        if self.problems:
            text += f"; {self.problems[0]}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "problems": self.problems,
            "databases": [d.as_dict() for d in self.databases],
        }


def check_status(
    settings: Settings,
    catalog: Catalog,
    *,
    instances: tuple[str, ...] = (),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> StatusReport:
    """Return the status of every database of the chosen (default: all configured) instances.

    Never raises for a storage problem: the report's verdict is then ``unknown`` (exit 3) with
    the reason, as monitors expect. Raise NotFoundError for an unknown instance name.
    """
    from vya_backupdb.observability.metrics import read_run_entries

    now = clock()
    report = StatusReport(checked_at=now)
    chosen = [settings.instance(n) for n in instances] if instances else settings.instances
    try:
        records = [r for inst in chosen for r in catalog.records(inst.id)]
        runs = read_run_entries(catalog)
    except VyaError as exc:
        report.problems.append(f"cannot read the catalog: {exc.message}")
        return report
    by_db: dict[tuple[str, str], list[BackupRecord]] = {}
    for record in records:
        by_db.setdefault((record.backup_info.instance, record.backup_info.database), []).append(
            record
        )
    attempts: dict[tuple[str, str], tuple[float, str, str | None]] = {}
    for entry in runs:
        if entry.operation != "backup" or entry.status not in ("success", "failed"):
            continue
        key = (entry.instance, entry.database)
        if key not in attempts or entry.finished >= attempts[key][0]:
            attempts[key] = (entry.finished, entry.status, entry.error_type)
    for inst in chosen:
        thresholds = settings.status.for_instance(inst.id)
        keys = sorted(k for k in by_db if k[0] == inst.id)
        instance_attempt = attempts.get((inst.id, "*"))
        if not keys:
            status = DatabaseStatus(inst.id, "*")
            status.flag("critical", "no backup of this instance exists")
            if instance_attempt and instance_attempt[1] == "failed":
                status.last_attempt_failed = True
                status.reasons.append(f"the last attempt failed ({instance_attempt[2]})")
            report.databases.append(status)
            continue
        for key in keys:
            status = _database_status(key, by_db[key], attempts.get(key), thresholds, now)
            if instance_attempt and instance_attempt[1] == "failed":
                newest = status.last_success_at.timestamp() if status.last_success_at else 0.0
                if instance_attempt[0] > newest:
                    status.last_attempt_failed = True
                    status.flag(
                        "warning",
                        f"the newest run of instance {inst.id} failed ({instance_attempt[2]})",
                    )
            report.databases.append(status)
    return report


def _database_status(
    key: tuple[str, str],
    records: list[BackupRecord],
    attempt: tuple[float, str, str | None] | None,
    thresholds: StatusThresholds,
    now: datetime,
) -> DatabaseStatus:
    status = DatabaseStatus(key[0], key[1])
    ok = sorted((r for r in records if r.ok), key=lambda r: r.backup_info.finished_at)
    status.backups = len(ok)
    if not ok:
        status.flag("critical", "no successful backup exists")
        return status
    newest = ok[-1]
    finished = newest.backup_info.finished_at
    status.last_success_at = finished
    status.age_hours = (now - finished) / timedelta(hours=1)
    status.size_bytes = newest.file_info.size
    if status.age_hours > thresholds.critical_hours:
        status.flag(
            "critical",
            f"last good backup is {status.age_hours:.1f} h old "
            f"(critical above {thresholds.critical_hours:g} h)",
        )
    elif status.age_hours > thresholds.warning_hours:
        status.flag(
            "warning",
            f"last good backup is {status.age_hours:.1f} h old "
            f"(warning above {thresholds.warning_hours:g} h)",
        )
    if len(ok) >= 2:
        previous = ok[-2].file_info.size
        status.previous_size_bytes = previous
        if previous > 0:
            change = (newest.file_info.size - previous) * 100.0 / previous
            status.size_change_percent = change
            if abs(change) > thresholds.size_change_percent:
                status.flag(
                    "warning",
                    f"size changed by {change:+.0f}% against the previous backup "
                    f"(more than {thresholds.size_change_percent:g}%)",
                )
    verifications = [r.verification for r in records if r.verification is not None]
    if verifications:
        latest = max(verifications, key=lambda v: v.verified_at)
        status.last_verified_at = latest.verified_at
        status.verification = latest.outcome
        if latest.outcome != "ok":
            status.flag("critical", f"the newest verification failed: {latest.message}".strip())
    if thresholds.verify_max_age_days is not None:
        limit = timedelta(days=thresholds.verify_max_age_days)
        if status.last_verified_at is None:
            status.flag("warning", "never verified")
        elif now - status.last_verified_at > limit:
            status.flag(
                "warning",
                f"last verification is older than {thresholds.verify_max_age_days:g} days",
            )
    if attempt is not None and attempt[1] == "failed" and attempt[0] > finished.timestamp():
        status.last_attempt_failed = True
        status.flag("warning", f"the newest backup attempt failed ({attempt[2] or 'error'})")
    return status
