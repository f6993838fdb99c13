"""A pg_dump started before the PostgreSQL engine is ready: the head start of a backup.

A backup's fixed cost is its start-up. Before this, pg_dump started only once the driver was
loaded (psycopg: ~0.1 s to import), the database listed and a snapshot exported — ~0.35 s
after the command began — and then spent another ~0.08 s on its catalog queries before its
first byte. For a database named on the command line (``backup pg -d app``) the console
script now starts pg_dump right after reading the config, before Typer is even imported
(cli/early.py; ``BackupJob`` starts one itself for callers that did not):
``psql`` (a separate process, ~20 ms, on the other core) opens a REPEATABLE READ transaction
and exports its snapshot, pg_dump is started in that snapshot, and the job's modules and the
driver load and the database is listed *while* pg_dump runs. The engine's dump then adopts
the running pg_dump (``PostgresEngine.dump``) and its row counts import the same snapshot
(``SET TRANSACTION SNAPSHOT``): they are the dump's own, as when the engine exports the
snapshot itself.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vya_backupdb.background import Background
from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.pg_commands import (
    PG_CLIENT_PACKAGE,
    chooses_snapshot,
    conninfo_dbname,
    libpq_env,
    make_pg_dump_command,
)
from vya_backupdb.engines.process import DUMP_PIPE_SIZE, Command, ToolReader, find_tool
from vya_backupdb.errors import BackupFailed, VyaError
from vya_backupdb.secrets.sources import password_for

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig

log = logging.getLogger("vya_backupdb.engines.pg_head")

#: Longer than this to export a snapshot (a server that slow): no head start.
EXPORT_TIMEOUT = 2.0
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

    def __init__(self, exporter: subprocess.Popen[bytes], dump: DumpArgs):
        self.instance_id = dump.instance.id
        self.db = dump.db
        self.fmt = dump.fmt
        self._exporter = exporter
        self._adopted = False
        self._closed = False
        self._started = Background(lambda: _start_dump(exporter, dump), "pg-head-start")

    def adopt(self) -> Started | None:
        """Hand the running pg_dump to the engine's dump, which then owns its reader; None
        when it could not be started (the engine then starts its own)."""
        started = self._started.result()
        self._adopted = started is not None
        return started

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
    instance: InstanceConfig
    password: str | None
    db: str
    fmt: str


def _start_dump(exporter: subprocess.Popen[bytes], dump: DumpArgs) -> Started | None:
    snapshot = _exported_snapshot(exporter)
    if snapshot is None:
        _stop(exporter)  # failed, or still connecting after EXPORT_TIMEOUT
        return None
    command = make_pg_dump_command(
        dump.pg_dump,
        dump.instance,
        dump.password,
        dump.db,
        fmt=dump.fmt,
        extra=[*dump.instance.dump_options, f"--snapshot={snapshot}"],
    )
    try:
        reader = ToolReader(command, BackupFailed, pipe_size=DUMP_PIPE_SIZE)
    except VyaError:
        return None
    log.debug("head start: pg_dump of %s started in snapshot %s", dump.db, snapshot)
    return Started(snapshot, command, reader)


def make_export_command(
    psql: str, instance: InstanceConfig, password: str | None, db: str
) -> Command:
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
    db = wanted(instance, databases)
    if db is None:
        return None
    try:
        password = password_for(loaded, instance)
    except VyaError:
        return None
    return start(instance, password, db)


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


def start(instance: InstanceConfig, password: str | None, db: str) -> HeadStart | None:
    """Start psql exporting a snapshot of ``db``, and on a thread pg_dump of ``db`` in it; None
    when the tools are missing (the ordinary path then reports it)."""
    try:
        psql = find_tool(["psql"], PG_CLIENT_PACKAGE)
        pg_dump = find_tool(["pg_dump"], PG_CLIENT_PACKAGE)
    except VyaError:
        return None
    command = make_export_command(psql, instance, password, db)
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
    return HeadStart(exporter, DumpArgs(pg_dump, instance, password, db, instance.format))


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
