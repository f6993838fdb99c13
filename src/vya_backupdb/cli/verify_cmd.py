"""`vya-backupdb verify`: check that backups are intact, readable and restorable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from vya_backupdb.cli.context import get_app, handle_errors, render_error
from vya_backupdb.cli.render import human_seconds, plain_json
from vya_backupdb.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from vya_backupdb.jobs.verify import VerifyReport

#: Version of the `verify --json` format.
VERIFY_JSON_VERSION = 1

_OUTCOME = {"ok": "✅ ok", "failed": "❌ damaged", "error": "⚠️ not checked"}


def verify(
    ctx: typer.Context,
    instance: Annotated[
        str | None, typer.Argument(help="Verify the backups of this instance")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Verify this one backup file")
    ] = None,
    database: Annotated[
        str | None, typer.Option("--database", "-d", help="Only the backups of this database")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Verify every backup of every instance")
    ] = False,
    latest: Annotated[
        bool, typer.Option("--latest", help="Only the newest backup of each database")
    ] = False,
    level: Annotated[
        str | None,
        typer.Option(
            "--level",
            "-l",
            help="checksum | integrity | test-restore (default: verification.level, integrity)",
        ),
    ] = None,
    test_restore: Annotated[
        bool,
        typer.Option(
            "--test-restore",
            help="Restore into a temporary database (or scratch instance), compare row counts, "
            "then drop it",
        ),
    ] = False,
    remote: Annotated[
        str | None, typer.Option("--remote", help="Verify the backups on this remote")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bars: periodic log lines instead")
    ] = False,
    progress_interval: Annotated[
        float,
        typer.Option(
            "--progress-interval", min=0, help="Seconds between progress log lines (no terminal)"
        ),
    ] = 10.0,
) -> None:
    """Verify backups: checksum, integrity of the dump, optionally a test restore.

    Each outcome is written into the backup's metadata and shown by `list`. Objects without a
    record and damaged metadata files are reported too. Exit status: 0 when everything is
    intact, 8 when any damage was found, else the code of the error that prevented a check.
    """
    from vya_backupdb.jobs.verify import VerifyJob, VerifyReport

    chosen = sum(1 for given in (instance is not None, file is not None, all_) if given)
    if chosen != 1:
        raise UsageError(
            "say what to verify: INSTANCE, --file PATH or --all (exactly one)",
            hint="e.g. vya-backupdb verify pg01 --database app --latest",
        )
    if database is not None and instance is None:
        raise UsageError("--database needs an INSTANCE", hint="e.g. verify pg01 -d app")
    from vya_backupdb.cli.progress import display_for, showing

    app = get_app(ctx)
    loaded = app.loaded()
    display = display_for(app, enabled=not no_progress, interval=progress_interval)
    storage = None
    if remote is not None:
        from vya_backupdb.wiring import make_storage

        storage = make_storage(loaded.settings, remote)
    job = VerifyJob(loaded, storage, progress=display.verify_factory())
    with showing(display):
        if file is not None:
            report = VerifyReport([job.verify_file(file, level, test_restore)])
        elif all_:
            report = job.verify_all(level=level, test_restore=test_restore, latest=latest)
        else:
            assert instance is not None
            report = job.verify_instance(
                instance, database, level=level, test_restore=test_restore, latest=latest
            )
    if json_out:
        typer.echo(plain_json({"version": VERIFY_JSON_VERSION, **report.as_dict()}))
    else:
        _render(app.out, report)
        for result in report.failed:
            if result.error is not None:
                render_error(result.error)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _render(console: Console, report: VerifyReport) -> None:
    table = Table(title="Verification")
    for column in ("instance", "database", "date (UTC)", "level", "outcome", "restore", "file"):
        table.add_column(column)
    for r in report.results:
        date = f"{r.record.started_at:%Y-%m-%d %H:%M:%S}" if r.record else ""
        table.add_row(
            r.instance,
            r.database,
            date,
            r.level,
            _OUTCOME[r.outcome],
            human_seconds(r.restore_seconds) if r.restore_seconds is not None else "",
            r.name,
        )
    console.print(table)
    if not report.results:
        console.print("Nothing to verify. See: vya-backupdb list")
        return
    bad = len(report.failed)
    console.print(f"{len(report.results) - bad} intact, {bad} with problems.")


def register(app: typer.Typer) -> None:
    app.command("verify")(handle_errors(verify))
