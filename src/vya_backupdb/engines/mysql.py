"""MySQL and MariaDB: dumps with mariadb-dump/mysqldump, restores with the mariadb/mysql client.

How a database travels:

* ``dump`` runs ``mariadb-dump --single-transaction --quick --routines --triggers --events
  --hex-blob --default-character-set=utf8mb4 --tz-utc --no-tablespaces`` on *one* database and
  without ``--databases``: the dump holds no ``CREATE DATABASE``/``USE``, so it restores under any
  name without touching the text of the data. ``--single-transaction`` gives a consistent
  snapshot of InnoDB tables without locking them. When binary logging is on, ``--master-data=2``
  (``--source-data=2`` for MySQL 8 tools, plus ``--gtid`` on MariaDB) writes the binlog
  coordinates of that snapshot as comments; they are read from the stream on the fly into
  ``DumpStream.info["binlog"]`` (this needs the RELOAD privilege and, on MariaDB, BINLOG MONITOR).
  Values are dumped in UTC (``--tz-utc``) and utf8mb4; binary data as hex literals.
* ``restore`` creates a missing target with the source's character set, collation and comment,
  then streams the dump into ``mariadb --binary-mode --default-character-set=utf8mb4``: the
  client character set is explicit and the dump sets ``TIME_ZONE='+00:00'`` itself, so the
  target server's defaults (``character_set_server``, ``time_zone``) never change a value.
  By hand: ``zstd -dc FILE.sql.zst | mariadb --default-character-set=utf8mb4 --binary-mode DB``.
* ``mysql_format: parallel`` (or a database above ``parallel_dump_above_bytes``) dumps the
  same way with ``jobs`` mariadb-dump workers, one file per table, in one consistent snapshot,
  archived as a tar, and restores with ``jobs`` clients: see
  :mod:`~vya_backupdb.engines.mysql_parallel` and docs/mysql.md.

The password reaches the tools only through a 0600 ``--defaults-extra-file`` (always the first
option, as the tools require) and PyMySQL through its ``password`` argument; never argv, never
an error message.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pymysql
import pymysql.cursors

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import (
    DatabaseInfo,
    DumpStream,
    RestoreOptions,
    ServerInfo,
    UserInfo,
    UserSelection,
)
from vya_backupdb.engines.mysql_stream import (
    SectionPlan,
    SqlDumpScanner,
    plan_sections,
    sections_record,
)
from vya_backupdb.engines.process import (
    DUMP_PIPE_SIZE,
    DUMP_STDOUT_BUFFER,
    Command,
    Readable,
    ToolReader,
    cached_tool_version,
    feed,
    find_tool,
    mask,
    secret_file,
    tool_version,
)
from vya_backupdb.errors import (
    BackupFailed,
    ConnectionFailed,
    NotFoundError,
    RestoreFailed,
    UsageError,
    VyaError,
)

if TYPE_CHECKING:
    from vya_backupdb.engines.mysql_parallel import Login

log = logging.getLogger(__name__)

CLIENT_PACKAGE = "mariadb-client"

#: Tools by instance type, preferred first. On Debian ``mysqldump``/``mysql`` are links to the
#: MariaDB tools; a real MySQL installation is better served by its own tools.
DUMP_TOOLS: dict[str, tuple[str, ...]] = {
    "mariadb": ("mariadb-dump", "mysqldump"),
    "mysql": ("mysqldump", "mariadb-dump"),
}
CLIENT_TOOLS: dict[str, tuple[str, ...]] = {
    "mariadb": ("mariadb", "mysql"),
    "mysql": ("mysql", "mariadb"),
}

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
DUMP_OPTIONS: tuple[str, ...] = (
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--tz-utc",
    "--no-tablespaces",
)
#: ``--comments``: the client strips comments by default, even inside routine bodies.
RESTORE_OPTIONS: tuple[str, ...] = (
    "--binary-mode",
    "--default-character-set=utf8mb4",
    "--comments",
)

#: Accounts every server creates itself; ``restore_globals(users="all")`` leaves them alone.
BUILTIN_USERS: frozenset[str] = frozenset(
    {
        "root",
        "mariadb.sys",
        "mysql",
        "PUBLIC",
        "mysql.session",
        "mysql.sys",
        "mysql.infoschema",
        "healthcheck",
        "debian-sys-maint",
    }
)

USERS_FILE_FORMAT = 1
_ACCOUNT_MARK = "-- vya-account: "
_END_MARK = "-- vya-end"
_BUILTIN_PREFIX = "-- (built-in) "
_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 16 * 1024
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
_SECRET_LITERAL = re.compile(r"\b(PASSWORD|USING|AS|BY)\s+'(?:[^'\\]|\\.|'')*'", re.IGNORECASE)

_ACCESS_DENIED = 1045
_UNKNOWN_DATABASE = 1049
#: No such table (1146), column (1054), routine (1305): a grant on an object not restored yet.
_MISSING_OBJECT = frozenset({1146, 1054, 1305})
_CONNECT_ERRORS = frozenset({1045, 1044, 1129, 1130, 1251, 2002, 2003, 2005, 2006, 2013})


# ---------------------------------------------------------------------------------------------
# Pure helpers: quoting, option files and argv
# ---------------------------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """Return ``name`` as a backtick-quoted identifier (backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def quote_string(value: str) -> str:
    """Return ``value`` as a single-quoted SQL string literal (works in any sql_mode)."""
    escaped = value.replace("\\", "\\\\").replace("'", "''").replace("\0", "\\0")
    return "'" + escaped + "'"


def format_account(user: str, host: str | None) -> str:
    """Return the display name of an account: ``'user'@'host'``, or ``user`` for a role."""
    if host is None:
        return user
    return f"{quote_string(user)}@{quote_string(host)}"


_ACCOUNT_PART = r"(?:'((?:[^']|'')*)'|`((?:[^`]|``)*)`|\"((?:[^\"]|\"\")*)\"|([^@'`\"]*))"
_ACCOUNT_RE = re.compile(rf"^{_ACCOUNT_PART}(?:@{_ACCOUNT_PART})?$")


def parse_account(text: str) -> tuple[str, str | None]:
    """Return ``(user, host)`` of ``'u'@'h'``, ```u`@`h```, ``u@h`` or ``u`` (host None).

    Raise UsageError when the text is not an account name.
    """
    match = _ACCOUNT_RE.match(text.strip())
    if match is None:
        raise UsageError(
            f"{text!r} is not an account name",
            hint="Write accounts as name, name@host or 'name'@'host'.",
        )
    groups = match.groups()

    def part(values: tuple[str | None, ...]) -> str | None:
        single, back, double, bare = values
        if single is not None:
            return single.replace("''", "'")
        if back is not None:
            return back.replace("``", "`")
        if double is not None:
            return double.replace('""', '"')
        return bare

    return part(groups[:4]) or "", part(groups[4:])


def option_file_value(value: str) -> str:
    """Return ``value`` double-quoted and escaped for a MySQL option file."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def make_defaults_file(user: str, password: str | None) -> str:
    """Return the content of the 0600 ``--defaults-extra-file`` holding the login."""
    lines = ["[client]", f"user={option_file_value(user)}"]
    if password is not None:
        lines.append(f"password={option_file_value(password)}")
    return "\n".join(lines) + "\n"


def make_connection_args(instance: InstanceConfig) -> list[str]:
    """Return the client options that say where the server is (no credentials).

    Without a socket the protocol is forced to TCP: the tools would otherwise take
    ``localhost`` to mean the default socket while PyMySQL connects over TCP, and the two could
    reach different servers or accounts.
    """
    if instance.socket is not None:
        return [f"--socket={instance.socket}", "--protocol=SOCKET"]
    return [
        f"--host={instance.effective_host}",
        f"--port={instance.effective_port}",
        "--protocol=TCP",
    ]


def binlog_dump_options(tool_version_text: str, product: str) -> list[str]:
    """Return the options that record the binlog coordinates of the dump's snapshot.

    MySQL 8.0.26 renamed ``--master-data`` to ``--source-data`` (the old name is gone in 8.4);
    MariaDB tools keep ``--master-data`` and add ``--gtid`` for the GTID position.
    """
    if "MariaDB" in tool_version_text:
        return ["--master-data=2", "--gtid"] if product == "MariaDB" else ["--master-data=2"]
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", tool_version_text)
    if match and tuple(int(x) for x in match.groups()) >= (8, 0, 26):
        return ["--source-data=2"]
    return ["--master-data=2"]


def make_dump_command(
    tool: str,
    defaults_file: Path,
    instance: InstanceConfig,
    db: str,
    *,
    binlog_options: Sequence[str] = (),
    password: str | None = None,
    events: bool = True,
) -> Command:
    """Return the dump command of ``db``: defaults file first, the database last.

    ``events=False`` leaves events out (they are then written by :func:`render_events_sql`).
    """
    options = [o if events or o != "--events" else "--skip-events" for o in DUMP_OPTIONS]
    argv = [
        tool,
        f"--defaults-extra-file={defaults_file}",
        *make_connection_args(instance),
        *options,
        *binlog_options,
        *instance.dump_options,
        # "--" so a database named like an option stays a database name.
        "--",
        db,
    ]
    return Command(
        argv=argv, secrets=(password,) if password else (), stdout_buffer=DUMP_STDOUT_BUFFER
    )


def make_restore_command(
    tool: str,
    defaults_file: Path,
    instance: InstanceConfig,
    db: str,
    *,
    password: str | None = None,
) -> Command:
    """Return the client command that executes a dump read from stdin inside ``db``."""
    argv = [
        tool,
        f"--defaults-extra-file={defaults_file}",
        *make_connection_args(instance),
        *RESTORE_OPTIONS,
        f"--database={db}",
    ]
    return Command(argv=argv, secrets=(password,) if password else ())


_CHANGE_MASTER = re.compile(
    r"CHANGE (?:MASTER|REPLICATION SOURCE) TO (?:MASTER|SOURCE)_LOG_FILE='([^']+)',\s*"
    r"(?:MASTER|SOURCE)_LOG_POS=(\d+)"
)
_MARIADB_GTID = re.compile(r"SET GLOBAL gtid_slave_pos='([^']*)'")
_MYSQL_GTID = re.compile(r"GTID_PURGED=(?:/\*!80000 '\+'\*/ )?'([^']*)'")


def parse_binlog_coordinates(head: str, tail: str = "") -> dict[str, Any] | None:
    """Return ``{"file", "position", "gtid"}`` from a dump's header and trailer, or None.

    ``--master-data=2`` writes the position as a comment near the top; MariaDB's ``--gtid``
    writes the GTID position at the end, MySQL's GTID_PURGED near the top.
    """
    match = _CHANGE_MASTER.search(head)
    if match is None:
        return None
    gtid = None
    for pattern, text in ((_MARIADB_GTID, tail), (_MARIADB_GTID, head), (_MYSQL_GTID, head)):
        found = pattern.findall(text)
        if found:
            gtid = found[-1]
            break
    return {"file": match.group(1), "position": int(match.group(2)), "gtid": gtid or None}


def version_number(version: str) -> int:
    """Return ``10.11.19-MariaDB-log`` as 101119 (major*10000 + minor*100 + patch)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        return 0
    major, minor, patch = (int(x) for x in match.groups())
    return major * 10000 + minor * 100 + patch


#: MariaDB character set -> Python codec, to send an event's text in its original encoding.
_PYTHON_CODECS = {"utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "cp1252"}


@dataclass(frozen=True)
class EventDefinition:
    """One row of SHOW CREATE EVENT."""

    name: str
    sql_mode: str
    time_zone: str
    create: str
    character_set_client: str
    collation_connection: str


def render_events_sql(events: Sequence[EventDefinition]) -> bytes:
    """Return SQL that recreates ``events`` exactly as mariadb-dump would.

    Used when mariadb-dump cannot dump events itself: it fails on the events of a database
    whose name contains a single quote (``Unknown database`` when selecting it, 10.11.19).
    Each event is sent in its original client character set so its metadata matches.
    """
    if not events:
        return b""
    out = [
        b"\n--\n-- Events (written by vya-backupdb: mariadb-dump cannot dump the events of a"
        b" database whose name holds a quote)\n--\n\nDELIMITER ;;\n"
    ]
    for event in events:
        charset = event.character_set_client
        codec = _PYTHON_CODECS.get(charset)
        if codec is None or not _NAME_PATTERN.match(event.collation_connection):
            charset, codec = "utf8mb4", "utf-8"
        collation = event.collation_connection if charset == event.character_set_client else ""
        lines = [
            "/*!50003 SET @vya_saved_cs_client = @@character_set_client */ ;;",
            "/*!50003 SET @vya_saved_cs_results = @@character_set_results */ ;;",
            "/*!50003 SET @vya_saved_col_connection = @@collation_connection */ ;;",
            f"/*!50003 SET character_set_client = {charset} */ ;;",
            f"/*!50003 SET character_set_results = {charset} */ ;;",
        ]
        if collation:
            lines.append(f"/*!50003 SET collation_connection = {collation} */ ;;")
        lines += [
            "/*!50003 SET @vya_saved_sql_mode = @@sql_mode */ ;;",
            f"/*!50003 SET sql_mode = {quote_string(event.sql_mode)} */ ;;",
            "/*!50003 SET @vya_saved_time_zone = @@time_zone */ ;;",
            f"/*!50003 SET time_zone = {quote_string(event.time_zone)} */ ;;",
            f"/*!50106 DROP EVENT IF EXISTS {quote_identifier(event.name)} */ ;;",
        ]
        out.append(("\n".join(lines) + "\n").encode("utf-8"))
        out.append(event.create.encode(codec, errors="strict") + b" ;;\n")
        restore = [
            "/*!50003 SET time_zone = @vya_saved_time_zone */ ;;",
            "/*!50003 SET sql_mode = @vya_saved_sql_mode */ ;;",
            "/*!50003 SET character_set_client = @vya_saved_cs_client */ ;;",
            "/*!50003 SET character_set_results = @vya_saved_cs_results */ ;;",
            "/*!50003 SET collation_connection = @vya_saved_col_connection */ ;;",
        ]
        out.append(("\n".join(restore) + "\n").encode("utf-8"))
    out.append(b"DELIMITER ;\n")
    return b"".join(out)


def mask_sql_secrets(text: str) -> str:
    """Return ``text`` with password hashes and auth strings replaced by ``'****'``."""
    return _SECRET_LITERAL.sub(lambda m: f"{m.group(1)} '****'", text)


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


class IteratorReader:
    """A Readable over an iterator of byte chunks (keeps at most one chunk in memory)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = 1024 * 1024
        while len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class ChainReader:
    """A Readable that reads its readers one after the other."""

    def __init__(self, *readers: Readable):
        self._readers = list(readers)

    def read(self, size: int = -1, /) -> bytes:
        while self._readers:
            data = self._readers[0].read(size)
            if data:
                return data
            self._readers.pop(0)
        return b""


class ScanningReader:
    """A Readable that shows every chunk it passes on to a :class:`SqlDumpScanner`."""

    def __init__(self, reader: Readable, scanner: SqlDumpScanner):
        self._reader = reader
        self.scanner = scanner

    def read(self, size: int = -1, /) -> bytes:
        data = self._reader.read(size)
        self.scanner.scan(data)
        return data


class BinlogScanner:
    """Pass a dump through unchanged while keeping its head and tail to read coordinates."""

    def __init__(self, reader: Readable):
        self._reader = reader
        self._head = b""
        self._tail = b""

    def read(self, size: int = -1, /) -> bytes:
        data = self._reader.read(size)
        if len(self._head) < _HEAD_BYTES:
            self._head += data[: _HEAD_BYTES - len(self._head)]
        if data:
            self._tail = (self._tail + data[-_TAIL_BYTES:])[-_TAIL_BYTES:]
        return data

    def coordinates(self) -> dict[str, Any] | None:
        """Return the binlog coordinates seen in the stream, or None."""
        return parse_binlog_coordinates(
            self._head.decode("utf-8", errors="replace"),
            self._tail.decode("utf-8", errors="replace"),
        )


def iter_lines(reader: Readable, chunk_size: int = 64 * 1024) -> Iterator[str]:
    """Yield the lines of a UTF-8 stream without their line ends, reading in chunks."""
    pending = b""
    while chunk := reader.read(chunk_size):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", errors="replace").rstrip("\r")


# ---------------------------------------------------------------------------------------------
# The users file: one block per account, parsed and filtered by pure functions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountBlock:
    """The statements that recreate one account (``host`` is None for a MariaDB role)."""

    user: str
    host: str | None
    statements: tuple[str, ...]
    #: Roles this account is granted: they must exist before its GRANT role statements run.
    requires: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return format_account(self.user, self.host)

    @property
    def is_role(self) -> bool:
        return self.host is None

    @property
    def builtin(self) -> bool:
        return is_builtin_user(self.user)


def is_builtin_user(user: str) -> bool:
    """Return True for accounts the server creates itself (root, mariadb.sys, mysql.*, ...)."""
    return user in BUILTIN_USERS or user.startswith("mysql.")


def render_users_header(server: ServerInfo, names: Sequence[str]) -> str:
    """Return the comment header of a users file, listing its accounts."""
    lines = [
        f"-- VYA BackupDB users file (format {USERS_FILE_FORMAT})",
        f"-- Server: {server.product} {server.version}",
        "-- Restore: vya-backupdb users restore --file FILE --all   (skips built-in accounts)",
        "--      or: mariadb --default-character-set=utf8mb4 < FILE   (applies every account)",
        f"-- Accounts ({len(names)}):",
        *(f"--   {name}" for name in names),
        "",
    ]
    return "\n".join(lines) + "\n"


def render_account_block(block: AccountBlock) -> str:
    """Return ``block`` as SQL text: a JSON marker comment, one statement a line, an end mark.

    The statements of built-in accounts (root, mariadb.sys, ...) are written commented out:
    ``mariadb < FILE`` then leaves the target's own root password and grants alone, while
    ``users restore --user root`` can still apply them deliberately.
    """
    fields: dict[str, Any] = {"user": block.user, "host": block.host}
    fields["requires"] = list(block.requires)
    if block.builtin:
        fields["builtin"] = True
    marker = json.dumps(fields, ensure_ascii=False)
    prefix = _BUILTIN_PREFIX if block.builtin else ""
    body = "".join(
        "\n".join(prefix + line for line in f"{statement};".split("\n")) + "\n"
        for statement in block.statements
    )
    return f"{_ACCOUNT_MARK}{marker}\n{body}{_END_MARK}\n\n"


def parse_users_file(lines: Iterable[str]) -> Iterator[AccountBlock]:
    """Yield the account blocks of a users file; raise RestoreFailed when it is malformed."""
    current: dict[str, Any] | None = None
    statements: list[str] = []
    pending: list[str] = []
    for number, line in enumerate(lines, start=1):
        if line.startswith(_ACCOUNT_MARK):
            if current is not None:
                raise RestoreFailed(f"users file line {number}: account block not closed")
            try:
                current = json.loads(line[len(_ACCOUNT_MARK) :])
            except json.JSONDecodeError:
                raise RestoreFailed(f"users file line {number}: bad account marker") from None
            statements, pending = [], []
            continue
        if line.startswith(_END_MARK):
            if current is None or pending:
                raise RestoreFailed(f"users file line {number}: unexpected end of block")
            yield AccountBlock(
                user=str(current["user"]),
                host=None if current.get("host") is None else str(current["host"]),
                statements=tuple(statements),
                requires=tuple(str(r) for r in current.get("requires", ())),
            )
            current = None
            continue
        if current is None:
            continue
        if current.get("builtin"):
            if not line.startswith(_BUILTIN_PREFIX):
                continue
            line = line[len(_BUILTIN_PREFIX) :]
        if pending or (line.strip() and not line.startswith("--")):
            pending.append(line)
            # Statements end with ';' at the end of a line (SHOW GRANTS output is one line).
            if line.rstrip().endswith(";"):
                statements.append("\n".join(pending).rstrip()[:-1])
                pending = []
    if current is not None:
        raise RestoreFailed("users file ends inside an account block (truncated?)")


def account_matches(block: AccountBlock, selector: str) -> bool:
    """Return True when ``selector`` (``name``, ``name@host``, ``'n'@'h'``) names ``block``."""
    user, host = parse_account(selector)
    if user != block.user:
        return False
    return host is None or host == block.host


def select_blocks(
    blocks: Iterable[AccountBlock], users: UserSelection, exclude: Sequence[str]
) -> Iterator[AccountBlock]:
    """Yield the blocks to apply, each role before the accounts that are granted it.

    ``"all"`` means every non built-in account; a list names accounts (built-ins included when
    named). ``exclude`` always wins. Roles a selected account needs are applied too (unless
    excluded). Role blocks are held until needed — a file lists roles first.
    """
    held: dict[str, AccountBlock] = {}
    emitted: set[str] = set()

    def excluded(block: AccountBlock) -> bool:
        return any(account_matches(block, sel) for sel in exclude)

    def selected(block: AccountBlock) -> bool:
        if excluded(block):
            return False
        if users == "all":
            return not block.builtin
        return any(account_matches(block, sel) for sel in users)

    def with_roles(role: str, chain: tuple[str, ...] = ()) -> Iterator[AccountBlock]:
        block = held.get(role)
        if block is None or role in emitted or role in chain or excluded(block):
            return
        for needed in block.requires:
            yield from with_roles(needed, (*chain, role))
        if role not in emitted:
            emitted.add(role)
            yield block

    for block in blocks:
        if block.is_role:
            held[block.user] = block
            if selected(block):
                yield from with_roles(block.user)
        elif selected(block):
            for needed in block.requires:
                yield from with_roles(needed)
            yield block


def _grantee_pattern(quoted: str) -> re.Pattern[str]:
    return re.compile(rf" TO {re.escape(quoted)}(?:$|\s)")


def own_grant_lines(grants: Iterable[str], quoted: str) -> list[str]:
    """Return the SHOW GRANTS lines that grant to ``quoted`` itself.

    SHOW GRANTS FOR a role also lists the grants of the roles it holds; those belong to the
    other roles' blocks (which may not exist yet when this block runs).
    """
    pattern = _grantee_pattern(quoted)
    return [g for g in grants if g.startswith("SET DEFAULT ROLE") or pattern.search(g)]


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


#: Table types whose rows are counted (``table_stats``, the restore's row check).
_COUNTED_TYPES = ("BASE TABLE", "SYSTEM VERSIONED")


def _count_rows(cur: pymysql.cursors.Cursor, db: str, table: str) -> int:
    # Identifiers are quoted (backticks doubled); they cannot be parameters.
    cur.execute(f"SELECT COUNT(*) FROM {quote_identifier(db)}.{quote_identifier(table)}")  # noqa: S608
    return int(cur.fetchone()[0])


class LoadedTableCounter:
    """Count the rows of each table of a database being restored as soon as its data is in,
    on a connection of its own, while the client goes on loading the next tables.

    A mariadb-dump/mysqldump script builds one table after the other (DROP/CREATE TABLE,
    LOCK TABLES, the INSERTs, UNLOCK TABLES, the table's triggers) and never writes to a table
    again once a later object exists; its triggers are created after its data, so none fires
    during the load. Hence: when a poll of ``information_schema.TABLES`` finds an object that
    the earlier polls did not, every table those polls found is complete, and its exact
    ``COUNT(*)`` now is its count at the end of the restore. Objects that existed before the
    load, and tables not yet known complete when it ends, are not counted here.
    """

    def __init__(
        self,
        connect: Callable[[], pymysql.connections.Connection],
        db: str,
        *,
        interval: float = 0.2,
    ):
        self._connect = connect
        self._db = db
        self._interval = interval
        #: Exact row counts of the tables known complete, by table name.
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()  # set once the objects there before the load are known
        self._thread = threading.Thread(target=self._run, name="mysql-row-count", daemon=True)

    def start(self) -> LoadedTableCounter:
        """Start watching; return once the objects already there are known (so every object
        created after this call is one of the load's), or after 10 s at the most."""
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> dict[str, int]:
        """Stop watching (after a count in progress) and return the counts taken."""
        self._stop.set()
        self._thread.join()
        return self.counts

    def abandon(self) -> None:
        """Stop watching without waiting for a count in progress (the load failed)."""
        self._stop.set()

    def _objects(self, cur: pymysql.cursors.Cursor) -> dict[str, str]:
        cur.execute(
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (self._db,),
        )
        # "#sql…" are the server's work files (e.g. a copying ALTER TABLE), not objects of
        # the script: I_S normally hides them; they must never mark a table complete.
        return {
            str(name): str(kind)
            for name, kind in cur.fetchall()
            if not str(name).startswith("#sql")
        }

    def _run(self) -> None:
        try:
            conn = self._connect()
        except VyaError as exc:
            log.debug("row counts during the restore of %s: %s", self._db, exc.message)
            self._ready.set()
            return
        try:
            with conn.cursor() as cur:
                try:
                    seen = set(self._objects(cur))  # there before the load: never counted here
                finally:
                    self._ready.set()
                waiting: list[str] = []  # created during the load, not yet known complete
                while not self._stop.wait(self._interval):
                    current = self._objects(cur)
                    new = sorted(current.keys() - seen)
                    if not new:
                        continue
                    for table in waiting:
                        if current.get(table) in _COUNTED_TYPES and not self._stop.is_set():
                            self.counts[table] = _count_rows(cur, self._db, table)
                    seen.update(new)
                    waiting = new
        except pymysql.err.MySQLError as exc:
            # Whatever was not counted here is counted after the load.
            log.debug("row counts during the restore of %s stopped: %s", self._db, exc)
        finally:
            conn.close()


@dataclass
class _ToolSet:
    dump: str
    client: str
    dump_version: str = field(default="")


class MysqlEngine:
    """The Engine for ``mysql`` and ``mariadb`` instances (see the module docstring)."""

    def __init__(self, instance: InstanceConfig, password: str | None):
        self.kind = instance.type
        self._instance = instance
        self._password = password
        # The tools would default to the OS user name; PyMySQL must use the same account.
        self._user = instance.user or getpass.getuser()
        self._server: ServerInfo | None = None
        #: Grants the last ``restore_globals`` skipped because their table, column or routine
        #: does not exist on the target (restore the databases first, then the users again).
        self.skipped_grants: list[str] = []
        #: Exact row counts, by database and table, of tables this engine restored (or copied)
        #: and has not written to since: the restore's row check reuses them.
        self._restored_counts: dict[str, dict[str, int]] = {}

    # -- connections ---------------------------------------------------------------------

    def _where(self) -> str:
        if self._instance.socket is not None:
            return f"socket {self._instance.socket}"
        return f"{self._instance.effective_host}:{self._instance.effective_port}"

    def _connection_failed(self, exc: pymysql.err.MySQLError) -> ConnectionFailed:
        code = exc.args[0] if exc.args else 0
        text = mask(str(exc.args[1] if len(exc.args) > 1 else exc), [self._password or ""])
        instance_id = self._instance.id
        if code == _ACCESS_DENIED:
            cause = (
                f"the server refused user {self._user!r}: check the password and that the "
                f"account exists for the host you connect from (SHOW GRANTS as an administrator)"
            )
        else:
            cause = (
                f"check that the server runs and that {self._where()} is reachable from here "
                "(firewall, bind-address, skip-networking)"
            )
        return ConnectionFailed(
            f"cannot connect to {self.kind} instance {instance_id!r} at {self._where()} "
            f"as {self._user!r}: {text}",
            hint=f"{cause}; then run: vya-backupdb connection test --instance {instance_id}",
        )

    def _connect(self, database: str | None = None) -> pymysql.connections.Connection:
        kwargs: dict[str, Any] = {
            "user": self._user,
            # PyMySQL would encode a str password as latin1; the tools send UTF-8.
            "password": (self._password or "").encode("utf-8"),
            "database": database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": 10,
        }
        if self._instance.timeout_seconds:
            # Bounds each query (e.g. COUNT(*) behind a metadata lock) by the per-database limit.
            kwargs["read_timeout"] = self._instance.timeout_seconds
        if self._instance.socket is not None:
            kwargs["unix_socket"] = str(self._instance.socket)
        else:
            kwargs["host"] = self._instance.effective_host
            kwargs["port"] = self._instance.effective_port
        if self._instance.socket is not None or kwargs["host"] in _LOOPBACK:
            # PyMySQL otherwise builds a TLS context per connection (~50 ms of CA loading)
            # and encrypts loopback traffic; the client tools do not use TLS here either.
            kwargs["ssl_disabled"] = True
        try:
            return pymysql.connect(**kwargs)
        except pymysql.err.MySQLError as exc:
            raise self._connection_failed(exc) from None

    @contextlib.contextmanager
    def _cursor(
        self, error_cls: type[VyaError] = ConnectionFailed, what: str = "query"
    ) -> Iterator[pymysql.cursors.Cursor]:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                yield cur
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args else 0
            if code in _CONNECT_ERRORS:
                raise self._connection_failed(exc) from None
            message = mask_sql_secrets(
                mask(str(exc.args[1] if len(exc.args) > 1 else exc), [self._password or ""])
            )
            raise error_cls(
                f"{what} failed on instance {self._instance.id!r}: {message}",
                hint="Check the privileges of the configured user (SHOW GRANTS) and run: "
                f"vya-backupdb connection test --instance {self._instance.id}",
            ) from None
        finally:
            conn.close()

    def _query(
        self, sql: str, args: Any = None, error_cls: type[VyaError] = ConnectionFailed
    ) -> list[tuple[Any, ...]]:
        with self._cursor(error_cls) as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def _tools(self) -> _ToolSet:
        kind = self.kind if self.kind in DUMP_TOOLS else "mariadb"
        return _ToolSet(
            dump=find_tool(DUMP_TOOLS[kind], CLIENT_PACKAGE),
            client=find_tool(CLIENT_TOOLS[kind], CLIENT_PACKAGE),
        )

    # -- information ---------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        """Return product (MariaDB/MySQL) and version; raise ConnectionFailed."""
        if self._server is None:
            version = str(self._query("SELECT VERSION()")[0][0])
            product = "MariaDB" if "mariadb" in version.lower() else "MySQL"
            self._server = ServerInfo(product, version.split("-")[0], version_number(version))
        return self._server

    def list_databases(self, names: Collection[str] | None = None) -> list[DatabaseInfo]:
        """Return every database (or those of ``names`` that exist) with its data+index size
        (system databases included)."""
        if names is not None:
            # Sizing every schema opens every table (~20 ms with sys and performance_schema);
            # a schema named in the WHERE clause is looked up alone.
            found = []
            with self._cursor() as cur:
                for name in sorted(set(names)):
                    cur.execute(
                        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"
                        " WHERE SCHEMA_NAME = %s",
                        (name,),
                    )
                    # information_schema compares case-insensitively; a name is exact.
                    if name not in {str(row[0]) for row in cur.fetchall()}:
                        continue
                    cur.execute(
                        "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES"
                        " WHERE TABLE_SCHEMA = %s",
                        (name,),
                    )
                    (size,) = cur.fetchone()
                    found.append(DatabaseInfo(name, int(size) if size is not None else 0))
            return found
        rows = self._query(
            "SELECT s.SCHEMA_NAME, SUM(t.DATA_LENGTH + t.INDEX_LENGTH)"
            " FROM information_schema.SCHEMATA s"
            " LEFT JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME"
            " GROUP BY s.SCHEMA_NAME ORDER BY s.SCHEMA_NAME"
        )
        return [
            DatabaseInfo(str(name), int(size) if size is not None else 0) for name, size in rows
        ]

    def database_exists(self, db: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,)
        )
        return bool(rows)

    def database_properties(self, db: str) -> dict[str, Any]:
        """Return ``character_set``, ``collation`` and (MariaDB ≥ 10.5) ``comment`` of ``db``.

        Raise NotFoundError when ``db`` does not exist.
        """
        with self._cursor() as cur:
            cur.execute("SELECT * FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,))
            row = cur.fetchone()
            columns = [d[0].upper() for d in cur.description or ()]
        if row is None:
            raise self._missing(db)
        values = dict(zip(columns, row, strict=True))
        properties: dict[str, Any] = {
            "character_set": values["DEFAULT_CHARACTER_SET_NAME"],
            "collation": values["DEFAULT_COLLATION_NAME"],
        }
        if values.get("SCHEMA_COMMENT"):
            properties["comment"] = values["SCHEMA_COMMENT"]
        return properties

    def _missing(self, db: str) -> NotFoundError:
        return NotFoundError(
            f"database {db!r} does not exist on instance {self._instance.id!r}",
            hint=f"List the databases with: vya-backupdb backup {self._instance.id} --dry-run",
        )

    def _tables(self, db: str, types: Sequence[str]) -> list[str]:
        marks = ", ".join(["%s"] * len(types))
        where = f"TABLE_SCHEMA = %s AND TABLE_TYPE IN ({marks})"  # placeholders only
        rows = self._query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE "  # noqa: S608
            + where
            + " ORDER BY TABLE_NAME",
            (db, *types),
        )
        return [str(r[0]) for r in rows]

    def table_stats(self, db: str) -> dict[str, int]:
        """Return the exact row count of every base table of ``db`` (``COUNT(*)``)."""
        counts: dict[str, int] = {}
        tables = self._tables(db, ["BASE TABLE", "SYSTEM VERSIONED"])
        with self._cursor() as cur:
            for table in tables:
                cur.execute(
                    # Identifiers are quoted (backticks doubled); they cannot be parameters.
                    f"SELECT COUNT(*) FROM {quote_identifier(db)}.{quote_identifier(table)}"  # noqa: S608
                )
                counts[table] = int(cur.fetchone()[0])
        return counts

    # -- dump and restore ----------------------------------------------------------------

    def _log_bin(self) -> bool:
        value = self._query("SELECT @@GLOBAL.log_bin")[0][0]
        return str(value).upper() in ("1", "ON")

    @contextlib.contextmanager
    def _dump(self, db: str, *, binlog: bool) -> Iterator[DumpStream]:
        tools = self._tools()
        version = cached_tool_version(tools.dump)
        server = self.server_info()
        options = binlog_dump_options(version, server.product) if binlog else []
        info: dict[str, Any] = {"binlog": None, "server_product": server.product}
        # mariadb-dump fails on the events of a database whose name holds a quote: then the
        # events are written by us, after its output (read before the dump starts; events
        # are not part of the transactional snapshot anyway).
        events_sql = self._events_sql(db) if "'" in db else None
        with secret_file(make_defaults_file(self._user, self._password), suffix=".cnf") as cnf:
            command = make_dump_command(
                tools.dump,
                cnf,
                self._instance,
                db,
                binlog_options=options,
                password=self._password,
                events=events_sql is None,
            )
            # Sections (frames for a parallel restore) and row counts, found as it streams.
            sections = SqlDumpScanner()
            try:
                # Read ahead (DumpStream.read_ahead) through a deep pipe (see _channel).
                with ToolReader(command, BackupFailed, pipe_size=DUMP_PIPE_SIZE) as reader:
                    scanner = BinlogScanner(reader)
                    stream = DumpStream(
                        reader=ScanningReader(
                            ChainReader(scanner, io.BytesIO(events_sql or b"")), sections
                        ),
                        extension="sql",
                        tool=Path(tools.dump).name,
                        tool_version=version,
                        command=command.display(),
                        format="sql",
                        info=info,
                        scanner=sections,
                        read_ahead=True,
                    )
                    yield stream
            except BackupFailed as exc:
                exc.hint = exc.hint or (
                    f"Check that database {db!r} exists and that user {self._user!r} has SELECT, "
                    "SHOW VIEW, TRIGGER, EVENT and LOCK TABLES on it (and RELOAD plus BINLOG "
                    "MONITOR / REPLICATION CLIENT when binary logging is on); then run: "
                    f"vya-backupdb connection test --instance {self._instance.id}"
                )
                raise
        if binlog:
            info["binlog"] = scanner.coordinates()
        if sections.tail_unit is not None:
            info["sql_sections"] = sections_record(sections, self._section_links(db))
        if self.counts_rows_in_dump():
            stream.row_counts, stream.counts_exact = self._dump_row_counts(db, sections)

    def _section_links(self, db: str) -> list[list[str]]:
        """Return the (child, parent) pairs of the foreign keys inside ``db``: a parallel
        restore loads linked tables with one client (a session holding ``LOCK TABLES`` on one
        of them fails when another session creates the other meanwhile)."""
        with self._cursor(BackupFailed, f"reading the foreign keys of {db!r}") as cur:
            cur.execute(
                "SELECT TABLE_NAME, REFERENCED_TABLE_NAME FROM"
                " information_schema.REFERENTIAL_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = %s AND UNIQUE_CONSTRAINT_SCHEMA = %s",
                (db, db),
            )
            return sorted([str(child), str(parent)] for child, parent in cur.fetchall())

    def counts_rows_in_dump(self) -> bool:
        """Whether a backup's exact row counts come from the dump stream itself (MariaDB's
        dump tool in ``sql`` format with the product's options; engines/mysql_stream.py)
        rather than from ``COUNT(*)`` on a second connection beside the dump."""
        return (
            self._instance.mysql_format == "sql"
            and self._instance.parallel_dump_above_bytes is None
            and not self._instance.dump_options
            and "MariaDB" in cached_tool_version(self._tools().dump)
        )

    def _dump_row_counts(self, db: str, sections: SqlDumpScanner) -> tuple[dict[str, int], bool]:
        """Return the exact row count of every base table: as counted in the dump, or with
        ``COUNT(*)`` for the tables whose rows the stream did not show in the expected shape;
        and whether every count is the dump's own (none needed ``COUNT(*)`` after it)."""
        counted = sections.counts if sections.counts_valid else {}
        counts: dict[str, int] = {}
        tables = self._tables(db, list(_COUNTED_TYPES))
        missing = [t for t in tables if t not in counted]
        if missing:
            log.debug("rows of %d table(s) of %s counted with COUNT(*)", len(missing), db)
        with self._cursor(BackupFailed, f"counting the rows of {db!r}") as cur:
            for table in tables:
                counts[table] = counted[table] if table in counted else _count_rows(cur, db, table)
        return counts, not missing

    def _events_sql(self, db: str) -> bytes:
        events: list[EventDefinition] = []
        with self._cursor(BackupFailed, f"reading the events of {db!r}") as cur:
            cur.execute(
                "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"
                " ORDER BY EVENT_NAME",
                (db,),
            )
            for (name,) in cur.fetchall():
                cur.execute(f"SHOW CREATE EVENT {quote_identifier(db)}.{quote_identifier(name)}")
                row = cur.fetchone()
                events.append(EventDefinition(*(str(v) for v in row[:6])))
        return render_events_sql(events)

    def database_size(self, db: str) -> int | None:
        """Return the data + index bytes of ``db`` (information_schema estimate), or None."""
        rows = self._query(
            "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s",
            (db,),
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def dump_format_for(self, db: str) -> tuple[str, str | None]:
        """Return the format to dump ``db`` in and why when it is not ``mysql_format``:
        ``parallel`` when ``parallel_dump_above_bytes`` is set and ``db`` is larger."""
        configured = self._instance.mysql_format
        threshold = self._instance.parallel_dump_above_bytes
        if threshold is None or configured == "parallel":
            return configured, None
        from vya_backupdb.engines.mysql_parallel import choose_mysql_format  # ~10 ms: not before

        fmt = choose_mysql_format(configured, self.database_size(db), threshold)
        if fmt == configured:
            return fmt, None
        return fmt, f"database larger than parallel_dump_above_bytes ({threshold})"

    def dump(self, db: str) -> contextlib.AbstractContextManager[DumpStream]:
        """Yield the dump of ``db``; raise BackupFailed (with stderr tail) on failure.

        In ``sql`` format the stream is mariadb-dump's SQL; in ``parallel`` format (see
        :mod:`~vya_backupdb.engines.mysql_parallel`) a tar of per-table files, streamed while
        the workers dump. ``info["binlog"]`` holds ``{"file", "position", "gtid"}`` after the
        block when binary logging is on (None otherwise); a parallel dump also records
        ``info["format"]``, ``info["parallel"]`` (workers, snapshot proof) and
        ``info["format_reason"]`` when the size threshold chose it.
        """
        fmt, reason = self.dump_format_for(db)
        if fmt == "parallel":
            return self._dump_parallel(db, reason)
        return self._dump(db, binlog=self._log_bin())

    def _parallel_login(self, defaults_file: Path) -> Login:
        from vya_backupdb.engines.mysql_parallel import Login

        return Login(
            instance=self._instance,
            user=self._user,
            password=self._password,
            connect=self._connect,
            defaults_file=defaults_file,
        )

    @contextlib.contextmanager
    def _dump_parallel(self, db: str, reason: str | None) -> Iterator[DumpStream]:
        from vya_backupdb.engines import mysql_parallel as par

        tools = self._tools()
        version = tool_version(tools.dump)
        server = self.server_info()
        binlog = self._log_bin()
        jobs = self._instance.jobs
        info: dict[str, Any] = {"format": par.PARALLEL_FORMAT, "server_product": server.product}
        if reason:
            info["format_reason"] = reason
        # As in the single-stream path: mariadb-dump cannot dump the events of a database
        # whose name holds a quote, so they are written by us.
        events_sql = self._events_sql(db) if "'" in db else None
        started = time.monotonic()
        with (
            tempfile.TemporaryDirectory(prefix="vya-mypar-") as tmp,
            secret_file(make_defaults_file(self._user, self._password), suffix=".cnf") as cnf,
        ):
            dumper = par.ParallelDump(
                self._parallel_login(cnf),
                par.DumpTools(tools.dump, version, server.product),
                jobs=jobs,
            )
            sample = par.make_data_command(
                tools.dump, cnf, self._instance, db, ["TABLE…"],
                binlog_options=["--master-data=2"] if binlog and server.product == "MariaDB"
                and "MariaDB" in version else [],
                password=self._password,
            )  # fmt: skip
            display = (
                f"{sample.display()}  [up to {jobs} workers over table groups, snapshots opened "
                "under FLUSH TABLES WITH READ LOCK; schema, triggers/routines/events and views "
                "dumped with --no-data; one file per table, streamed as a tar]"
            )
            streamed = par.StreamedDump(
                dumper, db, Path(tmp), binlog=binlog, events_sql=events_sql
            ).start()
            try:
                yield DumpStream(
                    reader=streamed,
                    extension="tar",
                    tool=Path(tools.dump).name,
                    tool_version=version,
                    command=display,
                    format=par.PARALLEL_FORMAT,
                    info=info,
                )
                manifest = streamed.finish()
            except BaseException as exc:
                streamed.abort()
                if isinstance(exc, BackupFailed):
                    exc.hint = exc.hint or (
                        f"Check that database {db!r} exists and that user {self._user!r} has "
                        "SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD and PROCESS (and BINLOG "
                        "MONITOR / REPLICATION CLIENT when binary logging is on); then run: "
                        f"vya-backupdb connection test --instance {self._instance.id}"
                    )
                raise
            info["binlog"] = manifest["binlog"]
            info["parallel"] = {
                "workers": manifest["workers"],
                "jobs": jobs,
                "tables": len(manifest["tables"]),
                "dump_seconds": round(time.monotonic() - started, 3),
                "snapshot": manifest["snapshot"],
            }

    def create_database(self, db: str, properties: dict[str, Any]) -> None:
        """Create ``db`` with the character set, collation and comment of ``properties``."""
        clauses: list[str] = []
        for key, keyword in (("character_set", "CHARACTER SET"), ("collation", "COLLATE")):
            value = properties.get(key)
            if value:
                if not _NAME_PATTERN.match(str(value)):
                    raise RestoreFailed(f"invalid {key} {value!r} in the backup's metadata")
                clauses.append(f"{keyword} {value}")
        if properties.get("comment"):
            clauses.append(f"COMMENT {quote_string(str(properties['comment']))}")
        self._restored_counts.pop(db, None)
        with self._cursor(RestoreFailed, f"creating database {db!r}") as cur:
            cur.execute(f"CREATE DATABASE {quote_identifier(db)} {' '.join(clauses)}".rstrip())

    def restore(self, db: str, stream: Readable, options: RestoreOptions) -> None:
        """Restore a dump into ``db``, creating it with the source's properties if missing.

        ``options.format`` ``parallel``: a tar of per-table files, loaded with up to
        ``options.jobs`` clients; otherwise a SQL script streamed into one client.
        ``options.tables`` is refused (UsageError): MySQL backups are restored whole.
        ``options.owner`` is ignored: MySQL databases have no owner; the DEFINERs of views and
        routines are kept as dumped. Raise RestoreFailed with the client's stderr tail.
        """
        if options.tables:
            raise UsageError(
                "--tables is not supported for MySQL/MariaDB backups (they are restored whole)",
                hint="Restore the whole backup into a scratch database with --target NAME, then "
                "copy the tables you need (INSERT ... SELECT or mariadb-dump of those tables).",
            )
        if options.format == "parallel":
            self._restore_parallel(db, stream, options)
            return
        tools = self._tools()
        if options.target_missing or not self.database_exists(db):
            self.create_database(db, options.database_properties)
        self._restored_counts.pop(db, None)
        if isinstance(stream, ToolReader) and stream.direct:
            # feed() hands the decompressor's output to the client: no byte through Python.
            log.info(
                "restoring %s: %s streams the backup straight into %s",
                db,
                Path(stream.command.argv[0]).name,
                Path(tools.client).name,
            )
        else:
            client = Path(tools.client).name
            log.info("restoring %s: vya-backupdb feeds the backup into %s", db, client)
        with secret_file(make_defaults_file(self._user, self._password), suffix=".cnf") as cnf:
            command = make_restore_command(
                tools.client, cnf, self._instance, db, password=self._password
            )
            counter = LoadedTableCounter(self._connect, db).start()
            try:
                feed(command, stream, RestoreFailed)
            except RestoreFailed as exc:
                counter.abandon()
                exc.hint = exc.hint or (
                    f"Database {db!r} may be partly restored: restore again with --recreate, "
                    "or drop it. Dumps from a newer server (e.g. MySQL 8 collations, MariaDB's "
                    "sandbox line) may need a matching client and server."
                )
                raise
            except BaseException:
                counter.abandon()
                raise
            self._restored_counts[db] = counter.stop()

    def section_plan(self, options: RestoreOptions) -> SectionPlan | None:
        """Return how to restore a ``sql`` backup with ``options.jobs`` clients at once — when
        it is stored in per-section frames that can be read by range — or None (one client)."""
        if options.format != "sql" or options.jobs < 2 or options.open_blocks is None:
            return None
        return plan_sections(list(options.frames), options.sections, options.jobs)

    def restore_sections(self, db: str, plan: SectionPlan, options: RestoreOptions) -> None:
        """Restore a sectioned script with one client per worker of ``plan``, each fed the
        script's header plus its own sections (tables: CREATE, data, triggers), then the tail
        (events, routines, final views) with one client once all are in.

        Sections are independent: the header turns foreign-key and unique checks off, each
        section creates, locks and loads its own table, its triggers come after its data. The
        exact row count of a worker's tables is taken as soon as that worker is done, while the
        others still load."""
        assert options.open_blocks is not None
        open_blocks = options.open_blocks
        tools = self._tools()
        if options.target_missing or not self.database_exists(db):
            self.create_database(db, options.database_properties)
        self._restored_counts.pop(db, None)
        log.info(
            "restoring %s: %d %s clients, each reading the script's header and its own "
            "tables' frames, then the routines, events and views",
            db,
            len(plan.workers),
            Path(tools.client).name,
        )
        cancelled = threading.Event()
        errors: list[BaseException] = []  # the first failure first: the cause
        counts: dict[str, int] = {}
        lock = threading.Lock()
        with secret_file(make_defaults_file(self._user, self._password), suffix=".cnf") as cnf:
            command = make_restore_command(
                tools.client, cnf, self._instance, db, password=self._password
            )

            def worker(index: int) -> None:
                try:
                    with open_blocks(plan.workers[index]) as source:
                        feed(command, source, RestoreFailed, cancel=cancelled)
                    if cancelled.is_set():
                        return
                    with self._cursor(RestoreFailed, f"counting the rows of {db!r}") as cur:
                        counted = {t: _count_rows(cur, db, t) for t in plan.tables[index]}
                    with lock:
                        counts.update(counted)
                except BaseException as exc:
                    with lock:
                        # Failures after the first are the workers it stopped, not causes.
                        errors.insert(len(errors) if cancelled.is_set() else 0, exc)
                        cancelled.set()

            threads = [
                threading.Thread(target=worker, args=(i,), name=f"mysql-load-{i}", daemon=True)
                for i in range(1, len(plan.workers))
            ]
            for thread in threads:
                thread.start()
            worker(0)
            for thread in threads:
                thread.join()
            try:
                if errors:
                    raise errors[0]
                with open_blocks({plan.tail}) as source:
                    feed(command, source, RestoreFailed)
            except RestoreFailed as exc:
                exc.hint = exc.hint or (
                    f"Database {db!r} may be partly restored: restore again with --recreate, "
                    "or drop it; --jobs 1 restores the script with one client."
                )
                raise
        self._restored_counts[db] = counts

    def restored_table_stats(self, db: str) -> dict[str, int]:
        """Return what :meth:`table_stats` returns (the exact row count of every base table),
        reusing the counts taken while this engine restored ``db``: only the tables loaded
        last (or not seen complete during the load) are counted now."""
        known = self._restored_counts.pop(db, None)
        if known is None:
            return self.table_stats(db)
        tables = self._tables(db, list(_COUNTED_TYPES))
        counts: dict[str, int] = {}
        with self._cursor() as cur:
            for table in tables:
                counts[table] = known[table] if table in known else _count_rows(cur, db, table)
        return counts

    def _restore_parallel(self, db: str, stream: Readable, options: RestoreOptions) -> None:
        """Load a parallel-format tar while it is extracted into a temporary directory, with up
        to ``options.jobs`` clients (see :mod:`~vya_backupdb.engines.mysql_parallel`); ``db``
        is created, when missing, only once the archive's schema arrives."""
        from vya_backupdb.engines import mysql_parallel as par

        tools = self._tools()

        def prepare() -> None:
            if options.target_missing or not self.database_exists(db):
                self.create_database(db, options.database_properties)

        with (
            tempfile.TemporaryDirectory(prefix="vya-mypar-") as tmp,
            secret_file(make_defaults_file(self._user, self._password), suffix=".cnf") as cnf,
        ):
            try:
                par.load_stream(
                    self._parallel_login(cnf), tools.client, db, stream, Path(tmp),
                    jobs=options.jobs, prepare=prepare,
                )  # fmt: skip
            except RestoreFailed as exc:
                exc.hint = exc.hint or (
                    f"Database {db!r} may be partly restored: restore again with --recreate, "
                    "or drop it."
                )
                raise

    def drop_database(self, db: str) -> None:
        """Drop ``db`` (nothing happens when it does not exist); raise RestoreFailed."""
        self._restored_counts.pop(db, None)
        with self._cursor(RestoreFailed, f"dropping database {db!r}") as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_identifier(db)}")

    def rename_database(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new``; raise NotFoundError, or RestoreFailed when ``new`` exists.

        MariaDB and MySQL have no RENAME DATABASE. One atomic ``RENAME TABLE a TO new.a,
        ...`` moves the tables and sequences (metadata only); views, triggers, routines and
        events are created again in ``new`` from their SHOW CREATE text (engines/mysql_move.py).
        Where that cannot be done exactly, the database is copied instead: dump ``old`` →
        restore into ``new`` → row counts compared (per table with ``jobs`` workers when the
        instance uses the parallel format and ``jobs`` > 1). ``old`` is dropped only after
        ``new`` is complete; on failure ``new`` is removed and ``old`` stays.
        Privileges granted on the database name are not moved.
        """
        if not self.database_exists(old):
            raise self._missing(old)
        if self.database_exists(new):
            raise RestoreFailed(
                f"cannot rename {old!r} to {new!r}: database {new!r} already exists",
                hint=f"Drop or rename {new!r} first.",
            )
        properties = self.database_properties(old)
        if self._move_database(old, new, properties):
            # The tables moved as they were (metadata only): their row counts moved with them.
            known = self._restored_counts.pop(old, None)
            self.drop_database(old)
            if known is not None:
                self._restored_counts[new] = known
            return
        self._copy_database(old, new, properties)
        self.drop_database(old)

    def _move_database(self, old: str, new: str, properties: dict[str, Any]) -> bool:
        """Move the tables and code objects of ``old`` into a new ``new``; False (nothing
        changed, ``new`` absent) when it must be copied instead."""
        from vya_backupdb.engines import mysql_move

        tables = self._tables(old, ["BASE TABLE", "SEQUENCE", "SYSTEM VERSIONED"])
        self.create_database(new, properties)
        where = f"moving {old!r} to {new!r}"
        try:
            with self._cursor(RestoreFailed, where) as cur:
                mysql_move.move_database(cur, old, new, tables)
        except (mysql_move.CannotMove, mysql_move.MoveFailed) as exc:
            log.info("%s: %s; copying the database instead", where, exc)
            self.drop_database(new)
            return False
        except RestoreFailed as exc:
            # Even putting things back failed: say where the tables are.
            raise RestoreFailed(
                f"{exc.message}; the tables of {old!r} may now be in {new!r}",
                hint=f"Compare the two databases (SHOW TABLES) before dropping either; "
                f"{new!r} holds the tables {old!r} had if {old!r} has none.",
            ) from None
        return True

    def _copy_database(self, old: str, new: str, properties: dict[str, Any]) -> None:
        expected = self.restored_table_stats(old)
        try:
            instance = self._instance
            opted_in = (
                instance.mysql_format == "parallel"
                or instance.parallel_dump_above_bytes is not None
            )
            if instance.jobs > 1 and opted_in:
                self._copy_parallel(old, new, properties)
            else:
                with self._dump(old, binlog=False) as stream:
                    self.restore(new, stream, RestoreOptions(database_properties=properties))
            copied = self.restored_table_stats(new)
            if copied != expected:
                raise RestoreFailed(
                    f"copying {old!r} to {new!r} gave different row counts",
                    hint="Was the database written to during the rename? Nothing was dropped.",
                )
            self._restored_counts[new] = copied
        except BaseException:
            with contextlib.suppress(VyaError):
                self.drop_database(new)
            raise

    def _copy_parallel(self, old: str, new: str, properties: dict[str, Any]) -> None:
        """Copy ``old`` into ``new`` with ``jobs`` workers each way, through a temporary
        directory, in one snapshot as a parallel-format backup is taken."""
        from vya_backupdb.engines import mysql_parallel as par

        tools = self._tools()
        version = tool_version(tools.dump)
        events_sql = self._events_sql(old) if "'" in old else None
        with (
            tempfile.TemporaryDirectory(prefix="vya-mypar-") as tmp,
            secret_file(make_defaults_file(self._user, self._password), suffix=".cnf") as cnf,
        ):
            login = self._parallel_login(cnf)
            dumper = par.ParallelDump(
                login,
                par.DumpTools(tools.dump, version, self.server_info().product),
                jobs=self._instance.jobs,
            )
            try:
                dumper.dump(old, Path(tmp), binlog=False, events_sql=events_sql)
            except BackupFailed as exc:
                raise RestoreFailed(exc.message, hint=exc.hint, details=exc.details) from None
            self.create_database(new, properties)
            par.load_directory(login, tools.client, new, Path(tmp), jobs=self._instance.jobs)

    # -- users and grants ----------------------------------------------------------------

    def _accounts(self, cur: pymysql.cursors.Cursor) -> list[tuple[str, str | None]]:
        """Return (user, host) of every account, roles (host None) first in dependency order."""
        if self.server_info().product == "MariaDB":
            cur.execute("SELECT User, Host, is_role FROM mysql.user ORDER BY User, Host")
            rows = [(str(u), str(h), str(r).upper() == "Y") for u, h, r in cur.fetchall()]
        else:
            cur.execute("SELECT User, Host FROM mysql.user ORDER BY User, Host")
            rows = [(str(u), str(h), False) for u, h in cur.fetchall()]
        roles = [u for u, _h, is_role in rows if is_role]
        users: list[tuple[str, str | None]] = [(u, h) for u, h, is_role in rows if not is_role]
        ordered = _order_roles(roles, {r: self._granted_roles(cur, r, None) for r in roles})
        return [(r, None) for r in ordered] + users

    def _granted_roles(self, cur: pymysql.cursors.Cursor, user: str, host: str | None) -> list[str]:
        if self.server_info().product != "MariaDB":
            # MySQL 8 role grants appear in SHOW GRANTS; dependency order is not computed.
            return []
        cur.execute(
            "SELECT Role FROM mysql.roles_mapping WHERE User = %s AND Host = %s ORDER BY Role",
            (user, host or ""),
        )
        return [str(r[0]) for r in cur.fetchall()]

    def show_grants(self, database: str | None = None) -> list[str]:
        """Return ``SHOW GRANTS`` of every non-built-in account and role; with ``database``,
        only the grants that reach it (global grants and those on that database)."""
        lines = []
        with self._cursor() as cur:
            for user, host in self._accounts(cur):
                if is_builtin_user(user):
                    continue
                if host is None:
                    cur.execute("SHOW GRANTS FOR %s", (user,))
                else:
                    cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
                for (grant,) in cur.fetchall():
                    text = str(grant)
                    if database is not None and " ON *.* " not in text:
                        target = f" ON {quote_identifier(database)}."
                        if target not in text:
                            continue
                    lines.append(text)
        return lines

    def list_users(self) -> list[UserInfo]:
        """Return every account and role (``'user'@'host'`` / role name), built-ins flagged."""
        with self._cursor() as cur:
            accounts = self._accounts(cur)
        return [
            UserInfo(
                name=format_account(user, host),
                builtin=is_builtin_user(user),
                attributes={"user": user, "host": host, "role": host is None},
            )
            for user, host in accounts
        ]

    def _account_block(
        self, cur: pymysql.cursors.Cursor, user: str, host: str | None
    ) -> AccountBlock:
        if host is None:
            quoted = quote_identifier(user)
            statements = [f"CREATE ROLE IF NOT EXISTS {quoted}"]
            cur.execute("SHOW GRANTS FOR %s", (user,))
        else:
            quoted = f"{quote_identifier(user)}@{quote_identifier(host)}"
            cur.execute("SHOW CREATE USER %s@%s", (user, host))
            create = str(cur.fetchone()[0])
            body = create[len("CREATE USER ") :]
            # IF NOT EXISTS + ALTER: the file applies onto servers where the account exists.
            statements = [f"CREATE USER IF NOT EXISTS {body}", f"ALTER USER {body}"]
            cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
        grants = [str(row[0]) for row in cur.fetchall()]
        statements += own_grant_lines(grants, quoted)
        return AccountBlock(
            user=user,
            host=host,
            statements=tuple(statements),
            requires=tuple(self._granted_roles(cur, user, host)),
        )

    def _users_chunks(
        self, conn: pymysql.connections.Connection, info: dict[str, Any]
    ) -> Iterator[bytes]:
        server = self.server_info()
        try:
            with conn.cursor() as cur:
                accounts = self._accounts(cur)
                names = [format_account(u, h) for u, h in accounts]
                info["users"] = names
                yield render_users_header(server, names).encode("utf-8")
                for user, host in accounts:
                    block = self._account_block(cur, user, host)
                    yield render_account_block(block).encode("utf-8")
                yield b"FLUSH PRIVILEGES;\n"
        except pymysql.err.MySQLError as exc:
            message = mask_sql_secrets(mask(str(exc), [self._password or ""]))
            raise BackupFailed(
                f"reading users and grants of instance {self._instance.id!r} failed: {message}",
                hint="The backup user needs SELECT on the mysql schema to read accounts.",
            ) from None

    @contextlib.contextmanager
    def _globals(self) -> Iterator[DumpStream]:
        conn = self._connect()
        info: dict[str, Any] = {"users": []}
        try:
            yield DumpStream(
                reader=IteratorReader(self._users_chunks(conn, info)),
                extension="sql",
                tool="PyMySQL",
                tool_version=pymysql.VERSION_STRING,
                command="SHOW CREATE USER + SHOW GRANTS for each account",
                format="sql",
                info=info,
            )
        finally:
            conn.close()

    def dump_globals(self) -> contextlib.AbstractContextManager[DumpStream]:
        """Yield users, roles and grants as a SQL stream (``info["users"]`` lists the accounts).

        Each account is a block ``CREATE USER IF NOT EXISTS`` + ``ALTER USER`` (same
        authentication) + its own ``GRANT`` lines and default role; roles come first.
        """
        return self._globals()

    def restore_globals(
        self, stream: Readable, users: UserSelection, exclude: list[str]
    ) -> list[str]:
        """Apply a users file; return the account names applied.

        ``"all"`` applies every account except the built-in ones (root, mariadb.sys, ...);
        a list applies the named accounts (``name`` = every host of ``name``), plus the roles
        they are granted. Accounts that exist are updated, never an error; grants are added
        (existing extra grants stay). A grant on a table, column or routine missing from this
        server is skipped and listed in ``self.skipped_grants`` (restore the databases, then
        the users again). Raise NotFoundError when a named account is not in the file,
        RestoreFailed when a statement fails.
        """
        with tempfile.TemporaryFile() as spool:
            # Spooled to disk so the selection can be checked before anything is applied.
            _copy(stream, spool)
            self._check_selection(spool, users)
            spool.seek(0)
            blocks = select_blocks(parse_users_file(iter_lines(spool)), users, exclude)
            return self._apply_blocks(blocks)

    def _check_selection(self, spool: IO[bytes], users: UserSelection) -> None:
        if users == "all":
            return
        spool.seek(0)
        names: list[AccountBlock] = []
        missing = set(users)
        for block in parse_users_file(iter_lines(spool)):
            missing -= {sel for sel in missing if account_matches(block, sel)}
            if len(names) < 20:
                names.append(block)
        if missing:
            listed = ", ".join(b.name for b in names)
            raise NotFoundError(
                f"account(s) not in the users file: {', '.join(sorted(missing))}",
                hint=f"The file holds: {listed}. See: vya-backupdb users list --file FILE",
            )

    def _apply_blocks(self, blocks: Iterable[AccountBlock]) -> list[str]:
        applied: list[str] = []
        self.skipped_grants = []
        with self._cursor(RestoreFailed, "restoring users") as cur:
            for block in blocks:
                for statement in block.statements:
                    try:
                        cur.execute(statement)
                    except pymysql.err.MySQLError as exc:
                        code = exc.args[0] if exc.args else 0
                        if code in _CONNECT_ERRORS:
                            raise
                        if code in _MISSING_OBJECT and statement.startswith("GRANT "):
                            # A table/column/routine grant whose object is not (yet) on this
                            # server: the account is still restored; the caller reports these.
                            self.skipped_grants.append(f"{block.name}: {statement}")
                            log.warning(
                                "grant skipped for %s, its object is missing: %s",
                                block.name,
                                exc.args[-1],
                            )
                            continue
                        raise RestoreFailed(
                            f"restoring account {block.name} failed: {exc.args[-1]}",
                            hint="The statement was: " + mask_sql_secrets(statement),
                        ) from None
                applied.append(block.name)
            cur.execute("FLUSH PRIVILEGES")
        return applied


def _order_roles(roles: Sequence[str], requires: dict[str, list[str]]) -> list[str]:
    """Return ``roles`` ordered so a role comes after the roles it is granted."""
    ordered: list[str] = []
    seen: set[str] = set()

    def visit(role: str, chain: tuple[str, ...]) -> None:
        if role in seen or role in chain or role not in requires:
            return
        for needed in requires[role]:
            visit(needed, (*chain, role))
        seen.add(role)
        ordered.append(role)

    for role in roles:
        visit(role, ())
    return ordered


def _copy(source: Readable, target: IO[bytes], chunk: int = 1024 * 1024) -> None:
    while data := source.read(chunk):
        target.write(data)


__all__: list[str] = [
    "AccountBlock",
    "BinlogScanner",
    "IteratorReader",
    "MysqlEngine",
    "account_matches",
    "binlog_dump_options",
    "format_account",
    "iter_lines",
    "make_connection_args",
    "make_defaults_file",
    "make_dump_command",
    "make_restore_command",
    "own_grant_lines",
    "parse_account",
    "parse_binlog_coordinates",
    "parse_users_file",
    "quote_identifier",
    "render_account_block",
    "select_blocks",
]
