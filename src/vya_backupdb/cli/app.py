"""The ``vya-backupdb`` (alias ``vya``) command line: a thin shell over ``jobs``.

Each command module registers itself on :data:`app`. Errors from the core are
:class:`~vya_backupdb.errors.VyaError` and are rendered here with their hint and exit code.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from vya_backupdb import __version__
from vya_backupdb.cli.context import AppContext
from vya_backupdb.errors import exit_code_table

HELP = f"""VYA BackupDB: backup and restore for PostgreSQL, MySQL/MariaDB, SQLite and files.

Exit codes:

{exit_code_table()}
"""

app = typer.Typer(
    name="vya-backupdb",
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vya-backupdb {__version__}")
        raise typer.Exit(0)


@app.callback()
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


def _register() -> None:
    # Imported here so that each command module can import `app` helpers without cycles.
    from vya_backupdb.cli import (
        backup_cmd,
        cleanup_cmd,
        config_cmd,
        connection_cmd,
        credentials_cmd,
        demo_cmd,
        keys_cmd,
        list_cmd,
        ops_cmd,
        remote_cmd,
        restore_cmd,
        users_cmd,
        verify_cmd,
    )

    for module in (
        config_cmd,
        credentials_cmd,
        connection_cmd,
        backup_cmd,
        restore_cmd,
        list_cmd,
        users_cmd,
        verify_cmd,
        cleanup_cmd,
        ops_cmd,
        remote_cmd,
        keys_cmd,
        demo_cmd,
    ):
        module.register(app)


_register()


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: every `with` block on the way out removes partial output.
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.stderr.write("interrupted\n")
        sys.exit(130)
