"""The CLI's start-up: cheap imports, only the invoked command built, a short exit.

Every backup pays the start-up before its dump tool starts (issue 6 compares the whole run with
the bare ``pg_dump | zstd`` pipeline), so these tests pin what was taken off that path.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner
from unit_helpers import write_sqlite_config

from vya_backupdb.cli import app as app_module
from vya_backupdb.cli.app import COMMAND_MODULES, COMMANDS, build_app, command_module
from vya_backupdb.engines.process import cached_tool_version, prefetch_tool_version

#: Packages the bare CLI start must not import (drivers, cloud SDKs, crypto, schema, YAML).
HEAVY = (
    "psycopg",
    "pymysql",
    "boto3",
    "botocore",
    "azure",
    "google",
    "paramiko",
    "cryptography",
    "zstandard",
    "sqlalchemy",
    "apprise",
    "prometheus_client",
    "pydantic",
    "yaml",
    "rich",
)


def _modules_after(code: str, *, env: dict[str, str] | None = None) -> set[str]:
    """Run ``code`` in a fresh interpreter; return the modules loaded when it exits."""
    probe = textwrap.dedent(
        """
        import atexit, sys
        def _report():
            sys.__stderr__.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n")
        atexit.register(_report)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe + code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    lines = [x for x in done.stderr.splitlines() if x.startswith("MODULES ")]
    assert lines, done.stderr
    return set(lines[-1].split()[1:])


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_cli_app_import_loads_no_heavy_module() -> None:
    modules = _modules_after("import vya_backupdb.cli.app")

    heavy = [p for p in HEAVY if _loaded(modules, p)]
    commands = sorted(m for m in modules if m.endswith("_cmd"))
    assert heavy == []
    assert commands == []
    assert "importlib.metadata" not in modules


def test_main_backup_help_imports_only_the_backup_command() -> None:
    modules = _modules_after(
        "sys.argv = ['vya-backupdb', 'backup', '--help']\n"
        "from vya_backupdb.cli.app import main\n"
        "main()\n"
    )

    commands = sorted(m.rsplit(".", 1)[1] for m in modules if m.endswith("_cmd"))
    assert commands == ["backup_cmd"]
    for package in ("psycopg", "pymysql", "cryptography", "yaml", "vya_backupdb.config.loader"):
        assert not _loaded(modules, package), package


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_commands_table_names_every_command_of_module(module: str) -> None:
    registered = typer.Typer()
    importlib.import_module(f"vya_backupdb.cli.{module}").register(registered)

    names = [c.name for c in registered.registered_commands]
    names += [g.name for g in registered.registered_groups]
    assert names
    assert {name: COMMANDS.get(name) for name in names} == dict.fromkeys(names, module)


def test_commands_table_lists_only_registered_names() -> None:
    full = build_app()
    names = {c.name for c in full.registered_commands} | {g.name for g in full.registered_groups}

    assert set(COMMANDS) == names
    assert set(COMMANDS.values()) == set(COMMAND_MODULES)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "pg", "-d", "app"], "backup_cmd"),
        (["b", "--all"], "backup_cmd"),
        (["-c", "cfg.yaml", "--env", "prod", "restore"], "restore_cmd"),
        (["--config=cfg.yaml", "--log-format", "json", "ls"], "list_cmd"),
        (["-vv", "-q", "--log-file", "x.log", "schedule", "show"], "ops_cmd"),
        (["--verbose", "keys", "generate"], "keys_cmd"),
        (["-c", "backup", "config", "validate"], "config_cmd"),  # -c's value is not a command
        ([], None),
        (["--help"], None),
        (["-h"], None),
        (["--version"], None),
        (["bakup"], None),  # unknown: the full app suggests the right name
        (["-c", "cfg.yaml"], None),
        (["--unknown-option", "backup"], None),
        (["-vc", "cfg.yaml", "backup"], None),  # a cluster we do not parse: full app
    ],
)
def test_command_module_finds_invoked_command(argv: list[str], expected: str | None) -> None:
    assert command_module(argv, environ={}) == expected


def test_command_module_shell_completion_uses_full_app() -> None:
    environ = {"_VYA_BACKUPDB_COMPLETE": "complete_bash"}

    assert command_module(["backup"], environ=environ) is None


def _help_paths() -> list[tuple[str, ...]]:
    full = build_app()
    paths: list[tuple[str, ...]] = [(c.name,) for c in full.registered_commands if c.name]
    for group in full.registered_groups:
        assert group.name is not None and group.typer_instance is not None
        paths.append((group.name,))
        paths += [(group.name, c.name) for c in group.typer_instance.registered_commands if c.name]
    return paths


@pytest.mark.parametrize("path", _help_paths(), ids=" ".join)
def test_command_help_from_own_module_same_as_full_app(path: tuple[str, ...]) -> None:
    runner = CliRunner()
    env = {"COLUMNS": "100"}

    alone = runner.invoke(build_app((COMMANDS[path[0]],)), [*path, "--help"], env=env)
    full = runner.invoke(app_module.app, [*path, "--help"], env=env)

    assert alone.exit_code == full.exit_code == 0
    assert "Usage: " in alone.output
    assert alone.output == full.output


def test_main_backup_of_sqlite_exits_zero_with_log_file_flushed(tmp_path: Path) -> None:
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    config = write_sqlite_config(tmp_path, tmp_path)
    marker = tmp_path / "atexit-ran"
    log = tmp_path / "vya.log"
    code = (
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        f"sys.argv = ['vya-backupdb', '-c', {str(config)!r}, '--log-format', 'json',\n"
        f"            '--log-file', {str(log)!r}, 'backup', 'lite', '--json', '--no-progress']\n"
        "from vya_backupdb.cli.app import main\n"
        "main()\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", "import atexit, sys\n" + code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["status"] == "success"
    assert marker.exists()  # atexit handlers still run
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert any(line.get("status") == "success" for line in lines)


def test_main_error_exit_code_kept(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vya_backupdb", "-c", str(tmp_path / "missing.yaml"), "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2
    assert "missing.yaml" in done.stderr


def test_main_version_printed_and_exit_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vya_backupdb", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0
    assert done.stdout.startswith("vya-backupdb ")


def test_cached_tool_version_runs_the_tool_once(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    tool = tmp_path / "fake-dump"
    tool.write_text(f'#!/bin/sh\necho run >> "{calls}"\necho "fake-dump (Tool) 1.2.3"\n')
    tool.chmod(0o755)

    prefetch_tool_version(str(tool))
    prefetch_tool_version(str(tool))
    first = cached_tool_version(str(tool))
    second = cached_tool_version(str(tool))

    assert first == second == "fake-dump (Tool) 1.2.3"
    assert calls.read_text().splitlines() == ["run"]


def test_wiring_dump_tools_match_the_engines() -> None:
    from vya_backupdb.engines import mysql
    from vya_backupdb.wiring import DUMP_TOOLS

    assert DUMP_TOOLS["mysql"] == mysql.DUMP_TOOLS["mysql"]
    assert DUMP_TOOLS["mariadb"] == mysql.DUMP_TOOLS["mariadb"]
    assert DUMP_TOOLS["postgresql"] == ("pg_dump",)


def test_prefetch_dump_tool_missing_tool_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    from vya_backupdb.config.models import InstanceConfig
    from vya_backupdb.wiring import prefetch_dump_tool

    monkeypatch.setenv("PATH", "/nonexistent")
    instance = InstanceConfig.model_validate({"id": "m", "type": "mariadb"})

    prefetch_dump_tool(instance)  # the dump itself reports the missing tool, later


def test_main_waits_for_running_threads_before_exiting(tmp_path: Path) -> None:
    done_file = tmp_path / "thread-finished"
    code = (
        "import sys, threading, time\n"
        "def work():\n"
        "    time.sleep(0.3)\n"
        f"    open({str(done_file)!r}, 'w').close()\n"
        "threading.Thread(target=work).start()\n"
        "sys.argv = ['vya-backupdb', '--version']\n"
        "from vya_backupdb.cli.app import main\n"
        "main()\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done_file.exists()  # the fast exit is only taken when nothing else still runs


def test_top_level_help_lists_one_exit_code_per_line() -> None:
    from vya_backupdb.errors import EXIT_CODES

    result = CliRunner().invoke(app_module.app, ["--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines()]
    for code, (name, _) in EXIT_CODES.items():
        # Each code starts a line of its own (help text is not rewrapped into a paragraph).
        assert any(line.split()[:2] == [str(code), name] for line in lines if line), code
