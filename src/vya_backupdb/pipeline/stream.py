"""Stream transforms that fingerprint and count bytes, and the pump that moves them.

Backup direction:  source → count(raw) → compress → hash+count(stored) → storage writer.
Restore direction: storage reader → hash+count(stored) → decompress → count(raw) → engine.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

from vya_backupdb.pipeline.codecs import CHUNK, Readable, Writable

ProgressCallback = Callable[[int], None]


class HashingWriter:
    """Pass writes through to ``sink`` while computing sha256 and the byte count."""

    def __init__(self, sink: Writable):
        self._sink = sink
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes, /) -> int:
        self._hash.update(data)
        self.bytes += len(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        return None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class HashingReader:
    """Pass reads through while computing sha256 and the byte count."""

    def __init__(self, source: Readable):
        self._source = source
        self._hash = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size if size and size > 0 else CHUNK)
        self._hash.update(data)
        self.bytes += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class CountingReader:
    """Count bytes read and report progress at most every ``interval`` seconds."""

    def __init__(
        self,
        source: Readable,
        progress: ProgressCallback | None = None,
        interval: float = 0.5,
    ):
        self._source = source
        self._progress = progress
        self._interval = interval
        self._last = 0.0
        self.bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size if size and size > 0 else CHUNK)
        self.bytes += len(data)
        if self._progress is not None:
            now = time.monotonic()
            if now - self._last >= self._interval or not data:
                self._last = now
                self._progress(self.bytes)
        return data


class _Closeable(Protocol):
    def close(self) -> None: ...


def pump(source: Readable, sink: Writable, chunk: int = CHUNK) -> int:
    """Copy ``source`` into ``sink`` chunk by chunk; return the byte count."""
    total = 0
    while data := source.read(chunk):
        sink.write(data)
        total += len(data)
    return total


def sha256_of(source: Readable) -> tuple[str, int]:
    """Return (sha256 hex, size) of a stream, reading it in chunks."""
    reader = HashingReader(source)
    while reader.read(CHUNK):
        pass
    return reader.sha256, reader.bytes
