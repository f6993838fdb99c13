"""The retention section of the configuration: which backups a cleanup keeps.

``Settings.retention`` is the global default; ``InstanceConfig.retention`` replaces it for one
instance. The rules themselves are evaluated by :mod:`vya_backupdb.policies.retention`, whose
docstring (and docs/retention.md) is the reference for their exact meaning.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from vya_backupdb.config.base import FrozenModel

#: The GFS rule fields, newest-first granularity; the order reasons are listed in.
GFS_FIELDS: tuple[str, ...] = (
    "keep_last",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)


class RetentionConfig(FrozenModel):
    """A retention policy for one instance (or the global default).

    With no rule set (``retention_days`` and every ``keep_*`` left empty) the policy keeps
    everything: cleanup deletes nothing, not even failed-run records. Rules combine with OR:
    a backup survives when any rule keeps it. Whatever the rules say, the newest successful
    backup of each database and every backup a kept incremental/differential depends on are
    kept.
    """

    retention_days: int | None = Field(
        None,
        ge=0,
        description=(
            "Keep every successful backup younger than this many days (24-hour periods before "
            "now). Empty: no age rule. Leave this and every keep_* empty to keep everything"
        ),
    )
    min_backups: int = Field(
        1,
        ge=0,
        description=(
            "Never keep fewer than this many successful backups per database; the newest ones "
            "are kept to make up the number. Failed runs never count. The newest successful "
            "backup is kept even with 0"
        ),
    )
    keep_last: int | None = Field(
        None, ge=0, description="GFS: keep the N newest successful backups of each database"
    )
    keep_daily: int | None = Field(
        None,
        ge=0,
        description=(
            "GFS: keep the newest backup of each of the N most recent calendar days that have "
            "a successful backup (days without one do not use up the count)"
        ),
    )
    keep_weekly: int | None = Field(
        None,
        ge=0,
        description="GFS: likewise for ISO weeks (Monday to Sunday, named like 2026-W14)",
    )
    keep_monthly: int | None = Field(
        None, ge=0, description="GFS: likewise for calendar months (named like 2026-04)"
    )
    keep_yearly: int | None = Field(
        None, ge=0, description="GFS: likewise for calendar years (named like 2026)"
    )
    timezone: str = Field(
        "UTC",
        description=(
            "IANA time zone (e.g. Europe/Berlin) in which days, weeks, months and years begin "
            "for the keep_daily..keep_yearly buckets"
        ),
    )
    keep_failed_days: int = Field(
        7,
        ge=0,
        description=(
            "Keep records of failed or partial runs this many days, then delete them (applies "
            "only when some rule is set; they never count towards min_backups)"
        ),
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'UTC', "
                "'Europe/Berlin' or 'America/Sao_Paulo' (see /usr/share/zoneinfo)"
            ) from exc
        return value

    @property
    def has_rules(self) -> bool:
        """Return True when retention_days or any keep_* rule is set (else keep everything)."""
        return self.retention_days is not None or any(
            getattr(self, name) is not None for name in GFS_FIELDS
        )

    @property
    def zone(self) -> ZoneInfo:
        """Return the ZoneInfo the calendar buckets are computed in."""
        return ZoneInfo(self.timezone)
