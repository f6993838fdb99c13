"""Moving a MariaDB/MySQL database to another name without copying its data.

Why: MariaDB and MySQL have no ``RENAME DATABASE``, and a safe restore swaps the restored copy
in under the target's name (jobs/restore.py). ``RENAME TABLE`` moves tables between
databases (metadata only), but not a table that has triggers, and views, routines and events
cannot move at all; so a database holding any of them used to be copied instead (dump →
restore → compare): a safe restore of a database with one trigger loaded its data twice, or
three times when the existing target had one too.

How: the code objects are read with their ``SHOW CREATE`` text in the old database, its
triggers are dropped, one ``RENAME TABLE`` moves every table, and the objects are created
again in the new database — routines, views (those a view uses first), triggers (in their
action order), events. The text stays right because it is read with the old database as the
default one: ``SHOW CREATE VIEW`` then leaves that database's names unqualified (the way
mariadb-dump reads views), and trigger, routine and event bodies are kept as written; each
object is created under the session settings it was created with (``sql_mode``, character
set and collation, an event's time zone), as mariadb-dump sets them around each object. The
result is what a dump of the old database restored into the new one gives
(tests/integration/test_mysql_engine.py compares them exactly).

Where that cannot be reproduced — text the configured user may not read, non-ASCII text
written by a client in another character set than UTF-8, an object kind this module does not
know — :class:`CannotMove` is raised before anything changed, and the engine copies the
database as before. When creating an object fails, the tables go back to the old database,
its triggers are created there again and the new database is emptied (:class:`MoveFailed`,
the engine then copies); the old database is dropped by the engine only after the move
succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from vya_backupdb.engines.mysql import quote_identifier

log = logging.getLogger("vya_backupdb.engines.mysql")

#: Session variables an object is created under; names come from here only, never from data.
_SETTINGS = ("sql_mode", "time_zone", "character_set_client", "collation_connection")


class CannotMove(Exception):
    """The database cannot be moved exactly this way; nothing was changed."""


class MoveFailed(Exception):
    """Creating an object in the new database failed; everything was put back."""


@dataclass(frozen=True)
class CodeObject:
    kind: str  # view, trigger, procedure, function, event
    name: str
    create: str
    settings: tuple[tuple[str, str], ...]


def _row(cur: pymysql.cursors.Cursor, statement: str) -> dict[str, Any]:
    cur.execute(statement)
    row = cur.fetchone()
    if row is None:
        raise CannotMove(f"{statement} returned nothing")
    return {d[0]: value for d, value in zip(cur.description, row, strict=True)}


def _object(kind: str, name: str, values: dict[str, Any], text_column: str) -> CodeObject:
    text = values.get(text_column)
    if not isinstance(text, str) or not text:
        raise CannotMove(f"the definition of {kind} {name!r} is not readable (privileges?)")
    charset = str(values.get("character_set_client") or "").lower()
    # Our statements travel as UTF-8: text in another client character set is reproduced
    # byte for byte only when it is ASCII.
    fits = (
        text.isascii()
        or charset == "utf8mb4"
        or (charset in ("utf8", "utf8mb3") and all(ord(c) < 0x10000 for c in text))
    )
    if not fits:
        raise CannotMove(f"{kind} {name!r} was written in character set {charset}")
    settings = tuple(
        (variable, str(values[variable])) for variable in _SETTINGS if values.get(variable)
    )
    return CodeObject(kind, name, text, settings)


#: Each kind's names, in the order they are to be created again (a trigger's action order).
_LISTINGS = (
    "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES"
    " WHERE ROUTINE_SCHEMA = %s ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
    "SELECT TABLE_NAME, 'VIEW' FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"
    " ORDER BY TABLE_NAME",
    "SELECT TRIGGER_NAME, 'TRIGGER' FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"
    " ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
    "SELECT EVENT_NAME, 'EVENT' FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"
    " ORDER BY EVENT_NAME",
)
#: The SHOW CREATE column holding each kind's statement.
_TEXT_COLUMNS = {
    "PROCEDURE": "Create Procedure",
    "FUNCTION": "Create Function",
    "VIEW": "Create View",
    "TRIGGER": "SQL Original Statement",
    "EVENT": "Create Event",
}


def read_code_objects(cur: pymysql.cursors.Cursor, db: str) -> list[CodeObject]:
    """Return the routines, views, triggers and events of ``db`` in the order they are to
    be created again. ``cur``'s default database must be ``db`` (see the module docstring)."""
    objects: list[CodeObject] = []
    for listing in _LISTINGS:
        cur.execute(listing, (db,))
        for name, kind in list(cur.fetchall()):
            kind = str(kind).upper()
            if kind not in _TEXT_COLUMNS:  # e.g. MariaDB's PACKAGE (Oracle mode)
                raise CannotMove(f"{kind.lower()} {name!r} cannot be moved")
            values = _row(cur, f"SHOW CREATE {kind} {quote_identifier(name)}")
            objects.append(_object(kind.lower(), name, values, _TEXT_COLUMNS[kind]))
    return objects


class _Session:
    """Creates objects under their own settings, then puts the session's back (our later
    statements name databases and tables in UTF-8)."""

    def __init__(self, cur: pymysql.cursors.Cursor):
        self._cur = cur
        cur.execute("SELECT @@SESSION.sql_mode, @@SESSION.time_zone")
        mode, zone = cur.fetchone()
        self._saved = (str(mode), str(zone))

    def create(self, obj: CodeObject) -> None:
        try:
            for variable, value in obj.settings:
                self._cur.execute(f"SET SESSION {variable} = %s", (value,))
            self._cur.execute(obj.create)
        finally:
            self._cur.execute("SET NAMES utf8mb4")
            self._cur.execute("SET SESSION sql_mode = %s, time_zone = %s", self._saved)


def move_database(cur: pymysql.cursors.Cursor, old: str, new: str, tables: Sequence[str]) -> None:
    """Move ``tables`` and the code objects of ``old`` into ``new`` (created, empty).

    Raise CannotMove (nothing changed) or MoveFailed (everything put back; ``new`` holds at
    most code objects, for the caller to drop); a pymysql error when even putting back failed
    (the caller reports where the tables are)."""
    q_old, q_new = quote_identifier(old), quote_identifier(new)
    try:
        cur.execute(f"USE {q_old}")
        objects = read_code_objects(cur, old)
        session = _Session(cur)
    except pymysql.err.MySQLError as exc:
        raise CannotMove(str(exc)) from None
    dropped: list[CodeObject] = []
    moved = False
    try:
        for trigger in _of_kind(objects, "trigger"):
            cur.execute(f"DROP TRIGGER {quote_identifier(trigger.name)}")
            dropped.append(trigger)
        if tables:
            cur.execute("RENAME TABLE " + _pairs(tables, q_old, q_new))
        moved = True
        cur.execute(f"USE {q_new}")
        # Routines before the views that may call them; triggers and events last.
        for obj in _of_kind(objects, "procedure", "function"):
            session.create(obj)
        _create_views(session, _of_kind(objects, "view"))
        for obj in _of_kind(objects, "trigger", "event"):
            session.create(obj)
    except pymysql.err.MySQLError as exc:
        log.warning("moving %s to %s failed (%s); putting it back", old, new, exc)
        _put_back(cur, session, old, new, tables if moved else (), dropped)
        raise MoveFailed(str(exc)) from None


def _pairs(tables: Sequence[str], source: str, target: str) -> str:
    return ", ".join(
        f"{source}.{quote_identifier(t)} TO {target}.{quote_identifier(t)}" for t in tables
    )


def _of_kind(objects: Sequence[CodeObject], *kinds: str) -> list[CodeObject]:
    return [o for o in objects if o.kind in kinds]


def _create_views(session: _Session, views: Sequence[CodeObject]) -> None:
    """Create the views, each after the views it selects from: a round creates every view
    whose sources exist; a round that creates none raises the first error."""
    pending = list(views)
    while pending:
        failed: list[tuple[CodeObject, pymysql.err.MySQLError]] = []
        for view in pending:
            try:
                session.create(view)
            except pymysql.err.MySQLError as exc:
                failed.append((view, exc))
        if len(failed) == len(pending):
            raise failed[0][1]
        pending = [view for view, _ in failed]


def _put_back(
    cur: pymysql.cursors.Cursor,
    session: _Session,
    old: str,
    new: str,
    tables: Sequence[str],
    triggers: Sequence[CodeObject],
) -> None:
    q_old, q_new = quote_identifier(old), quote_identifier(new)
    cur.execute(
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
        (new,),
    )
    for (name,) in list(cur.fetchall()):
        cur.execute(f"DROP TRIGGER {q_new}.{quote_identifier(name)}")
    if tables:
        cur.execute("RENAME TABLE " + _pairs(tables, q_new, q_old))
    cur.execute(f"USE {q_old}")
    for trigger in triggers:
        session.create(trigger)
