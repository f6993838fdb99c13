"""`vya-backupdb restore` (alias `r`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vya_backupdb.cli.context import get_app, handle_errors
from vya_backupdb.cli.render import human_bytes, human_seconds, plain_json
from vya_backupdb.errors import UsageError


def restore(
    ctx: typer.Context,
    instance: Annotated[str | None, typer.Argument(help="Instance the backup belongs to")] = None,
    database: Annotated[str | None, typer.Option("--database", "-d", help="Database")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest good backup")] = False,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="A backup file")] = None,
    at: Annotated[
        str | None, typer.Option("--at", help='Newest backup at or before "YYYY-MM-DD HH:MM"')
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Restore under this name (or directory)")
    ] = None,
    target_instance: Annotated[
        str | None, typer.Option("--target-instance", help="Restore onto another instance")
    ] = None,
    tables: Annotated[
        str | None, typer.Option("--tables", help="Only these tables: a,b (PostgreSQL)")
    ] = None,
    recreate: Annotated[
        bool, typer.Option("--recreate", help="Drop and recreate an existing target")
    ] = False,
    owner: Annotated[str | None, typer.Option("--owner", help="Owner of restored objects")] = None,
    mode: Annotated[str, typer.Option("--mode", help="safe | fast | test")] = "safe",
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Parallel restore jobs")] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="files: only paths matching")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="files: replace files")] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="files: keep existing files")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="files: only list")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List restore points")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
    remote: Annotated[
        str | None, typer.Option("--remote", help="Restore from this remote (storage.remotes)")
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bar: periodic log lines instead")
    ] = False,
    progress_interval: Annotated[
        float,
        typer.Option(
            "--progress-interval", min=0, help="Seconds between progress log lines (no terminal)"
        ),
    ] = 10.0,
) -> None:
    """Restore a backup: verified first, then safe (swap on success), fast or test mode."""
    from vya_backupdb.jobs.restore import RestoreJob, RestoreRequest, list_restore_points, parse_at

    app = get_app(ctx)
    loaded = app.loaded()
    if list_:
        records = list_restore_points(loaded, instance, database)
        if json_out:
            typer.echo(plain_json([r.model_dump(mode="json") for r in records]))
            return
        from rich.table import Table

        table = Table(title="Restore points")
        for column in ("instance", "database", "started (UTC)", "size", "file"):
            table.add_column(column)
        for r in records:
            table.add_row(
                r.backup_info.instance,
                r.backup_info.database,
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                human_bytes(r.file_info.size),
                r.file_info.name,
            )
        app.out.print(table)
        return
    if mode not in ("safe", "fast", "test"):
        raise UsageError(f"unknown --mode {mode!r}", hint="Use safe, fast or test.")
    chosen = sum(bool(x) for x in (latest, file, at))
    if chosen != 1:
        raise UsageError("say which backup with exactly one of --latest, --at or --file")
    request = RestoreRequest(
        instance=instance,
        database=database,
        latest=latest,
        file=file,
        at=parse_at(at) if at else None,
        target=target,
        target_instance=target_instance,
        tables=tuple(t.strip() for t in tables.split(",") if t.strip()) if tables else (),
        recreate=recreate,
        owner=owner,
        mode=mode,  # type: ignore[arg-type]
        jobs=jobs,
    )
    from vya_backupdb.wiring import make_storage

    job = RestoreJob(loaded, storage=make_storage(loaded.settings, remote) if remote else None)
    record = job.find_record(request)
    if record.kind == "files":
        from vya_backupdb.jobs.files import FilesRestoreRequest, restore_files

        if overwrite and skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        files_result = restore_files(
            job,
            record,
            FilesRestoreRequest(
                target=Path(target) if target else None,
                include=tuple(include or ()),
                existing="overwrite" if overwrite else "skip" if skip_existing else "error",
                dry_run=dry_run,
            ),
        )
        if json_out:
            typer.echo(plain_json(files_result))
        else:
            for line in files_result.get("listing", []):
                app.out.print(line, markup=False)
            app.out.print(
                f"{'Would restore' if dry_run else 'Restored'} {files_result['entries']} entries "
                f"from {record.id} into {files_result['target']}"
            )
        return

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(
                question.replace("?", ": refusing without confirmation."),
                hint="Add --yes to confirm non-interactively, or --target NEWNAME.",
            )
        return typer.confirm(question, default=False)

    from vya_backupdb.cli.progress import display_for, showing

    display = display_for(app, enabled=not no_progress, interval=progress_interval)
    job.progress = display.restore_callback(record)
    with showing(display):
        result = job.run(request, confirm)
    if json_out:
        typer.echo(plain_json(result.as_dict()))
        return
    app.out.print(
        f"✅ restored {result.record.id} into {result.target_instance}/{result.target_database} "
        f"({result.mode} mode) in {human_seconds(result.duration_seconds)}"
    )
    if result.safety_backup:
        app.out.print(f"   safety backup of the previous database: {result.safety_backup}")
    check = result.row_check
    if check.get("ok"):
        app.out.print(f"   row counts match the backup for all {check['tables']} tables")
    else:
        app.out.print(f"   ⚠️ row counts differ: {check.get('mismatched')}")


def register(app: typer.Typer) -> None:
    app.command("restore")(handle_errors(restore))
    app.command("r", hidden=True)(handle_errors(restore))
