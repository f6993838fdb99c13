"""Backups stored in independent frames cut where the dump's units start (pipeline/frames.py),
and reading back only some units' frames (jobs/store.py open_backup_blocks)."""

from __future__ import annotations

import io

import pytest
import zstandard

from pg_archives import framed_archive
from vya_backupdb.engines.pg_archive import BlockScanner
from vya_backupdb.pipeline.codecs import get_codec
from vya_backupdb.pipeline.frames import FrameIndex, ScanAhead, pump_framed
from vya_backupdb.pipeline.stream import HashingWriter

pytestmark = pytest.mark.unit


class _Scanner:
    """Reports fixed unit boundaries (offset, id) as the bytes pass."""

    def __init__(self, units: list[tuple[int, int]], complete: bool = True):
        self._units = units
        self._seen = 0
        self.complete = complete

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        start, self._seen = self._seen, self._seen + len(data)
        return [(o, u) for o, u in self._units if start <= o < self._seen]


def _write(
    raw: bytes, scanner: object, codec: str = "zstd", min_frame: int = 1, chunk: int = 1000
) -> tuple[bytes, FrameIndex | None]:
    out = io.BytesIO()
    hasher = HashingWriter(out)
    writer = get_codec(codec).writer(hasher, 3, 2)
    total, index = pump_framed(
        io.BytesIO(raw), writer, scanner, lambda: hasher.bytes, min_frame=min_frame, chunk=chunk
    )  # type: ignore[arg-type]
    assert total == len(raw)
    return out.getvalue(), index


RAW = b"HEAD" * 10 + b"".join(bytes([65 + u]) * (2000 + 300 * u) for u in range(4))
UNITS = [(40, 0), (2040, 1), (4340, 2), (6940, 3)]


def test_frames_decompress_alone_and_together() -> None:
    stored, index = _write(RAW, _Scanner(UNITS))
    assert index is not None
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored[:0]) == b""
    # The whole object is an ordinary zstd stream (concatenated frames).
    assert get_codec("zstd").reader(io.BytesIO(stored)).read(10**6) == RAW
    assert [raw for _, raw, _ in index.frames] == [0, 40, 2040, 4340, 6940]
    assert [units for _, _, units in index.frames] == [(), (0,), (1,), (2,), (3,)]
    assert index.stored_size == len(stored) and index.raw_size == len(RAW)
    ends = [s for s, _, _ in index.frames[1:]] + [len(stored)]
    for (start, raw_start, _), end, raw_end in zip(
        index.frames, ends, [*UNITS[0:1], *UNITS[1:], (len(RAW), None)], strict=True
    ):
        alone = zstandard.ZstdDecompressor().decompressobj().decompress(stored[start:end])
        assert alone == RAW[raw_start : raw_end[0]]


def test_ranges_for_keeps_the_head_and_the_frames_of_the_units_asked_for() -> None:
    stored, index = _write(RAW, _Scanner(UNITS))
    assert index is not None
    for wanted, expected in [
        ({2}, RAW[:40] + RAW[4340:6940]),
        ({0, 1}, RAW[:4340]),  # adjacent frames merged into one range
        ({3, 0}, RAW[:2040] + RAW[6940:]),
        (set(), RAW[:40]),
    ]:
        ranges = index.ranges_for(wanted)
        data = b"".join(stored[a:b] for a, b in ranges)
        assert get_codec("zstd").reader(io.BytesIO(data)).read(10**6) == expected
    assert len(index.ranges_for({0, 1})) == 1


def test_small_units_share_a_frame_and_late_boundaries_do_not_cut() -> None:
    _, index = _write(RAW, _Scanner(UNITS), min_frame=3000)
    assert index is not None
    # Head alone, then a frame is cut only once it holds >= 3000 raw bytes.
    assert [(raw, units) for _, raw, units in index.frames] == [
        (0, ()),
        (40, (0, 1)),
        (4340, (2, 3)),
    ]
    # A scanner that reports a unit after its bytes were written: it joins the current frame.
    late = _Scanner([])
    late.feed = lambda data, _s=late: [(5, 9)] if data[:4] == b"AAAA" else []  # type: ignore[method-assign]
    _, index = _write(RAW, late, chunk=100)
    assert index is not None and 9 in index.frames[0][2]


def test_an_incomplete_scan_stores_everything_but_no_index() -> None:
    stored, index = _write(RAW, _Scanner(UNITS, complete=False))
    assert index is None
    assert get_codec("zstd").reader(io.BytesIO(stored)).read(10**6) == RAW


def test_uncompressed_frames_are_plain_offsets() -> None:
    stored, index = _write(RAW, _Scanner(UNITS), codec="none")
    assert stored == RAW and index is not None
    assert [(s, r) for s, r, _ in index.frames] == [
        (0, 0),
        (40, 40),
        (2040, 2040),
        (4340, 4340),
        (6940, 6940),
    ]


def test_frame_index_survives_the_record_and_rejects_what_it_does_not_know() -> None:
    _, index = _write(RAW, _Scanner(UNITS))
    assert index is not None
    assert FrameIndex.from_record(index.as_record()) == index
    for bad in (None, {}, {"version": 2}, {**index.as_record(), "frames": [[5, 0, []]]},
                {**index.as_record(), "frames": [[0, 0, []], [9, 1, []], [3, 2, []]]},
                {**index.as_record(), "frames": "x"}):  # fmt: skip
        assert FrameIndex.from_record(bad) is None


def test_a_real_scanner_drives_the_frames() -> None:
    raw, offsets = framed_archive()
    _, index = _write(raw, BlockScanner(), min_frame=1, chunk=4096)
    assert index is not None
    assert [units for _, _, units in index.frames] == [(), (20,), (21,), (22,)]
    assert [r for _, r, _ in index.frames][1:] == [offsets[20], offsets[21], offsets[22]]


def test_a_unit_the_scanner_must_cut_starts_a_frame_whatever_its_size() -> None:
    scanner = _Scanner(UNITS)
    scanner.must_cut = lambda unit: unit == 3  # type: ignore[attr-defined]
    _, index = _write(RAW, scanner, min_frame=10**6)
    assert index is not None
    assert [(raw, units) for _, raw, units in index.frames] == [
        (0, ()),
        (40, (0, 1, 2)),
        (6940, (3,)),
    ]


@pytest.mark.parametrize("chunk", [1 << 20, 64, 97])
def test_a_mariadb_script_is_framed_by_its_sections(chunk: int) -> None:
    from test_mysql_stream import SCRIPT

    from vya_backupdb.engines.mysql_stream import SqlDumpScanner, plan_sections, sections_record

    scanner = SqlDumpScanner()

    class Scanning(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            data = super().read(size)
            scanner.scan(data)
            return data

    out = io.BytesIO()
    hasher = HashingWriter(out)
    writer = get_codec("zstd").writer(hasher, 3, 1)
    _, index = pump_framed(
        Scanning(SCRIPT), writer, scanner, lambda: hasher.bytes, min_frame=200, chunk=chunk
    )  # type: ignore[arg-type]
    assert index is not None
    stored = out.getvalue()
    tail = scanner.units[-1].offset
    aligned = index.frames[0][2] == () and index.frames[-1][2] == (scanner.tail_unit,)
    if chunk == 1 << 20:
        assert aligned  # the whole script in one read: every boundary can be cut
    if aligned:
        assert index.frames[-1][1] == tail
        alone = get_codec("zstd").reader(io.BytesIO(stored[index.frames[-1][0] :])).read(10**6)
        assert alone == SCRIPT[tail:]
    else:
        # A mark that straddled two reads could not be cut (its start was written already):
        # such a backup is restored by one client.
        assert plan_sections(index.frames, sections_record(scanner, []), 4) is None


def _write_ahead(raw: bytes, scanner: object, chunk: int, **kwargs: int) -> FrameIndex | None:
    """As :func:`_write`, the dump read and scanned on ScanAhead's thread."""
    out = io.BytesIO()
    hasher = HashingWriter(out)
    writer = get_codec("zstd").writer(hasher, 3, 1)
    ahead = ScanAhead(io.BytesIO(raw), scanner, chunk=chunk, **kwargs)  # type: ignore[arg-type]
    try:
        total, index = pump_framed(
            ahead, writer, ahead, lambda: hasher.bytes, min_frame=1, chunk=chunk
        )
    finally:
        ahead.close()
    assert total == len(raw)
    assert get_codec("zstd").reader(io.BytesIO(out.getvalue())).read(10**6) == raw
    return index


@pytest.mark.parametrize("depth", [1, 8])
@pytest.mark.parametrize("chunk", [4096, 333, 50_000])
def test_reading_ahead_cuts_the_frames_where_reading_directly_does(chunk: int, depth: int) -> None:
    raw, _ = framed_archive()
    _, direct = _write(raw, BlockScanner(), min_frame=1, chunk=chunk)
    ahead = _write_ahead(raw, BlockScanner(), chunk, depth=depth)
    assert direct is not None and ahead is not None
    assert ahead.frames == direct.frames


def test_reading_ahead_keeps_the_units_a_scanner_must_cut() -> None:
    scanner = _Scanner(UNITS)
    scanner.must_cut = lambda unit: unit == 3  # type: ignore[attr-defined]
    index = _write_ahead(RAW, scanner, 1000)
    assert index is not None
    assert [raw for _, raw, _ in index.frames] == [0, 40, 2040, 4340, 6940]
    assert [units for _, _, units in index.frames][-1] == (3,)
    assert _write_ahead(RAW, _Scanner(UNITS, complete=False), 1000) is None


def test_a_source_failing_while_read_ahead_fails_the_consumer_and_stops_the_thread() -> None:
    class Failing(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            if self.tell() >= 3000:
                raise OSError("dump tool went away")
            return super().read(size)

    ahead = ScanAhead(Failing(RAW), _Scanner(UNITS), chunk=1000, depth=2)
    read = b""
    with pytest.raises(OSError, match="went away"):
        while data := ahead.read(1000):
            read += data
            ahead.feed(data)
    ahead.close()
    assert read == RAW[:3000]
    assert not ahead._ahead._thread.is_alive()


def test_reading_ahead_hands_a_late_unit_over_with_the_chunk_it_was_reported_in() -> None:
    """A scanner may report a unit after its offset went by (BlockScanner: the first block,
    once the TOC parsed). Read directly, it comes with the chunk it was reported in; read
    ahead, it must too — not earlier, when the reading thread happens to be ahead."""
    import time

    class Late:
        complete = True

        def __init__(self) -> None:
            self.fed = 0

        def feed(self, data: bytes) -> list[tuple[int, int]]:
            self.fed += 1
            return [(10, 7)] if self.fed == 5 else []

    ahead = ScanAhead(io.BytesIO(bytes(range(256)) * 40), Late(), chunk=1000, depth=8)
    handed: list[list[tuple[int, int]]] = []
    try:
        time.sleep(0.2)  # the reading thread is 8 chunks ahead before the first read
        while data := ahead.read(1000):
            handed.append(ahead.feed(data))
    finally:
        ahead.close()
    assert [i for i, marks in enumerate(handed) if marks] == [4]
    assert handed[4] == [(10, 7)]
