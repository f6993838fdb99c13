"""Read and filter a ``pg_dumpall --globals-only`` file (roles, memberships, tablespaces).

Restoring roles onto a server that already has accounts must never fail on them, so the file is
not fed to psql as is. It is split into statements (:func:`split_statements`), each statement is
classified (:func:`classify`), and :func:`plan_globals` decides, for the target's existing roles,
which statements run:

* ``CREATE ROLE x;`` is skipped when ``x`` already exists; the following
  ``ALTER ROLE x WITH …`` (attributes and password hash) still runs, so the role ends up identical.
* Statements about roles that are not selected, are excluded, are built in (``pg_*``), are the
  target's bootstrap superuser, or are the connecting user (its password must not change under
  our feet) are skipped.
* ``GRANT role TO member`` runs when the member is selected and the granted role exists (or is
  created by this plan); a ``GRANTED BY`` naming a role absent from the target is dropped.
* Tablespaces are restored only with ``users="all"`` and when absent from the target.
* psql meta-commands (``\\restrict``, ``\\connect``) are skipped: statements run over a plain
  connection.

All functions here are pure: the engine supplies the target's state and executes the plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vya_backupdb.engines.pg_compat import SqlLexer

_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")


def split_statements(lines: Iterable[str]) -> Iterator[str]:
    """Yield the SQL statements and meta-commands of a dump, without comment-only lines.

    A statement ends at a line whose end is outside any literal and ends with ``;`` (pg_dumpall
    writes one statement per line, multi-line only inside string literals).
    """
    lexer = SqlLexer()
    buffer: list[str] = []
    for line in lines:
        if not buffer and lexer.in_code:
            stripped = line.strip()
            if not stripped or stripped.startswith("--"):
                continue
            if stripped.startswith("\\"):
                yield stripped
                continue
        buffer.append(line)
        lexer.feed(line.encode("utf-8"))
        if lexer.in_code and line.rstrip().endswith(";"):
            yield "".join(buffer).strip()
            buffer.clear()
    if buffer and "".join(buffer).strip():
        yield "".join(buffer).strip()


def parse_identifier(text: str, pos: int = 0) -> tuple[str, int] | None:
    """Return (name, end) of the SQL identifier at ``pos`` (quoted or not), or None."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if text.startswith('"', pos):
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            if text[i] == '"':
                if text.startswith('"', i + 1):
                    out.append('"')
                    i += 2
                    continue
                return "".join(out), i + 1
            out.append(text[i])
            i += 1
        return None
    match = _WORD.match(text, pos)
    if match is None:
        return None
    return match.group(0).lower(), match.end()


def quote_identifier(name: str) -> str:
    """Return ``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


Kind = Literal[
    "create_role", "alter_role", "role_setting", "role_other", "membership", "tablespace",
    "set", "meta", "other",
]  # fmt: skip


@dataclass(frozen=True)
class Statement:
    """One classified statement of a globals file."""

    sql: str
    kind: Kind
    role: str | None = None  # the role the statement is about (member for a membership)
    granted: tuple[str, ...] = ()  # membership: roles granted
    grantor: str | None = None  # membership: GRANTED BY
    database: str | None = None  # role_setting: IN DATABASE
    tablespace: str | None = None


def _after(sql: str, prefix: str) -> int | None:
    match = re.match(prefix, sql, re.IGNORECASE)
    return match.end() if match else None


def _identifier_list(sql: str, pos: int) -> tuple[list[str], int]:
    names: list[str] = []
    while True:
        parsed = parse_identifier(sql, pos)
        if parsed is None:
            return names, pos
        name, pos = parsed
        names.append(name)
        rest = sql[pos:].lstrip()
        if not rest.startswith(","):
            return names, pos
        pos = sql.index(",", pos) + 1


def classify(sql: str) -> Statement:
    """Return the classified form of one statement of a ``pg_dumpall --globals-only`` file."""
    if sql.startswith("\\"):
        return Statement(sql, "meta")
    if re.match(r"SET\s", sql, re.IGNORECASE):
        return Statement(sql, "set")
    for prefix, kind in (
        (r"CREATE\s+ROLE\s", "create_role"),
        (r"ALTER\s+ROLE\s", "alter_role"),
        (r"COMMENT\s+ON\s+ROLE\s", "role_other"),
        (r"SECURITY\s+LABEL\s+FOR\s+\S+\s+ON\s+ROLE\s", "role_other"),
    ):
        pos = _after(sql, prefix)
        if pos is not None:
            parsed = parse_identifier(sql, pos)
            if parsed is None:
                return Statement(sql, "other")
            role, end = parsed
            if kind == "alter_role":
                rest = sql[end:].lstrip()
                database_pos = _after(rest, r"IN\s+DATABASE\s")
                if database_pos is not None:
                    db = parse_identifier(rest, database_pos)
                    return Statement(sql, "role_setting", role, database=db[0] if db else None)
                if re.match(r"(SET|RESET)\s", rest, re.IGNORECASE):
                    return Statement(sql, "role_setting", role)
            return Statement(sql, kind, role)  # type: ignore[arg-type]
    for prefix in (
        r"CREATE\s+TABLESPACE\s",
        r"ALTER\s+TABLESPACE\s",
        r"COMMENT\s+ON\s+TABLESPACE\s",
    ):
        pos = _after(sql, prefix)
        if pos is not None:
            parsed = parse_identifier(sql, pos)
            return Statement(sql, "tablespace", tablespace=parsed[0] if parsed else None)
    if re.match(r"(GRANT|REVOKE)\s.*\sON\s+TABLESPACE\s", sql, re.IGNORECASE | re.DOTALL):
        match = re.search(r"\sON\s+TABLESPACE\s", sql, re.IGNORECASE)
        assert match is not None
        parsed = parse_identifier(sql, match.end())
        return Statement(sql, "tablespace", tablespace=parsed[0] if parsed else None)
    pos = _after(sql, r"GRANT\s")
    if pos is not None:
        granted, pos = _identifier_list(sql, pos)
        to = _after(sql[pos:], r"\s*TO\s")
        if granted and to is not None:
            members, end = _identifier_list(sql, pos + to)
            grantor = None
            by = re.search(r"\sGRANTED\s+BY\s", sql[end:], re.IGNORECASE)
            if by is not None:
                parsed = parse_identifier(sql, end + by.end())
                grantor = parsed[0] if parsed else None
            if len(members) == 1:
                return Statement(sql, "membership", members[0], tuple(granted), grantor)
    return Statement(sql, "other")


def list_roles(statements: Iterable[str]) -> list[str]:
    """Return the roles a globals file creates, in file order."""
    return [s.role for s in map(classify, statements) if s.kind == "create_role" and s.role]


@dataclass
class GlobalsPlan:
    """What :func:`plan_globals` decided: statements to run, roles applied, what was skipped."""

    statements: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (statement, reason)


def _without_granted_by(sql: str) -> str:
    return re.sub(r"\s+GRANTED\s+BY\s+(\"(?:[^\"]|\"\")*\"|\S+?)(?=\s|;)", "", sql, flags=re.I)


def plan_globals(
    statements: Iterable[str],
    *,
    users: Literal["all"] | Sequence[str],
    exclude: Iterable[str] = (),
    existing_roles: Iterable[str] = (),
    existing_databases: Iterable[str] | None = None,
    existing_tablespaces: Iterable[str] = (),
    connecting_user: str | None = None,
    protected_roles: Iterable[str] = (),
) -> GlobalsPlan:
    """Return the statements to run to restore the selected roles onto a target server.

    ``existing_*`` describe the target; ``protected_roles`` (e.g. its bootstrap superuser) and
    ``connecting_user`` are never touched; ``existing_databases`` None means "do not check".
    """
    excluded = set(exclude) | set(protected_roles)
    if connecting_user:
        excluded.add(connecting_user)
    selected = None if users == "all" else set(users)
    roles = set(existing_roles)
    databases = None if existing_databases is None else set(existing_databases)
    tablespaces = set(existing_tablespaces)
    plan = GlobalsPlan()

    def wanted(role: str | None) -> str | None:
        """Return why ``role`` is skipped, or None when it is wanted."""
        if role is None:
            return "statement not understood"
        if role.startswith("pg_"):
            return "built-in role"
        if role in excluded:
            return "excluded or protected role"
        if selected is not None and role not in selected:
            return "role not selected"
        return None

    for sql in statements:
        stmt = classify(sql)
        reason: str | None = None
        run = sql
        if stmt.kind == "meta":
            reason = "psql meta-command"
        elif stmt.kind == "set":
            pass
        elif stmt.kind == "other":
            reason = "statement not understood"
        elif stmt.kind == "tablespace":
            if selected is not None:
                reason = "tablespaces are restored only with all users"
            elif sql.upper().startswith("CREATE") and stmt.tablespace in tablespaces:
                reason = "tablespace already exists"
            elif stmt.tablespace is not None and sql.upper().startswith("CREATE"):
                tablespaces.add(stmt.tablespace)
        elif stmt.kind == "membership":
            reason = wanted(stmt.role)
            missing = [g for g in stmt.granted if g not in roles]
            if reason is None and missing:
                reason = f"granted role {missing[0]} does not exist on the target"
            if reason is None and stmt.grantor is not None and stmt.grantor not in roles:
                run = _without_granted_by(sql)
        else:
            reason = wanted(stmt.role)
            if reason is None and stmt.kind == "create_role" and stmt.role in roles:
                reason = "role already exists (its attributes are still applied)"
                if stmt.role not in plan.applied:
                    plan.applied.append(stmt.role)
            elif (
                reason is None
                and stmt.kind == "role_setting"
                and stmt.database is not None
                and databases is not None
                and stmt.database not in databases
            ):
                reason = f"database {stmt.database} does not exist on the target"
            if reason is None and stmt.role is not None:
                roles.add(stmt.role)
                if stmt.role not in plan.applied:
                    plan.applied.append(stmt.role)
        if reason is None:
            plan.statements.append(run)
        else:
            plan.skipped.append((sql, reason))
    return plan
