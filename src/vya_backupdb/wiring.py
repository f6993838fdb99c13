"""The composition root: turns validated settings into engines, storages and codecs.

Heavy or optional client libraries are imported lazily here, so `vya --help` stays fast and a
missing optional dependency only matters to the instance that needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vya_backupdb.catalog.catalog import Catalog
from vya_backupdb.config.models import CompressionConfig, InstanceConfig, Settings
from vya_backupdb.errors import UsageError
from vya_backupdb.pipeline.codecs import Codec, codec_for
from vya_backupdb.storage.local import LocalStorage

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.engines.base import Engine
    from vya_backupdb.storage.base import Storage


def password_for(loaded: LoadedConfig, instance: InstanceConfig) -> str | None:
    """Return the instance's password from its configured source (never logged)."""
    from vya_backupdb.secrets.redaction import register_secret
    from vya_backupdb.secrets.sources import resolve_password

    config_dir = loaded.path.parent if loaded.path is not None else None
    password = resolve_password(loaded.settings, instance, config_dir)
    if password:
        register_secret(password)
    return password


def make_engine(loaded: LoadedConfig, instance: InstanceConfig) -> Engine:
    """Return the engine for a database instance; raise UsageError for files instances."""
    if instance.type == "postgresql":
        from vya_backupdb.engines.postgresql import PostgresEngine

        return PostgresEngine(instance, password_for(loaded, instance))
    if instance.type in ("mysql", "mariadb"):
        from vya_backupdb.engines.mysql import MysqlEngine

        return MysqlEngine(instance, password_for(loaded, instance))
    if instance.type == "sqlite":
        from vya_backupdb.engines.sqlite import SqliteEngine

        return SqliteEngine(instance)
    raise UsageError(f"instance {instance.id!r} of type {instance.type} has no database engine")


def make_storage(settings: Settings) -> Storage:
    return LocalStorage(settings.storage.base_path)


def make_catalog(settings: Settings, storage: Storage | None = None) -> Catalog:
    return Catalog(storage or make_storage(settings), settings.hostname)


def compression_for(settings: Settings, instance: InstanceConfig) -> tuple[Codec, int, int]:
    config: CompressionConfig = instance.compression or settings.storage.compression
    return codec_for(config)
