"""VYA BackupDB: backup and restore for PostgreSQL, MySQL/MariaDB, SQLite and files."""


def __getattr__(name: str) -> str:
    # Looked up on first use: importlib.metadata costs ~30 ms that `--help` need not pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("vya-backupdb")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
