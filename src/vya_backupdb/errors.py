"""The error tree: every error a user can cause carries an exit code and a hint.

Only ``cli/`` turns these into output and an exit status; the core raises them.
The table :data:`EXIT_CODES` is the single source for ``--help`` and ``docs/exit-codes.md``.
"""

from __future__ import annotations

from typing import ClassVar


class VyaError(Exception):
    """Base of every expected failure. ``hint`` tells the likely causes and the next command."""

    exit_code: ClassVar[int] = 1
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        #: Extra diagnostic text (e.g. the tail of a tool's stderr), already redacted.
        self.details = details

    def __str__(self) -> str:
        return self.message


class UsageError(VyaError):
    """Bad command-line usage, unknown instance/database, missing argument."""

    exit_code = 2
    default_hint = "Run the command with --help to see its options."


class ConfigError(VyaError):
    """The configuration file is missing, malformed or invalid."""

    exit_code = 2
    default_hint = "Check the file, then run: vya-backupdb config validate"


class NotFoundError(UsageError):
    """An instance, database, backup or file that was named does not exist."""

    exit_code = 2
    default_hint = "List what exists with: vya-backupdb list"


class CredentialError(VyaError):
    """A credential is missing, unreadable, or cannot be decrypted."""

    exit_code = 3
    default_hint = (
        "Store it with: vya-backupdb credentials set INSTANCE, or set password_env / "
        "password_file / password_command on the instance."
    )


class ConnectionFailed(VyaError):
    """A database server could not be reached or refused authentication."""

    exit_code = 4
    default_hint = "Run: vya-backupdb connection test --instance ID"


class ToolMissing(VyaError):
    """An external tool (pg_dump, mariadb-dump, ...) is not installed."""

    exit_code = 5


class BackupFailed(VyaError):
    """A backup did not complete; nothing that looks like a backup was left behind."""

    exit_code = 6


class RestoreFailed(VyaError):
    """A restore did not complete."""

    exit_code = 7


class IntegrityError(VyaError):
    """A stored backup is damaged: checksum mismatch, truncation, missing sidecar or record."""

    exit_code = 8
    default_hint = "Do not restore this file; pick another with: vya-backupdb list"


class StorageError(VyaError):
    """The storage backend failed (disk full, permission denied, remote error)."""

    exit_code = 9


class LockBusy(VyaError):
    """Another run holds the lock of this instance."""

    exit_code = 10


class Interrupted(VyaError):
    """The run was interrupted by a signal (Ctrl-C, SIGTERM)."""

    exit_code = 130


#: exit code -> (name, meaning). Listed in ``--help`` and ``docs/exit-codes.md``.
EXIT_CODES: dict[int, tuple[str, str]] = {
    0: ("ok", "Everything requested succeeded."),
    1: ("internal", "Unexpected internal error (a bug: please report it with the log)."),
    2: ("usage/config", "Bad arguments, invalid configuration, unknown instance/database/file."),
    3: ("credentials", "A credential is missing, unreadable or cannot be decrypted."),
    4: ("connection", "A database server could not be reached or refused the login."),
    5: ("tool-missing", "An external tool (pg_dump, mariadb-dump, ...) is not installed."),
    6: ("backup-failed", "At least one backup failed (the others may have succeeded)."),
    7: ("restore-failed", "The restore failed."),
    8: ("integrity", "A backup is damaged or inconsistent (checksum, truncation, sidecar)."),
    9: ("storage", "The storage failed (disk full, permissions, remote error)."),
    10: ("lock-busy", "Another run of the same instance holds its lock."),
    130: ("interrupted", "Interrupted by Ctrl-C or SIGTERM; partial output was removed."),
}


def exit_code_table() -> str:
    """Return the exit-code table as plain text lines for ``--help``."""
    return "\n".join(
        f"{code:>3}  {name:<15} {meaning}" for code, (name, meaning) in EXIT_CODES.items()
    )
