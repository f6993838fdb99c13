"""cli/early.py: which command lines get a head start before Typer loads.

The parser must be narrow: a command line it is unsure of gets no head start (the command then
runs exactly as without it), and it never reads a value as a command or an instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_helpers import write_sqlite_config

from vya_backupdb.cli.early import Parsed, parse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "pg", "-d", "app"], Parsed(None, None, "pg", ("app",))),
        (["b", "pg", "--database=app", "-d", "crm"], Parsed(None, None, "pg", ("app", "crm"))),
        (
            ["-c", "/etc/v.yaml", "--env", "prod", "-q", "backup", "-d", "app", "pg"],
            Parsed(Path("/etc/v.yaml"), "prod", "pg", ("app",)),
        ),
        (
            [
                "--config=c.json",
                "--log-format",
                "json",
                "backup",
                "pg",
                "-d",
                "app",
                "--no-users",
                "--json",
                "--no-progress",
                "-j",
                "2",
                "--progress-interval",
                "5",
            ],
            Parsed(Path("c.json"), None, "pg", ("app",)),
        ),
        # A value that looks like a command or an instance stays a value.
        (["-c", "backup", "backup", "pg", "-d", "b"], Parsed(Path("backup"), None, "pg", ("b",))),
    ],
)
def test_plain_backup_command_lines_are_recognised(argv: list[str], expected: Parsed) -> None:
    assert parse(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["backup", "pg"],  # every database: the listing comes first
        ["backup", "pg", "my", "-d", "app"],  # two instances: the command refuses it
        ["backup", "--all", "-d", "app"],
        ["backup", "pg", "-d", "app", "--dry-run"],
        ["backup", "pg", "-d", "app", "--help"],
        ["backup", "pg", "-d", "app", "--strategy", "full"],
        ["backup", "pg", "-d", "app", "--unknown"],
        ["backup", "pg", "-d"],  # a value missing
        ["backup", "pg", "-d", "app", "--", "x"],
        ["-vv", "backup", "pg", "-d", "app"],  # a cluster this parser does not read
        ["--version"],
        ["restore", "pg", "-d", "app"],
        ["list"],
        [],
        ["-c"],
    ],
)
def test_anything_else_gets_no_head_start(argv: list[str]) -> None:
    assert parse(argv) is None


def test_config_loaded_early_is_reused_once_for_the_same_file_and_overlay(
    tmp_path: Path,
) -> None:
    """A backup named with -d of an instance that gets no head start (here SQLite) does not
    validate its config twice; any other file or overlay loads its own."""
    from vya_backupdb.cli import early

    config = write_sqlite_config(tmp_path, tmp_path)
    early.start(["-c", str(config), "backup", "lite", "-d", "shop.db"], {})
    assert early._started is None  # SQLite: nothing to start early
    assert early.loaded_config(config, "prod") is None  # another overlay: not this one
    early.start(["-c", str(config), "backup", "lite", "-d", "shop.db"], {})
    loaded = early.loaded_config(config, None)
    assert loaded is not None and loaded.settings.instance("lite").type == "sqlite"
    assert early.loaded_config(config, None) is None  # once
    early.start(["-c", str(tmp_path / "missing.json"), "backup", "lite", "-d", "x"], {})
    assert early.loaded_config(tmp_path / "missing.json", None) is None  # the command reports


# -- the instance read from the configuration document, before validation ---------------------
@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """The passwords read here are registered for masking: forget them after each test (a
    short one would mask its letters in every later test's logs)."""
    from vya_backupdb.secrets.redaction import clear_registered_secrets

    yield
    clear_registered_secrets()


def _pg(**entry: object) -> dict[str, object]:
    return {"id": "pg", "type": "postgresql", "host": "db1", "user": "backup", **entry}


def test_document_instance_with_a_password_from_the_environment(tmp_path: Path) -> None:
    from vya_backupdb.cli.early import _document_instance

    found = _document_instance(
        _pg(port="5433", password_env="PGPW", dump_options=["--no-comments"]),
        tmp_path,
        {"PGPW": "s3cret"},
    )
    assert found is not None
    server, password, fmt, options = found
    assert (server.effective_host, server.effective_port, server.user) == ("db1", 5433, "backup")
    assert (password, fmt, options) == ("s3cret", "custom", ("--no-comments",))
    # Defaults as the models give them: localhost, PostgreSQL's port.
    bare = _document_instance(_pg(host=None, password_env="PGPW"), tmp_path, {"PGPW": "pw-2"})
    assert bare is not None and (bare[0].effective_host, bare[0].effective_port) == (
        "localhost",
        5432,
    )


def test_document_instance_reads_a_relative_password_file_beside_the_config(
    tmp_path: Path,
) -> None:
    from vya_backupdb.cli.early import _document_instance

    (tmp_path / "pg.pass").write_text("from-file\nsecond line\n", encoding="utf-8")
    found = _document_instance(_pg(password_file="pg.pass"), tmp_path, {})
    assert found is not None and found[1] == "from-file"
    assert _document_instance(_pg(password_file="missing.pass"), tmp_path, {}) is None


@pytest.mark.parametrize(
    "entry",
    [
        _pg(type="mariadb", password_env="PGPW"),
        _pg(password_env="UNSET_VARIABLE"),  # the validated path reports it
        _pg(),  # no source: the credential store, which the document reading does not open
        _pg(password="enc:abc"),
        _pg(password_command="get-pw", password_env="PGPW"),
        _pg(credential="other", password_env="PGPW"),
        _pg(directory_format_above_bytes="10GB", password_env="PGPW"),
        _pg(format="directory", password_env="PGPW"),
        _pg(port="54x", password_env="PGPW"),
        _pg(port=True, password_env="PGPW"),
        _pg(host=["db1"], password_env="PGPW"),
        _pg(dump_options="--no-comments", password_env="PGPW"),
    ],
)
def test_document_instance_leaves_anything_else_to_the_validated_path(
    tmp_path: Path, entry: dict[str, object]
) -> None:
    from vya_backupdb.cli.early import _document_instance

    assert _document_instance(entry, tmp_path, {"PGPW": "x"}) is None


def test_document_settings_keys_are_the_models_top_level_settings() -> None:
    """``VYA_*`` overrides are told from other variables by these names (config/document.py
    keeps them without importing the models)."""
    from vya_backupdb.config.document import SETTINGS_KEYS
    from vya_backupdb.config.models import Settings

    assert set(Settings.model_fields) == SETTINGS_KEYS
