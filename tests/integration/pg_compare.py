"""Compare two PostgreSQL databases exactly, possibly on two different servers.

``compare_databases`` returns a list of human-readable differences (empty when identical):

* schema: ``pg_dump --schema-only`` text, owners and ACLs included (only the random
  ``\\restrict`` keys and the "Dumped from/by" version lines are ignored);
* data: every table's rows, rendered by ``COPY … TO STDOUT`` in a session whose output settings
  are pinned (DateStyle, TimeZone, IntervalStyle, float digits, bytea format) so that two servers
  with different defaults render equal values identically; rows sorted by their text form;
  compared by row count and sha256 (the first differing row is shown);
* sequences: last_value and is_called of every sequence;
* large objects: oid, owner, ACL and content;
* routines: ``pg_get_functiondef`` of every function and procedure;
* grants: ACLs of relations, columns, schemas, routines, types, default privileges;
* database properties: owner, encoding, collation, locale provider, ICU locale, comment, ACL,
  settings, per-role settings, connection limit.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import re
import subprocess
from typing import Any

from harness.postgres import PgServer

PINNED_SETTINGS = (
    "SET datestyle = 'ISO, MDY'",
    "SET timezone = 'UTC'",
    "SET intervalstyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
    "SET lc_monetary = 'C'",
    "SET search_path = pg_catalog",
)

_USER_NS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
)


def _conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _connect(server: PgServer, db: str) -> Any:
    conn = server.connect(db)
    for statement in PINNED_SETTINGS:
        conn.execute(statement)
    return conn


def schema_text(server: PgServer, db: str) -> list[str]:
    """Return the normalized lines of ``pg_dump --schema-only`` of ``db``."""
    out = subprocess.run(
        [
            str(server.bin_dir / "pg_dump"),
            "--schema-only",
            "--no-password",
            "--dbname=dbname=" + _conninfo_quote(db),
        ],
        capture_output=True,
        # Constants such as timestamptz column defaults are rendered in the session's time
        # zone: pin it so two servers with different defaults render the same instant alike.
        env={**server.libpq_env(), "PGTZ": "UTC"},
        check=True,
        timeout=300,
    ).stdout.decode()
    lines = []
    for line in out.splitlines():
        if re.match(r"^\\(un)?restrict ", line) or line.startswith("-- Dumped "):
            continue
        lines.append(line)
    return lines


def _user_relations(conn: Any, kinds: str) -> list[tuple[str, str]]:
    return [
        (s, t)
        for s, t in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind = ANY(%s) AND {_USER_NS} "
            "AND (c.relkind <> 'm' OR c.relispopulated) ORDER BY 1, 2",
            (list(kinds),),
        ).fetchall()
    ]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_digests(server: PgServer, db: str) -> dict[str, tuple[int, str, list[str]]]:
    """Return {schema.table: (rows, sha256, first rows)} for every table and populated matview."""
    digests: dict[str, tuple[int, str, list[str]]] = {}
    with _connect(server, db) as conn:
        for schema, table in _user_relations(conn, "rm"):
            name = f"{_quote(schema)}.{_quote(table)}"
            query = f'COPY (SELECT * FROM ONLY {name} t ORDER BY t::text COLLATE "C") TO STDOUT'
            digest = hashlib.sha256()
            rows = 0
            sample: list[str] = []
            pending = b""
            with conn.cursor().copy(query) as copy:
                for block in copy:
                    data = bytes(block)
                    digest.update(data)
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    rows += len(lines)
                    for line in lines:
                        if len(sample) < 2000:
                            sample.append(line.decode("utf-8", errors="replace"))
            digests[f"{schema}.{table}"] = (rows, digest.hexdigest(), sample)
    return digests


def sequences(server: PgServer, db: str) -> dict[str, tuple[Any, ...]]:
    """Return {schema.sequence: (last_value, is_called, increment, min, max, cycle)}."""
    result: dict[str, tuple[Any, ...]] = {}
    with _connect(server, db) as conn:
        for schema, seq in _user_relations(conn, "S"):
            name = f"{_quote(schema)}.{_quote(seq)}"
            state = conn.execute(f"SELECT last_value, is_called FROM {name}").fetchone()
            params = conn.execute(
                "SELECT increment, minimum_value, maximum_value, cycle_option "
                "FROM pg_sequence_parameters(%s::regclass)",
                (name,),
            ).fetchone()
            result[f"{schema}.{seq}"] = (*state, *params)
    return result


def large_objects(server: PgServer, db: str) -> dict[int, tuple[Any, ...]]:
    """Return {oid: (owner, acl, sha256 of content, size)} of every large object."""
    with _connect(server, db) as conn:
        rows = conn.execute(
            "SELECT m.oid::bigint, m.lomowner::regrole::text, m.lomacl::text, "
            "encode(sha256(lo_get(m.oid)), 'hex'), length(lo_get(m.oid)) "
            "FROM pg_largeobject_metadata m ORDER BY 1"
        ).fetchall()
    return {int(r[0]): tuple(r[1:]) for r in rows}


def routines(server: PgServer, db: str) -> dict[str, str]:
    """Return {signature: pg_get_functiondef} of user functions and procedures."""
    with _connect(server, db) as conn:
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text, "
            "pg_get_userbyid(p.proowner) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE p.prokind IN ('f', 'p', 'w') AND {_USER_NS} ORDER BY 1"
        ).fetchall()
    return {sig: f"{body}\nACL {acl}\nOWNER {owner}" for sig, body, acl, owner in rows}


def grants(server: PgServer, db: str) -> list[tuple[Any, ...]]:
    """Return the ACLs of relations, columns, schemas, types and default privileges."""
    with _connect(server, db) as conn:
        rows: list[tuple[Any, ...]] = []
        rows += conn.execute(
            "SELECT 'rel', n.nspname || '.' || c.relname, c.relacl::text, "
            "pg_get_userbyid(c.relowner) FROM pg_class c "
            f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS} ORDER BY 2"
        ).fetchall()
        rows += conn.execute(
            "SELECT 'col', n.nspname || '.' || c.relname || '.' || a.attname, a.attacl::text, '' "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE a.attacl IS NOT NULL AND {_USER_NS} ORDER BY 2"
        ).fetchall()
        rows += conn.execute(
            "SELECT 'schema', nspname, nspacl::text, pg_get_userbyid(nspowner) "
            "FROM pg_namespace n WHERE " + _USER_NS + " ORDER BY 2"
        ).fetchall()
        rows += conn.execute(
            "SELECT 'type', n.nspname || '.' || t.typname, t.typacl::text, "
            "pg_get_userbyid(t.typowner) FROM pg_type t "
            f"JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {_USER_NS} ORDER BY 2"
        ).fetchall()
        rows += conn.execute(
            "SELECT 'default', coalesce(n.nspname, '-') || '.' || d.defaclobjtype::text, "
            "d.defaclacl::text, pg_get_userbyid(d.defaclrole) FROM pg_default_acl d "
            "LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace ORDER BY 2"
        ).fetchall()
    return rows


def database_properties(server: PgServer, db: str) -> dict[str, Any]:
    """Return the database-level properties of ``db`` (its name excluded)."""
    with _connect(server, db) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, "
            "d.datctype, d.datlocprovider::text, d.daticulocale, "
            "shobj_description(d.oid, 'pg_database'), d.datacl::text, d.datconnlimit, "
            "(SELECT setconfig::text FROM pg_db_role_setting s "
            "  WHERE s.setdatabase = d.oid AND s.setrole = 0), "
            "(SELECT string_agg(pg_get_userbyid(s.setrole) || ':' || s.setconfig::text, ';' "
            "  ORDER BY 1) FROM pg_db_role_setting s "
            "  WHERE s.setdatabase = d.oid AND s.setrole <> 0) "
            "FROM pg_database d WHERE d.datname = current_database()"
        ).fetchone()
    keys = ("owner", "encoding", "collate", "ctype", "locale_provider", "icu_locale", "comment",
            "acl", "connection_limit", "settings", "role_settings")  # fmt: skip
    return dict(zip(keys, row, strict=True))


def _diff_lines(what: str, a: list[str], b: list[str], limit: int = 40) -> list[str]:
    diff = list(difflib.unified_diff(a, b, "source", "restored", lineterm="", n=1))
    if not diff:
        return []
    return [f"{what} differs:\n" + "\n".join(diff[:limit])]


def compare_databases(
    server_a: PgServer,
    db_a: str,
    server_b: PgServer,
    db_b: str,
    *,
    tables_only: list[str] | None = None,
    check_properties: bool = True,
) -> list[str]:
    """Return the differences between ``db_a`` on ``server_a`` and ``db_b`` on ``server_b``.

    ``tables_only`` limits the data comparison to those ``schema.table`` keys (and skips the
    schema, routine, large object and grant comparison: for a selective restore).
    """
    differences: list[str] = []
    digests_a = table_digests(server_a, db_a)
    digests_b = table_digests(server_b, db_b)
    keys = sorted(set(digests_a) | set(digests_b)) if tables_only is None else tables_only
    for key in keys:
        a, b = digests_a.get(key), digests_b.get(key)
        if a is None or b is None:
            differences.append(f"table {key}: only in {'restored' if a is None else 'source'}")
            continue
        if a[:2] != b[:2]:
            first = next(
                (
                    f"source: {x!r}\n    restored: {y!r}"
                    for x, y in itertools.zip_longest(a[2], b[2])
                    if x != y
                ),
                "(beyond the first 2000 rows)",
            )
            differences.append(
                f"table {key}: rows {a[0]} vs {b[0]}; first difference:\n    {first}"
            )
    if tables_only is not None:
        return differences
    differences += _diff_lines("schema", schema_text(server_a, db_a), schema_text(server_b, db_b))
    for what, func in (
        ("sequences", sequences),
        ("large objects", large_objects),
        ("routines", routines),
    ):
        left, right = func(server_a, db_a), func(server_b, db_b)  # type: ignore[operator]
        for key in sorted(set(left) | set(right), key=str):
            if left.get(key) != right.get(key):
                differences.append(f"{what} {key}: {left.get(key)!r} vs {right.get(key)!r}")
    left_grants, right_grants = grants(server_a, db_a), grants(server_b, db_b)
    differences += _diff_lines(
        "grants", [repr(r) for r in left_grants], [repr(r) for r in right_grants]
    )
    if check_properties:
        props_a = database_properties(server_a, db_a)
        props_b = database_properties(server_b, db_b)
        for key in props_a:
            if props_a[key] != props_b[key]:
                differences.append(f"database property {key}: {props_a[key]!r} vs {props_b[key]!r}")
    return differences


def role_snapshot(server: PgServer, names: list[str]) -> dict[str, tuple[Any, ...]]:
    """Return attributes, password hash, settings, comment and memberships of ``names``."""
    with _connect(server, "postgres") as conn:
        rows = conn.execute(
            "SELECT a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, "
            "a.rolcanlogin, a.rolreplication, a.rolbypassrls, a.rolconnlimit, "
            "a.rolvaliduntil, a.rolpassword, "
            "(SELECT setconfig::text FROM pg_db_role_setting s "
            "  WHERE s.setrole = a.oid AND s.setdatabase = 0), "
            "shobj_description(a.oid, 'pg_authid'), "
            "ARRAY(SELECT b.rolname || CASE WHEN m.admin_option THEN '+admin' ELSE '' END "
            "      FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
            "      WHERE m.member = a.oid ORDER BY 1) "
            "FROM pg_authid a WHERE a.rolname = ANY(%s) ORDER BY 1",
            (names,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}
