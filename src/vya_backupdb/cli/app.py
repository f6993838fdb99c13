"""The ``vya-backupdb`` (alias ``vya``) command line: a thin shell over ``jobs``.

Each command module registers its commands on a Typer app (``register(app)``). Errors from the
core are :class:`~vya_backupdb.errors.VyaError` and are rendered with their hint and exit code.

Start-up is part of every backup's wall time, so :func:`main` imports and builds only the
module of the command being run (building every command's parameters costs ~35 ms, importing
every module pulls in pydantic and YAML); ``--help``, ``--version``, completion and unknown
names get the full application, :data:`app`.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from vya_backupdb.cli.context import AppContext
from vya_backupdb.cli.early import GLOBAL_FLAG_OPTIONS, GLOBAL_VALUE_OPTIONS
from vya_backupdb.errors import exit_code_table

#: The command modules, in the order ``--help`` lists their commands.
COMMAND_MODULES: tuple[str, ...] = (
    "config_cmd",
    "credentials_cmd",
    "connection_cmd",
    "backup_cmd",
    "restore_cmd",
    "list_cmd",
    "users_cmd",
    "verify_cmd",
    "cleanup_cmd",
    "ops_cmd",
    "remote_cmd",
    "keys_cmd",
    "demo_cmd",
)

#: Top-level command and group names (hidden aliases included) -> the module registering them
#: (tests/unit/test_cli_startup.py keeps it in step with the modules).
COMMANDS: dict[str, str] = {
    "config": "config_cmd",
    "credentials": "credentials_cmd",
    "connection": "connection_cmd",
    "backup": "backup_cmd",
    "b": "backup_cmd",
    "restore": "restore_cmd",
    "r": "restore_cmd",
    "list": "list_cmd",
    "ls": "list_cmd",
    "users": "users_cmd",
    "verify": "verify_cmd",
    "cleanup": "cleanup_cmd",
    "run": "ops_cmd",
    "daemon": "ops_cmd",
    "status": "ops_cmd",
    "schedule": "ops_cmd",
    "notify": "ops_cmd",
    "metrics": "ops_cmd",
    "remote": "remote_cmd",
    "keys": "keys_cmd",
    "encrypt": "keys_cmd",
    "decrypt": "keys_cmd",
    "demo": "demo_cmd",
}

#: Global options followed by a value; the command name is the first other non-option word.
_VALUE_OPTIONS = GLOBAL_VALUE_OPTIONS
_FLAG_OPTIONS = GLOBAL_FLAG_OPTIONS

HELP = f"""VYA BackupDB: backup and restore for PostgreSQL, MySQL/MariaDB, SQLite and files.

Exit codes:

\b
{exit_code_table()}
"""


def _version(value: bool) -> None:
    if value:
        from vya_backupdb import __version__

        typer.echo(f"vya-backupdb {__version__}")
        raise typer.Exit(0)


def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $VYA_BACKUPDB_CONFIG, ./config.yaml, "
            "~/.config/vya-backupdb/config.yaml, /etc/vya-backupdb/config.yaml)",
        ),
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", help="Environment overlay to apply (dev, prod, ...)")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="rich (default) or json")
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Also log to this file")
    ] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More output")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version"),
    ] = False,
) -> None:
    ctx.obj = AppContext(
        config_path=config,
        env=env,
        log_format=log_format,
        log_file=log_file,
        verbosity=-1 if quiet else verbose,
    )


def build_app(modules: Sequence[str] = COMMAND_MODULES) -> typer.Typer:
    """Return the application with the commands of ``modules`` (default: all of them)."""
    application = typer.Typer(
        name="vya-backupdb",
        help=HELP,
        no_args_is_help=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    application.callback()(root)
    for name in modules:
        importlib.import_module(f"vya_backupdb.cli.{name}").register(application)
    return application


def __getattr__(name: str) -> typer.Typer:
    # ``app`` (every command) is built on first use: importing this module stays cheap.
    if name == "app":
        full = build_app()
        globals()["app"] = full
        return full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command_module(argv: Sequence[str], environ: dict[str, str] | None = None) -> str | None:
    """Return the module of the command ``argv`` runs; None when the full application is
    needed (no command, ``--help``, ``--version``, an option we do not know, shell completion,
    an unknown name: Typer then lists the commands or suggests one)."""
    environ = dict(os.environ) if environ is None else environ
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in environ):
        return None
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _VALUE_OPTIONS:
            index += 2
        elif (
            word in _FLAG_OPTIONS
            or (word.startswith("-v") and set(word[1:]) == {"v"})
            or (word.split("=", 1)[0] in _VALUE_OPTIONS and "=" in word)
        ):
            index += 1
        elif word.startswith("-"):
            return None
        else:
            return COMMANDS.get(word)
    return None


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: every `with` block on the way out removes partial output.
    raise KeyboardInterrupt


def _exit(code: object) -> None:
    """Exit with ``code`` like the interpreter would, minus its final teardown.

    Freeing every module and object at exit costs ~50 ms that nobody waits for. What a normal
    exit does that matters is done first: other threads finished (else: a normal exit), atexit
    handlers (logging flushes and closes its files), stdout and stderr flushed.
    """
    if code is not None and not isinstance(code, int):
        raise SystemExit(code)  # a message: let the interpreter print it
    current = threading.current_thread()
    if any(t is not current and not t.daemon and t.is_alive() for t in threading.enumerate()):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None  # e.g. a closed pipe: the interpreter reports it
    os._exit(code or 0)


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    module = command_module(sys.argv[1:])
    application = build_app((module,)) if module is not None else build_app()
    try:
        try:
            application()
        finally:
            from vya_backupdb.cli import early

            early.close()  # a head start the command never took (e.g. a usage error)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except SystemExit as done:  # Typer always ends with SystemExit
        _exit(done.code)
