"""Configuration of unattended operation: schedules, notifications, status thresholds, metrics.

Each model forbids unknown keys (a typo is an error). Secrets (SMTP passwords, webhook URLs,
which carry their token) come from environment variables or files, never the config in clear.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from vya_backupdb.config.base import FrozenModel

NotifyEvent = Literal["failure", "warning", "success"]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_TIME_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name such as UTC, Europe/Berlin, "
            "America/Sao_Paulo"
        ) from None
    return value


class ScheduleConfig(FrozenModel):
    """When to back up which instances: weekdays + time, or a cron expression."""

    name: str | None = Field(
        None,
        pattern=_NAME_PATTERN,
        description="Schedule name used by --schedule and unit names (default: the instance "
        "ids joined by '_', or 'all')",
    )
    instances: list[str] = Field(
        default_factory=list, description="Instances to back up (empty = all configured)"
    )
    weekdays: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4, 5, 6],
        description="Days to run, 0=Monday … 6=Sunday (with 'time')",
    )
    time: str | None = Field(None, description="Local time of day \"HH:MM\" in 'timezone'")
    cron: str | None = Field(
        None, description="Cron expression (5 fields) instead of weekdays/time"
    )
    timezone: str = Field("UTC", description="IANA time zone of 'time' or 'cron'")
    tolerance_minutes: int = Field(
        60,
        ge=1,
        le=24 * 60,
        description="A run that starts up to this late still counts (timer jitter, wake-up); "
        "a due time missed by more is skipped with a warning",
    )
    randomized_delay_seconds: int = Field(
        0, ge=0, description="systemd RandomizedDelaySec: spread the start of many hosts"
    )

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("weekdays")
    @classmethod
    def _valid_weekdays(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("weekdays must name at least one day (0=Monday … 6=Sunday)")
        bad = [d for d in value if not 0 <= d <= 6]
        if bad:
            raise ValueError(f"weekday {bad[0]} is out of range (0=Monday … 6=Sunday)")
        return sorted(set(value))

    @field_validator("time")
    @classmethod
    def _valid_time(cls, value: str | None) -> str | None:
        if value is not None and not _TIME_PATTERN.match(value):
            raise ValueError(f'time {value!r} must be "HH:MM" (24 h), e.g. "02:30"')
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from vya_backupdb.policies.schedule import validate_cron

        return validate_cron(value)

    @model_validator(mode="after")
    def _one_form(self) -> ScheduleConfig:
        if (self.time is None) == (self.cron is None):
            raise ValueError("a schedule needs exactly one of 'time' (with weekdays) or 'cron'")
        if self.randomized_delay_seconds > self.tolerance_minutes * 60:
            raise ValueError(
                "randomized_delay_seconds is larger than tolerance_minutes: delayed runs "
                "would be skipped as late"
            )
        return self

    @property
    def effective_name(self) -> str:
        if self.name:
            return self.name
        return "_".join(self.instances) if self.instances else "all"

    @property
    def hour_minute(self) -> tuple[int, int]:
        """Return (hour, minute) of 'time'; raise ValueError for cron schedules."""
        if self.time is None:
            raise ValueError("cron schedule has no fixed time")
        hour, minute = self.time.split(":")
        return int(hour), int(minute)


class _NotificationBase(FrozenModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str | None = Field(None, description="Channel name for logs and 'notify test'")
    on: list[NotifyEvent] = Field(
        default_factory=lambda: list[NotifyEvent](["failure", "warning"]),
        description="Events that trigger this channel: failure, warning, success",
    )
    timeout_seconds: float = Field(20.0, gt=0, le=300, description="Network timeout")


class EmailNotification(_NotificationBase):
    type: Literal["email"]
    smtp_host: str = Field(..., description="SMTP server")
    smtp_port: int = Field(587, ge=1, le=65535)
    ssl: bool = Field(False, description="Implicit TLS (SMTPS, usually port 465)")
    starttls: bool = Field(
        True, description="Upgrade with STARTTLS (usually port 587); ignored when ssl is set"
    )
    user: str | None = Field(None, description="SMTP login user")
    password_env: str | None = Field(None, description="Variable holding the SMTP password")
    password_file: Path | None = Field(None, description="File holding the SMTP password")
    ca_file: Path | None = Field(None, description="CA bundle to trust (self-signed servers)")
    sender: str = Field(..., alias="from", description="From address")
    to: list[str] = Field(..., min_length=1, description="Recipients")
    subject_prefix: str = "[vya-backupdb]"
    attach_log: bool = Field(True, description="Attach the gzip-compressed log on failure")
    attach_max_bytes: int = Field(
        2_000_000, ge=1024, description="Largest attachment; a longer log is cut to its end"
    )

    @model_validator(mode="after")
    def _one_secret(self) -> EmailNotification:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env, password_file")
        return self


class SlackNotification(_NotificationBase):
    type: Literal["slack"]
    webhook_url: SecretStr | None = Field(None, description="Incoming-webhook URL (secret)")
    webhook_url_env: str | None = Field(None, description="Variable holding the webhook URL")

    @model_validator(mode="after")
    def _one_url(self) -> SlackNotification:
        if (self.webhook_url is None) == (self.webhook_url_env is None):
            raise ValueError("a slack channel needs exactly one of webhook_url, webhook_url_env")
        return self


class WebhookNotification(_NotificationBase):
    type: Literal["webhook"]
    url: str | None = Field(None, description="URL receiving the JSON payload (POST)")
    url_env: str | None = Field(None, description="Variable holding the URL")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers")
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="Headers whose value is read from a variable"
    )

    @model_validator(mode="after")
    def _one_url(self) -> WebhookNotification:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("a webhook channel needs exactly one of url, url_env")
        return self


class AppriseNotification(_NotificationBase):
    type: Literal["apprise"]
    url: str | None = Field(None, description="Apprise URL (tgram://, mailto://, json://, ...)")
    url_env: str | None = Field(None, description="Variable holding the Apprise URL")

    @model_validator(mode="after")
    def _one_url(self) -> AppriseNotification:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("an apprise channel needs exactly one of url, url_env")
        return self


NotificationConfig = Annotated[
    EmailNotification | SlackNotification | WebhookNotification | AppriseNotification,
    Field(discriminator="type"),
]


class StatusThresholds(FrozenModel):
    warning_hours: float = Field(26.0, gt=0, description="Last good backup older: warning")
    critical_hours: float = Field(50.0, gt=0, description="Last good backup older: critical")
    size_change_percent: float = Field(
        50.0, gt=0, description="Size change vs the previous backup above this: warning"
    )
    verify_max_age_days: float | None = Field(
        None, gt=0, description="Last verification older than this (or none): warning"
    )

    @model_validator(mode="after")
    def _ordered(self) -> StatusThresholds:
        if self.critical_hours < self.warning_hours:
            raise ValueError("critical_hours must be at least warning_hours")
        return self


class StatusConfig(StatusThresholds):
    instances: dict[str, StatusThresholds] = Field(
        default_factory=dict, description="Per-instance thresholds (replace the defaults)"
    )

    def for_instance(self, instance: str) -> StatusThresholds:
        """Return the thresholds that apply to ``instance``."""
        return self.instances.get(instance) or StatusThresholds(
            warning_hours=self.warning_hours,
            critical_hours=self.critical_hours,
            size_change_percent=self.size_change_percent,
            verify_max_age_days=self.verify_max_age_days,
        )


class MetricsConfig(FrozenModel):
    pushgateway_url: str | None = Field(
        None, description="Push metrics here after each run, e.g. http://pushgw:9091"
    )
    pushgateway_job: str = Field("vya_backupdb", description="Pushgateway job label")
    textfile_path: Path | None = Field(
        None,
        description="Write a node_exporter textfile here after each run "
        "(e.g. /var/lib/prometheus/node-exporter/vya_backupdb.prom)",
    )
    listen_address: str = Field("0.0.0.0", description="metrics serve: address to bind")  # noqa: S104
    port: int = Field(9090, ge=1, le=65535, description="metrics serve: default port")

    @field_validator("textfile_path")
    @classmethod
    def _prom_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".prom":
            raise ValueError("node_exporter only reads textfiles ending in .prom")
        return value
