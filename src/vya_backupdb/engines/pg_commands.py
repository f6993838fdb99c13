"""The argv and environment of the PostgreSQL client tools (pure functions, no driver).

Kept apart from engines/postgresql.py so a backup can start pg_dump before the driver
(psycopg, ~0.1 s to import) is loaded (engines/pg_head.py). Secrets travel in the
environment (``PGPASSWORD``), never in argv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vya_backupdb.engines.process import DUMP_STDOUT_BUFFER, Command

if TYPE_CHECKING:  # the models import pydantic (~0.2 s); pg_head starts pg_dump before that
    from vya_backupdb.config.models import InstanceConfig, PgFormat

PG_CLIENT_PACKAGE = "postgresql-client"
APP_NAME = "vya-backupdb"
CONNECT_TIMEOUT = 10

#: The stdio buffer of a pg_restore or psql reading a dump from its stdin (see
#: ``Command.stdin_buffer``).
STDIN_BUFFER = 1024 * 1024

#: Session settings pinned for every restore session so that nothing in the dump is interpreted
#: through the target server's defaults (DateStyle, IntervalStyle, float precision).
RESTORE_PGOPTIONS = "-c datestyle=ISO,MDY -c intervalstyle=postgres -c extra_float_digits=3"


def conninfo_dbname(db: str) -> str:
    """Return a libpq connection string selecting database ``db`` (any characters allowed).

    Passing a bare name would let a name containing ``=`` be parsed as a connection string.
    """
    return "dbname='" + db.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgServer(Protocol):
    """Where libpq tools connect: an ``InstanceConfig``, or the head start's reading of the
    same instance before the models are loaded (cli/early.py)."""

    @property
    def socket(self) -> Path | None: ...
    @property
    def effective_host(self) -> str: ...
    @property
    def effective_port(self) -> int | None: ...
    @property
    def user(self) -> str | None: ...


def libpq_env(instance: PgServer, password: str | None) -> dict[str, str]:
    """Return the environment that points libpq tools at ``instance`` (the password included)."""
    env = {
        "PGHOST": str(instance.socket) if instance.socket else instance.effective_host,
        "PGPORT": str(instance.effective_port or 5432),
        "PGUSER": instance.user or "postgres",
        "PGAPPNAME": APP_NAME,
        "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    }
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _secrets(password: str | None) -> tuple[str, ...]:
    return (password,) if password else ()


def make_pg_dump_command(
    pg_dump: str,
    instance: PgServer,
    password: str | None,
    db: str,
    *,
    fmt: str = "custom",
    jobs: int = 1,
    output_dir: Path | None = None,
    extra: Sequence[str] = (),
) -> Command:
    """Return the pg_dump command for ``db`` in ``fmt`` (custom|plain|directory).

    Custom is written uncompressed (``-Z0``): the pipeline compresses. Directory format needs
    ``output_dir`` and honours ``jobs``.
    """
    argv = [pg_dump, "--no-password"]
    if fmt == "custom":
        argv += ["--format=custom", "--compress=0"]
    elif fmt == "plain":
        argv += ["--format=plain"]
    elif fmt == "directory":
        if output_dir is None:
            raise ValueError("directory format needs output_dir")
        argv += ["--format=directory", "--compress=0", f"--jobs={jobs}", f"--file={output_dir}"]
    else:
        raise ValueError(f"unknown pg_dump format {fmt!r}")
    argv += [*extra, f"--dbname={conninfo_dbname(db)}"]
    return Command(
        argv,
        libpq_env(instance, password),
        _secrets(password),
        stdout_buffer=0 if fmt == "directory" else DUMP_STDOUT_BUFFER,
    )


def chooses_snapshot(dump_options: Sequence[str]) -> bool:
    """Whether ``dump_options`` choose pg_dump's snapshot or transaction mode themselves."""
    return any(o.startswith(("--snapshot", "--serializable-deferrable")) for o in dump_options)


def choose_dump_format(configured: PgFormat, size: int | None, threshold: int | None) -> PgFormat:
    """Return ``directory`` when ``size`` is known and above ``threshold``, else ``configured``.

    Large databases dump and restore in parallel only in directory format (pg_dump --jobs,
    pg_restore --jobs); an unknown size keeps the configured format.
    """
    if threshold is not None and size is not None and size > threshold:
        return "directory"
    return configured


def make_pg_restore_command(
    pg_restore: str,
    instance: InstanceConfig,
    password: str | None,
    db: str,
    *,
    source: Path | None = None,
    jobs: int = 1,
    list_file: Path | None = None,
    owner: str | None = None,
) -> Command:
    """Return the pg_restore command into ``db`` (reading stdin when ``source`` is None).

    ``owner`` reassigns ownership: objects are created by ``SET ROLE owner`` without the
    dump's ``ALTER … OWNER`` statements. ``jobs > 1`` needs a ``source`` file or directory.
    """
    argv = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={conninfo_dbname(db)}"]
    if jobs > 1:
        if source is None:
            raise ValueError("a parallel restore needs a file, not stdin")
        argv.append(f"--jobs={jobs}")
    if list_file is not None:
        argv.append(f"--use-list={list_file}")
    if owner:
        argv += ["--no-owner", f"--role={owner}"]
    if source is not None:
        argv.append(str(source))
    env = libpq_env(instance, password) | {"PGOPTIONS": RESTORE_PGOPTIONS}
    return Command(argv, env, _secrets(password), STDIN_BUFFER if source is None else 0)


def make_pg_restore_list_command(pg_restore: str, source: Path) -> Command:
    """Return ``pg_restore --list --verbose`` (TOC with dependencies) of an archive."""
    return Command([pg_restore, "--list", "--verbose", str(source)])


def make_psql_command(
    psql: str, instance: InstanceConfig, password: str | None, db: str
) -> Command:
    """Return psql reading a script from stdin into ``db``, stopping at the first error."""
    argv = [psql, "--no-password", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            f"--dbname={conninfo_dbname(db)}", "-f", "-"]  # fmt: skip
    env = libpq_env(instance, password) | {"PGOPTIONS": RESTORE_PGOPTIONS}
    return Command(argv, env, _secrets(password), STDIN_BUFFER)


def make_pg_dumpall_globals_command(
    pg_dumpall: str, instance: InstanceConfig, password: str | None
) -> Command:
    """Return ``pg_dumpall --globals-only`` (roles, memberships, settings, tablespaces)."""
    db = instance.database or "postgres"
    argv = [pg_dumpall, "--no-password", "--globals-only", f"--dbname={conninfo_dbname(db)}"]
    return Command(argv, libpq_env(instance, password), _secrets(password))


def make_tar_create_command(tar: str, directory: Path) -> Command:
    """Return tar writing the contents of ``directory`` to stdout."""
    return Command([tar, "--create", "--format=posix", f"--directory={directory}", "--file=-", "."])


def make_tar_extract_command(tar: str, directory: Path) -> Command:
    """Return tar extracting stdin into ``directory``."""
    return Command([tar, "--extract", "--no-same-owner", f"--directory={directory}", "--file=-"])
