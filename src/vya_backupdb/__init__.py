"""VYA BackupDB: backup and restore for PostgreSQL, MySQL/MariaDB, SQLite and files."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vya-backupdb")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
