"""secrets.redaction: registered values and secret-looking patterns are masked."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from vya_backupdb.secrets.redaction import (
    RedactingFilter,
    clear_registered_secrets,
    redact,
    register_secret,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    clear_registered_secrets()
    yield
    clear_registered_secrets()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2 next", "password=**** next"),
        ("PGPASSWORD=abc123 pg_dump", "PGPASSWORD=**** pg_dump"),
        ("MYSQL_PWD='a b c' x", "MYSQL_PWD='****' x"),
        ('{"password": "x1y2"}', '{"password": "****"}'),
        ("db_password: s3cret", "db_password: ****"),
        ("postgresql://bob:pa55@db:5432/app", "postgresql://bob:****@db:5432/app"),
        ("see https://u:p@h/x and more", "see https://u:****@h/x and more"),
        ("password_env: PG_PASSWORD", "password_env: PG_PASSWORD"),
        ("password_file=/etc/pw", "password_file=/etc/pw"),
        ("password authentication failed for user", "password authentication failed for user"),
        ("value enc:gAAAAABkabcdefghijklmnop12345", "value enc:****"),
        ("", ""),
    ],
)
def test_redact_patterns_mask_secret_values(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_registered_secret_masked_anywhere() -> None:
    register_secret("Tr0ub4dor&3")
    register_secret("")
    register_secret(None)
    assert redact("login failed with Tr0ub4dor&3!") == "login failed with ****!"


def test_redact_longer_secret_masked_whole_before_shorter_one() -> None:
    register_secret("abc")
    register_secret("abcdef-long")
    assert redact("x abcdef-long y") == "x **** y"


def test_redacting_filter_masks_message_args_extras_and_traceback() -> None:
    register_secret("very-secret")
    record = logging.LogRecord(
        "vya_backupdb.t", logging.ERROR, __file__, 1, "using %s", ("very-secret",), None
    )
    record.dsn = "mysql://root:very-secret@h"
    try:
        raise ValueError("boom very-secret")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "using ****"
    assert record.dsn == "mysql://root:****@h"
    assert record.exc_text is not None
    assert "very-secret" not in record.exc_text
    assert "boom ****" in record.exc_text


def test_redact_does_not_cross_lines_or_mask_nulls() -> None:
    text = "secrets:\n  directory: null\npassword: null\npassword_command: ~\n"
    assert redact(text) == text


def test_redact_keeps_mysql_using_password_yes_readable() -> None:
    text = "Access denied for user 'root'@'127.0.0.1' (using password: YES)"
    assert redact(text) == text
    assert redact("(password=abc)") == "(password=****)"
