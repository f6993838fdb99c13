"""In-memory storage: the reference backend for the contract tests and fast unit tests."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime

from vya_backupdb.errors import NotFoundError
from vya_backupdb.storage.base import ObjectInfo


class MemoryStorage:
    def __init__(self) -> None:
        self.description = "memory:"
        self._objects: dict[str, tuple[bytes, datetime]] = {}

    @contextlib.contextmanager
    def put(self, name: str) -> Iterator[io.BytesIO]:
        buffer = io.BytesIO()
        yield buffer
        self._objects[name] = (buffer.getvalue(), datetime.now(UTC))

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[io.BytesIO]:
        if name not in self._objects:
            raise NotFoundError(f"backup object not found: {name}")
        yield io.BytesIO(self._objects[name][0])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for name in sorted(self._objects):
            if name.startswith(prefix):
                data, modified = self._objects[name]
                yield ObjectInfo(name, len(data), modified)

    def stat(self, name: str) -> ObjectInfo:
        if name not in self._objects:
            raise NotFoundError(f"backup object not found: {name}")
        data, modified = self._objects[name]
        return ObjectInfo(name, len(data), modified)

    def exists(self, name: str) -> bool:
        return name in self._objects

    def delete(self, name: str) -> None:
        self._objects.pop(name, None)

    def local_path(self, name: str) -> str | None:
        return None
