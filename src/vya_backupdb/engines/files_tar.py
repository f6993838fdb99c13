"""A minimal streaming PAX tar writer for the files engine.

``tarfile`` builds every header through dictionaries, copies and a generic PAX encoder, which
costs more CPU per small file than compressing it; it also remembers every member written.
This writer emits the same bytes as ``TarInfo.tobuf(PAX_FORMAT)`` for the common case (ASCII
names and links that fit the ustar fields, ids and sizes in range, at most a PAX ``mtime``
record) and falls back to ``tobuf`` for everything else, so the archive is always a standard
POSIX tar (a unit test checks both paths give identical bytes).
"""

from __future__ import annotations

import tarfile
from typing import Protocol

from vya_backupdb.engines.process import Readable

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_COPY_CHUNK = 1024 * 1024
_FAST_TYPES = frozenset({tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE})
_MAX7 = 8**7
_MAX11 = 8**11
_ZEROS = b"\0" * BLOCK


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    uname: bytes,
    gname: bytes,
) -> bytes:
    head = b"".join(
        (
            name.ljust(100, b"\0"),
            b"%07o\0" % (mode & 0o7777),
            b"%07o\0" % uid,
            b"%07o\0" % gid,
            b"%011o\0" % size,
            b"%011o\0" % mtime,
            b"        ",
            typeflag,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            uname.ljust(32, b"\0"),
            gname.ljust(32, b"\0"),
        )
    ).ljust(BLOCK, b"\0")
    # The checksum counts its own field as eight spaces, hence the 256 (8 * 0x20).
    checksum = sum(head[:148]) + 256 + sum(head[156:])
    return head[:148] + b"%06o\0" % checksum + head[155:]


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    # The length prefix counts itself: iterate until it is stable (as tarfile does).
    base = len(keyword) + len(value) + 3
    length = 0
    while True:
        total = base + len(str(length))
        if total == length:
            break
        length = total
    return b"%d %s=%s\n" % (length, keyword, value)


def fast_header(info: tarfile.TarInfo) -> bytes | None:
    """Return the header blocks of ``info`` (as tobuf(PAX_FORMAT) would), or None if not simple."""
    if info.type not in _FAST_TYPES or set(info.pax_headers) - {"mtime"}:
        return None
    name = (
        info.name + "/"
        if info.type == tarfile.DIRTYPE and not info.name.endswith("/")
        else info.name
    )
    try:
        raw_name = name.encode("ascii")
        raw_link = info.linkname.encode("ascii")
        uname = info.uname.encode("ascii")
        gname = info.gname.encode("ascii")
    except UnicodeEncodeError:
        return None
    mtime = int(info.mtime)
    if (
        len(raw_name) > 100
        or len(raw_link) > 100
        or len(uname) > 32
        or len(gname) > 32
        or not 0 <= info.uid < _MAX7
        or not 0 <= info.gid < _MAX7
        or not 0 <= info.size < _MAX11
        or not 0 <= mtime < _MAX11
    ):
        return None
    header = _ustar(
        raw_name,
        info.mode,
        info.uid,
        info.gid,
        info.size,
        mtime,
        info.type,
        raw_link,
        uname,
        gname,
    )
    pax_mtime = info.pax_headers.get("mtime")
    if pax_mtime is None:
        return header
    records = _pax_record(b"mtime", pax_mtime.encode("ascii"))
    pax = _ustar(b"././@PaxHeader", 0, 0, 0, len(records), 0, tarfile.XHDTYPE, b"", b"", b"")
    padding = -len(records) % BLOCK
    return pax + records + b"\0" * padding + header


class TarWriter:
    """Writes tar members to a write-only stream; ``close()`` writes the end of the archive."""

    def __init__(self, out: Writable) -> None:
        self._out = out
        self.position = 0

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.position += len(data)

    def add(self, info: tarfile.TarInfo, content: Readable | None = None) -> None:
        """Write the header of ``info`` and exactly ``info.size`` bytes read from ``content``.

        ``content`` must deliver the full size (the engine pads short files itself).
        """
        header = fast_header(info)
        if header is None:
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self._emit(header)
        if info.size and content is not None:
            left = info.size
            while left > 0:
                chunk = content.read(min(_COPY_CHUNK, left))
                if not chunk:
                    raise ValueError(f"content of {info.name!r} ended {left} bytes early")
                self._emit(chunk)
                left -= len(chunk)
            if info.size % BLOCK:
                self._emit(_ZEROS[: BLOCK - info.size % BLOCK])

    def close(self) -> None:
        """Write the two zero blocks that end a tar, padded to a whole record like tar does."""
        self._emit(_ZEROS * 2)
        if self.position % RECORD:
            self._emit(b"\0" * (RECORD - self.position % RECORD))
