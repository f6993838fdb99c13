"""Where an instance's password comes from, in one function the rest of the code calls.

Sources, of which the config allows at most one explicitly: ``password`` (an ``enc:`` value),
``password_env``, ``password_file``, ``password_command``; without any of them, the credential
store entry named ``instance.credential_name``. Every resolved password is registered with the
log redaction so it can never be printed afterwards.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vya_backupdb.config.models import InstanceConfig, Settings
from vya_backupdb.engines.process import Command, run
from vya_backupdb.errors import CredentialError, ToolMissing
from vya_backupdb.secrets.files import read_password_file
from vya_backupdb.secrets.redaction import register_secret
from vya_backupdb.secrets.store import decrypt_value, load_master_key, open_store

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig

log = logging.getLogger("vya_backupdb.secrets")

PASSWORD_COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class ResolvedPassword:
    """A password and a description of its source (safe to display)."""

    value: str | None
    source: str


def describe_source(instance: InstanceConfig) -> str:
    """Return where the password of ``instance`` is configured to come from."""
    if instance.password is not None:
        return "password (enc: value in the config)"
    if instance.password_env is not None:
        return f"environment variable {instance.password_env}"
    if instance.password_file is not None:
        return f"file {instance.password_file}"
    if instance.password_command is not None:
        return "password_command"
    return f"credential store entry {instance.credential_name!r}"


def password_for(loaded: LoadedConfig, instance: InstanceConfig) -> str | None:
    """Return the instance's password from its configured source (never logged), as
    :func:`resolve_password` with the config's own directory for relative files."""
    config_dir = loaded.path.parent if loaded.path is not None else None
    password = resolve_password(loaded.settings, instance, config_dir)
    if password:
        register_secret(password)
    return password


def resolve_password(
    settings: Settings,
    instance: InstanceConfig,
    config_dir: Path | None,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """Return the password of ``instance``, or None when nothing is configured or stored.

    Raise CredentialError (naming the instance and the source) when a configured source
    fails: unset variable, unreadable file, failing command, undecryptable value or store.
    """
    return resolve_password_with_source(settings, instance, config_dir, environ).value


def resolve_password_with_source(
    settings: Settings,
    instance: InstanceConfig,
    config_dir: Path | None,
    environ: Mapping[str, str] = os.environ,
) -> ResolvedPassword:
    """Return the password and its source; raise CredentialError like :func:`resolve_password`."""
    source = describe_source(instance)
    value: str | None
    if instance.password is not None:
        key = load_master_key(settings, environ)
        if key is None:
            raise CredentialError(
                f"instance {instance.id!r}: its password is encrypted but there is no master key",
                hint="Restore the master key file (secrets.master_key_file) or set "
                "$VYA_BACKUPDB_MASTER_KEY to the key used by 'credentials encrypt'.",
            )
        value = decrypt_value(
            key, instance.password.get_secret_value(), f"the password of instance {instance.id!r}"
        )
    elif instance.password_env is not None:
        value = _from_env(instance, instance.password_env, environ)
    elif instance.password_file is not None:
        value = _from_file(instance, instance.password_file, config_dir)
    elif instance.password_command is not None:
        value = _from_command(instance, instance.password_command)
    else:
        store = open_store(settings, config_dir, environ)
        try:
            value = store.get(instance.credential_name)
        except CredentialError as exc:
            raise CredentialError(
                f"instance {instance.id!r}: {exc.message}", hint=exc.hint
            ) from None
    register_secret(value)
    return ResolvedPassword(value=value, source=source)


def _from_env(instance: InstanceConfig, var: str, environ: Mapping[str, str]) -> str:
    if var not in environ:
        raise CredentialError(
            f"instance {instance.id!r}: password_env names {var}, which is not set",
            hint=f"Export it before running (export {var}=...), or use another source such as "
            f"'vya-backupdb credentials set {instance.id}'.",
        )
    return environ[var]


def _from_file(instance: InstanceConfig, path: Path, config_dir: Path | None) -> str:
    path = path.expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    try:
        first, mode = read_password_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CredentialError(
            f"instance {instance.id!r}: cannot read password_file {path}: {reason}",
            hint=f"Check that the file exists and is readable: ls -l {path}",
        ) from None
    if mode & 0o077:
        log.warning(
            "password_file %s of instance %s has mode %04o; other users may read it "
            "(fix: chmod 600 %s)",
            path,
            instance.id,
            mode,
            path,
            extra={"instance": instance.id},
        )
    return first


def _from_command(instance: InstanceConfig, command_line: str) -> str:
    try:
        argv = shlex.split(command_line)
    except ValueError as exc:
        raise CredentialError(
            f"instance {instance.id!r}: password_command cannot be parsed: {exc}",
            hint="Quote it like a shell command line (no pipes or redirections: no shell runs).",
        ) from None
    if not argv:
        raise CredentialError(f"instance {instance.id!r}: password_command is empty")
    try:
        output = run(Command(argv), CredentialError, timeout=PASSWORD_COMMAND_TIMEOUT)
    except (CredentialError, ToolMissing) as exc:
        raise CredentialError(
            f"instance {instance.id!r}: password_command failed: {exc.message}",
            details=exc.details,
            hint="Run the command by hand to see why; it must print the password on its "
            "first line and exit 0.",
        ) from None
    lines = output.splitlines()
    if not lines or not lines[0]:
        raise CredentialError(
            f"instance {instance.id!r}: password_command printed nothing on its first line",
            hint="It must print the password on the first line of its standard output.",
        )
    return lines[0]
