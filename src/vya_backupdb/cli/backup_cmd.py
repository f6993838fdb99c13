"""`vya-backupdb backup` (alias `b`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from vya_backupdb.cli.context import get_app, handle_errors, render_error
from vya_backupdb.cli.render import human_bytes, human_seconds, plain_json
from vya_backupdb.errors import StorageError

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.engines.pg_head import HeadStart


def backup(
    ctx: typer.Context,
    instances: Annotated[
        list[str] | None, typer.Argument(help="Instances to back up (default: all)")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Back up every configured instance")] = False,
    database: Annotated[
        list[str] | None,
        typer.Option("--database", "-d", help="Only this database (repeatable)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Connect and list what would be backed up")
    ] = False,
    no_users: Annotated[bool, typer.Option("--no-users", help="Skip the users/roles file")] = False,
    strategy: Annotated[
        str | None,
        typer.Option(help="files instances: full | incremental | differential"),
    ] = None,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Verify each backup right after writing it (default: verification.auto_verify)",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, max=64, help="Databases backed up at once"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run as JSON")] = False,
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
    """Back up databases (one file per database) and users of the given instances.

    Exit status: 0 when every backup succeeded; when some failed, the exit code of their
    error if they all failed the same way (e.g. 4 connection), else 6; 9 when every backup
    succeeded but an automatic upload to a remote (auto_upload) failed.
    """
    app = get_app(ctx)
    loaded = app.loaded(logging=False)
    if database and len(instances or []) != 1:
        from vya_backupdb.errors import UsageError

        raise UsageError("--database needs exactly one instance", hint="e.g. backup pg01 -d app")
    # A named PostgreSQL database's dump was started by the console script before Typer
    # loaded: logging, the backup job's modules and the driver load while pg_dump runs. It is
    # checked against the validated instance once logging is set up (its password source may
    # warn, e.g. a password_file others can read).
    head = None
    try:
        app.setup_logging()
        head = _start_dump_early(loaded, instances, database, dry_run)
        from vya_backupdb.jobs.backup import BackupJob, BackupRequest

        request = BackupRequest(
            instances=() if all_ else tuple(instances or ()),
            databases=tuple(database or ()),
            dry_run=dry_run,
            users=False if no_users else None,
            strategy=strategy,
            verify=verify,
            jobs=jobs,
        )
        from vya_backupdb.cli.progress import display_for, showing

        display = display_for(app, enabled=not no_progress, interval=progress_interval)
        with showing(display):
            job = BackupJob(
                loaded,
                progress=display.backup_factory(),
                upload_progress=display.transfer_factory("upload"),
                head_starts=[head] if head is not None else [],
            )
            run = job.run(request)
    finally:
        if head is not None:
            head.close()  # the run closed it already, unless it never ran
    if json_out:
        typer.echo(plain_json(run.as_dict()))
    else:
        _render(app.out, run, dry_run)
        for failed in run.failed:
            if failed.error is not None:
                render_error(failed.error)
    if run.offsite_failed and not run.failed:
        names = ", ".join(run.offsite_failed)
        render_error(
            StorageError(
                f"the backups were stored, but the off-site copy to {names} failed",
                hint="Fix the remote (vya-backupdb remote test NAME), then copy the missing "
                f"backups with: vya-backupdb remote upload {run.offsite_failed[0]}",
            )
        )
    if run.exit_code:
        raise typer.Exit(run.exit_code)


def _start_dump_early(
    loaded: LoadedConfig, instances: list[str] | None, database: list[str] | None, dry_run: bool
) -> HeadStart | None:
    """Return the dump the console script started for this very command line (cli/early.py),
    or None — closing one started for another; BackupJob then starts its own if it applies."""
    from vya_backupdb.cli import early

    if dry_run or not database or not instances or len(instances) != 1:
        early.close()
        return None
    return early.take(loaded, instances[0], database)


def _render(console, run, dry_run: bool) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    title = "Backup plan (dry run: nothing written)" if dry_run else f"Backup run {run.run_id}"
    table = Table(title=title)
    for column in ("instance", "database", "status", "size", "duration", "rate", "file"):
        table.add_column(column)
    for r in run.results:
        size = human_bytes(r.estimated_bytes) + " (est.)" if dry_run else human_bytes(r.size_bytes)
        rate = (
            f"{human_bytes(int(r.raw_bytes / r.duration_seconds))}/s"
            if r.duration_seconds and r.raw_bytes
            else ""
        )
        status = {"success": "✅ ok", "failed": "❌ failed", "planned": "• planned"}[r.status]
        table.add_row(
            r.instance,
            r.database,
            status,
            size,
            "" if dry_run else human_seconds(r.duration_seconds),
            rate,
            r.record.file_info.name if r.record else "",
        )
    console.print(table)
    if not dry_run:
        ok = sum(1 for r in run.results if r.status == "success")
        console.print(f"{ok} succeeded, {len(run.failed)} failed. Run log: {run.run_log}")


def register(app: typer.Typer) -> None:
    app.command("backup")(handle_errors(backup))
    app.command("b", hidden=True)(handle_errors(backup))
