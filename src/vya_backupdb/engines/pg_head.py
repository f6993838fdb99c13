"""A pg_dump started before the PostgreSQL engine is ready: the head start of a backup.

A backup's fixed cost is its start-up. Before this, pg_dump started only once the driver was
loaded (psycopg: ~0.1 s to import), the database listed and a snapshot exported — ~0.35 s
after the command began — and then spent another ~0.08 s on its catalog queries before its
first byte. For a database named on the command line (``backup pg -d app``) the console
script now starts pg_dump right after reading the configuration document, before pydantic
and Typer are even imported (cli/early.py; ``BackupJob`` starts one itself for callers that
did not):
``psql`` (a separate process, ~20 ms, on the other core) opens a REPEATABLE READ transaction
and exports its snapshot, pg_dump is started in that snapshot, and the job's modules and the
driver load and the database is listed *while* pg_dump runs. The engine's dump then adopts
the running pg_dump (``PostgresEngine.dump``) and its row counts import the same snapshot
(``SET TRANSACTION SNAPSHOT``): they are the dump's own, as when the engine exports the
snapshot itself. Until the engine's first read, the dump's output is read ahead into an
unnamed temporary file (``ToolReader.read_ahead``, at most :data:`READ_AHEAD_LIMIT`): pg_dump
runs on instead of waiting on a full pipe while the command starts.

Anything unexpected — psql missing, the server or database not reachable, no snapshot — gives
no head start: the ordinary path runs and reports the problem as it always did. The password
travels in psql's environment, never in its arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vya_backupdb.background import Background
from vya_backupdb.engines.pg_commands import (
    PG_CLIENT_PACKAGE,
    PgServer,
    chooses_snapshot,
    conninfo_dbname,
    libpq_env,
    make_pg_dump_command,
)
from vya_backupdb.engines.process import DUMP_PIPE_SIZE, Command, ToolReader, find_tool
from vya_backupdb.errors import BackupFailed, VyaError

if TYPE_CHECKING:  # the models import pydantic: cli/early.py starts a dump before that
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.config.models import InstanceConfig

log = logging.getLogger("vya_backupdb.engines.pg_head")

#: Longer than this to export a snapshot (a server that slow): no head start.
EXPORT_TIMEOUT = 2.0
#: The most of the dump's first bytes kept on disk while the engine gets ready to read them.
READ_AHEAD_LIMIT = 128 * 1024 * 1024
_EXPORT = b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();\n"


@dataclass
class Started:
    """The running pg_dump of a head start and the snapshot it dumps."""

    snapshot: str
    command: Command
    reader: ToolReader


class HeadStart:
    """pg_dump of ``db`` (in ``fmt``) being started on a thread: psql exports a snapshot
    (its transaction stays open until :meth:`close`), then pg_dump starts in it."""

    def __init__(self, exporter: subprocess.Popen[bytes], export: Command, dump: DumpArgs):
        self.instance_id = dump.instance_id
        self.db = dump.db
        self.fmt = dump.fmt
        self._exporter = exporter
        self._export = export
        self._dump = dump
        self._adopted = False
        self._closed = False
        self._started = Background(lambda: _start_dump(exporter, dump), "pg-head-start")

    @property
    def password(self) -> str | None:
        """The password the dump connects with: the instance's, as its source gave it."""
        return self._dump.password

    def adopt(self) -> Started | None:
        """Hand the running pg_dump to the engine's dump, which then owns its reader; None
        when it could not be started (the engine then starts its own)."""
        started = self._started.result()
        self._adopted = started is not None
        return started

    def matches(self, instance: InstanceConfig, password: str | None) -> bool:
        """Whether this head start runs exactly what the engine would run for ``instance``
        with ``password``: a head start applies to it (:func:`wanted`), and the psql export
        and the pg_dump command lines and environments are the same. One started from the
        configuration document before validation (cli/early.py) is adopted only then."""
        if instance.id != self.instance_id or wanted(instance, (self.db,)) != self.db:
            return False
        psql = self._export.argv[0]
        engine = DumpArgs(self._dump.pg_dump, instance.id, instance, password, self.db,
                          instance.format, tuple(instance.dump_options))  # fmt: skip
        return (
            make_export_command(psql, instance, password, self.db) == self._export
            and engine.command() == self._dump.command()
        )

    def close(self) -> None:
        """End the exporting transaction; stop pg_dump when no dump adopted it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        started = self._started.result()
        if started is not None and not self._adopted:
            started.reader.abort()
        _stop(self._exporter, gently=True)


@dataclass(frozen=True)
class DumpArgs:
    pg_dump: str
    instance_id: str
    server: PgServer
    password: str | None
    db: str
    fmt: str
    options: tuple[str, ...]

    def command(self, snapshot: str | None = None) -> Command:
        extra = [*self.options, f"--snapshot={snapshot}"] if snapshot else [*self.options]
        return make_pg_dump_command(
            self.pg_dump, self.server, self.password, self.db, fmt=self.fmt, extra=extra
        )


def _start_dump(exporter: subprocess.Popen[bytes], dump: DumpArgs) -> Started | None:
    snapshot = _exported_snapshot(exporter)
    if snapshot is None:
        _stop(exporter)  # failed, or still connecting after EXPORT_TIMEOUT
        return None
    command = dump.command(snapshot)
    try:
        reader = ToolReader(command, BackupFailed, pipe_size=DUMP_PIPE_SIZE)
    except VyaError:
        return None
    reader.read_ahead(READ_AHEAD_LIMIT)
    log.debug("head start: pg_dump of %s started in snapshot %s", dump.db, snapshot)
    return Started(snapshot, command, reader)


def make_export_command(psql: str, instance: PgServer, password: str | None, db: str) -> Command:
    """Return psql reading the snapshot-export statements from stdin, printing unaligned
    tuples only (``-A -t``), stopping at the first error."""
    argv = [psql, "--no-password", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            f"--dbname={conninfo_dbname(db)}"]  # fmt: skip
    return Command(argv, libpq_env(instance, password), (password,) if password else ())


def start_named(
    loaded: LoadedConfig, instance: InstanceConfig, databases: tuple[str, ...]
) -> HeadStart | None:
    """Give the first of ``databases`` named for ``instance`` a head start when it applies
    (:func:`wanted`); None otherwise, or when anything is not as expected (the ordinary path
    then reports it). Never raises."""
    from vya_backupdb.secrets.sources import password_for

    db = wanted(instance, databases)
    if db is None:
        return None
    try:
        password = password_for(loaded, instance)
    except VyaError:
        return None
    return start(instance.id, instance, password, db,
                 fmt=instance.format, options=instance.dump_options)  # fmt: skip


def wanted(instance: InstanceConfig, databases: tuple[str, ...]) -> str | None:
    """Return the database to give a head start to, or None: the first one named, when its
    format is known without asking the server, no ``dump_options`` choose a snapshot and
    the password does not come from a ``password_command`` (the engine runs it again; a
    command may not give the same answer twice, e.g. one-time tokens)."""
    if instance.type != "postgresql" or not databases:
        return None
    if instance.password_command is not None:
        return None
    if instance.directory_format_above_bytes is not None or instance.format == "directory":
        return None  # the format depends on the database's size / needs a directory
    if chooses_snapshot(instance.dump_options):
        return None
    return databases[0]


def start(
    instance_id: str,
    server: PgServer,
    password: str | None,
    db: str,
    *,
    fmt: str,
    options: Sequence[str],
) -> HeadStart | None:
    """Start psql exporting a snapshot of ``db`` on ``server``, and on a thread pg_dump of
    ``db`` (``fmt``, ``options``) in it; None when the tools are missing (the ordinary path
    then reports it)."""
    try:
        psql = find_tool(["psql"], PG_CLIENT_PACKAGE)
        pg_dump = find_tool(["pg_dump"], PG_CLIENT_PACKAGE)
    except VyaError:
        return None
    command = make_export_command(psql, server, password, db)
    try:
        exporter = subprocess.Popen(
            list(command.argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a failure is reported by the ordinary path
            env={**os.environ, **command.env, "LC_ALL": "C.UTF-8"},
            start_new_session=True,
        )
    except OSError:
        return None
    dump = DumpArgs(pg_dump, instance_id, server, password, db, fmt, tuple(options))
    return HeadStart(exporter, command, dump)


def _exported_snapshot(exporter: subprocess.Popen[bytes]) -> str | None:
    """Send the export statements; return the snapshot id psql prints, or None (psql failed,
    or said nothing within EXPORT_TIMEOUT)."""
    assert exporter.stdin is not None
    assert exporter.stdout is not None
    try:
        exporter.stdin.write(_EXPORT)
        exporter.stdin.flush()
    except OSError:
        return None
    fd = exporter.stdout.fileno()
    line = b""
    deadline = time.monotonic() + EXPORT_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(fd, 256)
            if not chunk:  # psql exited: no connection, no such database, …
                return None
            line += chunk
    snapshot = line.decode("ascii", errors="replace").strip()
    # E.g. 00000003-0000001B-1: hexadecimal groups joined by dashes.
    if not snapshot or any(c not in "0123456789ABCDEFabcdef-" for c in snapshot):
        return None
    return snapshot


def _stop(exporter: subprocess.Popen[bytes], *, gently: bool = False) -> None:
    """End psql: EOF on its stdin (it rolls back and exits) or, not gently or when it does
    not exit, kill it."""
    if gently and exporter.stdin is not None:
        with contextlib.suppress(OSError):
            exporter.stdin.close()
    try:
        exporter.wait(timeout=5 if gently else 0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            exporter.kill()
        exporter.wait()
    for stream in (exporter.stdin, exporter.stdout, exporter.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
