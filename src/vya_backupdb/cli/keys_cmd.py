"""``keys generate``, ``encrypt``, ``decrypt``: age keys and files, without a backup run.

The files are standard age files: ``age -d -i KEY`` decrypts what ``encrypt`` writes, and
``decrypt`` reads what ``age -r`` writes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

import typer

from vya_backupdb.cli.context import get_app, handle_errors
from vya_backupdb.errors import UsageError


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    """Yield the output stream; a file is written beside its target and renamed only on
    success, so a failed decryption leaves no partial plaintext behind."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _input(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdin.buffer
        return
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        yield handle


InOption = Annotated[Path | None, typer.Option("--in", "-i", help="Input file (default stdin)")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default stdout)")]


def register(app: typer.Typer) -> None:
    """Register ``keys`` and the ``encrypt`` / ``decrypt`` commands on ``app``."""
    keys = typer.Typer(help="age encryption keys (docs/encryption.md).", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("generate")
    @handle_errors
    def generate(
        ctx: typer.Context,
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="Write the identity here (0600)")
        ] = None,
    ) -> None:
        """Make a key pair: the identity (secret) goes to --output or stdout, the public key
        (the recipient to put in storage.encryption.recipients) to stderr."""
        from vya_backupdb.pipeline.encryption import (
            generate_identity,
            identity_file_text,
            write_identity_file,
        )

        state = get_app(ctx)
        secret, public = generate_identity()
        if output is not None:
            write_identity_file(output, secret, public)
            state.err.print(f"Public key: {public}", markup=False)
            state.err.print(
                f"Identity written to {output} (mode 0600). Keep a copy off this machine: "
                "without it, the backups encrypted to this key cannot be restored.",
                markup=False,
            )
        else:
            typer.echo(identity_file_text(secret, public), nl=False)
            state.err.print(f"Public key: {public}", markup=False)

    @app.command("encrypt")
    @handle_errors
    def encrypt(
        ctx: typer.Context,
        recipient: Annotated[
            list[str] | None,
            typer.Option("--recipient", "-r", help="age1… public key (repeatable)"),
        ] = None,
        input_: InOption = None,
        output: OutOption = None,
    ) -> None:
        """Encrypt a file (or stdin) to age recipients; default: storage.encryption's."""
        from vya_backupdb.pipeline.encryption import encrypting_writer, parse_recipient
        from vya_backupdb.pipeline.stream import pump

        if recipient:
            recipients = [parse_recipient(r) for r in recipient]
        else:
            config = get_app(ctx).settings.storage.encryption
            if config is None or not config.recipients:
                raise UsageError(
                    "no recipient: give --recipient age1… or set storage.encryption.recipients"
                )
            recipients = [parse_recipient(r) for r in config.recipients]
        with _input(input_) as source, _output(output) as sink:
            writer = encrypting_writer(sink, recipients)
            pump(source, writer)
            writer.close()

    @app.command("decrypt")
    @handle_errors
    def decrypt(
        ctx: typer.Context,
        identity: Annotated[
            list[Path] | None,
            typer.Option("--identity", help="age identity file (repeatable); default: config"),
        ] = None,
        input_: InOption = None,
        output: OutOption = None,
    ) -> None:
        """Decrypt an age file (or stdin); every chunk is authenticated before it is written."""
        from vya_backupdb.pipeline.encryption import Identity, decrypting_reader, load_identities
        from vya_backupdb.pipeline.stream import pump

        identities: list[Identity] = []
        if identity:
            for path in identity:
                identities += load_identities(path)
        else:
            from vya_backupdb.wiring import identities_for

            identities = identities_for(get_app(ctx).settings, None)
        with _input(input_) as source:
            reader = decrypting_reader(source, identities, str(input_ or "stdin"))
            with _output(output) as sink:
                pump(reader, sink)
