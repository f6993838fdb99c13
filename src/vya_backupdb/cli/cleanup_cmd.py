"""`vya-backupdb cleanup`: apply the retention policy (decide, print the reasons, delete)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from vya_backupdb.cli.context import get_app, handle_errors, render_error
from vya_backupdb.cli.render import human_bytes, plain_json
from vya_backupdb.errors import StorageError

if TYPE_CHECKING:
    from rich.console import Console

    from vya_backupdb.jobs.cleanup import CleanupResult

#: Version of the `cleanup --json` format.
CLEANUP_JSON_VERSION = 1


def cleanup(
    ctx: typer.Context,
    instance: Annotated[
        str | None, typer.Argument(help="Only this instance (default: every instance)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be kept and deleted; delete nothing")
    ] = False,
    remote: Annotated[
        str | None,
        typer.Option("--remote", help="Clean this remote (with its own retention, if set)"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the decisions as JSON")] = False,
) -> None:
    """Delete old backups according to the retention policy, with the reason for each.

    Every backup is listed with keep/delete and the rules that decided it, then the space freed.
    A backup is deleted together with its sidecar and manifest, its metadata first.
    Exit status: 0, or 9 when some backup could not be deleted.
    """
    from vya_backupdb.jobs.cleanup import CleanupJob

    app = get_app(ctx)
    loaded = app.loaded()
    if remote is not None:
        from vya_backupdb.wiring import make_storage, remote_config

        job = CleanupJob(
            loaded,
            make_storage(loaded.settings, remote),
            remote_retention=remote_config(loaded.settings, remote).retention,
        )
    else:
        job = CleanupJob(loaded)
    result = job.run(instance, dry_run=dry_run)
    if json_out:
        payload = {"version": CLEANUP_JSON_VERSION, "dry_run": dry_run, **result.as_dict()}
        typer.echo(plain_json(payload))
    else:
        _render(app.out, result, dry_run)
        for _entry, error in result.errors:
            render_error(error)
    if result.errors:
        raise typer.Exit(StorageError.exit_code)


def _render(console: Console, result: CleanupResult, dry_run: bool) -> None:
    plan = result.plan
    title = "Cleanup plan (dry run: nothing deleted)" if dry_run else "Cleanup"
    table = Table(title=title)
    for column in ("instance", "database", "date (UTC)", "type", "size", "action", "reasons"):
        table.add_column(column)
    for entry in plan.entries:
        info = entry.record.backup_info
        table.add_row(
            info.instance,
            info.database,
            f"{info.started_at:%Y-%m-%d %H:%M:%S}",
            f"{entry.record.kind}/{info.strategy}",
            human_bytes(entry.decision.candidate.size_bytes),
            "keep" if entry.keep else ("would delete" if dry_run else "delete"),
            "; ".join(entry.decision.reasons),
        )
    console.print(table)
    for name in plan.damaged:
        console.print(f"⚠️ damaged metadata (left alone): {name}", markup=False)
    summary = plan.summary()
    if dry_run:
        console.print(
            f"{summary['kept']} kept, {summary['deleted']} would be deleted, "
            f"{human_bytes(summary['freed_bytes'])} would be freed."
        )
    else:
        console.print(
            f"{summary['kept']} kept, {len(result.deleted)} deleted, "
            f"{human_bytes(result.freed_bytes)} freed."
        )


def register(app: typer.Typer) -> None:
    app.command("cleanup")(handle_errors(cleanup))
