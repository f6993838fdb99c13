"""``credentials set | list | remove | encrypt``: the encrypted credential store."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vya_backupdb.cli.context import AppContext, get_app, handle_errors
from vya_backupdb.config.models import Settings
from vya_backupdb.errors import NotFoundError, UsageError

StdinOption = Annotated[
    bool, typer.Option("--stdin", help="Read the secret from the first line of standard input")
]


def read_secret(prompt: str, from_stdin: bool) -> str:
    """Return a secret typed twice without echo, or read from stdin; raise UsageError if empty."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    if not value:
        raise UsageError("the secret is empty", hint="Type it at the prompt or pipe it to --stdin.")
    return value


def credential_name_for(settings: Settings, name: str) -> str:
    """Return the store entry for ``name`` (an instance id or a ``credential:`` name).

    Raise NotFoundError when no instance uses that name.
    """
    for inst in settings.instances:
        if inst.id == name:
            return inst.credential_name
    if any(inst.credential_name == name for inst in settings.instances):
        return name
    known = ", ".join(i.id for i in settings.instances) or "(none configured)"
    raise NotFoundError(
        f"no instance is named {name!r} and none uses a credential of that name",
        hint=f"Configured instances: {known}.",
    )


def _store(state: AppContext, *, create_key: bool):  # type: ignore[no-untyped-def]
    from vya_backupdb.secrets.store import open_store

    loaded = state.loaded()
    return open_store(loaded.settings, loaded.directory, create_key=create_key)


def register(app: typer.Typer) -> None:
    """Register the ``credentials`` commands on ``app``."""
    creds = typer.Typer(help="Manage the encrypted credential store.", no_args_is_help=True)
    app.add_typer(creds, name="credentials")

    @creds.command("set")
    @handle_errors
    def set_(
        ctx: typer.Context,
        instance: Annotated[str, typer.Argument(help="Instance id (or credential name)")],
        stdin: StdinOption = False,
    ) -> None:
        """Store the password of INSTANCE (prompted twice without echo, or --stdin)."""
        state = get_app(ctx)
        settings = state.settings
        name = credential_name_for(settings, instance)
        secret = read_secret(f"Password for {instance}", stdin)
        store = _store(state, create_key=True)
        store.set(name, secret)
        typer.echo(f"stored credential {name!r} in {store.path}")
        for inst in settings.instances:
            if inst.credential_name == name and (
                inst.password or inst.password_env or inst.password_file or inst.password_command
            ):
                state.err.print(
                    f"warning: instance {inst.id!r} has another password source configured; "
                    "the stored credential is not used for it",
                    markup=False,
                )

    @creds.command("list")
    @handle_errors
    def list_(ctx: typer.Context) -> None:
        """List the stored credential names (never the secrets)."""
        state = get_app(ctx)
        store = _store(state, create_key=False)
        names = store.names()
        if not names:
            typer.echo(f"no credentials stored in {store.path}")
            return
        users: dict[str, list[str]] = {}
        for inst in state.settings.instances:
            users.setdefault(inst.credential_name, []).append(inst.id)
        for name in names:
            used = ", ".join(users.get(name, [])) or "no instance"
            typer.echo(f"{name}  (used by: {used})")

    @creds.command("remove")
    @handle_errors
    def remove(
        ctx: typer.Context,
        instance: Annotated[str, typer.Argument(help="Instance id (or credential name)")],
    ) -> None:
        """Delete the stored credential of INSTANCE."""
        state = get_app(ctx)
        store = _store(state, create_key=False)
        names = {instance}
        for inst in state.settings.instances:
            if inst.id == instance:
                names = {inst.credential_name}
        name = names.pop()
        if not store.remove(name):
            raise NotFoundError(
                f"no credential {name!r} is stored in {store.path}",
                hint="See what is stored with: vya-backupdb credentials list",
            )
        typer.echo(f"removed credential {name!r}")

    @creds.command("encrypt")
    @handle_errors
    def encrypt(ctx: typer.Context, stdin: StdinOption = False) -> None:
        """Print an enc:... ciphertext of a password, usable as 'password:' in the config."""
        from vya_backupdb.secrets.store import encrypt_value, load_master_key

        state = get_app(ctx)
        secret = read_secret("Password to encrypt", stdin)
        key = load_master_key(state.settings, create=True)
        assert key is not None  # create=True always returns a key or raises
        typer.echo(encrypt_value(key, secret))
