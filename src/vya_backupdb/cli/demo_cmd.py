"""`vya-backupdb demo`: the one-command tour (backup → list → restore → compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vya_backupdb.cli.context import get_app, handle_errors


def demo(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Where to put the demo")] = Path("demo"),
    no_servers: Annotated[
        bool, typer.Option("--no-servers", help="Only SQLite, even if servers are reachable")
    ] = False,
) -> None:
    """Create a demo database and config in ./demo, back up, list, restore and compare."""
    from vya_backupdb.jobs.demo import DemoStep, run_demo

    app = get_app(ctx)
    out = app.out

    def show(step: DemoStep) -> None:
        mark = "⏭️ " if step.name.startswith("skip") else "✅" if step.ok else "❌"
        out.print(f"{mark} {step.name}: {step.detail}", markup=False)

    report = run_demo(directory, servers=not no_servers, on_step=show)
    out.print("")
    out.print(f"Demo directory : {report.directory}", markup=False)
    out.print(f"Config         : {report.config}", markup=False)
    out.print(f"Backups        : {report.directory / 'backups'}", markup=False)
    out.print(f"List them      : vya-backupdb --config {report.config} list", markup=False)
    if not report.ok:
        out.print("❌ the demo found a problem (see above)")
        raise typer.Exit(1)
    out.print("✅ demo complete: every restored database matches its source")


def register(app: typer.Typer) -> None:
    app.command("demo")(handle_errors(demo))
