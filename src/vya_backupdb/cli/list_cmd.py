"""`vya-backupdb list` (alias `ls`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.cli.context import get_app, handle_errors
from vya_backupdb.cli.render import human_bytes, human_seconds, plain_json

#: Version of the `list --json` format (docs/on-disk-format.md#list-json).
LIST_JSON_VERSION = 1


def list_entry(record: BackupRecord, checksum_state: str) -> dict[str, Any]:
    """Return one backup as the documented, stable `list --json` entry."""
    info, file = record.backup_info, record.file_info
    return {
        "id": record.id,
        "kind": record.kind,
        "instance": info.instance,
        "database": info.database,
        "strategy": info.strategy,
        "started_at": info.started_at.isoformat(),
        "duration_seconds": info.duration_seconds,
        "status": info.status,
        "file": file.name,
        "size_bytes": file.size,
        "raw_bytes": file.raw_size,
        "compression": file.compression,
        "encryption": file.encryption,
        "sha256": file.sha256,
        "checksum": checksum_state,
        "verified_at": record.verification.verified_at.isoformat() if record.verification else None,
        "verification": record.verification.outcome if record.verification else None,
    }


def list_backups(
    ctx: typer.Context,
    instance: Annotated[str | None, typer.Argument(help="Only this instance")] = None,
    database: Annotated[str | None, typer.Option("--database", "-d", help="Only this db")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Stable JSON output")] = False,
    remote: Annotated[
        str | None, typer.Option("--remote", help="List the backups on this remote")
    ] = None,
) -> None:
    """List backups: date, size, compression, duration, status, checksum state."""
    from vya_backupdb.catalog import layout
    from vya_backupdb.wiring import make_catalog, make_storage

    app = get_app(ctx)
    settings = app.settings
    if instance:
        settings.instance(instance)
    catalog = make_catalog(settings, make_storage(settings, remote))
    damaged: list[str] = []
    records = catalog.records(instance, database, include_damaged=damaged)
    entries = []
    for record in records:
        sidecar = catalog.storage.exists(record.file_info.name + layout.SHA256_SUFFIX)
        present = catalog.storage.exists(record.file_info.name)
        state = "missing-object" if not present else "sidecar" if sidecar else "no-sidecar"
        entries.append(list_entry(record, state))
    if json_out:
        typer.echo(
            plain_json({"version": LIST_JSON_VERSION, "backups": entries, "damaged": damaged})
        )
        return
    table = Table(title=f"Backups in {catalog.storage.description}")
    for column in (
        "instance",
        "database",
        "date (UTC)",
        "type",
        "size",
        "compr.",
        "duration",
        "status",
        "checksum",
        "verified",
    ):
        table.add_column(column)
    for e, r in zip(entries, records, strict=True):
        table.add_row(
            e["instance"],
            e["database"],
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            f"{r.kind}/{e['strategy']}",
            human_bytes(e["size_bytes"]),
            e["compression"],
            human_seconds(e["duration_seconds"]),
            "✅" if e["status"] == "success" else "❌ " + e["status"],
            e["checksum"],
            (e["verification"] or "") + (f" {e['verified_at'][:10]}" if e["verified_at"] else ""),
        )
    app.out.print(table)
    for name in damaged:
        app.out.print(f"⚠️ damaged metadata: {name}", markup=False)
    if not entries:
        app.out.print("No backups yet. Run: vya-backupdb backup --all")


def register(app: typer.Typer) -> None:
    app.command("list")(handle_errors(list_backups))
    app.command("ls", hidden=True)(handle_errors(list_backups))
