"""ReadAhead: the background reader that overlaps decompression with the consumer."""

from __future__ import annotations

import io
import threading
import time

import pytest

from vya_backupdb.pipeline.stream import ReadAhead

pytestmark = pytest.mark.unit


class _Chunks:
    """A source returning fixed chunks, then raising or ending; counts reads."""

    def __init__(self, chunks: list[bytes], error: BaseException | None = None):
        self._chunks = list(chunks)
        self._error = error
        self.reads = 0

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        if self._chunks:
            return self._chunks.pop(0)
        if self._error is not None:
            raise self._error
        return b""


def test_read_ahead_returns_every_byte_in_order_with_any_read_size() -> None:
    data = bytes(range(256)) * 1000
    ahead = ReadAhead(io.BytesIO(data), chunk=4096, depth=2)
    out = bytearray()
    sizes = [1, 7, 4096, 10_000, -1]
    while chunk := ahead.read(sizes[len(out) % len(sizes)]):
        out += chunk
    ahead.close()
    assert bytes(out) == data
    assert ahead.read(10) == b""


def test_read_ahead_raises_the_source_error_in_the_consumer() -> None:
    ahead = ReadAhead(_Chunks([b"abc"], EOFError("zstd stream is truncated")))
    assert ahead.read() == b"abc"
    with pytest.raises(EOFError, match="truncated"):
        ahead.read()
    ahead.close()


def test_read_ahead_stays_bounded_and_close_stops_a_blocked_producer() -> None:
    source = _Chunks([b"x" * 10] * 1000)
    ahead = ReadAhead(source, chunk=10, depth=3)
    deadline = time.monotonic() + 2
    while source.reads < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # depth items queued + one held by the blocked producer: never the whole source.
    assert source.reads <= 5
    assert ahead.read(5) == b"xxxxx"
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 2
    assert not any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())
