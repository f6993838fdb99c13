"""The Storage protocol: a dumb, interchangeable store of named objects.

Names are '/'-separated relative paths. ``put`` returns an atomic writer: the object becomes
visible under its name only when the writer is committed (the ``with`` block exits cleanly);
an exception or an interrupted process leaves no object under that name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    modified: datetime  # tz-aware UTC


class ObjectWriter(Protocol):
    def write(self, data: bytes, /) -> int: ...


class ObjectReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Storage(Protocol):
    """What every backend offers (local, memory, later s3/sftp/...)."""

    #: Human description for messages, e.g. "local:/var/backups/vya".
    description: str

    def put(self, name: str) -> AbstractContextManager[ObjectWriter]:
        """Return an atomic writer for ``name`` (visible only after a clean exit)."""
        ...

    def get(self, name: str) -> AbstractContextManager[ObjectReader]:
        """Return a reader of ``name``; raise NotFoundError when it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the committed objects whose names start with ``prefix``, sorted by name."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Return the object's info; raise NotFoundError when it does not exist."""
        ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None:
        """Delete ``name``; deleting a missing object is not an error."""
        ...

    def local_path(self, name: str) -> str | None:
        """Return a filesystem path for ``name`` when the backend is local, else None."""
        ...
