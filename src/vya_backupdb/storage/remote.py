"""Remote storages: the factory from ``storage.remotes`` entries, and retries with backoff.

Backends raise :class:`TransientStorageError` for failures worth retrying (timeouts, dropped
connections, 5xx, throttling); :class:`RetryingStorage` retries the idempotent operations
(get, list, stat, exists, delete) with exponential backoff and jitter. A ``put`` cannot be
replayed as a whole (its source is a stream), so backends retry inside it, per buffered part.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TypeVar

from vya_backupdb.errors import CredentialError, StorageError

if TYPE_CHECKING:
    from vya_backupdb.config.models import Settings
    from vya_backupdb.config.remote import RemoteConfig
    from vya_backupdb.storage.base import ObjectInfo, ObjectReader, ObjectWriter, Storage

log = logging.getLogger("vya_backupdb.storage")

T = TypeVar("T")


class TransientStorageError(StorageError):
    """A remote failure that may succeed when tried again."""


def with_retries(
    operation: Callable[[], T],
    what: str,
    retries: int,
    *,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return ``operation()``, retrying TransientStorageError up to ``retries`` times with
    exponential backoff and full jitter; raise the last error when every attempt failed."""
    attempt = 0
    while True:
        try:
            return operation()
        except TransientStorageError as exc:
            if attempt >= retries:
                raise StorageError(
                    f"{what} failed after {attempt + 1} attempt(s): {exc.message}",
                    hint=exc.hint or "Check the network and the remote service, then retry.",
                ) from None
            delay = random.uniform(0, min(max_delay, base_delay * 2**attempt))  # noqa: S311
            log.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                what,
                exc.message,
                attempt + 1,
                retries,
                delay,
            )
            sleep(delay)
            attempt += 1


class RetryingStorage:
    """Wrap a storage so its idempotent operations survive transient failures."""

    def __init__(self, inner: Storage, retries: int, base_delay: float = 0.5):
        self.inner = inner
        self.retries = retries
        self.base_delay = base_delay
        self.description = inner.description

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        return with_retries(operation, what, self.retries, base_delay=self.base_delay)

    def put(self, name: str) -> AbstractContextManager[ObjectWriter]:
        return self.inner.put(name)

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[ObjectReader]:
        # Opening is retried; a backend's reader resumes a broken download by itself.
        cm = self._retry(lambda: _entered(self.inner.get(name)), f"opening {name}")
        reader, manager = cm
        try:
            yield reader
        except BaseException as exc:
            if not manager.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            manager.__exit__(None, None, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Listing is materialised page by page inside the backend; retry the whole listing
        # only when it fails before yielding anything (never yield an object twice).
        yielded = False
        attempt = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    yielded = True
                    yield info
                return
            except TransientStorageError as exc:
                if yielded or attempt >= self.retries:
                    raise StorageError(f"listing {prefix or '/'} failed: {exc.message}") from None
                attempt += 1
                time.sleep(random.uniform(0, self.base_delay * 2**attempt))  # noqa: S311

    def stat(self, name: str) -> ObjectInfo:
        return self._retry(lambda: self.inner.stat(name), f"stat of {name}")

    def exists(self, name: str) -> bool:
        return self._retry(lambda: self.inner.exists(name), f"existence check of {name}")

    def delete(self, name: str) -> None:
        self._retry(lambda: self.inner.delete(name), f"deleting {name}")

    def local_path(self, name: str) -> str | None:
        return None

    def __getattr__(self, attribute: str) -> object:
        # Optional capabilities of the backend (read_range, close) pass through.
        return getattr(self.inner, attribute)


def _entered(manager: AbstractContextManager[T]) -> tuple[T, AbstractContextManager[T]]:
    return manager.__enter__(), manager


def env_or_credential(
    var: str | None,
    credential: str | None,
    what: str,
    environ: Mapping[str, str],
    settings: Settings | None = None,
) -> str | None:
    """Return a secret from an environment variable or the credential store (None when
    neither is configured); raise CredentialError when a configured source is empty."""
    from vya_backupdb.secrets.redaction import register_secret

    value: str | None = None
    if var is not None:
        value = environ.get(var)
        if not value:
            raise CredentialError(
                f"{what}: variable {var} is not set",
                hint=f"Export it before running (export {var}=...).",
            )
    elif credential is not None:
        from vya_backupdb.config.models import Settings
        from vya_backupdb.secrets.store import open_store

        value = open_store(settings or Settings(), None, environ).get(credential)
        if not value:
            raise CredentialError(
                f"{what}: credential store entry {credential!r} is missing",
                hint=f"Store it with: vya-backupdb credentials set {credential}",
            )
    register_secret(value)
    return value


def open_remote(
    remote: RemoteConfig,
    environ: Mapping[str, str] = os.environ,
    settings: Settings | None = None,
) -> Storage:
    """Return the storage of ``remote`` wrapped with retries; raise CredentialError when its
    credentials cannot be read, ToolMissing when its client library is not installed."""
    inner: Storage
    if remote.scheme == "s3":
        from vya_backupdb.storage.s3 import S3Storage

        inner = S3Storage.from_config(remote, environ, settings)
    elif remote.scheme == "azure":
        from vya_backupdb.storage.azure import AzureStorage

        inner = AzureStorage.from_config(remote, environ, settings)
    elif remote.scheme == "gs":
        from vya_backupdb.storage.gcs import GcsStorage

        inner = GcsStorage.from_config(remote, environ, settings)
    else:
        from vya_backupdb.storage.sftp import SftpStorage

        inner = SftpStorage.from_config(remote, environ, settings)
    return RetryingStorage(inner, remote.retries)
