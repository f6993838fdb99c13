"""The manifest of a files backup: one JSON line per path, the whole tree state at that backup.

Layout (format version 1), one JSON object per line::

    {"format": "vya-files-manifest", "version": 1, "backup_id": ..., "strategy": ..., "base": ...}
    {"path": "/srv/app/a.conf", "type": "file", "size": 12, "mtime_ns": ..., ..., "backup": ...}
    ...
    {"end": true, "entries": N}

Entries are sorted by :func:`path_key` (path components compared as bytes, i.e. the order of
a depth-first walk that sorts each directory by name), so two manifests, or a manifest and a
tree walk, can be compared by a streaming merge-join in bounded memory. A path (and a link
target) is stored as ``"path"`` when it is valid UTF-8, else as ``"path_b64"`` (base64 of the
raw bytes), so every name round-trips exactly. The trailer line makes truncation detectable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from vya_backupdb.engines.process import Readable
from vya_backupdb.errors import IntegrityError

MANIFEST_FORMAT = "vya-files-manifest"
MANIFEST_VERSION = 1

EntryType = Literal["file", "dir", "symlink", "hardlink", "other"]
_ENTRY_TYPES: frozenset[str] = frozenset({"file", "dir", "symlink", "hardlink", "other"})
_READ_CHUNK = 256 * 1024
_WRITE_BUFFER = 256 * 1024


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def path_key(path: bytes) -> bytes:
    """Return the sort key of ``path``: components compared as bytes (a sorted depth-first walk).

    NUL cannot occur in a file name, so replacing ``/`` by NUL makes a plain bytes comparison
    compare component by component (``a/b`` sorts before ``a-c``, like the walk visits them).
    """
    return path.replace(b"/", b"\x00")


@dataclass(slots=True)
class ManifestEntry:
    """One path of the tree at backup time.

    ``path`` is absolute (bytes). ``mode`` holds the permission bits (with setuid/setgid/sticky).
    ``link`` is the target of a symlink, or the first path of a hard-linked inode for a
    ``hardlink``. ``backup`` names the backup whose archive holds the content of this entry
    (None when it could not be read). ``kind`` tells ``other`` entries apart (fifo, chr, blk).
    ``warning`` marks an entry that was unreadable or changed while it was read.
    """

    path: bytes
    type: EntryType
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    inode: int = 0
    dev: int = 0
    link: bytes | None = None
    sha256: str | None = None
    backup: str | None = None
    kind: str | None = None
    rdev: int = 0
    warning: str | None = None

    @property
    def key(self) -> bytes:
        return path_key(self.path)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of this entry (bytes fields encoded to round-trip exactly)."""
        data: dict[str, Any] = {}
        _put_bytes(data, "path", self.path)
        data["type"] = self.type
        data["size"] = self.size
        data["mtime_ns"] = self.mtime_ns
        data["mode"] = self.mode
        data["uid"] = self.uid
        data["gid"] = self.gid
        if self.uname:
            data["uname"] = self.uname
        if self.gname:
            data["gname"] = self.gname
        data["inode"] = self.inode
        data["dev"] = self.dev
        if self.link is not None:
            _put_bytes(data, "link", self.link)
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        data["backup"] = self.backup
        if self.kind is not None:
            data["kind"] = self.kind
            data["rdev"] = self.rdev
        if self.warning is not None:
            data["warning"] = self.warning
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        """Return the entry of a decoded JSON line; raise KeyError/ValueError/TypeError if bad."""
        etype = data["type"]
        if etype not in _ENTRY_TYPES:
            raise ValueError(f"unknown entry type {etype!r}")
        path = _get_bytes(data, "path")
        if path is None:
            raise KeyError("path")
        return cls(
            path=path,
            type=etype,
            size=int(data.get("size", 0)),
            mtime_ns=int(data.get("mtime_ns", 0)),
            mode=int(data.get("mode", 0)),
            uid=int(data.get("uid", 0)),
            gid=int(data.get("gid", 0)),
            uname=str(data.get("uname", "")),
            gname=str(data.get("gname", "")),
            inode=int(data.get("inode", 0)),
            dev=int(data.get("dev", 0)),
            link=_get_bytes(data, "link"),
            sha256=data.get("sha256"),
            backup=data.get("backup"),
            kind=data.get("kind"),
            rdev=int(data.get("rdev", 0)),
            warning=data.get("warning"),
        )


def _put_bytes(data: dict[str, Any], field: str, value: bytes) -> None:
    try:
        data[field] = value.decode("utf-8")
    except UnicodeDecodeError:
        data[f"{field}_b64"] = base64.b64encode(value).decode("ascii")


def _get_bytes(data: dict[str, Any], field: str) -> bytes | None:
    if field in data:
        return str(data[field]).encode("utf-8")
    if f"{field}_b64" in data:
        return base64.b64decode(data[f"{field}_b64"], validate=True)
    return None


def _dumps(obj: dict[str, Any]) -> bytes:
    # ensure_ascii keeps every line pure ASCII: no raw newline can ever appear inside a record.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


class ManifestWriter:
    """Writes a manifest to a binary stream, checking the sort order as it goes.

    Usage: ``w = ManifestWriter(out, backup_id=..., strategy=..., base=...)``, ``w.add(entry)``
    for each entry in :func:`path_key` order, then ``w.close()`` (writes the trailer).
    """

    def __init__(
        self, out: Writable, *, backup_id: str, strategy: str, base: str | None = None
    ) -> None:
        self._out = out
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._last_key: bytes | None = None
        self.entries = 0
        header = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "backup_id": backup_id,
            "strategy": strategy,
            "base": base,
        }
        self._append(_dumps(header))

    def add(self, entry: ManifestEntry) -> None:
        """Append ``entry``; raise ValueError when it is not after the previous one."""
        key = entry.key
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"manifest entries out of order at {entry.path!r}")
        self._last_key = key
        self.entries += 1
        self._append(_dumps(entry.to_json()))

    def close(self) -> None:
        """Write the trailer and flush everything buffered."""
        self._append(_dumps({"end": True, "entries": self.entries}))
        self._flush()

    def _append(self, line: bytes) -> None:
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= _WRITE_BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._out.write(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0


def iter_lines(stream: Readable) -> Iterator[bytes]:
    """Yield the lines of ``stream`` (without the newline), reading it in bounded chunks."""
    pending = b""
    while chunk := stream.read(_READ_CHUNK):
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        yield from lines
    if pending:
        yield pending


@dataclass(frozen=True)
class ManifestHeader:
    backup_id: str
    strategy: str
    base: str | None
    version: int


class ManifestReader:
    """Iterates the entries of a manifest stream, validating header, order and trailer.

    ``header`` is available once the first entry was requested (or after iteration).
    Raise IntegrityError (while iterating) when the stream is not a manifest, is out of order,
    or is truncated (no trailer, or an entry count that does not match).
    """

    def __init__(self, stream: Readable, *, name: str = "manifest") -> None:
        self._stream = stream
        self._name = name
        self.header: ManifestHeader | None = None

    def _damaged(self, what: str) -> IntegrityError:
        return IntegrityError(
            f"{self._name} is damaged: {what}",
            hint=(
                "The manifest of this backup cannot be trusted. Check it with "
                "'vya-backupdb verify', or restore another backup (see 'vya-backupdb list')."
            ),
        )

    def __iter__(self) -> Iterator[ManifestEntry]:
        lines = iter_lines(self._stream)
        first = next(lines, None)
        if first is None:
            raise self._damaged("it is empty")
        header = self._decode(first, 1)
        if header.get("format") != MANIFEST_FORMAT:
            raise self._damaged("the first line is not a vya-files-manifest header")
        version = header.get("version")
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise self._damaged(
                f"format version {version!r} is newer than this program understands "
                f"({MANIFEST_VERSION}); upgrade vya-backupdb"
            )
        self.header = ManifestHeader(
            backup_id=str(header.get("backup_id", "")),
            strategy=str(header.get("strategy", "")),
            base=header.get("base"),
            version=version,
        )
        count = 0
        last_key: bytes | None = None
        for number, line in enumerate(lines, start=2):
            data = self._decode(line, number)
            if data.get("end") is True:
                if data.get("entries") != count:
                    raise self._damaged(
                        f"the trailer counts {data.get('entries')} entries, found {count}"
                    )
                if next(lines, None) is not None:
                    raise self._damaged(f"data after the trailer (line {number + 1})")
                return
            try:
                entry = ManifestEntry.from_json(data)
            except (KeyError, ValueError, TypeError) as exc:
                raise self._damaged(f"line {number}: bad entry ({exc})") from exc
            key = entry.key
            if last_key is not None and key <= last_key:
                raise self._damaged(f"line {number}: entries are not sorted by path")
            last_key = key
            count += 1
            yield entry
        raise self._damaged(f"it is truncated after {count} entries (no trailer)")

    def _decode(self, line: bytes, number: int) -> dict[str, Any]:
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise self._damaged(f"line {number} is not JSON") from exc
        if not isinstance(data, dict):
            raise self._damaged(f"line {number} is not a JSON object")
        return data


def read_manifest(stream: Readable) -> Iterator[ManifestEntry]:
    """Yield the entries of a manifest stream in path order; raise IntegrityError when damaged."""
    return iter(ManifestReader(stream))
