"""Local-directory storage: write ``name.tmp-XXXX``, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from vya_backupdb.errors import NotFoundError, StorageError
from vya_backupdb.storage.base import ObjectInfo

TMP_MARKER = ".tmp-"


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"disk full while writing {what}",
            hint="Free space (vya-backupdb cleanup --dry-run shows what retention would remove) "
            "or point storage.base_path at a larger disk.",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"permission denied writing {what}: {exc.strerror}",
            hint="Check the owner and mode of storage.base_path, or run as the backup user.",
        )
    return StorageError(f"storage error on {what}: {exc.strerror or exc}")


class _AtomicFile:
    def __init__(self, handle: IO[bytes], what: str):
        self._handle = handle
        self._what = what

    def write(self, data: bytes, /) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise _storage_error(exc, self._what) from None


class LocalStorage:
    """Objects are files under ``root``; names map to relative paths."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.description = f"local:{self.root}"

    def _path(self, name: str) -> Path:
        parts = [p for p in name.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise StorageError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def put(self, name: str) -> Iterator[_AtomicFile]:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARKER, dir=path.parent)
        except OSError as exc:
            raise _storage_error(exc, str(path)) from None
        committed = False
        try:
            with os.fdopen(fd, "wb", buffering=1024 * 1024) as handle:
                yield _AtomicFile(handle, str(path))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, path)
            committed = True
            _fsync_dir(path.parent)
        except OSError as exc:
            raise _storage_error(exc, str(path)) from None
        finally:
            if not committed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[IO[bytes]]:
        path = self._path(name)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the context manager
        except FileNotFoundError:
            raise NotFoundError(f"backup object not found: {path}") from None
        except OSError as exc:
            raise _storage_error(exc, str(path)) from None
        with handle:
            yield handle

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only below the deepest directory the prefix names, sorted, one level at a time.
        base_parts = [p for p in prefix.split("/")[:-1] if p]
        start = self.root.joinpath(*base_parts) if base_parts else self.root
        yield from self._walk(start, prefix)

    def _walk(self, directory: Path, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            rel = Path(entry.path).relative_to(self.root).as_posix()
            if entry.is_dir(follow_symlinks=False):
                if rel.startswith(prefix) or prefix.startswith(rel + "/"):
                    yield from self._walk(Path(entry.path), prefix)
            elif (
                entry.is_file(follow_symlinks=False)
                and TMP_MARKER not in entry.name
                and rel.startswith(prefix)
            ):
                st = entry.stat(follow_symlinks=False)
                yield ObjectInfo(rel, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFoundError(f"backup object not found: {path}") from None
        return ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _storage_error(exc, str(path)) from None
        # Remove now-empty parent directories up to the root (date folders after cleanup).
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def local_path(self, name: str) -> str | None:
        return str(self._path(name))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
