"""`vya-backupdb users backup | list | restore | show-grants`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vya_backupdb.cli.context import get_app, handle_errors, render_error
from vya_backupdb.cli.render import human_bytes, plain_json
from vya_backupdb.errors import UsageError

users_app = typer.Typer(help="Back up, list and restore users/roles and their grants.")


@users_app.command("backup")
@handle_errors
def users_backup(
    ctx: typer.Context,
    instances: Annotated[list[str] | None, typer.Argument(help="Instances (default: all)")] = None,
) -> None:
    """Back up users, roles and grants of the given server instances."""
    from vya_backupdb.jobs.users import backup_users

    app = get_app(ctx)
    results = backup_users(app.loaded(), tuple(instances or ()))
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.record:
            users = r.record.stats.get("users", [])
            app.out.print(
                f"✅ {r.instance}: {len(users)} users → {r.record.file_info.name} "
                f"({human_bytes(r.size_bytes)})"
            )
    for r in failed:
        if r.error:
            render_error(r.error)
    if failed:
        raise typer.Exit(failed[0].error.exit_code if failed[0].error else 6)


@users_app.command("list")
@handle_errors
def users_list(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--file", "-f", help="A users_*.sql.* backup file")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the users contained in a users backup file."""
    from vya_backupdb.jobs.users import users_record

    record = users_record(get_app(ctx).loaded(), file)
    users = list(record.stats.get("users", []))
    builtin = set(record.extra.get("builtin_users", []))
    if json_out:
        typer.echo(plain_json([{"user": u, "builtin": u in builtin} for u in users]))
        return
    for user in users:
        typer.echo(f"{user}{'  (built-in)' if user in builtin else ''}")


@users_app.command("restore")
@handle_errors
def users_restore(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--file", "-f", help="A users_*.sql.* backup file")],
    all_: Annotated[bool, typer.Option("--all", help="Restore every user in the file")] = False,
    user: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="Restore this user (repeatable)")
    ] = None,
    exclude_user: Annotated[
        str, typer.Option("--exclude-user", help="Comma-separated users to skip")
    ] = "",
    target_instance: Annotated[
        str | None, typer.Option("--target-instance", help="Apply to another instance")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
) -> None:
    """Restore users (and their grants); built-in accounts on the target are left alone."""
    from vya_backupdb.jobs.users import restore_users

    if all_ == bool(user):
        raise UsageError("give either --all or one or more --user NAME")

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("refusing without confirmation", hint="Add --yes.")
        return typer.confirm(question, default=False)

    applied = restore_users(
        get_app(ctx).loaded(),
        file,
        "all" if all_ else list(user or []),
        [u.strip() for u in exclude_user.split(",") if u.strip()],
        target_instance,
        confirm,
    )
    typer.echo(f"✅ applied {len(applied)} users: {', '.join(applied)}")


@users_app.command("show-grants")
@handle_errors
def users_show_grants(
    ctx: typer.Context,
    instance: Annotated[str, typer.Argument(help="Instance")],
    database: Annotated[str | None, typer.Option("--database", "-d")] = None,
) -> None:
    """Show users and their grants on a live instance (optionally for one database)."""
    from vya_backupdb.wiring import make_engine

    loaded = get_app(ctx).loaded()
    engine = make_engine(loaded, loaded.settings.instance(instance))
    show = getattr(engine, "show_grants", None)
    if show is None:
        raise UsageError(f"instance {instance!r} has no grants to show")
    for line in show(database):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
