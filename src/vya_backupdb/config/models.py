"""Typed, frozen configuration models. Parsed once at the edge (see ``config.loader``).

Every model forbids unknown keys so a typo is an error, not a silently ignored setting.
Field descriptions double as the documentation of ``config init`` and docs/configuration.md.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from vya_backupdb.config.base import FrozenModel
from vya_backupdb.config.ops import (
    MetricsConfig,
    NotificationConfig,
    ScheduleConfig,
    StatusConfig,
)
from vya_backupdb.config.remote import EncryptionConfig, RemoteConfig
from vya_backupdb.config.retention import RetentionConfig
from vya_backupdb.config.verification import CleanupConfig, VerificationConfig

__all__ = ["FrozenModel", "InstanceConfig", "RetentionConfig", "Settings"]

CompressionAlgorithm = Literal["none", "gzip", "bzip2", "xz", "zstd", "lz4"]
InstanceType = Literal["postgresql", "mysql", "mariadb", "sqlite", "files"]
PgFormat = Literal["plain", "custom", "directory"]
MysqlFormat = Literal["sql", "parallel"]
FilesStrategy = Literal["full", "incremental", "differential"]

#: Databases skipped unless ``include_system_databases`` is set.
SYSTEM_DATABASES: frozenset[str] = frozenset(
    {"information_schema", "performance_schema", "mysql", "sys", "template0", "template1"}
)

DEFAULT_PORTS: dict[str, int] = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class CompressionConfig(FrozenModel):
    algorithm: CompressionAlgorithm = Field(
        "zstd", description="none | gzip | bzip2 | xz | zstd | lz4 (zstd is fastest for its ratio)"
    )
    level: int | None = Field(
        None, description="Codec level; default: zstd 3, gzip 6, bzip2 9, xz 6, lz4 1"
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Compression threads (0 = one per CPU core): zstd in-process; xz via xz -T; "
        "gzip via pigz when installed; 1 = in-process, one thread",
    )

    @model_validator(mode="after")
    def _level_in_range(self) -> CompressionConfig:
        ranges = {
            "gzip": (0, 9),
            "bzip2": (1, 9),
            "xz": (0, 9),
            "zstd": (-7, 22),
            "lz4": (0, 16),
            "none": (0, 0),
        }
        low, high = ranges[self.algorithm]
        if self.level is not None and not low <= self.level <= high:
            raise ValueError(
                f"level {self.level} is out of range for {self.algorithm} ({low}..{high})"
            )
        return self


class StorageConfig(FrozenModel):
    base_path: Path = Field(
        Path("/var/backups/vya_backupdb"), description="Root directory of the local backup store"
    )
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    remotes: list[RemoteConfig] = Field(
        default_factory=list,
        description="Off-site stores (S3-compatible, SFTP, Azure Blob, GCS); see docs/storage.md",
    )
    auto_upload: bool = Field(False, description="Every new backup also goes to all remotes")
    keep_local: bool = Field(
        True,
        description="With auto_upload: false streams backups straight to the first remote only",
    )
    encryption: EncryptionConfig | None = Field(
        None, description="age encryption of backups (docs/encryption.md)"
    )

    @field_validator("remotes")
    @classmethod
    def _unique_remote_names(cls, value: list[RemoteConfig]) -> list[RemoteConfig]:
        names = [r.name for r in value]
        if len(names) != len(set(names)):
            raise ValueError("remote names must be unique")
        return value


class SecretsConfig(FrozenModel):
    directory: Path | None = Field(
        None,
        description="Credential store directory (default: .secrets beside the config file)",
    )
    master_key_file: Path | None = Field(
        None,
        description=(
            "Random machine key (0600) that encrypts the store; default "
            "~/.local/share/vya-backupdb/master.key. VYA_BACKUPDB_MASTER_KEY overrides it."
        ),
    )


class LoggingConfig(FrozenModel):
    format: Literal["rich", "json"] = Field(
        "rich", description="rich (human) or json (one object a line)"
    )
    file: Path | None = Field(None, description="Also write log lines to this file")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class InstanceConfig(FrozenModel):
    id: str = Field(..., pattern=_ID_PATTERN, description="Unique instance name, used in paths")
    type: InstanceType
    host: str | None = Field(None, description="Server host name or address (default localhost)")
    port: int | None = Field(None, ge=1, le=65535, description="Server port (default per type)")
    socket: Path | None = Field(
        None, description="Unix socket directory (PostgreSQL) or file (MySQL)"
    )
    user: str | None = Field(None, description="Login user")
    database: str | None = Field(
        None, description="Maintenance database to connect to (postgres / none for MySQL)"
    )
    credential: str | None = Field(
        None, description="Name of the entry in the credential store (default: the instance id)"
    )
    password: SecretStr | None = Field(
        None,
        description="Encrypted password from 'credentials encrypt' (enc:...); no plain text",
    )
    password_env: str | None = Field(None, description="Read the password from this variable")
    password_file: Path | None = Field(None, description="Read the password from this file (0600)")
    password_command: str | None = Field(
        None, description="Run this command (no shell) and use its first stdout line"
    )
    databases: list[str] = Field(
        default_factory=list, description="Databases to back up (glob patterns; empty = all)"
    )
    exclude_databases: list[str] = Field(
        default_factory=list, description="Databases to skip (glob patterns)"
    )
    include_system_databases: bool = Field(
        False, description="Also back up information_schema, mysql, sys, template0/1, ..."
    )
    # PostgreSQL
    format: PgFormat = Field("custom", description="PostgreSQL dump format: plain|custom|directory")
    jobs: int = Field(
        1,
        ge=1,
        le=64,
        description="pg_dump/pg_restore --jobs (directory format); MySQL/MariaDB parallel "
        "format: dump workers and restore clients",
    )
    directory_format_above_bytes: int | None = Field(
        None,
        ge=0,
        description="PostgreSQL: databases larger than this (pg_database_size, bytes) are "
        "dumped in directory format with pg_dump --jobs whatever 'format' says (e.g. "
        "10737418240 = 10 GiB; set jobs > 1)",
    )
    # MySQL / MariaDB
    mysql_format: MysqlFormat = Field(
        "sql",
        description="MySQL/MariaDB dump format: sql (one mariadb-dump stream) | parallel "
        "(per-table files dumped and loaded by 'jobs' workers; docs/mysql.md)",
    )
    parallel_dump_above_bytes: int | None = Field(
        None,
        ge=0,
        description="MySQL/MariaDB: databases larger than this (information_schema data + "
        "index bytes) are dumped in parallel format whatever 'mysql_format' says (e.g. "
        "10737418240 = 10 GiB; set jobs > 1)",
    )
    # SQLite and files
    paths: list[str] = Field(
        default_factory=list,
        description="sqlite: database files (globs); files: glob patterns of what to back up",
    )
    exclude: list[str] = Field(default_factory=list, description="files: glob patterns to skip")
    strategy: FilesStrategy = Field("full", description="files: full | incremental | differential")
    compare_content: bool = Field(
        False, description="files: detect changes by content hash, not only size+mtime+inode"
    )
    # All
    users: bool = Field(True, description="Back up users/roles with every backup of the instance")
    compression: CompressionConfig | None = Field(
        None, description="Override storage.compression for this instance"
    )
    dump_options: list[str] = Field(
        default_factory=list, description="Extra arguments for the dump tool"
    )
    timeout_seconds: int | None = Field(
        None, ge=1, description="Give up on a database dump after this many seconds"
    )
    retention: RetentionConfig | None = Field(
        None, description="Retention for this instance (replaces the global one as a whole)"
    )
    encryption: EncryptionConfig | None = Field(
        None, description="Override storage.encryption for this instance (enabled: false = off)"
    )

    @field_validator("password")
    @classmethod
    def _password_must_be_encrypted(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("enc:"):
            raise ValueError(
                "plain-text passwords are not accepted in the config; use "
                "'vya-backupdb credentials encrypt' or password_env/password_file"
            )
        return value

    @model_validator(mode="after")
    def _type_specific(self) -> InstanceConfig:
        if self.type in ("sqlite", "files") and not self.paths:
            raise ValueError(f"instances of type {self.type} need 'paths'")
        if self.directory_format_above_bytes is not None and self.type != "postgresql":
            raise ValueError("directory_format_above_bytes applies to postgresql instances only")
        if self.type not in ("mysql", "mariadb"):
            if self.mysql_format != "sql":
                raise ValueError("mysql_format applies to mysql and mariadb instances only")
            if self.parallel_dump_above_bytes is not None:
                raise ValueError(
                    "parallel_dump_above_bytes applies to mysql and mariadb instances only"
                )
        sources = [
            self.password is not None,
            self.password_env is not None,
            self.password_file is not None,
            self.password_command is not None,
        ]
        if sum(sources) > 1:
            raise ValueError(
                "give at most one of password, password_env, password_file, password_command"
            )
        return self

    @property
    def effective_host(self) -> str:
        return self.host or "localhost"

    @property
    def effective_port(self) -> int | None:
        return self.port or DEFAULT_PORTS.get(self.type)

    @property
    def credential_name(self) -> str:
        return self.credential or self.id

    @property
    def is_server(self) -> bool:
        return self.type in ("postgresql", "mysql", "mariadb")


class ParallelConfig(FrozenModel):
    max_workers: int = Field(
        1, ge=1, le=64, description="Databases backed up at once (the --jobs flag overrides it)"
    )


class Settings(FrozenModel):
    """The whole configuration file."""

    hostname: str = Field(
        default_factory=socket.gethostname, description="Name used in the backup layout"
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)
    instances: list[InstanceConfig] = Field(default_factory=list)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description="Default retention policy (see docs)"
    )
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    verification: VerificationConfig = Field(
        default_factory=VerificationConfig, description="Checking backups (docs/verification.md)"
    )
    cleanup: CleanupConfig = Field(
        default_factory=CleanupConfig, description="Applying the retention policy automatically"
    )
    notifications: list[NotificationConfig] = Field(
        default_factory=list, description="Where run results go (docs/notifications.md)"
    )
    schedules: list[ScheduleConfig] = Field(
        default_factory=list, description="When to back up what (docs/scheduling.md)"
    )
    status: StatusConfig = Field(
        default_factory=StatusConfig, description="Thresholds of 'vya-backupdb status'"
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics (docs/metrics.md)"
    )
    environments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Overlays merged over this file by --env NAME (e.g. dev, staging, prod)",
    )

    @field_validator("instances")
    @classmethod
    def _unique_ids(cls, value: list[InstanceConfig]) -> list[InstanceConfig]:
        seen: set[str] = set()
        for inst in value:
            if inst.id in seen:
                raise ValueError(f"duplicate instance id {inst.id!r}")
            seen.add(inst.id)
        return value

    @field_validator("schedules")
    @classmethod
    def _unique_schedule_names(cls, value: list[ScheduleConfig]) -> list[ScheduleConfig]:
        names = [s.effective_name for s in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"duplicate schedule name {name!r}: give each one a 'name'")
        return value

    def instance(self, instance_id: str) -> InstanceConfig:
        """Return the instance named ``instance_id``; raise NotFoundError when unknown."""
        for inst in self.instances:
            if inst.id == instance_id:
                return inst
        from vya_backupdb.errors import NotFoundError

        known = ", ".join(i.id for i in self.instances) or "(none configured)"
        raise NotFoundError(
            f"unknown instance {instance_id!r}",
            hint=f"Configured instances: {known}. See: vya-backupdb config show",
        )
