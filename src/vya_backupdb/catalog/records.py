"""The metadata record written next to every backup (``*.metadata.json``), format version 1.

The sidecars in storage are the source of truth; docs/on-disk-format.md documents every field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FORMAT_VERSION = 1

RecordKind = Literal["database", "users", "files"]
Status = Literal["success", "failed"]


class _Model(BaseModel):
    # Records written by a newer version may carry fields we don't know: keep them readable.
    model_config = ConfigDict(extra="allow", frozen=True)


class BackupInfo(_Model):
    instance: str
    instance_type: str
    database: str
    hostname: str
    server_product: str | None = None
    server_version: str | None = None
    tool: str | None = None
    tool_version: str | None = None
    dump_command: str | None = None  # masked: never contains a password
    dump_format: str | None = None  # custom | plain | directory | sql | sqlite | tar
    strategy: str = "full"
    parent_id: str | None = None
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    status: Status = "success"
    vya_version: str

    @field_validator("started_at", "finished_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must carry a time zone")
        return value


class FileInfo(_Model):
    name: str  # object name relative to the storage root
    size: int  # stored (compressed, encrypted) bytes
    raw_size: int  # bytes produced by the dump tool before compression
    sha256: str  # of the stored object, as in the .sha256 sidecar
    extension: str  # artifact type: dump | sql | tar | sqlite
    compression: str  # none | gzip | bzip2 | xz | zstd | lz4
    compression_level: int | None = None
    encryption: str | None = None


class Verification(_Model):
    verified_at: datetime
    level: str  # checksum | integrity | test-restore
    outcome: Literal["ok", "failed"]
    message: str = ""
    restore_seconds: float | None = None


class BackupRecord(_Model):
    format_version: int = FORMAT_VERSION
    id: str  # the object stem, unique in the store
    kind: RecordKind
    backup_info: BackupInfo
    file_info: FileInfo
    stats: dict[str, Any] = Field(default_factory=dict)  # {"tables": {name: rows}, ...}
    extra: dict[str, Any] = Field(default_factory=dict)  # binlog, database properties, ...
    verification: Verification | None = None

    @property
    def started_at(self) -> datetime:
        return self.backup_info.started_at

    @property
    def ok(self) -> bool:
        return self.backup_info.status == "success"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=False) + "\n"
