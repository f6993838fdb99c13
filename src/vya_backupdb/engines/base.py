"""The Engine protocol: what every DBMS module offers to the jobs.

Engines turn a database into a byte stream (``dump``) and a byte stream back into a database
(``restore``). They know nothing of storage, compression or the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from vya_backupdb.engines.process import Readable

if TYPE_CHECKING:
    from vya_backupdb.pipeline.frames import Scanner


@dataclass(frozen=True)
class ServerInfo:
    product: str  # "PostgreSQL", "MariaDB", "MySQL", "SQLite"
    version: str  # human version string, e.g. "15.19"
    version_num: int  # comparable number, e.g. 150019 / 101119


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    size_bytes: int | None = None


@dataclass
class DumpStream:
    """A readable dump plus what the metadata record needs to know about it.

    ``extension`` is the artifact type before compression: ``dump`` (pg custom), ``sql``,
    ``tar`` (pg directory format archived, files), ``sqlite``.
    ``info`` is filled by the engine (e.g. binlog coordinates); it may be completed only when
    the stream has been fully read (the context manager exits).
    """

    reader: Readable
    extension: str
    tool: str
    tool_version: str
    command: str  # masked display of the command line
    format: str  # plain | custom | directory | sql | sqlite | tar
    info: dict[str, Any] = field(default_factory=dict)
    #: Finds where the dump's units (e.g. tables' data blocks) start while it streams, so the
    #: stored object can be cut into independent frames (pipeline/frames.py); None: no units.
    scanner: Scanner | None = None
    #: Exact rows per table as counted in the stream itself, set by the engine once the
    #: stream was read to its end; None: the caller counts with ``Engine.table_stats``.
    row_counts: dict[str, int] | None = None
    #: Whether ``row_counts`` are those of the dump itself (PostgreSQL: counted in the
    #: snapshot pg_dump dumped; MariaDB: counted in the stream), so that a restore whose
    #: tables hold other counts is wrong, not a backup taken while the database changed.
    counts_exact: bool = False
    #: Read (and scan) the dump on a thread of its own, a few chunks ahead of compression:
    #: worth it when the dump tool's own CPU bounds the backup (mariadb-dump formatting SQL:
    #: ~5 % faster), not when the server does (pg_dump: ~10 % slower, measured — a reader
    #: always ready wakes the tool for every small write and takes CPU from the server).
    read_ahead: bool = False

    def read(self, size: int = -1, /) -> bytes:
        return self.reader.read(size)


@dataclass(frozen=True)
class RestoreOptions:
    tables: tuple[str, ...] = ()  # selective restore (PostgreSQL custom/directory)
    owner: str | None = None  # reassign ownership to this role
    jobs: int = 1
    format: str = "custom"  # format of the dump being restored (from the record)
    #: Properties of the source database captured at dump time (encoding, collation, ...),
    #: used to create a missing target database faithfully.
    database_properties: dict[str, Any] = field(default_factory=dict)
    source_version_num: int | None = None
    #: Opens another, independent stream of the same backup (checksummed, decrypted,
    #: decompressed), so an engine can read it several times in parallel instead of
    #: spooling it to disk. None when the caller cannot (the engine spools then).
    reopen: Callable[[], AbstractContextManager[Readable]] | None = None
    #: Rows (or bytes) per table, ``schema.table``, from the backup's record: weights for
    #: sharing the tables among parallel restore workers.
    table_weights: dict[str, int] = field(default_factory=dict)
    #: Opens a stream of the archive's head and only the data blocks of the given dump ids
    #: (plus those sharing their frames), for a backup stored in indexed frames; None when
    #: the backup has no index or cannot be read by range (workers use ``reopen`` then).
    open_blocks: Callable[[set[int]], AbstractContextManager[Readable]] | None = None
    #: The frames ``open_blocks`` reads: (stored offset, raw offset, unit ids) each; empty
    #: when ``open_blocks`` is None.
    frames: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
    #: What the backup's record says of the script's sections (engines/mysql_stream.py).
    sections: dict[str, Any] = field(default_factory=dict)
    #: Exact rows per table (``schema.table``) the backup's record holds: what the restore's
    #: row check will compare with (an engine may confirm them without rescanning tables).
    expected_rows: dict[str, int] = field(default_factory=dict)
    #: The caller has just seen the target database missing (or dropped it): the engine
    #: creates it without asking the server again (one connection less before the restore).
    target_missing: bool = False


@dataclass(frozen=True)
class UserInfo:
    name: str  # "role" (PostgreSQL) or "'user'@'host'" (MySQL)
    builtin: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)


UserSelection = Literal["all"] | list[str]


class Engine(Protocol):
    """What the jobs need from a DBMS module."""

    @property
    def kind(self) -> str:
        """postgresql | mysql | mariadb | sqlite."""
        ...

    def server_info(self) -> ServerInfo:
        """Return the server's product and version; raise ConnectionFailed."""
        ...

    def list_databases(self, names: Collection[str] | None = None) -> list[DatabaseInfo]:
        """Return all databases with sizes (system databases included; jobs filter them), or
        only those of ``names`` that exist (cheaper: sizing a database is not free)."""
        ...

    def database_exists(self, db: str) -> bool: ...

    def database_properties(self, db: str) -> dict[str, Any]:
        """Return what is needed to recreate ``db`` (owner, encoding, collation, ...)."""
        ...

    def table_stats(self, db: str) -> dict[str, int]:
        """Return exact row counts per table (``schema.table`` for PostgreSQL)."""
        ...

    def dump(self, db: str) -> AbstractContextManager[DumpStream]:
        """Yield the dump of ``db`` as a stream; raise BackupFailed at exit when it failed."""
        ...

    def restore(self, db: str, stream: Readable, options: RestoreOptions) -> None:
        """Restore ``stream`` into ``db`` (created with the source's properties if missing)."""
        ...

    def drop_database(self, db: str) -> None: ...

    def rename_database(self, old: str, new: str) -> None:
        """Rename a database (used by the safe restore swap); raise RestoreFailed."""
        ...

    def dump_globals(self) -> AbstractContextManager[DumpStream]:
        """Yield the users/roles (and grants, tablespaces) as a SQL stream."""
        ...

    def list_users(self) -> list[UserInfo]: ...

    def restore_globals(
        self, stream: Readable, users: UserSelection, exclude: list[str]
    ) -> list[str]:
        """Apply a users file; skip built-in accounts; return the names applied."""
        ...


def iter_chunks(reader: Readable, size: int = 1024 * 1024) -> Iterator[bytes]:
    """Yield chunks of ``reader`` until EOF."""
    while chunk := reader.read(size):
        yield chunk
