"""SQLite: a consistent online copy through the sqlite3 backup API.

A "database" of a sqlite instance is one file matched by the instance's ``paths`` globs; its
name is the file name (e.g. ``app.db``). The dump is the copy itself (a valid SQLite file), so
it restores with ``zstd -d < x.sqlite.zst > app.db`` alone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from wcmatch import glob as wglob

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import (
    DatabaseInfo,
    DumpStream,
    RestoreOptions,
    ServerInfo,
    UserInfo,
    UserSelection,
)
from vya_backupdb.engines.process import Readable
from vya_backupdb.errors import BackupFailed, NotFoundError, RestoreFailed, UsageError

_GLOB_FLAGS = wglob.GLOBSTAR | wglob.BRACE | wglob.EXTGLOB | wglob.DOTGLOB


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class SqliteEngine:
    kind = "sqlite"

    def __init__(self, instance: InstanceConfig):
        self.instance = instance

    # -- discovery -------------------------------------------------------------------------
    def _files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for pattern in self.instance.paths:
            for match in sorted(wglob.glob(pattern, flags=_GLOB_FLAGS)):
                path = Path(match)
                if path.is_file():
                    name = path.name
                    if name in found and found[name] != path:
                        raise UsageError(
                            f"instance {self.instance.id!r}: two SQLite files are both named "
                            f"{name!r} ({found[name]} and {path})",
                            hint="Split them into two sqlite instances.",
                        )
                    found[name] = path
        return found

    def path_of(self, db: str) -> Path:
        files = self._files()
        if db not in files:
            raise NotFoundError(
                f"SQLite database {db!r} not found for instance {self.instance.id!r}",
                hint=f"Files matched by its paths: {', '.join(sorted(files)) or '(none)'}",
            )
        return files[db]

    def server_info(self) -> ServerInfo:
        major, minor, patch = sqlite3.sqlite_version_info
        return ServerInfo("SQLite", sqlite3.sqlite_version, major * 10000 + minor * 100 + patch)

    def list_databases(self, names: Collection[str] | None = None) -> list[DatabaseInfo]:
        files = sorted(self._files().items())
        return [DatabaseInfo(n, p.stat().st_size) for n, p in files if names is None or n in names]

    def database_exists(self, db: str) -> bool:
        return db in self._files()

    def database_properties(self, db: str) -> dict[str, Any]:
        path = self.path_of(db)
        with contextlib.closing(self._connect(path, read_only=True)) as conn:
            return {
                "path": str(path),
                "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
                "encoding": conn.execute("PRAGMA encoding").fetchone()[0],
                "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
            }

    def table_stats(self, db: str) -> dict[str, int]:
        return table_counts(self.path_of(db))

    @staticmethod
    def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
        uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
        try:
            return sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise BackupFailed(f"cannot open SQLite database {path}: {exc}") from None

    # -- dump / restore ----------------------------------------------------------------------
    @contextlib.contextmanager
    def dump(self, db: str) -> Iterator[DumpStream]:
        path = self.path_of(db)
        with tempfile.TemporaryDirectory(prefix="vya-sqlite-") as tmp:
            copy = Path(tmp) / "copy.sqlite"
            try:
                with (
                    contextlib.closing(self._connect(path, read_only=True)) as src,
                    contextlib.closing(sqlite3.connect(copy)) as dst,
                ):
                    # The backup API copies a consistent snapshot while writers go on.
                    src.backup(dst, pages=1024)
            except sqlite3.Error as exc:
                raise BackupFailed(f"SQLite backup of {path} failed: {exc}") from None
            with open(copy, "rb") as handle:
                yield DumpStream(
                    reader=handle,
                    extension="sqlite",
                    tool="sqlite3-backup-api",
                    tool_version=sqlite3.sqlite_version,
                    command=f"sqlite3 backup API of {path}",
                    format="sqlite",
                    info={"source_path": str(path)},
                )

    def restore(self, db: str, stream: Readable, options: RestoreOptions) -> None:
        target = self.target_path(db, options)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                while chunk := stream.read(1024 * 1024):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.closing(sqlite3.connect(tmp)) as conn:
                verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise RestoreFailed(f"restored SQLite file fails integrity_check: {verdict}")
            os.replace(tmp, target)
        except sqlite3.Error as exc:
            raise RestoreFailed(f"restored file is not a valid SQLite database: {exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def target_path(self, db: str, options: RestoreOptions) -> Path:
        """Return where ``db`` restores: a path given as target, or beside the source."""
        if "/" in db:
            return Path(db)
        source = options.database_properties.get("path")
        if source:
            return Path(source).with_name(db)
        files = self._files()
        if db in files:
            return files[db]
        raise UsageError(
            f"cannot tell where to restore SQLite database {db!r}",
            hint="Give --target as a file path, e.g. --target /var/lib/app/restored.db",
        )

    def drop_database(self, db: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(db).unlink()

    def rename_database(self, old: str, new: str) -> None:
        source = self.path_of(old)
        os.replace(source, source.with_name(new))

    # -- users: SQLite has none -------------------------------------------------------------
    def dump_globals(self) -> contextlib.AbstractContextManager[DumpStream]:
        raise UsageError("SQLite has no users to back up")

    def list_users(self) -> list[UserInfo]:
        return []

    def restore_globals(
        self, stream: Readable, users: UserSelection, exclude: list[str]
    ) -> list[str]:
        raise UsageError("SQLite has no users to restore")


def table_counts(path: Path) -> dict[str, int]:
    """Return exact row counts per table of a SQLite file."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {t: conn.execute(f"SELECT count(*) FROM {_quote(t)}").fetchone()[0] for t in tables}  # noqa: S608
