"""Naming rules: where each backup object lives in storage (the on-disk layout, format 1).

```
{hostname}/{instance_id}/{db_name}/{YYYY-MM-DD}/
    {db}_{YYYYMMDD_HHMMSS}_{strategy}.{ext}{codec suffix}
    {db}_{YYYYMMDD_HHMMSS}_{strategy}.{ext}{codec suffix}.sha256
    {db}_{YYYYMMDD_HHMMSS}_{strategy}.metadata.json
{hostname}/{instance_id}/users_{YYYYMMDD_HHMMSS}.sql{codec suffix}  (+ .sha256, .metadata.json)
{hostname}/_runs/{YYYY-MM-DD}/{run_id}.json
```
Names are relative to ``storage.base_path``. Timestamps are UTC.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

METADATA_SUFFIX = ".metadata.json"
SHA256_SUFFIX = ".sha256"
USERS_DB = "_users"  # the pseudo-database under which users files are recorded
FILES_DB = "files"  # files instances have one "database"

# Characters that cannot appear in one path component, or that would change its meaning.
_UNSAFE = {"/", "\\", "%", "\0"}


def safe_component(name: str) -> str:
    """Return ``name`` usable as one path component; reversible with :func:`unsafe_component`.

    Spaces, quotes and unicode are kept (they are valid in file names); '/', '\\', '%',
    control characters and a leading '.' are percent-encoded, so a database called '../x'
    or 'a/b' can never escape its directory.
    """
    out = []
    for i, ch in enumerate(name):
        if ch in _UNSAFE or ord(ch) < 32 or ord(ch) == 127 or (i == 0 and ch == "."):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out) or "%00"


def unsafe_component(component: str) -> str:
    """Reverse :func:`safe_component`."""
    from urllib.parse import unquote

    return unquote(component)


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%d_%H%M%S")


@dataclass(frozen=True)
class BackupNames:
    """All object names of one backup."""

    stem: str  # .../{db}_{ts}_{strategy}
    data: str  # stem + .{ext}{suffix}

    @property
    def sha256(self) -> str:
        return self.data + SHA256_SUFFIX

    @property
    def metadata(self) -> str:
        return self.stem + METADATA_SUFFIX

    @property
    def manifest(self) -> str:
        """Files backups: the manifest (JSON lines, zstd) next to the archive."""
        return self.stem + ".manifest.jsonl.zst"

    @property
    def basename(self) -> str:
        return self.data.rsplit("/", 1)[-1]


def database_backup_names(
    hostname: str,
    instance: str,
    database: str,
    moment: datetime,
    strategy: str,
    extension: str,
    codec_suffix: str,
) -> BackupNames:
    db = safe_component(database)
    folder = f"{safe_component(hostname)}/{safe_component(instance)}/{db}/{moment:%Y-%m-%d}"
    stem = f"{folder}/{db}_{timestamp(moment)}_{strategy}"
    return BackupNames(stem=stem, data=f"{stem}.{extension}{codec_suffix}")


def users_backup_names(
    hostname: str, instance: str, moment: datetime, codec_suffix: str
) -> BackupNames:
    stem = f"{safe_component(hostname)}/{safe_component(instance)}/users_{timestamp(moment)}"
    return BackupNames(stem=stem, data=f"{stem}.sql{codec_suffix}")


def instance_prefix(hostname: str, instance: str) -> str:
    return f"{safe_component(hostname)}/{safe_component(instance)}/"


def database_prefix(hostname: str, instance: str, database: str) -> str:
    return f"{instance_prefix(hostname, instance)}{safe_component(database)}/"


def new_run_id(moment: datetime) -> str:
    """Return a new run id: the UTC start time plus a random suffix."""
    return f"{moment:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def run_log_name(hostname: str, moment: datetime, run_id: str) -> str:
    return f"{safe_component(hostname)}/_runs/{moment:%Y-%m-%d}/{run_id}.json"


def sidecar_line(sha256: str, basename: str) -> str:
    """Return the `.sha256` file content, compatible with `sha256sum -c`."""
    return f"{sha256}  {basename}\n"


def parse_sidecar(text: str) -> tuple[str, str]:
    """Return (sha256, basename) from a `.sha256` file; raise ValueError when malformed."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    digest, _, name = line.partition("  ")
    digest = digest.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
        raise ValueError("not a 'sha256  filename' line")
    return digest, name.lstrip("*")
