"""``remote list | upload | download | test``: off-site copies of the backups."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vya_backupdb.cli.context import get_app, handle_errors
from vya_backupdb.cli.render import human_bytes, human_seconds, plain_json
from vya_backupdb.errors import StorageError, UsageError

RemoteArg = Annotated[str, typer.Argument(help="Remote name (storage.remotes[].name)")]
BackupsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Backups to copy: record ids, file names or instance ids"),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every backup")]
ForceOption = Annotated[bool, typer.Option("--force", help="Copy even when already there")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON")]
NoProgressOption = Annotated[
    bool, typer.Option("--no-progress", help="No progress bars: periodic log lines instead")
]
IntervalOption = Annotated[
    float,
    typer.Option(
        "--progress-interval", min=0, help="Seconds between progress log lines (no terminal)"
    ),
]


def _transfer(
    ctx: typer.Context,
    verb: str,
    name: str,
    names: list[str],
    force: bool,
    json_out: bool,
    no_progress: bool,
    interval: float,
) -> None:
    """Run ``remote upload|download`` with progress, then print the result."""
    from vya_backupdb.cli.progress import display_for, showing
    from vya_backupdb.jobs import remote as jobs

    app = get_app(ctx)
    run = jobs.upload if verb == "upload" else jobs.download
    display = display_for(app, enabled=not no_progress, interval=interval)
    with showing(display):
        result = run(
            app.loaded(), name, names, force=force, progress=display.transfer_factory(verb)
        )
    _render_transfer(ctx, f"{verb}ed", result, json_out)


def _render_transfer(ctx: typer.Context, verb: str, result: object, json_out: bool) -> None:
    from vya_backupdb.jobs.remote import TransferResult

    assert isinstance(result, TransferResult)
    if json_out:
        typer.echo(plain_json(result.as_dict()))
    else:
        out = get_app(ctx).out
        for record_id in result.copied:
            out.print(f"✅ {verb} {record_id}", markup=False)
        for record_id, message in result.failed.items():
            out.print(f"❌ {record_id}: {message}", markup=False)
        out.print(
            f"{len(result.copied)} {verb}, {len(result.skipped)} already there, "
            f"{len(result.failed)} failed; {human_bytes(result.bytes)} in "
            f"{human_seconds(result.seconds)}",
            markup=False,
        )
    if not result.ok:
        raise StorageError(f"{len(result.failed)} backup(s) could not be {verb}")


def _names(backups: list[str] | None, all_: bool) -> list[str]:
    if not backups and not all_:
        raise UsageError("say what to copy: --all, or one or more backup ids / files / instances")
    return list(backups or [])


def register(app: typer.Typer) -> None:
    """Register the ``remote`` commands on ``app``."""
    remote = typer.Typer(
        help="Off-site storage (S3, SFTP, Azure Blob, GCS): docs/storage.md.", no_args_is_help=True
    )
    app.add_typer(remote, name="remote")

    @remote.command("list")
    @handle_errors
    def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
        """List the configured remotes."""
        settings = get_app(ctx).settings
        rows = [
            {
                "name": r.name,
                "url": r.url,
                "endpoint_url": r.endpoint_url,
                "region": r.region,
                "path_style": r.path_style,
            }
            for r in settings.storage.remotes
        ]
        if json_out:
            typer.echo(
                plain_json(
                    {
                        "auto_upload": settings.storage.auto_upload,
                        "keep_local": settings.storage.keep_local,
                        "remotes": rows,
                    }
                )
            )
            return
        table = Table(title="Remotes")
        for column in ("name", "url", "endpoint"):
            table.add_column(column)
        for row in rows:
            table.add_row(str(row["name"]), str(row["url"]), str(row["endpoint_url"] or ""))
        out = get_app(ctx).out
        out.print(table)
        out.print(
            f"auto_upload: {settings.storage.auto_upload}, keep_local: "
            f"{settings.storage.keep_local}",
            markup=False,
        )

    @remote.command("upload")
    @handle_errors
    def upload(
        ctx: typer.Context,
        name: RemoteArg,
        backups: BackupsArg = None,
        all_: AllOption = False,
        force: ForceOption = False,
        json_out: JsonOption = False,
        no_progress: NoProgressOption = False,
        progress_interval: IntervalOption = 10.0,
    ) -> None:
        """Copy local backups to the remote NAME (data, sidecar, then the record)."""
        _transfer(ctx, "upload", name, _names(backups, all_), force, json_out,
                  no_progress, progress_interval)  # fmt: skip

    @remote.command("download")
    @handle_errors
    def download(
        ctx: typer.Context,
        name: RemoteArg,
        backups: BackupsArg = None,
        all_: AllOption = False,
        force: ForceOption = False,
        json_out: JsonOption = False,
        no_progress: NoProgressOption = False,
        progress_interval: IntervalOption = 10.0,
    ) -> None:
        """Copy backups from the remote NAME into the local store."""
        _transfer(ctx, "download", name, _names(backups, all_), force, json_out,
                  no_progress, progress_interval)  # fmt: skip

    @remote.command("test")
    @handle_errors
    def test(ctx: typer.Context, name: RemoteArg, json_out: JsonOption = False) -> None:
        """Check the remote NAME: write, read back, list, range read, interrupted write,
        multipart, delete. A line per check; exit 9 when one fails."""
        from vya_backupdb.jobs.remote import check_remote

        checks = check_remote(get_app(ctx).loaded(), name)
        if json_out:
            typer.echo(plain_json([c.__dict__ for c in checks]))
        else:
            marks = {"ok": "✅", "failed": "❌", "unsupported": "➖"}
            out = get_app(ctx).out
            for c in checks:
                out.print(f"{marks[c.outcome]} {c.name:<34} {c.detail}", markup=False)
        failed = [c.name for c in checks if c.outcome == "failed"]
        if failed:
            raise StorageError(
                f"remote {name}: {len(failed)} check(s) failed: {', '.join(failed)}",
                hint="See the lines above; check the endpoint, bucket/path and permissions.",
            )
