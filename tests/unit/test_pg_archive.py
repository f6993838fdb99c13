"""Reading a custom-format archive's TOC from a stream, and planning a parallel restore.

The archives here are built byte by byte after pg_backup_archiver.c (WriteHead/WriteToc);
the integration tests read real pg_dump output (test_postgres_engine.py).
"""

from __future__ import annotations

import io

import pytest

from vya_backupdb.engines.pg_archive import (
    SECTION_DATA,
    SECTION_NONE,
    SECTION_POST_DATA,
    SECTION_PRE_DATA,
    TocEntry,
    UnsupportedArchive,
    plan_parallel_restore,
    read_toc,
    render_list,
)

pytestmark = pytest.mark.unit


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def _str(value: str | None) -> bytes:
    if value is None:
        return _int(-1)
    data = value.encode()
    return _int(len(data)) + data


def _archive(
    entries: list[tuple[int, str, int, str]],
    *,
    version: tuple[int, int, int] = (1, 14, 0),
    compression: int = 0,
    data: bytes = b"\x01DATA",
) -> bytes:
    head = b"PGDMP" + bytes(version) + bytes([4, 8, 1])
    head += bytes([compression]) if version[:2] >= (1, 15) else _int(compression)
    head += b"".join(_int(v) for v in (1, 2, 3, 4, 5, 126, 0))
    head += _str("db") + _str("15.1") + _str("15.1")
    head += _int(len(entries))
    for dump_id, desc, section, tag in entries:
        head += _int(dump_id) + _int(1 if desc == "TABLE DATA" else 0)
        head += _str("0") + _str("0") + _str(tag) + _str(desc) + _int(section)
        head += _str("") + _str("") + _str(None) + _str("public") + _str("")
        if version[:2] >= (1, 14):
            head += _str("heap")
        head += _str("owner") + _str("false")
        head += b"".join(_str(str(d)) for d in DEPENDENCIES.get(dump_id, ())) + _str(None)
        head += b"\x01" + bytes(8)  # offset not set
    return head + data


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


@pytest.mark.parametrize("version", [(1, 14, 0), (1, 15, 0), (1, 13, 0)])
def test_read_toc_reads_entries_and_keeps_prefix_and_rest(version: tuple[int, int, int]) -> None:
    raw = _archive(ENTRIES, version=version)
    toc = read_toc(io.BytesIO(raw))
    assert [(e.dump_id, e.desc, e.section, e.tag) for e in toc.entries] == ENTRIES
    assert toc.prefix + toc.rest == raw
    assert toc.rest == b"\x01DATA"
    assert toc.entries[4].qualified_name == "public.big"
    assert toc.entries[4].had_dumper
    assert toc.entries[10].dependencies == (11, 10)


class _Trickle:
    """A stream that returns a few bytes per read, like a slow pipe."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._data.read(3)


def test_read_toc_works_across_small_reads() -> None:
    toc = read_toc(_Trickle(_archive(ENTRIES)))
    assert len(toc.entries) == len(ENTRIES)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"-- plain SQL dump\n", "not a pg_dump custom-format archive"),
        (_archive(ENTRIES, compression=6), "compressed by pg_dump"),
        (_archive(ENTRIES, compression=1, version=(1, 15, 0)), "compressed by pg_dump"),
        (_archive(ENTRIES, version=(1, 16, 0)), "archive version 1.16.0"),
        (_archive(ENTRIES)[:200], "ends inside"),
    ],
)
def test_read_toc_refuses_what_it_cannot_read_and_returns_the_bytes(
    raw: bytes, reason: str
) -> None:
    stream = io.BytesIO(raw + b"tail")
    with pytest.raises(UnsupportedArchive, match=reason) as caught:
        read_toc(stream)
    # Nothing is lost: what was read plus what remains is the whole input.
    assert caught.value.consumed + stream.read() == raw + b"tail"


def _entries() -> list[TocEntry]:
    return [
        TocEntry(i, d == "TABLE DATA", t, d, s, "public", "o", DEPENDENCIES.get(i, ()))
        for i, d, s, t in ENTRIES
    ]


def test_plan_shares_tables_by_weight_and_keeps_archive_order() -> None:
    plan = plan_parallel_restore(
        _entries(), 2, {"public.big": 1000, "public.mid": 600, "public.small": 500}
    )
    assert plan.schema == (1, 10, 11, 12)
    # big alone; mid + small (1100) on the other worker, in archive order; the sequence
    # value goes with the first worker.
    assert plan.data == ((20, 23), (21, 22))
    # Each worker then builds the keys and indexes of its own tables; the foreign key (two
    # tables) and the index that needs another post-data entry wait for the last phase.
    assert plan.indexes == ((30,), (31,))
    assert plan.post == (32, 33, 40)


def test_plan_never_has_more_workers_than_tables_or_empty_lists() -> None:
    plan = plan_parallel_restore(_entries(), 8, {})
    assert len(plan.data) == 3
    assert len(plan.indexes) == 3
    assert all(plan.data)
    only_schema = [e for e in _entries() if e.section != SECTION_DATA]
    assert plan_parallel_restore(only_schema, 4, {}).data == ()


def test_render_list_names_one_entry_per_line() -> None:
    assert render_list([5, 3]) == "5; \n3; \n"
