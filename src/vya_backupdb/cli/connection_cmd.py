"""``connection test``: log in to instances and explain what fails."""

from __future__ import annotations

from typing import Annotated

import typer

from vya_backupdb.cli.context import get_app, handle_errors
from vya_backupdb.errors import ConnectionFailed, CredentialError
from vya_backupdb.observability.logging import get_logger
from vya_backupdb.secrets.redaction import redact

log = get_logger("cli.connection")


def human_size(size: int | None) -> str:
    """Return ``size`` in bytes as a short human string (``?`` when unknown)."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def register(app: typer.Typer) -> None:
    """Register the ``connection`` commands on ``app``."""
    conn_app = typer.Typer(help="Test connections to database servers.", no_args_is_help=True)
    app.add_typer(conn_app, name="connection")

    @conn_app.command("test")
    @handle_errors
    def test(
        ctx: typer.Context,
        instance: Annotated[
            str | None, typer.Option("--instance", "-i", help="Only this instance (default: all)")
        ] = None,
    ) -> None:
        """Print server version, latency and databases, or a troubleshooting block.

        Exit 4 when a connection fails, 3 when a credential cannot be resolved.
        """
        from vya_backupdb.engines.connection import check_connection, list_databases_with_sizes
        from vya_backupdb.secrets.sources import resolve_password

        state = get_app(ctx)
        loaded = state.loaded()
        settings = loaded.settings
        targets = [settings.instance(instance)] if instance else list(settings.instances)
        out = state.out
        exit_code = 0
        tested = 0
        for inst in targets:
            if inst.type == "files":
                if instance:
                    out.print(f"ℹ️  {inst.id}: a files instance has no server", markup=False)
                continue
            tested += 1
            try:
                password = resolve_password(settings, inst, loaded.directory)
            except CredentialError as exc:
                out.print(f"❌ {inst.id}: {redact(exc.message)}", markup=False)
                out.print(f"    hint: {exc.hint}", markup=False)
                exit_code = max(exit_code, 3)
                continue
            report = check_connection(inst, password)
            log.info(
                "connection test of %s: %s",
                inst.id,
                "ok" if report.ok else report.problem,
                extra={
                    "instance": inst.id,
                    "operation": "connection-test",
                    "ok": report.ok,
                    "latency_ms": report.latency_ms,
                },
            )
            if not report.ok:
                out.print(f"❌ {inst.id}: {redact(report.message)}", markup=False)
                for line in report.troubleshooting():
                    out.print(f"    {redact(line)}", markup=False)
                exit_code = 4
                continue
            latency = f" ({report.latency_ms:.1f} ms)" if report.latency_ms is not None else ""
            out.print(f"✅ {inst.id}: {report.message}{latency}", markup=False)
            try:
                databases = list_databases_with_sizes(inst, password)
            except ConnectionFailed as exc:
                out.print(f"    ⚠️  {redact(exc.message)}", markup=False)
                continue
            listed = ", ".join(f"{name} ({human_size(size)})" for name, size in databases)
            out.print(f"    {len(databases)} database(s): {listed or '-'}", markup=False)
        if tested == 0 and not instance:
            out.print("no database instances configured", markup=False)
        if exit_code:
            raise typer.Exit(exit_code)
