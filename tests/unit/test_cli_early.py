"""cli/early.py: which command lines get a head start before Typer loads.

The parser must be narrow: a command line it is unsure of gets no head start (the command then
runs exactly as without it), and it never reads a value as a command or an instance.
"""

from __future__ import annotations

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
