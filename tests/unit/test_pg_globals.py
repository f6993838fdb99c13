"""Parsing and planning of pg_dumpall --globals-only files (pure functions)."""

# ruff: noqa: E501 - the fixture dumps keep pg_dump's long lines verbatim
from __future__ import annotations

import pytest

from vya_backupdb.engines.pg_globals import (
    classify,
    list_roles,
    parse_identifier,
    plan_globals,
    split_statements,
)

pytestmark = pytest.mark.unit

GLOBALS = """--
-- PostgreSQL database cluster dump
--

\\restrict KEY123

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:aa==$bb=:cc=';
CREATE ROLE readers;
ALTER ROLE readers WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
COMMENT ON ROLE readers IS 'multi
line ''comment''; CREATE ROLE evil;';
CREATE ROLE "we ird""x";
ALTER ROLE "we ird""x" WITH NOSUPERUSER INHERIT LOGIN CONNECTION LIMIT 3 PASSWORD 'SCRAM-SHA-256$4096:dd' VALID UNTIL '2030-01-01 00:00:00+00';
CREATE ROLE app;
ALTER ROLE app WITH LOGIN;

--
-- User Configurations
--

ALTER ROLE readers SET search_path TO 'a', 'b';
ALTER ROLE app IN DATABASE "shop db" SET work_mem TO '8MB';

--
-- Role memberships
--

GRANT readers TO "we ird""x" WITH ADMIN OPTION GRANTED BY postgres;
GRANT readers TO app GRANTED BY "old admin";
GRANT pg_read_all_data TO app GRANTED BY postgres;

--
-- Tablespaces
--

CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';
GRANT CREATE ON TABLESPACE fast TO app;

\\unrestrict KEY123

--
-- PostgreSQL database cluster dump complete
--
"""


def _statements() -> list[str]:
    return list(split_statements(GLOBALS.splitlines(keepends=True)))


def test_split_statements_multiline_literal_stays_one_statement() -> None:
    statements = _statements()
    assert statements[0] == "\\restrict KEY123"
    comment = next(s for s in statements if s.startswith("COMMENT ON ROLE"))
    assert comment.endswith("CREATE ROLE evil;';")
    assert not any(s.startswith("CREATE ROLE evil") for s in statements)
    assert all(not s.startswith("--") for s in statements)


def test_parse_identifier_quoted_and_plain() -> None:
    assert parse_identifier('"we ird""x" WITH', 0) == ('we ird"x', 11)
    assert parse_identifier("  Readers;", 0) == ("readers", 9)
    assert parse_identifier('"unterminated', 0) is None


def test_classify_statement_kinds() -> None:
    assert classify('CREATE ROLE "we ird""x";').role == 'we ird"x'
    alter = classify("ALTER ROLE app IN DATABASE \"shop db\" SET work_mem TO '8MB';")
    assert (alter.kind, alter.role, alter.database) == ("role_setting", "app", "shop db")
    grant = classify('GRANT readers TO "we ird""x" WITH ADMIN OPTION GRANTED BY postgres;')
    assert (grant.kind, grant.role, grant.granted, grant.grantor) == (
        "membership", 'we ird"x', ("readers",), "postgres",
    )  # fmt: skip
    assert classify("GRANT CREATE ON TABLESPACE fast TO app;").kind == "tablespace"
    assert classify("SET client_encoding = 'UTF8';").kind == "set"
    assert classify("DROP TABLE x;").kind == "other"


def test_list_roles_in_file_order() -> None:
    assert list_roles(_statements()) == ["postgres", "readers", 'we ird"x', "app"]


def test_plan_globals_existing_role_keeps_alter_skips_create_and_protects_superuser() -> None:
    plan = plan_globals(
        _statements(),
        users="all",
        existing_roles={"postgres", "readers", "pg_read_all_data"},
        existing_databases={"postgres"},
        connecting_user="postgres",
        protected_roles=["postgres"],
    )
    assert "CREATE ROLE readers;" not in plan.statements
    assert any(s.startswith("ALTER ROLE readers WITH") for s in plan.statements)
    assert not any("ROLE postgres" in s for s in plan.statements)
    assert plan.applied == ["readers", 'we ird"x', "app"]
    assert "CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';" in plan.statements
    # The database named in the role setting does not exist on the target: skipped.
    assert not any("IN DATABASE" in s for s in plan.statements)
    # The grantor does not exist there: GRANTED BY is dropped, the grant kept.
    assert "GRANT readers TO app;" in plan.statements
    assert "GRANT pg_read_all_data TO app GRANTED BY postgres;" in plan.statements
    assert not any(s.startswith("\\") for s in plan.statements)


def test_plan_globals_selected_user_only_its_statements() -> None:
    plan = plan_globals(
        _statements(), users=["app"], existing_roles={"postgres"}, existing_databases=None
    )
    assert plan.applied == ["app"]
    role_statements = [s for s in plan.statements if not s.startswith("SET ")]
    assert role_statements == [
        "CREATE ROLE app;",
        "ALTER ROLE app WITH LOGIN;",
        "ALTER ROLE app IN DATABASE \"shop db\" SET work_mem TO '8MB';",
    ]
    reasons = dict(plan.skipped)
    assert reasons['GRANT readers TO app GRANTED BY "old admin";'].startswith("granted role")
    assert reasons["CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';"].startswith(
        "tablespaces"
    )


def test_plan_globals_excluded_role_and_existing_tablespace_skipped() -> None:
    plan = plan_globals(
        _statements(),
        users="all",
        exclude=["readers"],
        existing_roles={"postgres"},
        existing_tablespaces={"fast"},
    )
    assert "readers" not in plan.applied
    assert not any("ROLE readers" in s for s in plan.statements)
    # Memberships in an excluded (so absent) role cannot be granted.
    assert not any(s.startswith("GRANT readers") for s in plan.statements)
    assert not any(s.startswith("CREATE TABLESPACE") for s in plan.statements)
