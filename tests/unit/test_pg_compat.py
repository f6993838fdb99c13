"""The plain-dump compatibility filter: rules fire only on top-level lines, never on data."""

# ruff: noqa: E501 - the fixture dumps keep pg_dump's long lines verbatim
from __future__ import annotations

import io

import pytest

from vya_backupdb.engines.pg_compat import (
    MAX_RULE_LINE,
    FilteredReader,
    PlainDumpFilter,
    SqlLexer,
    psql_knows_restrict,
)

pytestmark = pytest.mark.unit

PG17_DUMP = b"""--
-- PostgreSQL database dump
--

\\restrict abcDEF123

SET statement_timeout = 0;
SET transaction_timeout = 0;
SET default_table_access_method = heap;
SET client_encoding = 'UTF8';
ALTER SCHEMA public OWNER TO pg_database_owner;
CREATE DATABASE x WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = icu ICU_LOCALE = 'de-DE' ICU_RULES = '&a < b';
CREATE FUNCTION public.f() RETURNS text
    LANGUAGE plpgsql
    AS $_$
SET transaction_timeout = 0;
BEGIN RETURN 'x'; END
$_$;
COMMENT ON TABLE public.t IS 'multi
SET transaction_timeout = 0;
line';
COPY public.t (id, body) FROM stdin;
1\tSET transaction_timeout = 0;
2\t\\\\restrict x
\\.
SET transaction_timeout = 0;
ALTER TABLE public.t OWNER TO alice;
\\unrestrict abcDEF123
"""


def _filtered(data: bytes, **kwargs: object) -> bytes:
    dump_filter = PlainDumpFilter(**kwargs)  # type: ignore[arg-type]
    return b"".join(dump_filter.filter_lines(io.BytesIO(data)))


def test_plain_filter_newer_source_on_pg15_drops_unknown_settings_only_at_top_level() -> None:
    out = _filtered(PG17_DUMP, target_version_num=150000, source_version_num=170000)
    lines = out.splitlines()
    assert b"SET default_table_access_method = heap;" in lines  # known to 15: kept
    assert b"SET statement_timeout = 0;" in lines
    # The top-level statements before and after the COPY are gone...
    assert lines.count(b"SET transaction_timeout = 0;") == 2
    # ...the two left are inside the function body and the comment literal.
    assert b"1\tSET transaction_timeout = 0;" in lines  # data untouched
    assert b"ICU_RULES" not in out
    assert b"LOCALE_PROVIDER = icu ICU_LOCALE = 'de-DE'" in out  # 15 knows these


def test_plain_filter_pg13_target_strips_locale_provider_and_database_owner() -> None:
    out = _filtered(PG17_DUMP, target_version_num=130000, source_version_num=170000)
    assert b"LOCALE_PROVIDER" not in out
    assert b"ICU_LOCALE" not in out
    assert b"CREATE DATABASE x WITH TEMPLATE = template0 ENCODING = 'UTF8';\n" in out
    assert b"pg_database_owner" not in out
    assert b"SET default_table_access_method = heap;" in out


def test_plain_filter_same_version_leaves_dump_unchanged() -> None:
    out = _filtered(PG17_DUMP, target_version_num=170000, source_version_num=170000)
    assert out == PG17_DUMP


def test_plain_filter_old_psql_drops_restrict_meta_commands_not_data() -> None:
    out = _filtered(
        PG17_DUMP, target_version_num=170000, source_version_num=170000, psql_version_num=150010
    )
    assert b"\\restrict abcDEF123" not in out
    assert b"\\unrestrict" not in out
    assert b"2\t\\\\restrict x\n" in out


def test_plain_filter_drop_owner_drops_owner_statements() -> None:
    dump_filter = PlainDumpFilter(target_version_num=170000, drop_owner=True)
    out = b"".join(dump_filter.filter_lines(io.BytesIO(PG17_DUMP)))
    assert b"OWNER TO alice" not in out
    assert dump_filter.applied["OWNER TO"] == 2


def test_plain_filter_counts_applied_rules() -> None:
    dump_filter = PlainDumpFilter(target_version_num=150000, source_version_num=170000)
    list(dump_filter.filter_lines(io.BytesIO(PG17_DUMP)))
    assert dump_filter.applied == {"SET transaction_timeout": 2, "CREATE DATABASE ICU_RULES": 1}


def test_filtered_reader_tiny_chunks_equals_line_filter() -> None:
    expected = _filtered(PG17_DUMP, target_version_num=130000, source_version_num=170000)
    reader = FilteredReader(
        io.BytesIO(PG17_DUMP),
        PlainDumpFilter(target_version_num=130000, source_version_num=170000),
        chunk=7,
    )
    out = b"".join(iter(lambda: reader.read(5), b""))
    assert out == expected


def test_filtered_reader_overlong_line_passes_through_and_keeps_state() -> None:
    long_value = b"x" * (MAX_RULE_LINE * 3)
    data = (
        b"INSERT INTO t VALUES ('" + long_value + b"', $$ '\n"
        b"SET transaction_timeout = 0;\n"
        b"$$);\n"
        b"SET transaction_timeout = 0;\n"
    )
    reader = FilteredReader(
        io.BytesIO(data), PlainDumpFilter(target_version_num=150000), chunk=4096
    )
    out = b"".join(iter(lambda: reader.read(65536), b""))
    # Inside the dollar quote opened on the long line: kept; top level afterwards: dropped.
    assert out == data[: -len(b"SET transaction_timeout = 0;\n")]


@pytest.mark.parametrize(
    ("text", "in_code"),
    [
        (b"SELECT 'abc", False),
        (b"SELECT 'it''s'", True),
        (b"SELECT E'a\\'b", False),
        (b"SELECT E'a\\'b'", True),
        (b'SELECT "we""ird', False),
        (b"SELECT $x$ body $y$ more", False),
        (b"SELECT $x$ body $x$", True),
        (b"SELECT a$b$c", True),
        (b"/* outer /* inner */ still", False),
        (b"/* outer /* inner */ done */", True),
        (b"-- comment 'quote", False),
        (b"-- comment 'quote\n", True),
    ],
)
def test_sql_lexer_state_after_text(text: bytes, in_code: bool) -> None:
    lexer = SqlLexer()
    carry = lexer.feed(text)
    assert carry == b""
    assert lexer.in_code is in_code


def test_sql_lexer_split_dollar_tag_across_pieces() -> None:
    lexer = SqlLexer()
    carry = lexer.feed(b"SELECT $ta")
    assert carry == b"$ta"
    carry = lexer.feed(carry + b"g$ x $tag")
    assert lexer.mode == "dollar"
    lexer.feed(carry + b"$ done\n")
    assert lexer.in_code


@pytest.mark.parametrize(
    ("version", "expected"),
    [(150013, False), (150014, True), (160010, True), (170005, False), (180000, True),
     (120020, False)],
)  # fmt: skip
def test_psql_knows_restrict_by_minor_release(version: int, expected: bool) -> None:
    assert psql_knows_restrict(version) is expected
