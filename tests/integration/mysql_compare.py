"""Exact comparison of two MariaDB databases (possibly on two servers, under two names).

What is compared: the database's character set, collation and comment; every table's
``SHOW CREATE TABLE`` (normalized only for the AUTO_INCREMENT counter, which is compared on its
own since it must be preserved); the content of every row of every table and sequence, as a
multiset of SHA-256 digests of the values PyMySQL returns (bytes stay bytes, DECIMAL stays
Decimal, TIMESTAMP read in UTC so server time zones do not matter); views, procedures,
functions, triggers and events with their sql_mode and character sets (normalized only for the
database name, which SHOW CREATE VIEW qualifies identifiers with). Users: SHOW CREATE USER and
the sorted SHOW GRANTS of each account.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pymysql

from harness.mariadb import MariadbServer, quote_identifier

_AUTO_INCREMENT = re.compile(r" AUTO_INCREMENT=\d+")


def _connect(server: MariadbServer) -> pymysql.connections.Connection:
    conn = server.connect()
    with conn.cursor() as cur:
        # TIMESTAMP values are shown in the session time zone: compare them in UTC.
        cur.execute("SET time_zone = '+00:00'")
    return conn


def _rows(cur: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    cur.execute(sql, args)
    return list(cur.fetchall())


def _normalize(text: str, db: str) -> str:
    return text.replace(quote_identifier(db) + ".", "`<db>`.")


def _row_digest(row: tuple[Any, ...]) -> str:
    digest = hashlib.sha256()
    for value in row:
        if isinstance(value, bytes | bytearray):
            encoded = b"b:" + bytes(value)
        else:
            encoded = f"{type(value).__name__}:{value!r}".encode()
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


@dataclass
class DatabaseSnapshot:
    properties: tuple[Any, ...] = ()
    tables: dict[str, str] = field(default_factory=dict)
    auto_increment: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Counter[str]] = field(default_factory=dict)
    row_counts: dict[str, int] = field(default_factory=dict)
    code: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def snapshot_database(server: MariadbServer, db: str) -> DatabaseSnapshot:
    """Return everything about ``db`` that a restore must reproduce exactly."""
    snap = DatabaseSnapshot()
    q = quote_identifier(db)
    with contextlib.closing(_connect(server)) as conn, conn.cursor() as cur:
        props = _rows(
            cur,
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, SCHEMA_COMMENT"
            " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (db,),
        )
        assert props, f"database {db!r} does not exist"
        snap.properties = props[0]
        tables = _rows(
            cur,
            "SELECT TABLE_NAME, TABLE_TYPE, AUTO_INCREMENT FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (db,),
        )
        for name, kind, auto_increment in tables:
            qt = f"{q}.{quote_identifier(name)}"
            if kind == "VIEW":
                create = _rows(cur, f"SHOW CREATE VIEW {qt}")[0]
                snap.code[f"view {name}"] = (_normalize(create[1], db), *create[2:])
                continue
            create_sql = _rows(cur, f"SHOW CREATE TABLE {qt}")[0][1]
            snap.tables[name] = _AUTO_INCREMENT.sub("", create_sql)
            snap.auto_increment[name] = auto_increment
            digests: Counter[str] = Counter()
            cur.execute(f"SELECT * FROM {qt}")
            count = 0
            while batch := cur.fetchmany(2000):
                for row in batch:
                    digests[_row_digest(row)] += 1
                    count += 1
            snap.rows[name] = digests
            snap.row_counts[name] = count
        for kind in ("PROCEDURE", "FUNCTION"):
            for (name,) in _rows(
                cur,
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES"
                " WHERE ROUTINE_SCHEMA = %s AND ROUTINE_TYPE = %s",
                (db, kind),
            ):
                row = _rows(cur, f"SHOW CREATE {kind} {q}.{quote_identifier(name)}")[0]
                snap.code[f"{kind.lower()} {name}"] = tuple(row)
        for (name,) in _rows(
            cur,
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
            (db,),
        ):
            cur.execute(f"SHOW CREATE TRIGGER {q}.{quote_identifier(name)}")
            row = cur.fetchone()
            columns = [d[0] for d in cur.description]
            kept = tuple(v for c, v in zip(columns, row, strict=True) if c != "Created")
            snap.code[f"trigger {name}"] = kept
        for (name,) in _rows(
            cur,
            "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
            (db,),
        ):
            row = _rows(cur, f"SHOW CREATE EVENT {q}.{quote_identifier(name)}")[0]
            snap.code[f"event {name}"] = tuple(row)
    return snap


def compare_snapshots(a: DatabaseSnapshot, b: DatabaseSnapshot) -> list[str]:
    """Return the differences between two snapshots (empty when identical)."""
    diffs: list[str] = []
    if a.properties != b.properties:
        diffs.append(f"database properties: {a.properties} != {b.properties}")
    for label, left, right in (
        ("table definitions", a.tables, b.tables),
        ("AUTO_INCREMENT counters", a.auto_increment, b.auto_increment),
        ("row counts", a.row_counts, b.row_counts),
        ("routines/views/triggers/events", a.code, b.code),
    ):
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                diffs.append(f"{label}: {key}: {left.get(key)!r} != {right.get(key)!r}")
    for table in sorted(set(a.rows) | set(b.rows)):
        left_rows, right_rows = a.rows.get(table, Counter()), b.rows.get(table, Counter())
        if left_rows != right_rows:
            only_a = sum((left_rows - right_rows).values())
            only_b = sum((right_rows - left_rows).values())
            diffs.append(
                f"rows of {table}: {only_a} row(s) only in the first, {only_b} only in the second"
            )
    return diffs


def compare_databases(
    server_a: MariadbServer, db_a: str, server_b: MariadbServer, db_b: str
) -> list[str]:
    """Return the differences between ``db_a`` on ``server_a`` and ``db_b`` on ``server_b``."""
    return compare_snapshots(snapshot_database(server_a, db_a), snapshot_database(server_b, db_b))


def assert_databases_equal(
    server_a: MariadbServer, db_a: str, server_b: MariadbServer, db_b: str
) -> None:
    diffs = compare_databases(server_a, db_a, server_b, db_b)
    assert not diffs, "databases differ:\n" + "\n".join(diffs[:40])


def account_snapshot(
    server: MariadbServer, accounts: list[tuple[str, str | None]]
) -> dict[str, Any]:
    """Return SHOW CREATE USER, sorted SHOW GRANTS and default role of each account.

    ``host`` None means a role.
    """
    result: dict[str, Any] = {}
    with contextlib.closing(_connect(server)) as conn, conn.cursor() as cur:
        for user, host in accounts:
            if host is None:
                grants = sorted(r[0] for r in _rows(cur, "SHOW GRANTS FOR %s", (user,)))
                result[user] = {"grants": grants}
                continue
            create = _rows(cur, "SHOW CREATE USER %s@%s", (user, host))[0][0]
            grants = sorted(r[0] for r in _rows(cur, "SHOW GRANTS FOR %s@%s", (user, host)))
            default_role = _rows(
                cur,
                "SELECT default_role FROM mysql.user WHERE User = %s AND Host = %s",
                (user, host),
            )
            result[f"{user}@{host}"] = {
                "create": create,
                "grants": grants,
                "default_role": default_role[0][0] if default_role else None,
            }
    return result
