"""Custom-format archives built byte by byte after pg_backup_archiver.c (WriteHead, WriteToc,
WriteDataChunks), for the unit tests of engines/pg_archive.py and pipeline/frames.py."""

from __future__ import annotations

from vya_backupdb.engines.pg_archive import (
    SECTION_DATA,
    SECTION_NONE,
    SECTION_POST_DATA,
    SECTION_PRE_DATA,
)


def int_(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def str_(value: str | None) -> bytes:
    if value is None:
        return int_(-1)
    data = value.encode()
    return int_(len(data)) + data


def archive(
    entries: list[tuple[int, str, int, str]],
    *,
    version: tuple[int, int, int] = (1, 14, 0),
    compression: int = 0,
    data: bytes = b"\x01DATA",
) -> bytes:
    head = bytearray(b"PGDMP" + bytes(version) + bytes([4, 8, 1]))
    head += bytes([compression]) if version[:2] >= (1, 15) else int_(compression)
    head += b"".join(int_(v) for v in (1, 2, 3, 4, 5, 126, 0))
    head += str_("db") + str_("15.1") + str_("15.1")
    head += int_(len(entries))
    for dump_id, desc, section, tag in entries:
        head += int_(dump_id) + int_(1 if desc == "TABLE DATA" else 0)
        head += str_("0") + str_("0") + str_(tag) + str_(desc) + int_(section)
        head += str_("") + str_("") + str_(None) + str_("public") + str_("")
        if version[:2] >= (1, 14):
            head += str_("heap")
        head += str_("owner") + str_("false")
        head += b"".join(str_(str(d)) for d in DEPENDENCIES.get(dump_id, ())) + str_(None)
        head += b"\x01" + bytes(8)  # offset not set
    return bytes(head) + data


ENTRIES = [
    (1, "ENCODING", SECTION_PRE_DATA, "ENCODING"),
    (10, "TABLE", SECTION_PRE_DATA, "big"),
    (11, "TABLE", SECTION_PRE_DATA, "mid"),
    (12, "TABLE", SECTION_PRE_DATA, "small"),
    (20, "TABLE DATA", SECTION_DATA, "big"),
    (21, "TABLE DATA", SECTION_DATA, "mid"),
    (22, "TABLE DATA", SECTION_DATA, "small"),
    (23, "SEQUENCE SET", SECTION_DATA, "seq"),
    (30, "CONSTRAINT", SECTION_POST_DATA, "big big_pkey"),
    (31, "INDEX", SECTION_POST_DATA, "mid_idx"),
    (32, "FK CONSTRAINT", SECTION_POST_DATA, "mid mid_big_fk"),
    (33, "INDEX", SECTION_POST_DATA, "small_on_pkey_idx"),
    (40, "ACL", SECTION_NONE, "TABLE big"),
]
# Who depends on whom (as pg_dump records it): data and keys on their table; the foreign key
# on both tables; the last index on another post-data entry.
DEPENDENCIES = {20: (10,), 21: (11,), 22: (12,), 30: (10,), 31: (11,), 32: (11, 10), 33: (12, 30)}


def block(dump_id: int, lines: list[bytes], kind: int = 1) -> bytes:
    """A data block as pg_dump -Z0 writes it: type, id, one length-prefixed chunk per row,
    then a zero length."""
    return bytes([kind]) + int_(dump_id) + b"".join(int_(len(r)) + r for r in lines) + int_(0)


def text_rows(n: int, width: int) -> list[bytes]:
    # Lengths like 256 or 65536 put zero bytes into the chunk headers, as in real archives.
    return [(b"%d\trow \x01 text " % i).ljust(width, b"x") + b"\n" for i in range(n)]


def framed_archive(
    entries: list[tuple[int, str, int, str]] = ENTRIES,
) -> tuple[bytes, dict[int, int]]:
    """Return an archive with data blocks for the TABLE DATA entries 20, 21, 22, and where
    each block starts."""
    blocks = [
        (20, block(20, text_rows(300, 256))),
        (21, block(21, text_rows(5, 65536))),
        (22, block(22, [])),  # an empty table still has its block
    ]
    head = archive(entries, data=b"")
    offsets: dict[int, int] = {}
    data, position = b"", len(head)
    for dump_id, raw in blocks:
        offsets[dump_id] = position
        data += raw
        position += len(raw)
    return head + data, offsets
