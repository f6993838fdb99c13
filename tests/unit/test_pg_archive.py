"""Reading a custom-format archive's TOC from a stream, and planning a parallel restore.

The archives here are built byte by byte after pg_backup_archiver.c (WriteHead/WriteToc);
the integration tests read real pg_dump output (test_postgres_engine.py).
"""

from __future__ import annotations

import io

import pytest

from pg_archives import DEPENDENCIES, ENTRIES, archive, framed_archive, int_
from vya_backupdb.engines.pg_archive import (
    SECTION_DATA,
    SECTION_PRE_DATA,
    BlockScanner,
    TocEntry,
    UnsupportedArchive,
    plan_parallel_restore,
    read_toc,
    render_list,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("version", [(1, 14, 0), (1, 15, 0), (1, 13, 0)])
def test_read_toc_reads_entries_and_keeps_prefix_and_rest(version: tuple[int, int, int]) -> None:
    raw = archive(ENTRIES, version=version)
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
    toc = read_toc(_Trickle(archive(ENTRIES)))
    assert len(toc.entries) == len(ENTRIES)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"-- plain SQL dump\n", "not a pg_dump custom-format archive"),
        (archive(ENTRIES, compression=6), "compressed by pg_dump"),
        (archive(ENTRIES, compression=1, version=(1, 15, 0)), "compressed by pg_dump"),
        (archive(ENTRIES, version=(1, 16, 0)), "archive version 1.16.0"),
        (archive(ENTRIES)[:200], "ends inside"),
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


# -- BlockScanner: where each data block starts -----------------------------------------------
def _scan(raw: bytes, size: int) -> tuple[list[tuple[int, int]], BlockScanner]:
    scanner, found = BlockScanner(), []
    for start in range(0, len(raw), size):
        found += scanner.feed(raw[start : start + size])
    found += scanner.feed(b"")
    return found, scanner


@pytest.mark.parametrize("size", [1, 3, 7, 4096, 65537, 10**7])
def test_block_scanner_finds_every_block_whatever_the_chunking(size: int) -> None:
    raw, offsets = framed_archive()
    found, scanner = _scan(raw, size)
    assert found == sorted((offset, dump_id) for dump_id, offset in offsets.items())
    assert scanner.complete
    for offset, dump_id in found:
        assert raw[offset : offset + 6] == b"\x01" + int_(dump_id)


def test_block_scanner_reads_a_large_toc_late_and_still_reports_its_blocks() -> None:
    # 30000 entries: a TOC beyond 1 MiB, parsed after the buffer doubled (not at every chunk).
    many = [(1000 + i, "COMMENT", SECTION_PRE_DATA, f"c{i}") for i in range(30000)]
    raw, offsets = framed_archive([*ENTRIES[:4], *many, *ENTRIES[4:]])
    assert raw.index(b"\x01" + int_(20)) > 1024 * 1024
    found, scanner = _scan(raw, 300_000)
    assert [dump_id for _, dump_id in found] == [20, 21, 22]
    assert [offset for offset, _ in found] == [offsets[20], offsets[21], offsets[22]]
    assert scanner.complete


def test_block_scanner_gives_up_quietly_on_what_it_cannot_index() -> None:
    raw, offsets = framed_archive()
    missing = raw[: offsets[21]] + raw[offsets[22] :]  # the block of 21 is not there
    found, scanner = _scan(missing, 4096)
    assert [dump_id for _, dump_id in found] == [20]
    assert not scanner.complete
    _, scanner = _scan(archive(ENTRIES, compression=6), 4096)
    assert scanner.failed is not None and "compressed by pg_dump" in scanner.failed
    assert not scanner.complete
    _, scanner = _scan(b"-- plain SQL\n" * 100, 4096)
    assert not scanner.complete


@pytest.mark.parametrize("anchors_every", [None, 7, 300, 5000])
def test_block_scanner_find_agrees_with_bytes_find(anchors_every: int | None) -> None:
    """The type-byte (memchr) search returns exactly what ``bytes.find`` of the whole pattern
    does: where the type byte is rare, and where it is in every other chunk header (then it
    falls back after a few misses)."""
    import random

    rng = random.Random(anchors_every)
    scanner = BlockScanner()
    scanner._expected.append((300, 1))
    scanner._arm()
    pattern = scanner._pattern
    text = bytearray(rng.choice(b"abc \t\n0123456789") for _ in range(200_000))
    if anchors_every:
        for i in range(0, len(text), anchors_every):
            text[i] = 1  # the type byte where no block starts (e.g. a row length's byte)
    # Matches, near-misses (the pattern with one byte changed) and a match at the very end.
    for where in rng.sample(range(0, len(text) - 20), 40):
        piece = bytearray(pattern)
        if rng.random() < 0.5:
            piece[rng.randrange(len(piece))] ^= 0x40
        text[where : where + len(piece)] = piece
    window = bytes(text) + pattern
    for start in [0, 1, *rng.sample(range(len(window)), 200), len(window) - 3]:
        assert scanner._find(window, start) == window.find(pattern, start), start
    # Blocks of blobs (type 3) are searched whole.
    scanner._expected[0] = (301, 3)
    scanner._arm()
    assert scanner._find(window + scanner._pattern, 0) == len(window)
