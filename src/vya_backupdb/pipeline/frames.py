"""Backups stored as independent compressed frames, with an index of where each unit starts.

A dump that knows its own structure (a pg_dump custom archive: header + TOC, then one data
block per table) offers a *scanner* that reports the raw offset where each unit (block)
starts. :func:`pump_framed` ends the current compressed frame at such a boundary (once the
frame holds at least ``min_frame`` raw bytes) and records, per frame, its offset in the stored
object, its raw offset and the units that start in it. A reader can then decompress only the
frames it needs: a parallel restore worker reads the archive head plus its own tables'
frames, not the whole backup (jobs/store.py ``open_backup_blocks``).

The object stays one ordinary compressed stream: concatenated frames decompress as a whole
with any zstd (or the ``none`` codec), so nothing else changes for verify, download or a DBA
with ``zstd -dc``. Only unencrypted objects are indexed (the offsets are offsets of the
stored bytes).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vya_backupdb.pipeline.codecs import CHUNK, Readable, StreamWriter
from vya_backupdb.pipeline.stream import ReadAhead

#: A frame is ended at a unit boundary only once it holds this many raw bytes: small tables
#: share a frame (fewer frames, better compression), large ones get frames of their own.
MIN_FRAME = 1024 * 1024
INDEX_VERSION = 1


class Scanner(Protocol):
    """Reports unit boundaries of a stream fed to it chunk by chunk."""

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Take the next bytes; return (raw offset, unit id) of every unit starting in them."""
        ...

    @property
    def complete(self) -> bool:
        """Whether every unit the stream announced was found."""
        ...


@runtime_checkable
class FramingWriter(StreamWriter, Protocol):
    def end_frame(self) -> None:
        """Finish the current frame: everything written so far reaches the sink."""
        ...


@dataclass
class FrameIndex:
    """Per frame: offset in the stored object, raw offset, ids of the units starting in it."""

    frames: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)
    stored_size: int = 0
    raw_size: int = 0

    def as_record(self) -> dict[str, Any]:
        """Return the compact form kept in the backup's metadata record."""
        return {
            "version": INDEX_VERSION,
            "stored_size": self.stored_size,
            "raw_size": self.raw_size,
            "frames": [[stored, raw, list(ids)] for stored, raw, ids in self.frames],
        }

    @classmethod
    def from_record(cls, value: object) -> FrameIndex | None:
        """Return the index kept in a record, or None when absent or not understood."""
        if not isinstance(value, dict) or value.get("version") != INDEX_VERSION:
            return None
        try:
            frames = [
                (int(stored), int(raw), tuple(int(i) for i in ids))
                for stored, raw, ids in value["frames"]
            ]
            index = cls(frames, int(value["stored_size"]), int(value["raw_size"]))
        except (KeyError, TypeError, ValueError):
            return None
        offsets = [stored for stored, _, _ in frames]
        if not frames or offsets[0] != 0 or offsets != sorted(offsets):
            return None
        return index

    def ranges_for(self, ids: set[int]) -> list[tuple[int, int]]:
        """Return the stored byte ranges ``[start, end)`` holding the first frame (the
        archive head) and every frame in which one of ``ids`` starts, adjacent ones merged.

        A unit never spans frames: frames are cut only where units start."""
        ends = [stored for stored, _, _ in self.frames[1:]] + [self.stored_size]
        ranges: list[tuple[int, int]] = []
        for number, ((start, _, units), end) in enumerate(zip(self.frames, ends, strict=True)):
            if number and not ids.intersection(units):
                continue
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return ranges


class ScanAhead:
    """Read a dump on a thread of its own, up to ``depth`` chunks ahead, scanning it there.

    Both a Readable and a :class:`Scanner` for :func:`pump_framed`: the dump tool is read
    while the pipeline compresses, hashes and writes (on a 2-core machine a ``mariadb-dump``
    that waited for those turns made a backup ~5 % slower, measured), and
    the scanner's work overlaps with them too. ``feed`` returns the unit starts found in the
    bytes handed out so far, so frames are cut exactly where reading the dump directly would
    cut them. Call :meth:`close` once the source is exhausted or dead (it joins the thread).
    """

    def __init__(self, source: Readable, scanner: Scanner, chunk: int = CHUNK, depth: int = 8):
        self._scanner = scanner
        self._must_cut: Callable[[int], bool] | None = getattr(scanner, "must_cut", None)
        # (offset, unit, found at) of every start found, appended by the reading thread before
        # the chunk it was found in is queued; taken by the consumer once that chunk is handed
        # out. "Found at" (the end of that chunk), not the offset: a scanner may report a unit
        # late (BlockScanner: the first block, once the TOC after it parsed), and a direct read
        # hands it over with the chunk it was reported in — so must this.
        self._marks: collections.deque[tuple[int, int, int]] = collections.deque()
        self._cut: set[int] = set()
        self._handed = 0
        self._ahead = ReadAhead(
            _Scanned(source, scanner, self._marks, self._cut, self._must_cut), chunk, depth
        )

    def read(self, size: int = -1, /) -> bytes:
        data = self._ahead.read(size)
        self._handed += len(data)
        return data

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        while self._marks and self._marks[0][2] <= self._handed:
            offset, unit, _ = self._marks.popleft()
            found.append((offset, unit))
        return found

    def must_cut(self, unit: int) -> bool:
        return unit in self._cut

    @property
    def complete(self) -> bool:
        return self._scanner.complete

    def close(self) -> None:
        self._ahead.close()


class _Scanned:
    """The reading side of :class:`ScanAhead` (runs on its thread)."""

    def __init__(
        self,
        source: Readable,
        scanner: Scanner,
        marks: collections.deque[tuple[int, int, int]],
        cut: set[int],
        must_cut: Callable[[int], bool] | None,
    ):
        self._source = source
        self._scanner = scanner
        self._marks = marks
        self._cut = cut
        self._must_cut = must_cut
        self._read = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._read += len(data)
        for offset, unit in self._scanner.feed(data):
            if self._must_cut is not None and self._must_cut(unit):
                self._cut.add(unit)
            self._marks.append((offset, unit, self._read))
        return data


def pump_framed(
    source: Readable,
    compressor: FramingWriter,
    scanner: Scanner,
    stored_bytes: Callable[[], int],
    *,
    min_frame: int = MIN_FRAME,
    chunk: int = CHUNK,
) -> tuple[int, FrameIndex | None]:
    """Copy ``source`` into ``compressor``, ending frames at the scanner's boundaries.

    ``stored_bytes`` returns how many bytes reached storage so far (after compression); it is
    read right after each frame ends. A scanner may name units that must start a frame of
    their own whatever its size (``must_cut(unit)``; e.g. a script's tail, run after all
    else). Return (raw byte count, index); the index is None when the scanner did not find
    every unit (the backup is still complete and valid — it is only not indexed)."""
    must_cut: Callable[[int], bool] | None = getattr(scanner, "must_cut", None)
    index = FrameIndex()
    frame_units: list[int] = []
    frame_start = 0  # raw offset of the current frame
    total = 0
    while data := source.read(chunk):
        position = 0
        for offset, unit in scanner.feed(data):
            cut = offset - total
            # A boundary inside bytes already written (the scanner may report the head's
            # units late) cannot end a frame: the unit then starts inside the current one.
            big = (
                offset - frame_start >= min_frame
                or (not index.frames and offset > 0)
                or (must_cut is not None and must_cut(unit) and offset > frame_start)
            )
            if cut >= position and big:
                compressor.write(data[position:cut])
                position = cut
                compressor.end_frame()
                index.frames.append((_stored_start(index), frame_start, tuple(frame_units)))
                index.stored_size = stored_bytes()
                frame_start, frame_units = offset, []
            frame_units.append(unit)
        compressor.write(data[position:])
        total += len(data)
    compressor.close()
    index.frames.append((_stored_start(index), frame_start, tuple(frame_units)))
    index.stored_size = stored_bytes()
    index.raw_size = total
    return total, index if scanner.complete else None


def _stored_start(index: FrameIndex) -> int:
    """Stored offset where the frame being appended starts: the end of the previous one."""
    return index.stored_size if index.frames else 0
