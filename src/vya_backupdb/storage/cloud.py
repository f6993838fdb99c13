"""Pieces shared by the remote storages.

:func:`object_parts` checks an object name (every remote backend, SFTP included).
:class:`RemoteStorageBase` gives ``exists`` (through ``stat``) and ``local_path``.
:class:`PrefixedObjectStore` is the common part of the object stores (S3, Azure Blob, Google
Cloud Storage): names map to keys below a prefix, SDK calls are translated (each backend keeps
its own translation) and optionally retried, and ``put`` commits its writer on a clean exit of
the ``with`` block and aborts it otherwise.

:class:`RangedReader` streams an object as a series of ranged reads of one chunk each, pinned
to the version that was opened: memory stays at one chunk, a dropped connection costs one
chunk (retried from the offset reached), and an object replaced while it is read fails
instead of yielding a mix of two versions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from vya_backupdb.errors import NotFoundError, StorageError
from vya_backupdb.storage.base import ObjectInfo
from vya_backupdb.storage.remote import TransientStorageError, with_retries

_QUERY = re.compile(r"\?[^\s'\"<>)]*")
T = TypeVar("T")


def brief_message(exc: BaseException, limit: int = 300) -> str:
    """Return the first line of ``exc``'s message, without URL query strings (a SAS token
    travels in the query) and cut to ``limit`` characters."""
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
    text = str(getattr(exc, "message", None) or first or exc or type(exc).__name__)
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    line = _QUERY.sub("?…", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def object_parts(name: str) -> list[str]:
    """Return the non-empty '/'-separated parts of ``name``; raise StorageError when there are
    none or one of them is '.' or '..'."""
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise StorageError(f"invalid object name {name!r}")
    return parts


class RemoteStorageBase:
    """``exists`` and ``local_path`` of a remote storage, which provides ``stat``."""

    def stat(self, name: str) -> ObjectInfo:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        try:
            self.stat(name)
        except NotFoundError:
            return False
        return True

    def local_path(self, name: str) -> str | None:
        return None


class PartWriter(Protocol):
    """A writer that buffers parts and makes the object visible only on ``commit``."""

    def write(self, data: bytes, /) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


W = TypeVar("W", bound=PartWriter)


class PrefixedObjectStore(RemoteStorageBase, Generic[W]):
    """Objects whose keys sit below ``prefix`` in a bucket or container.

    A backend sets ``prefix`` and ``retries``, names itself in ``service`` (for retry
    messages), and provides ``_translate`` (SDK error → our error) and ``_writer``.
    """

    service = "remote"
    prefix: str
    retries: int

    def _key(self, name: str) -> str:
        parts = object_parts(name)
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def _name(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _key_prefix(self, prefix: str) -> str:
        """Return the key prefix that lists the names starting with ``prefix``."""
        return (self.prefix + "/" if self.prefix else "") + prefix

    def _translate(self, exc: Exception, what: str) -> Exception:
        raise NotImplementedError

    def _writer(self, key: str) -> W:
        raise NotImplementedError

    def _call(
        self,
        operation: Callable[[], T],
        what: str,
        *,
        retry: bool = False,
        retry_what: str | None = None,
    ) -> T:
        """Run one SDK call; raise our errors (TransientStorageError for a retryable one).

        ``retry``: retry here, for the steps of a put and the chunks of a get that the caller
        cannot replay; the idempotent operations are retried by the RetryingStorage wrapper.
        ``retry_what`` names the call in retry messages (default: the service and ``what``).
        """

        def once() -> T:
            try:
                return operation()
            except Exception as exc:
                raise self._translate(exc, what) from None

        if not retry:
            return once()
        return with_retries(once, retry_what or f"{self.service} {what}", self.retries)

    @contextlib.contextmanager
    def put(self, name: str) -> Iterator[W]:
        writer = self._writer(self._key(name))
        try:
            yield writer
            writer.commit()
        except BaseException:
            writer.abort()
            raise


class RangedReader:
    """Read ``size`` bytes through ``fetch(offset, length)``, one chunk at a time.

    ``fetch`` raises our errors (TransientStorageError for a retryable failure); each chunk is
    retried on its own, up to ``retries`` times.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        size: int,
        *,
        chunk_size: int,
        retries: int,
        what: str,
    ):
        self._fetch = fetch
        self._size = size
        self._chunk_size = chunk_size
        self._retries = retries
        self._what = what
        self._offset = 0  # of the next chunk to fetch
        self._chunk = memoryview(b"")
        self._position = 0  # inside the current chunk

    def _next_chunk(self) -> None:
        offset = self._offset
        length = min(self._chunk_size, self._size - offset)

        def once() -> bytes:
            data = self._fetch(offset, length)
            if not data:
                raise TransientStorageError(f"reading {self._what}: no data at offset {offset}")
            return data

        data = with_retries(once, f"reading {self._what} at offset {offset}", self._retries)
        self._chunk = memoryview(data)
        self._position = 0
        self._offset += len(data)

    def read(self, size: int = -1, /) -> bytes:
        if self._position >= len(self._chunk):
            if self._offset >= self._size:
                return b""
            self._next_chunk()
        end = len(self._chunk) if size is None or size < 0 else self._position + size
        data = bytes(self._chunk[self._position : end])
        self._position += len(data)
        return data

    def close(self) -> None:
        self._chunk = memoryview(b"")
        self._offset = self._size
