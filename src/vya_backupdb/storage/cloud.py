"""Pieces shared by the cloud object stores (Azure Blob, Google Cloud Storage).

:class:`RangedReader` streams an object as a series of ranged reads of one chunk each, pinned
to the version that was opened: memory stays at one chunk, a dropped connection costs one
chunk (retried from the offset reached), and an object replaced while it is read fails
instead of yielding a mix of two versions.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vya_backupdb.storage.remote import TransientStorageError, with_retries

_QUERY = re.compile(r"\?[^\s'\"<>)]*")


def brief_message(exc: BaseException, limit: int = 300) -> str:
    """Return the first line of ``exc``'s message, without URL query strings (a SAS token
    travels in the query) and cut to ``limit`` characters."""
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
    text = str(getattr(exc, "message", None) or first or exc or type(exc).__name__)
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    line = _QUERY.sub("?…", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


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
