"""MySQL/MariaDB parallel format: per-table files dumped and loaded by ``jobs`` workers.

Why our own workers and not mydumper/myloader: mydumper 0.10 (Debian bookworm) was measured
against the exact comparison of the test suite (docs/mysql.md has the evidence) and is not
exact: it dumps with ``SET NAMES binary`` so UUID and INET6 values are silently lost or mangled
on load, it rewrites routine and trigger bodies (``;\\n`` becomes ``; \\n``), it loses the
``sql_mode`` of routines, triggers and events, and it fails on table names holding a backtick.
The parallel format therefore uses the tool the single-stream format already trusts,
``mariadb-dump``, with the same options, split over several processes.

A dump (:class:`ParallelDump`) writes a directory:

* ``schema.sql`` — ``mariadb-dump --no-data`` without triggers, routines, events and views:
  every table and sequence (a sequence's ``SETVAL`` included);
* ``data/wNN-KKKKK.sql`` — one file per table: the output of worker NN (``mariadb-dump
  --no-create-info`` over a group of tables, groups balanced by size) cut at each ``-- Dumping
  data for table`` mark, each file starting with the worker's header (``SET NAMES``, time zone,
  ``FOREIGN_KEY_CHECKS=0`` ...), so it loads alone, in any order;
* ``objects.sql`` — triggers, routines and events (``--no-create-info --no-data``); for a
  database whose name holds a quote (mariadb-dump fails on its events) the events are in
  ``events.sql``, written by us as in the single-stream format;
* ``views.sql`` — the views, named (stand-ins first, so views on views load);
* ``vya-parallel.json`` — the manifest, written last, only when every tool succeeded: the
  table → file map with sizes, the workers, the binlog coordinates, how the snapshot was proved.

Consistency: a coordinating connection takes ``FLUSH TABLES WITH READ LOCK``, reads the binlog
coordinates, starts the N data workers (``--single-transaction``: ``START TRANSACTION WITH
CONSISTENT SNAPSHOT``) and keeps the lock until N new connections of the backup account hold an
InnoDB transaction (``information_schema.INNODB_TRX``); only then ``UNLOCK TABLES``. Every
worker's snapshot is therefore the state under the lock. On MariaDB with binary logging the
workers also write their own snapshot's binlog position (``--master-data=2``, read from
``Binlog_snapshot_*`` without a lock) and each must equal the position read under the lock.
The schema files are dumped after the lock (DDL during a backup is not supported, as with
``mariadb-dump --single-transaction``). :class:`StreamedDump` streams the directory as a tar
while it is written (``schema.sql`` first, each table file once complete, the manifest last),
so compression and storage overlap the dump and the staging disk holds only what waits.

A restore (:func:`load_stream`) extracts the tar and loads it meanwhile: ``schema.sql`` first,
then each table file as soon as it is extracted, by the next free of up to ``jobs`` ``mariadb``
clients (each client streaming several files), then — once the manifest confirmed the archive —
``objects.sql`` (triggers only after the data, as in a single-stream dump), ``events.sql`` and
``views.sql``. :func:`load_directory` does the same from a directory. By hand (docs/mysql.md):
``tar -xf x.tar -C d``, then ``mariadb DB < d/schema.sql``, every ``d/data/*.sql`` (in
parallel if wished), ``d/objects.sql``, ``d/events.sql``, ``d/views.sql``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import tarfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pymysql

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.mysql import (
    make_connection_args,
    make_restore_command,
    parse_binlog_coordinates,
    quote_identifier,
)
from vya_backupdb.engines.process import (
    COPY_CHUNK,
    DUMP_PIPE_SIZE,
    DUMP_STDOUT_BUFFER,
    Command,
    Readable,
    ToolReader,
    feed,
)
from vya_backupdb.errors import BackupFailed, IntegrityError, RestoreFailed, VyaError

PARALLEL_FORMAT = "parallel"
MANIFEST_NAME = "vya-parallel.json"
MANIFEST_KIND = "vya-mysql-parallel"
MANIFEST_VERSION = 1
SCHEMA_FILE = "schema.sql"
OBJECTS_FILE = "objects.sql"
VIEWS_FILE = "views.sql"
#: Events written by us when mariadb-dump cannot (a database name holding a quote).
EVENTS_FILE = "events.sql"
DATA_DIR = "data"
#: The last line mariadb-dump/mysqldump writes when it finished normally.
DUMP_TRAILER = b"-- Dump completed on"
#: Where each table's data starts in a ``--no-create-info`` dump (a line of its own; data
#: lines never hold a raw newline, mariadb-dump escapes them).
DATA_MARK = b"\n--\n-- Dumping data for table "
#: How long the workers may take to open their snapshots while the lock is held.
SNAPSHOT_WAIT_SECONDS = 60.0
#: ``lock_wait_timeout`` of the coordinating connection: FLUSH TABLES WITH READ LOCK waits for
#: running statements; it gives up rather than stall the server's writers behind it.
LOCK_WAIT_SECONDS = 60
#: Options of every mariadb-dump call, as in the single-stream format (engines/mysql.py).
COMMON_DUMP_OPTIONS: tuple[str, ...] = (
    "--single-transaction",
    "--quick",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--tz-utc",
    "--no-tablespaces",
)
_NO_CODE = ("--skip-triggers", "--skip-routines", "--skip-events")
_HEADER_LIMIT = 16 * 1024 * 1024
_NAME_LIMIT = 64 * 1024
_MANIFEST_LIMIT = 256 * 1024 * 1024
_TAIL = 512
_NEED_PRIVILEGES = (
    "The parallel format needs RELOAD (FLUSH TABLES WITH READ LOCK) and PROCESS (to see the "
    "workers' transactions) besides what a single-stream dump needs; grant them, or set "
    "mysql_format: sql on the instance."
)


# ---------------------------------------------------------------------------------------------
# Pure decisions and argv
# ---------------------------------------------------------------------------------------------


def choose_mysql_format(configured: str, size: int | None, threshold: int | None) -> str:
    """Return ``parallel`` when ``size`` is known and above ``threshold``, else ``configured``."""
    if threshold is not None and size is not None and size > threshold:
        return PARALLEL_FORMAT
    return configured


def plan_groups(tables: Sequence[tuple[str, int]], workers: int) -> list[list[str]]:
    """Return at most ``workers`` groups of table names with sizes as equal as possible.

    Largest table first, each into the group with the smallest total so far (ties: the lower
    group); a group lists its tables largest first, so big tables start early.
    """
    count = max(1, min(workers, len(tables)))
    groups: list[list[str]] = [[] for _ in range(count)]
    totals = [0] * count
    for name, size in sorted(tables, key=lambda t: (-max(t[1], 0), t[0])):
        index = min(range(count), key=lambda i: (totals[i], i))
        groups[index].append(name)
        totals[index] += max(size, 0)
    return [g for g in groups if g]


def ignored_tables(db: str, dump_options: Iterable[str]) -> set[str]:
    """Return the tables of ``db`` named by ``--ignore-table=db.table`` in ``dump_options``."""
    prefix = f"--ignore-table={db}."
    return {o[len(prefix) :] for o in dump_options if o.startswith(prefix)}


def _base(tool: str, defaults_file: Path, instance: InstanceConfig) -> list[str]:
    return [tool, f"--defaults-extra-file={defaults_file}", *make_connection_args(instance)]


def _command(argv: list[str], password: str | None, *, stdout_buffer: int = 0) -> Command:
    return Command(argv=argv, secrets=(password,) if password else (), stdout_buffer=stdout_buffer)


def make_schema_command(
    tool: str,
    defaults_file: Path,
    instance: InstanceConfig,
    db: str,
    views: Sequence[str],
    *,
    password: str | None = None,
) -> Command:
    """Return the dump of every table and sequence of ``db`` without data, code or views."""
    argv = [
        *_base(tool, defaults_file, instance),
        *COMMON_DUMP_OPTIONS,
        "--no-data",
        *_NO_CODE,
        *(f"--ignore-table={db}.{view}" for view in views),
        *instance.dump_options,
        "--",
        db,
    ]
    return _command(argv, password)


def make_data_command(
    tool: str,
    defaults_file: Path,
    instance: InstanceConfig,
    db: str,
    tables: Sequence[str],
    *,
    binlog_options: Sequence[str] = (),
    password: str | None = None,
) -> Command:
    """Return one worker: the rows of ``tables`` (in that order) in one snapshot."""
    argv = [
        *_base(tool, defaults_file, instance),
        *COMMON_DUMP_OPTIONS,
        "--no-create-info",
        *_NO_CODE,
        *binlog_options,
        *instance.dump_options,
        "--",
        db,
        *tables,
    ]
    return _command(argv, password, stdout_buffer=DUMP_STDOUT_BUFFER)


def make_objects_command(
    tool: str,
    defaults_file: Path,
    instance: InstanceConfig,
    db: str,
    *,
    events: bool = True,
    password: str | None = None,
) -> Command:
    """Return the dump of the triggers, routines and (``events``) events of ``db``."""
    argv = [
        *_base(tool, defaults_file, instance),
        *COMMON_DUMP_OPTIONS,
        "--no-create-info",
        "--no-data",
        "--triggers",
        "--routines",
        "--events" if events else "--skip-events",
        *instance.dump_options,
        "--",
        db,
    ]
    return _command(argv, password)


def make_views_command(
    tool: str,
    defaults_file: Path,
    instance: InstanceConfig,
    db: str,
    views: Sequence[str],
    *,
    password: str | None = None,
) -> Command:
    """Return the dump of the named views of ``db`` (stand-ins first, then the views)."""
    argv = [
        *_base(tool, defaults_file, instance),
        *COMMON_DUMP_OPTIONS,
        "--no-data",
        *_NO_CODE,
        *instance.dump_options,
        "--",
        db,
        *views,
    ]
    return _command(argv, password)


def comment_name(table: str) -> bytes:
    """Return ``table`` as mariadb-dump writes it in a comment line (quoted, newlines
    continued as comments)."""
    return quote_identifier(table).replace("\n", "\n-- ").encode("utf-8")


def parse_comment_name(data: bytes) -> tuple[str, int] | None:
    """Return the table name a data mark line starts with and the length of its quoted form,
    or None when ``data`` does not hold the whole quoted name yet.

    Raise ValueError when ``data`` does not start with a backtick.
    """
    if not data:
        return None
    if not data.startswith(b"`"):
        raise ValueError("a table name in backticks was expected")
    i = 1
    while True:
        j = data.find(b"`", i)
        if j < 0 or j + 1 >= len(data):
            return None
        if data[j + 1 : j + 2] == b"`":
            i = j + 2
            continue
        raw = data[1:j].replace(b"``", b"`").replace(b"\n-- ", b"\n")
        return raw.decode("utf-8", errors="replace"), j + 1


# ---------------------------------------------------------------------------------------------
# Splitting a worker's output into one file per table
# ---------------------------------------------------------------------------------------------


@dataclass
class TableFile:
    """One table's data file (``file`` None when the tool wrote no data section for it)."""

    table: str
    file: str | None = None
    size: int = 0
    worker: int = 0


class TableSplitter:
    """Write a ``--no-create-info`` dump of several tables as one file per table.

    Everything before the first data mark is the header (session settings); each table's file
    is that header followed by its section; ``on_file`` is told each file's relative path once
    it is complete. Memory holds the header and at most one mark's worth of carried bytes.
    """

    def __init__(
        self,
        directory: Path,
        worker: int,
        tables: Sequence[str],
        on_file: Callable[[str], None] | None = None,
    ):
        self._directory = directory
        self._worker = worker
        self._on_file = on_file
        self._expected = list(tables)
        self._by_name = {t: TableFile(t, worker=worker) for t in tables}
        self._buffer = b""
        self.header = b""
        self._in_header = True
        self._current: IO[bytes] | None = None
        self._current_entry: TableFile | None = None
        self._count = 0

    @property
    def files(self) -> list[TableFile]:
        """Return one entry per expected table, in the order given."""
        return [self._by_name[t] for t in self._expected]

    def feed(self, chunk: bytes) -> None:
        """Consume the next bytes of the dump; raise BackupFailed on unexpected output."""
        self._buffer += chunk
        while True:
            at = self._buffer.find(DATA_MARK)
            if at < 0:
                # Keep what could be the start of a mark; write the rest.
                keep = len(DATA_MARK) - 1
                if len(self._buffer) > keep:
                    self._emit(self._buffer[:-keep])
                    self._buffer = self._buffer[-keep:]
                return
            start = at + len(DATA_MARK)
            try:
                parsed = parse_comment_name(self._buffer[start:])
            except ValueError:
                raise self._unexpected("a data mark without a table name") from None
            if parsed is None:
                if len(self._buffer) - start > _NAME_LIMIT:
                    raise self._unexpected("a data mark whose table name does not end")
                # Wait for the rest of the name; everything before the mark can go.
                self._emit(self._buffer[:at])
                self._buffer = self._buffer[at:]
                return
            name, _length = parsed
            self._emit(self._buffer[: at + 1])
            self._buffer = self._buffer[at + 1 :]
            self._start_table(name)

    def close(self) -> None:
        """Write what is left and close the last file."""
        self._emit(self._buffer)
        self._buffer = b""
        self._finish_current()

    def abort(self) -> None:
        """Close the open file (after a failure; the directory is discarded)."""
        if self._current is not None:
            self._current.close()
            self._current = None

    def _unexpected(self, what: str) -> BackupFailed:
        return BackupFailed(
            f"mariadb-dump worker {self._worker} wrote unexpected output: {what}",
            hint="Report this with the tool's version; use mysql_format: sql meanwhile.",
        )

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._in_header:
            self.header += data
            if len(self.header) > _HEADER_LIMIT:
                raise self._unexpected("no table data after 16 MiB of header")
            return
        assert self._current is not None
        assert self._current_entry is not None
        self._current.write(data)
        self._current_entry.size += len(data)

    def _start_table(self, name: str) -> None:
        entry = self._by_name.get(name)
        if entry is None or entry.file is not None:
            raise self._unexpected(f"data of table {name!r}, which this worker was not given")
        self._finish_current()
        self._in_header = False
        self._count += 1
        relative = f"{DATA_DIR}/w{self._worker:02d}-{self._count:05d}.sql"
        path = self._directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        self._current = path.open("wb")
        self._current.write(self.header)
        entry.file = relative
        entry.size = len(self.header)
        self._current_entry = entry

    def _finish_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
            entry, self._current_entry = self._current_entry, None
            if self._on_file is not None and entry is not None and entry.file is not None:
                self._on_file(entry.file)


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------


def render_manifest(manifest: dict[str, Any]) -> bytes:
    """Return the manifest as UTF-8 JSON."""
    return json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"


def parse_manifest(data: bytes, error_cls: type[VyaError]) -> dict[str, Any]:
    """Return the manifest in ``data``; raise ``error_cls`` when it is not one we can read."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise error_cls(f"{MANIFEST_NAME} is not valid JSON: the archive is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_KIND:
        raise error_cls(f"{MANIFEST_NAME} is not a vya-backupdb parallel-format manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise error_cls(
            f"{MANIFEST_NAME} has format version {version!r}; this program reads "
            f"{MANIFEST_VERSION}",
            hint="Upgrade vya-backupdb to restore this backup.",
        )
    if manifest.get("complete") is not True:
        raise error_cls(f"{MANIFEST_NAME} does not mark the dump as complete")
    return manifest


def manifest_files(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """Return (relative path, size) of every file the manifest lists."""
    files: list[tuple[str, int]] = []
    for key in ("schema", "objects", "events", "views"):
        entry = manifest.get(key)
        if entry:
            files.append((str(entry["file"]), int(entry["size"])))
    for entry in manifest.get("tables", ()):
        if entry.get("file"):
            files.append((str(entry["file"]), int(entry["size"])))
    return files


def _safe_relative(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


# ---------------------------------------------------------------------------------------------
# Verification of a stored archive (used by jobs/verify.py)
# ---------------------------------------------------------------------------------------------


def check_parallel_archive(
    stream: Readable, name: str, expected_tables: Collection[str] = ()
) -> int:
    """Read a parallel-format tar to its end; return the number of table files.

    Raise IntegrityError when the tar is damaged, has no manifest (cut before its end), lacks
    a file the manifest lists or holds it with another size, when the schema, objects or views
    dump lacks mariadb-dump's completion line, or when a table of ``expected_tables`` (the
    record's row counts) is not in the manifest.
    """
    members: dict[str, tuple[int, bytes]] = {}
    manifest_data: bytes | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=COPY_CHUNK) as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                if not member.isfile():
                    tar.members.clear()
                    continue
                path = member.name.removeprefix("./")
                source = tar.extractfile(member)
                assert source is not None
                tail = b""
                if path == MANIFEST_NAME:
                    if member.size > _MANIFEST_LIMIT:
                        raise IntegrityError(f"{name}: {MANIFEST_NAME} is implausibly large")
                    manifest_data = source.read()
                elif path in (SCHEMA_FILE, OBJECTS_FILE, VIEWS_FILE):
                    while chunk := source.read(COPY_CHUNK):
                        tail = (tail + chunk)[-_TAIL:]
                members[path] = (member.size, tail)
                # Stream mode remembers every member; forget them to keep memory bounded.
                tar.members.clear()
            while stream.read(COPY_CHUNK):  # end-of-archive padding, hashed too
                pass
    except tarfile.TarError as exc:
        raise IntegrityError(f"tar archive {name} is damaged: {exc}") from None
    if manifest_data is None:
        raise IntegrityError(
            f"parallel-format dump {name} has no {MANIFEST_NAME}: the archive is incomplete "
            "(cut before its end) or not a parallel-format dump",
            hint="Do not restore it; pick another with: vya-backupdb list",
        )
    manifest = parse_manifest(manifest_data, IntegrityError)
    problems: list[str] = []
    for path, size in manifest_files(manifest):
        found = members.get(path)
        if found is None:
            problems.append(f"{path} is missing")
        elif found[0] != size:
            problems.append(f"{path} has {found[0]} bytes, the manifest says {size}")
    for path in (SCHEMA_FILE, OBJECTS_FILE, VIEWS_FILE):
        found = members.get(path)
        if found is not None and DUMP_TRAILER not in found[1]:
            problems.append(f"{path} does not end with mariadb-dump's completion line")
    listed = {str(entry.get("name")) for entry in manifest.get("tables", ())}
    missing = sorted(set(expected_tables) - listed)
    if missing:
        problems.append("table(s) not in the archive: " + ", ".join(missing[:10]))
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise IntegrityError(
            f"parallel-format dump {name} is incomplete: {'; '.join(problems[:5])}{more}",
            hint="Do not restore it; pick another with: vya-backupdb list",
        )
    return sum(1 for entry in manifest.get("tables", ()) if entry.get("file"))


# ---------------------------------------------------------------------------------------------
# Dump
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """How to reach the server: the instance, the account, a PyMySQL connection factory and
    the 0600 defaults file holding the login for the tools."""

    instance: InstanceConfig
    user: str
    password: str | None
    connect: Callable[[], Any]
    defaults_file: Path


@dataclass(frozen=True)
class DumpTools:
    dump: str
    tool_version: str
    product: str  # of the server: "MariaDB" | "MySQL"


class _Worker(ToolReader):
    """A data worker: a mariadb-dump whose output is split into table files by a thread."""

    def __init__(
        self,
        index: int,
        command: Command,
        tables: Sequence[str],
        directory: Path,
        on_file: Callable[[str], None] | None = None,
    ):
        super().__init__(command, BackupFailed)
        self.index = index
        self.tables = list(tables)
        self.splitter = TableSplitter(directory, index, tables, on_file)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"vya-dump-w{index}", daemon=True)

    def _run(self) -> None:
        try:
            with self:
                while chunk := self.read(COPY_CHUNK):
                    self.splitter.feed(chunk)
                self.splitter.close()
        except BaseException as exc:  # handed to the coordinating thread
            self.error = exc
        finally:
            self.splitter.abort()

    def kill(self) -> None:
        """Stop the tool now (its reading thread then ends with an error)."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)


@dataclass
class _Snapshot:
    binlog: dict[str, Any] | None = None
    lock_seconds: float = 0.0
    proof: list[str] = field(default_factory=list)


def _binlog_position(cur: Any, product: str) -> dict[str, Any] | None:
    """Return the server's current binlog coordinates ({file, position, gtid}) or None."""
    try:
        cur.execute("SHOW MASTER STATUS")
    except pymysql.err.ProgrammingError:
        cur.execute("SHOW BINARY LOG STATUS")  # MySQL 8.4 removed SHOW MASTER STATUS
    row = cur.fetchone()
    if not row:
        return None
    file, position = str(row[0]), int(row[1])
    gtid: str | None = None
    if product == "MariaDB":
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, position))
        found = cur.fetchone()
        gtid = str(found[0]) if found and found[0] else None
    elif len(row) > 4 and row[4]:
        gtid = str(row[4]).replace("\n", "")
    return {"file": file, "position": position, "gtid": gtid}


def _dump_to_file(command: Command, path: Path, timeout: float | None) -> None:
    with (
        ToolReader(command, BackupFailed, pipe_size=DUMP_PIPE_SIZE) as reader,
        path.open("wb") as out,
    ):
        if timeout:
            reader.set_timeout(timeout)
        while chunk := reader.read(COPY_CHUNK):
            out.write(chunk)


class ParallelDump:
    """Dumps one database into a directory in the parallel format (see the module docstring)."""

    def __init__(self, login: Login, tools: DumpTools, *, jobs: int):
        self.login = login
        self.tools = tools
        self.jobs = max(1, jobs)
        self._workers: list[_Worker] = []
        self._on_file: Callable[[str], None] = lambda _name: None
        self._aborted = threading.Event()

    def abort(self) -> None:
        """Stop a dump running in another thread: its tools are killed, it raises."""
        self._aborted.set()
        for worker in list(self._workers):
            worker.kill()

    def _check_aborted(self) -> None:
        if self._aborted.is_set():
            raise BackupFailed("the parallel dump was stopped")

    def _query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self.login.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def _objects(self, db: str) -> tuple[list[tuple[str, int]], list[str]]:
        rows = self._query(
            "SELECT TABLE_NAME, TABLE_TYPE, COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0)"
            " FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (db,),
        )
        skipped = ignored_tables(db, self.login.instance.dump_options)
        tables = [
            (str(name), int(size or 0))
            for name, kind, size in rows
            if str(kind) in ("BASE TABLE", "SYSTEM VERSIONED") and str(name) not in skipped
        ]
        views = [str(name) for name, kind, _size in rows if str(kind) == "VIEW"]
        return tables, views

    def dump(
        self,
        db: str,
        directory: Path,
        *,
        binlog: bool,
        events_sql: bytes | None,
        on_file: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Dump ``db`` into ``directory``; return the manifest (also written there, last).

        ``events_sql`` replaces mariadb-dump's events (None: the tool dumps them).
        ``on_file`` is told the relative path of each file once it is complete (from several
        threads; the manifest is not announced). Raise BackupFailed (with the failing tool's
        stderr tail) when any tool or the snapshot proof fails; every started tool is stopped
        first.
        """
        instance = self.login.instance
        timeout = float(instance.timeout_seconds) if instance.timeout_seconds else None
        deadline = time.monotonic() + timeout if timeout else None
        if on_file is not None:
            self._on_file = on_file
        tables, views = self._objects(db)
        groups = plan_groups(tables, self.jobs)
        workers = self._workers
        try:
            snapshot = self._start_workers(db, directory, groups, workers, binlog, timeout)
            self._dump_code(db, directory, views, events_sql, deadline)
            for worker in workers:
                worker.thread.join()
                if worker.error is not None:
                    raise worker.error
            self._check_aborted()
            self._check_worker_positions(workers, snapshot)
        except BaseException:
            for worker in workers:
                worker.kill()
            for worker in workers:
                worker.thread.join(timeout=30)
            raise
        manifest = self._manifest(db, directory, workers, views, snapshot)
        (directory / MANIFEST_NAME).write_bytes(render_manifest(manifest))
        return manifest

    def _start_workers(
        self,
        db: str,
        directory: Path,
        groups: list[list[str]],
        workers: list[_Worker],
        binlog: bool,
        timeout: float | None,
    ) -> _Snapshot:
        snapshot = _Snapshot()
        # MariaDB's mariadb-dump reads its own snapshot's position without a lock
        # (Binlog_snapshot_*): a second, independent proof of consistency.
        worker_binlog = (
            ["--master-data=2"]
            if binlog and self.tools.product == "MariaDB" and "MariaDB" in self.tools.tool_version
            else []
        )
        conn = self.login.connect()
        try:
            with conn.cursor() as cur:
                if not groups:
                    snapshot.binlog = _binlog_position(cur, self.tools.product) if binlog else None
                    snapshot.proof.append("no tables: nothing to hold in a snapshot")
                    return snapshot
                cur.execute("SET SESSION lock_wait_timeout = %s", (LOCK_WAIT_SECONDS,))
                cur.execute("SELECT ID FROM information_schema.PROCESSLIST")
                known = {int(r[0]) for r in cur.fetchall()}
                locked_at = time.monotonic()
                cur.execute("FLUSH TABLES WITH READ LOCK")
                try:
                    snapshot.binlog = _binlog_position(cur, self.tools.product) if binlog else None
                    self._spawn(db, directory, groups, workers, worker_binlog, timeout)
                    self._wait_for_snapshots(cur, known, workers)
                finally:
                    # On error the lock also ends with the connection, closed below.
                    with contextlib.suppress(pymysql.err.MySQLError):
                        cur.execute("UNLOCK TABLES")
                snapshot.lock_seconds = round(time.monotonic() - locked_at, 3)
                snapshot.proof.append(
                    f"FLUSH TABLES WITH READ LOCK held {snapshot.lock_seconds:.3f}s, until "
                    f"{len(workers)} worker(s) held an InnoDB transaction (new connections of "
                    f"{self.login.user!r} in information_schema.INNODB_TRX) or had finished"
                )
        except pymysql.err.MySQLError as exc:
            text = str(exc.args[1] if len(exc.args) > 1 else exc)
            raise BackupFailed(
                f"coordinating the parallel dump of {db!r} failed: {text}",
                hint=_NEED_PRIVILEGES,
            ) from None
        finally:
            conn.close()
        return snapshot

    def _spawn(
        self,
        db: str,
        directory: Path,
        groups: list[list[str]],
        workers: list[_Worker],
        binlog_options: list[str],
        timeout: float | None,
    ) -> None:
        for index, tables in enumerate(groups, start=1):
            command = make_data_command(
                self.tools.dump, self.login.defaults_file, self.login.instance, db, tables,
                binlog_options=binlog_options, password=self.login.password,
            )  # fmt: skip
            self._check_aborted()
            worker = _Worker(index, command, tables, directory, self._on_file)
            workers.append(worker)
            if timeout:
                worker.set_timeout(timeout)
            worker.thread.start()

    def _wait_for_snapshots(self, cur: Any, known: set[int], workers: list[_Worker]) -> int:
        deadline = time.monotonic() + SNAPSHOT_WAIT_SECONDS
        while True:
            finished = 0
            for worker in workers:
                if worker.error is not None:
                    raise worker.error
                if not worker.thread.is_alive():
                    worker.thread.join()
                    if worker.error is not None:
                        raise worker.error
                    # Started and finished while the lock was held: its snapshot was too.
                    finished += 1
            cur.execute(
                "SELECT p.ID FROM information_schema.PROCESSLIST p"
                " JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID"
                " WHERE p.USER = %s",
                (self.login.user,),
            )
            held = len({int(r[0]) for r in cur.fetchall()} - known) + finished
            if held >= len(workers):
                return held
            if time.monotonic() > deadline:
                raise BackupFailed(
                    f"{len(workers) - held} of {len(workers)} mariadb-dump workers did not "
                    f"open their snapshot within {SNAPSHOT_WAIT_SECONDS:.0f}s",
                    hint="Is the server overloaded or max_connections reached? Nothing was "
                    "stored; try again, or use fewer jobs.",
                )
            time.sleep(0.02)

    def _dump_code(
        self,
        db: str,
        directory: Path,
        views: list[str],
        events_sql: bytes | None,
        deadline: float | None,
    ) -> None:
        login, tool = self.login, self.tools.dump

        def remaining() -> float | None:
            return max(1.0, deadline - time.monotonic()) if deadline else None

        self._check_aborted()
        _dump_to_file(
            make_schema_command(tool, login.defaults_file, login.instance, db, views,
                                password=login.password),
            directory / SCHEMA_FILE,
            remaining(),
        )  # fmt: skip
        self._on_file(SCHEMA_FILE)
        self._check_aborted()
        _dump_to_file(
            make_objects_command(tool, login.defaults_file, login.instance, db,
                                 events=events_sql is None, password=login.password),
            directory / OBJECTS_FILE,
            remaining(),
        )  # fmt: skip
        self._on_file(OBJECTS_FILE)
        if events_sql is not None:
            (directory / EVENTS_FILE).write_bytes(events_sql)
            self._on_file(EVENTS_FILE)
        if views:
            self._check_aborted()
            _dump_to_file(
                make_views_command(tool, login.defaults_file, login.instance, db, views,
                                   password=login.password),
                directory / VIEWS_FILE,
                remaining(),
            )  # fmt: skip
            self._on_file(VIEWS_FILE)

    def _check_worker_positions(self, workers: list[_Worker], snapshot: _Snapshot) -> None:
        if snapshot.binlog is None or not workers:
            return
        if "--master-data=2" not in workers[0].command.argv:
            return
        expected = (snapshot.binlog["file"], snapshot.binlog["position"])
        for worker in workers:
            found = parse_binlog_coordinates(worker.splitter.header.decode("utf-8", "replace"))
            seen = (found["file"], found["position"]) if found else None
            if seen != expected:
                raise BackupFailed(
                    f"mariadb-dump worker {worker.index} took its snapshot at binlog position "
                    f"{seen}, not at {expected} where the lock was held: the workers did not "
                    "see one consistent state",
                    hint="Nothing was stored. Try again; if it persists, use mysql_format: sql.",
                )
        snapshot.proof.append(
            f"every worker's own snapshot is at binlog {expected[0]}:{expected[1]}, the "
            "position read under the lock"
        )

    def _manifest(
        self,
        db: str,
        directory: Path,
        workers: list[_Worker],
        views: list[str],
        snapshot: _Snapshot,
    ) -> dict[str, Any]:
        def entry(name: str) -> dict[str, Any]:
            return {"file": name, "size": (directory / name).stat().st_size}

        tables = [
            {"name": f.table, "file": f.file, "size": f.size, "worker": f.worker}
            for worker in workers
            for f in worker.splitter.files
        ]
        return {
            "format": MANIFEST_KIND,
            "version": MANIFEST_VERSION,
            "database": db,
            "tool": Path(self.tools.dump).name,
            "tool_version": self.tools.tool_version,
            "workers": len(workers),
            "snapshot": {"lock_seconds": snapshot.lock_seconds, "proof": snapshot.proof},
            "binlog": snapshot.binlog,
            "schema": entry(SCHEMA_FILE),
            "objects": entry(OBJECTS_FILE),
            "events": entry(EVENTS_FILE) if (directory / EVENTS_FILE).exists() else None,
            "views": entry(VIEWS_FILE) if views else None,
            "tables": tables,
            "complete": True,
        }


# ---------------------------------------------------------------------------------------------
# Streaming the directory as a tar while it is written
# ---------------------------------------------------------------------------------------------


class _Abandoned(Exception):
    """The reader of an ArchiveStream went away."""


_END = object()


class ArchiveStream:
    """A byte stream written by one thread (``write``) and read by another (``read``).

    At most ``limit`` chunks of 1 MiB wait in between: a slow reader (compression, upload)
    slows the writer down. ``end(error)`` finishes the stream; the reader then gets EOF, or the
    error raised from ``read``. ``close`` (the reader gives up) makes every later ``write``
    raise, so the writer stops.
    """

    def __init__(self, limit: int = 8):
        self._chunks: queue.Queue[object] = queue.Queue(maxsize=limit)
        self._buffer = b""
        self._eof = False
        self._closed = threading.Event()

    def write(self, data: bytes, /) -> int:
        view = memoryview(data)
        for start in range(0, len(view), COPY_CHUNK):
            self._put(bytes(view[start : start + COPY_CHUNK]))
        return len(data)

    def _put(self, item: object) -> None:
        while True:
            if self._closed.is_set():
                raise _Abandoned
            try:
                self._chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def end(self, error: BaseException | None = None) -> None:
        """Finish the stream, with ``error`` for the reader when not None."""
        with contextlib.suppress(_Abandoned):
            self._put(error if error is not None else _END)

    def read(self, size: int = -1, /) -> bytes:
        while not self._buffer and not self._eof:
            item = self._chunks.get()
            if item is _END:
                self._eof = True
            elif isinstance(item, BaseException):
                self._eof = True
                raise item
            else:
                assert isinstance(item, bytes)
                self._buffer = item
        size = size if size and size > 0 else COPY_CHUNK
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def close(self) -> None:
        """Stop reading: the writer's next write raises."""
        self._closed.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._chunks.get_nowait()


class StreamedDump:
    """Runs a :class:`ParallelDump` in a thread and streams the tar of its directory while it
    is being written: ``schema.sql`` first, each table file as soon as it is complete (then
    removed from the disk), the manifest last and only when everything succeeded.

    Use as a Readable. ``finish()`` after EOF returns the manifest; ``abort()`` stops
    everything (tools killed, threads joined).
    """

    def __init__(
        self,
        dumper: ParallelDump,
        db: str,
        directory: Path,
        *,
        binlog: bool,
        events_sql: bytes | None,
    ):
        self.stream = ArchiveStream()
        self.manifest: dict[str, Any] | None = None
        self._dumper = dumper
        self._directory = directory
        self._files: queue.Queue[str | None] = queue.Queue()
        self._error: BaseException | None = None
        self._dump_thread = threading.Thread(
            target=self._dump, args=(db, binlog, events_sql), name="vya-dump", daemon=True
        )
        self._tar_thread = threading.Thread(target=self._archive, name="vya-tar", daemon=True)

    def start(self) -> StreamedDump:
        self._tar_thread.start()
        self._dump_thread.start()
        return self

    def read(self, size: int = -1, /) -> bytes:
        return self.stream.read(size)

    def _dump(self, db: str, binlog: bool, events_sql: bytes | None) -> None:
        try:
            self.manifest = self._dumper.dump(
                db, self._directory, binlog=binlog, events_sql=events_sql, on_file=self._files.put
            )
            self._files.put(MANIFEST_NAME)
        except BaseException as exc:  # handed to the reader through the stream
            self._error = exc
        finally:
            self._files.put(None)

    def _archive(self) -> None:
        held: list[str] = []
        schema_done = False
        error: BaseException | None = None
        try:
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=self.stream,
                mode="w|",
                format=tarfile.PAX_FORMAT,
                bufsize=COPY_CHUNK,
                copybufsize=COPY_CHUNK,
            ) as tar:
                while (name := self._files.get()) is not None:
                    if name == SCHEMA_FILE:
                        schema_done = True
                        for pending in [SCHEMA_FILE, *held]:
                            self._add(tar, pending)
                        held = []
                    elif not schema_done:
                        held.append(name)  # schema.sql opens the archive
                    else:
                        self._add(tar, name)
                    if self._error is not None:
                        break
                if self._error is not None:
                    raise self._error
        except _Abandoned:
            error = None
        except BaseException as exc:  # handed to the reader through the stream
            error = exc
        if self._error is not None:
            error = self._error
        # The file queue has no bound: the dumping thread never waits for this one.
        self.stream.end(error)

    def _add(self, tar: tarfile.TarFile, name: str) -> None:
        path = self._directory / name
        info = tarfile.TarInfo(name)
        info.size = path.stat().st_size
        info.mode = 0o644
        info.mtime = int(time.time())
        with path.open("rb") as source:
            tar.addfile(info, source)
        if name.startswith(DATA_DIR + "/"):
            path.unlink()  # keeps the staging disk at the files not archived yet

    def finish(self) -> dict[str, Any]:
        """Wait for the threads after EOF; return the manifest; raise what failed."""
        self._dump_thread.join()
        self._tar_thread.join()
        if self._error is not None:
            raise self._error
        assert self.manifest is not None
        return self.manifest

    def abort(self) -> None:
        """Stop the dump and the archiving; wait for both."""
        self.stream.close()
        self._dumper.abort()
        self._dump_thread.join()
        self._tar_thread.join()


# ---------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------

_MEMBER = re.compile(
    r"^(?:(?:schema|objects|events|views)\.sql|vya-parallel\.json|data/w\d+-\d+\.sql)$"
)


class _FileQueueReader:
    """A Readable over files taken one after the other from a shared queue.

    Several of them feed several clients from one queue: each client loads whole files until
    it takes ``None`` (no more files), or ``cancel`` is set (another client failed). A file is
    removed once read when ``remove`` is set.
    """

    def __init__(
        self, files: queue.Queue[Path | None], cancel: threading.Event, *, remove: bool = False
    ):
        self._files = files
        self._cancel = cancel
        self._remove = remove
        self._current: IO[bytes] | None = None
        self._path: Path | None = None
        self._last = b"\n"
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._cancel.is_set() and not self._done:
            if self._current is None:
                try:
                    path = self._files.get(timeout=0.2)
                except queue.Empty:
                    continue
                if path is None:
                    self._done = True
                    break
                self._current, self._path = path.open("rb"), path
                if self._last != b"\n":
                    self._last = b"\n"
                    return b"\n"  # statements of two files never share a line
            data = self._current.read(size if size and size > 0 else COPY_CHUNK)
            if data:
                self._last = data[-1:]
                return data
            self.close()
        return b""

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
            if self._remove and self._path is not None:
                self._path.unlink(missing_ok=True)


class _Loader:
    """Loads a parallel-format dump into one database: ``schema`` first, then table files with
    up to ``jobs`` clients as they are given, then the code."""

    def __init__(self, login: Login, client: str, db: str, jobs: int, *, remove: bool = False):
        self._login = login
        self._client = client
        self._db = db
        self._jobs = max(1, jobs)
        self._remove = remove
        self._files: queue.Queue[Path | None] = queue.Queue()
        self._cancel = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def _command(self) -> Command:
        login = self._login
        return make_restore_command(
            self._client, login.defaults_file, login.instance, self._db, password=login.password
        )

    def load(self, path: Path) -> None:
        """Load one file now, in this thread."""
        with path.open("rb") as source:
            feed(self._command(), source, RestoreFailed, stdout_tail=False)

    def start(self) -> None:
        for index in range(self._jobs):
            thread = threading.Thread(target=self._client_thread, name=f"vya-load-{index}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def add(self, path: Path) -> None:
        """Queue a table file for the next free client; raise the first client's failure."""
        self.check()
        self._files.put(path)

    def check(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _client_thread(self) -> None:
        reader = _FileQueueReader(self._files, self._cancel, remove=self._remove)
        try:
            feed(self._command(), reader, RestoreFailed, stdout_tail=False)
        except BaseException as exc:  # re-raised by the calling thread
            self._errors.append(exc)
            self._cancel.set()
        finally:
            reader.close()

    def wait(self) -> None:
        """Let the clients finish the queued files; raise the first failure."""
        for _thread in self._threads:
            self._files.put(None)
        try:
            for thread in self._threads:
                thread.join()
        finally:
            self._cancel.set()
            for thread in self._threads:
                thread.join()
        self.check()

    def stop(self) -> None:
        """Stop the clients at a file boundary (after a failure elsewhere)."""
        self._cancel.set()
        for thread in self._threads:
            thread.join()


def read_manifest(directory: Path) -> dict[str, Any]:
    """Return the manifest of an extracted dump; raise RestoreFailed when it is missing,
    unreadable, or a file it lists is missing or has another size."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise RestoreFailed(
            f"the archive has no {MANIFEST_NAME}: it is incomplete or not a parallel-format dump",
            hint="Check it with: vya-backupdb verify --level integrity",
        )
    manifest = parse_manifest(path.read_bytes(), RestoreFailed)
    for name, size in manifest_files(manifest):
        file = directory / name
        if not _safe_relative(name) or not file.is_file() or file.stat().st_size != size:
            raise RestoreFailed(
                f"the archive's file {name} is missing or has another size than recorded",
                hint="Check it with: vya-backupdb verify --level integrity",
            )
    return manifest


def _load_code(loader: _Loader, directory: Path, manifest: dict[str, Any]) -> None:
    loader.load(directory / OBJECTS_FILE)
    for key, name in (("events", EVENTS_FILE), ("views", VIEWS_FILE)):
        if manifest.get(key):
            loader.load(directory / name)


def load_directory(
    login: Login, client: str, db: str, directory: Path, *, jobs: int
) -> dict[str, Any]:
    """Load a dump directory into the existing database ``db``; return its manifest. Raise
    RestoreFailed (with the client's stderr tail) at the first failure; the other clients stop
    at a file boundary."""
    manifest = read_manifest(directory)
    loader = _Loader(login, client, db, jobs)
    loader.load(directory / SCHEMA_FILE)
    tables = sorted((t for t in manifest["tables"] if t.get("file")), key=lambda t: -t["size"])
    loader.start()
    try:
        for table in tables:
            loader.add(directory / str(table["file"]))
        loader.wait()
    except BaseException:
        loader.stop()
        raise
    _load_code(loader, directory, manifest)
    return manifest


def load_stream(
    login: Login,
    client: str,
    db: str,
    stream: Readable,
    directory: Path,
    *,
    jobs: int,
    prepare: Callable[[], None],
) -> dict[str, Any]:
    """Extract a parallel-format tar into ``directory`` and load it into ``db`` meanwhile:
    ``prepare()`` (create the database) and ``schema.sql`` when it arrives, each table file
    by the next free client as soon as it is extracted (then removed), the code at the end,
    once the manifest confirmed the archive is complete.

    Raise RestoreFailed when the tar is damaged, holds an unexpected member, lacks its
    manifest or a file it lists, or a client fails.
    """
    loader = _Loader(login, client, db, jobs, remove=True)
    sizes: dict[str, int] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=COPY_CHUNK) as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                name = member.name.removeprefix("./")
                if member.isdir() and name.rstrip("/") in ("", ".", DATA_DIR):
                    continue
                if not member.isfile() or not _MEMBER.match(name) or name in sizes:
                    raise RestoreFailed(
                        f"unexpected member {name!r} in the archive: not a parallel-format dump"
                    )
                if name.startswith(DATA_DIR + "/") and SCHEMA_FILE not in sizes:
                    raise RestoreFailed(f"the archive holds {name} before {SCHEMA_FILE}")
                path = directory / name
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with path.open("wb") as out:
                    while chunk := source.read(COPY_CHUNK):
                        out.write(chunk)
                sizes[name] = member.size
                tar.members.clear()  # stream mode remembers members: keep memory bounded
                if name == SCHEMA_FILE:
                    prepare()
                    loader.load(path)
                    loader.start()
                elif name.startswith(DATA_DIR + "/"):
                    loader.add(path)
            while stream.read(COPY_CHUNK):  # end-of-archive padding
                pass
        if MANIFEST_NAME not in sizes:
            raise RestoreFailed(
                f"the archive has no {MANIFEST_NAME}: it is incomplete or not a "
                "parallel-format dump",
                hint="Check it with: vya-backupdb verify --level integrity",
            )
        manifest = parse_manifest((directory / MANIFEST_NAME).read_bytes(), RestoreFailed)
        listed = manifest_files(manifest)
        wrong = [n for n, size in listed if sizes.get(n) != size]
        extra = {n for n in sizes if n.startswith(DATA_DIR + "/")} - {n for n, _ in listed}
        if wrong or extra:
            raise RestoreFailed(
                "the archive does not match its manifest: "
                + ", ".join([*wrong[:5], *sorted(extra)[:5]]),
                hint="Check it with: vya-backupdb verify --level integrity",
            )
        loader.wait()
    except tarfile.TarError as exc:
        loader.stop()
        raise RestoreFailed(f"the parallel-format archive is damaged: {exc}") from None
    except BaseException:
        loader.stop()
        raise
    _load_code(loader, directory, manifest)
    return manifest


__all__: list[str] = [
    "MANIFEST_NAME",
    "PARALLEL_FORMAT",
    "ArchiveStream",
    "DumpTools",
    "Login",
    "ParallelDump",
    "StreamedDump",
    "TableSplitter",
    "check_parallel_archive",
    "choose_mysql_format",
    "load_directory",
    "load_stream",
    "make_data_command",
    "make_objects_command",
    "make_schema_command",
    "make_views_command",
    "parse_comment_name",
    "parse_manifest",
    "plan_groups",
    "read_manifest",
]
