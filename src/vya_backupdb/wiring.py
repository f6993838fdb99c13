"""The composition root: turns validated settings into engines, storages and codecs.

Heavy or optional client libraries are imported lazily here, so `vya --help` stays fast and a
missing optional dependency only matters to the instance that needs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from vya_backupdb.catalog.catalog import Catalog
from vya_backupdb.config.models import CompressionConfig, InstanceConfig, Settings
from vya_backupdb.engines.process import find_tool, prefetch_tool_version
from vya_backupdb.errors import CredentialError, NotFoundError, ToolMissing, UsageError
from vya_backupdb.pipeline.codecs import Codec, codec_for
from vya_backupdb.secrets.sources import password_for
from vya_backupdb.storage.local import LocalStorage

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.config.remote import EncryptionConfig, RemoteConfig
    from vya_backupdb.engines.base import Engine
    from vya_backupdb.engines.pg_head import HeadStart
    from vya_backupdb.jobs.store import KeyProvider
    from vya_backupdb.pipeline.encryption import EncryptionPlan, Identity
    from vya_backupdb.storage.base import Storage


#: The tool that dumps each server type, preferred first, as the engines look it up
#: (engines/mysql.py DUMP_TOOLS; a test keeps them equal): known here so that its version can
#: be looked up before the engine and its driver are imported.
DUMP_TOOLS: dict[str, tuple[str, ...]] = {
    "postgresql": ("pg_dump",),
    "mariadb": ("mariadb-dump", "mysqldump"),
    "mysql": ("mysqldump", "mariadb-dump"),
}


def prefetch_dump_tool(instance: InstanceConfig) -> None:
    """Start ``--version`` of the tool that dumps ``instance`` on a daemon thread (the dump
    records it, and would otherwise wait ~10-30 ms for it); never raises: a missing tool is
    reported by the dump itself."""
    names = DUMP_TOOLS.get(instance.type)
    if names is not None:
        with contextlib.suppress(ToolMissing):
            prefetch_tool_version(find_tool(names, ""))


def make_engine(
    loaded: LoadedConfig, instance: InstanceConfig, head_start: HeadStart | None = None
) -> Engine:
    """Return the engine for a database instance; raise UsageError for files instances.
    ``head_start``: a dump started before the engine (engines/pg_head.py), for it to adopt."""
    if instance.type == "postgresql":
        from vya_backupdb.engines.postgresql import PostgresEngine

        # A head start's password is the instance's own, resolved once (HeadStart.matches).
        password = head_start.password if head_start is not None else password_for(loaded, instance)
        engine = PostgresEngine(instance, password)
        if head_start is not None:
            engine.adopt_head_start(head_start)
        return engine
    if instance.type in ("mysql", "mariadb"):
        from vya_backupdb.engines.mysql import MysqlEngine

        return MysqlEngine(instance, password_for(loaded, instance))
    if instance.type == "sqlite":
        from vya_backupdb.engines.sqlite import SqliteEngine

        return SqliteEngine(instance)
    raise UsageError(f"instance {instance.id!r} of type {instance.type} has no database engine")


def make_storage(settings: Settings, remote: str | None = None) -> Storage:
    """Return the primary storage, or the remote named ``remote``; raise NotFoundError.

    The primary is the local store, unless ``auto_upload`` with ``keep_local: false``
    sends backups straight to the first remote.
    """
    if remote is not None:
        return make_remote_storage(remote_config(settings, remote), settings=settings)
    storage = settings.storage
    if storage.auto_upload and not storage.keep_local and storage.remotes:
        return make_remote_storage(storage.remotes[0], settings=settings)
    return LocalStorage(storage.base_path)


def remote_config(settings: Settings, name: str) -> RemoteConfig:
    """Return the remote called ``name``; raise NotFoundError listing the configured ones."""
    for remote in settings.storage.remotes:
        if remote.name == name:
            return remote
    known = ", ".join(r.name for r in settings.storage.remotes) or "(none configured)"
    raise NotFoundError(
        f"unknown remote {name!r}",
        hint=f"Configured remotes: {known}. Add one under storage.remotes (docs/storage.md).",
    )


def make_remote_storage(
    remote: RemoteConfig,
    environ: Mapping[str, str] = os.environ,
    settings: Settings | None = None,
) -> Storage:
    """Return the storage of a remote, wrapped with retries of transient errors."""
    from vya_backupdb.storage.remote import open_remote

    return open_remote(remote, environ, settings)


def make_catalog(settings: Settings, storage: Storage | None = None) -> Catalog:
    return Catalog(storage or make_storage(settings), settings.hostname)


def compression_for(settings: Settings, instance: InstanceConfig) -> tuple[Codec, int, int]:
    config: CompressionConfig = instance.compression or settings.storage.compression
    return codec_for(config)


def _encryption_config(settings: Settings, instance: InstanceConfig) -> EncryptionConfig | None:
    return instance.encryption if instance.encryption is not None else settings.storage.encryption


def encryption_for(
    settings: Settings, instance: InstanceConfig, environ: Mapping[str, str] = os.environ
) -> EncryptionPlan | None:
    """Return how new backups of ``instance`` are encrypted (None: not encrypted).

    Raise CredentialError when a passphrase is configured but its variable is unset.
    """
    config = _encryption_config(settings, instance)
    if config is None or not config.encrypts:
        return None  # before the imports: the age code (cryptography) is not needed then
    from vya_backupdb.pipeline.encryption import (
        EncryptionPlan,
        PassphraseRecipient,
        Recipient,
        parse_recipient,
    )
    from vya_backupdb.secrets.redaction import register_secret

    recipients: list[Recipient] = [parse_recipient(r) for r in config.recipients]
    if not recipients and config.passphrase_env:
        passphrase = _env_secret(config.passphrase_env, "passphrase_env", environ)
        register_secret(passphrase)
        recipients = [PassphraseRecipient(passphrase)]
    return EncryptionPlan(tuple(recipients))


def keys_for(settings: Settings) -> KeyProvider:
    """Return the decryption keys of ``settings``, per instance id, read when first needed
    (a restore of an unencrypted backup never asks for them)."""
    return lambda instance_id: identities_for(settings, instance_id)


def identities_for(
    settings: Settings, instance_id: str | None, environ: Mapping[str, str] = os.environ
) -> list[Identity]:
    """Return the keys that may decrypt backups of ``instance_id``: its own encryption config
    and the global one (an instance may have been encrypted under either).

    Raise CredentialError when a configured source is unreadable or none is configured.
    """
    from vya_backupdb.pipeline.encryption import (
        PassphraseIdentity,
        load_identities,
        parse_identities,
    )
    from vya_backupdb.secrets.redaction import register_secret
    from vya_backupdb.secrets.store import open_store

    configs: list[EncryptionConfig] = []
    for inst in settings.instances:
        if inst.id == instance_id and inst.encryption is not None:
            configs.append(inst.encryption)
    if settings.storage.encryption is not None:
        configs.append(settings.storage.encryption)
    identities: list[Identity] = []
    for config in configs:
        if config.identity_file is not None:
            identities += load_identities(config.identity_file)
        if config.identity_env is not None:
            text = _env_secret(config.identity_env, "identity_env", environ)
            register_secret(text.strip())
            identities += parse_identities(text, f"${config.identity_env}")
        if config.identity_credential is not None:
            text = open_store(settings, None, environ).get(config.identity_credential) or ""
            if not text:
                raise CredentialError(
                    f"credential store entry {config.identity_credential!r} "
                    "(encryption.identity_credential) is empty or missing",
                    hint="Store the AGE-SECRET-KEY-1… line with: vya-backupdb credentials set "
                    f"{config.identity_credential}",
                )
            register_secret(text.strip())
            identities += parse_identities(text, f"credential {config.identity_credential!r}")
        if config.passphrase_env is not None and config.passphrase_env in environ:
            register_secret(environ[config.passphrase_env])
            identities.append(PassphraseIdentity(environ[config.passphrase_env]))
    if not identities:
        raise CredentialError(
            f"no decryption key is configured for instance {instance_id!r}",
            hint="Set storage.encryption.identity_file (or identity_env / identity_credential "
            "/ passphrase_env) to the key matching the backup's recipients.",
        )
    return identities


def _env_secret(var: str, field: str, environ: Mapping[str, str]) -> str:
    if not environ.get(var):
        raise CredentialError(
            f"encryption.{field} names {var}, which is not set",
            hint=f"Export it before running (export {var}=...).",
        )
    return environ[var]
