"""Codecs: round trips, standard-tool compatibility, streaming, damage detection."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from vya_backupdb.config.models import CompressionConfig
from vya_backupdb.errors import BackupFailed
from vya_backupdb.pipeline.codecs import (
    CODECS,
    aborting,
    codec_for,
    codec_from_suffix,
    get_codec,
)
from vya_backupdb.pipeline.stream import CountingReader, HashingReader, HashingWriter, pump

pytestmark = pytest.mark.unit

PAYLOAD = bytes(range(256)) * 4096 + "unicode ✓ 🚀\n".encode() * 1000  # ~1 MiB, all bytes

# The command-line tool that must read what each codec writes (a backup stays restorable
# with standard tools alone).
STANDARD_TOOL = {
    "gzip": ["gzip", "-dc"],
    "bzip2": ["bzip2", "-dc"],
    "xz": ["xz", "-dc"],
    "zstd": ["zstd", "-dc"],
    "lz4": ["lz4", "-dc"],
}


def _compress(name: str, data: bytes, level: int | None = None, threads: int = 2) -> bytes:
    sink = io.BytesIO()
    writer = get_codec(name).writer(sink, level, threads=threads)
    for start in range(0, len(data), 65536):  # many small writes, as a dump arrives
        writer.write(data[start : start + 65536])
    writer.close()
    return sink.getvalue()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_round_trip_restores_every_byte(name: str, threads: int) -> None:
    compressed = _compress(name, PAYLOAD, threads=threads)
    reader = get_codec(name).reader(io.BytesIO(compressed))
    out = io.BytesIO()
    pump(reader, out, chunk=7777)
    assert out.getvalue() == PAYLOAD
    if name != "none":
        assert len(compressed) < len(PAYLOAD)


@pytest.mark.parametrize("name", sorted(STANDARD_TOOL))
def test_codec_output_is_readable_by_the_standard_tool(name: str) -> None:
    tool = STANDARD_TOOL[name]
    if shutil.which(tool[0]) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool[0]} missing in CI")
        pytest.skip(f"{tool[0]} not installed")
    compressed = _compress(name, PAYLOAD)
    out = subprocess.run(tool, input=compressed, capture_output=True, check=True).stdout
    assert out == PAYLOAD


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz", "zstd", "lz4"])
def test_codec_truncated_stream_raises_eoferror(name: str) -> None:
    compressed = _compress(name, PAYLOAD)
    reader = get_codec(name).reader(io.BytesIO(compressed[: len(compressed) // 2]))
    with pytest.raises((EOFError, OSError)):
        while reader.read(65536):
            pass


@pytest.mark.parametrize("name", ["gzip", "zstd", "lz4"])
def test_codec_reader_returns_exactly_the_size_asked(name: str) -> None:
    # The decompressor's outputs are queued as they come and joined per read: a read is
    # assembled from many small pieces, or cut from a large one, and never loses a byte.
    compressed = _compress(name, PAYLOAD)
    reader = get_codec(name).reader(io.BytesIO(compressed))
    sizes = [1, 7, 4096, 65536, 1 << 20, 3, 200_000]
    out = bytearray()
    turn = 0
    while True:
        want = sizes[turn % len(sizes)]
        turn += 1
        chunk = reader.read(want)
        if not chunk:
            break
        assert isinstance(chunk, bytes)
        assert len(chunk) == min(want, len(PAYLOAD) - len(out))
        out += chunk
    assert bytes(out) == PAYLOAD
    assert reader.read(10) == b""


def test_codec_gzip_reads_concatenated_members() -> None:
    both = _compress("gzip", b"first\n") + _compress("gzip", b"second\n")
    reader = get_codec("gzip").reader(io.BytesIO(both))
    assert reader.read(100) == b"first\nsecond\n"


def test_codec_for_uses_default_levels_and_suffixes() -> None:
    codec, level, threads = codec_for(CompressionConfig())
    assert (codec.name, level, threads, codec.suffix) == ("zstd", 3, 0, ".zst")
    codec, level, _ = codec_for(CompressionConfig(algorithm="gzip"))
    assert (codec.name, level) == ("gzip", 6)
    assert codec_from_suffix("a.sql.gz").name == "gzip"
    assert codec_from_suffix("a.dump").name == "none"


def test_compression_config_rejects_level_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range for gzip"):
        CompressionConfig(algorithm="gzip", level=12)


def test_hashing_writer_and_reader_agree_with_hashlib() -> None:
    import hashlib

    sink = io.BytesIO()
    writer = HashingWriter(sink)
    writer.write(PAYLOAD)
    reader = HashingReader(io.BytesIO(PAYLOAD))
    while reader.read(1000):
        pass
    expected = hashlib.sha256(PAYLOAD).hexdigest()
    assert writer.sha256 == reader.sha256 == expected
    assert writer.bytes == reader.bytes == len(PAYLOAD)


def test_counting_reader_reports_progress_until_eof() -> None:
    seen: list[int] = []
    reader = CountingReader(io.BytesIO(PAYLOAD), seen.append, interval=0)
    while reader.read(100_000):
        pass
    assert seen[-1] == len(PAYLOAD)
    assert seen == sorted(seen)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} missing in CI (scripts/bootstrap.sh installs it)")
        pytest.skip(f"{tool} not installed")


@pytest.mark.parametrize(("name", "tool"), [("gzip", "pigz"), ("xz", "xz")])
def test_codec_with_threads_compresses_through_the_parallel_tool(name: str, tool: str) -> None:
    _need(tool)
    writer = get_codec(name).writer(io.BytesIO(), 6, threads=2)
    assert type(writer).__name__ == "_ToolWriter"
    writer.abort()  # type: ignore[attr-defined]
    single = get_codec(name).writer(io.BytesIO(), 6, threads=1)
    assert type(single).__name__ == "_IncrementalWriter"


def test_codec_tool_dying_mid_stream_is_a_backup_failure() -> None:
    _need("pigz")
    writer = get_codec("gzip").writer(io.BytesIO(), 6, threads=2)
    writer.write(PAYLOAD[:1000])
    writer._proc.kill()  # type: ignore[attr-defined]
    writer._proc.wait()  # type: ignore[attr-defined]
    with pytest.raises(BackupFailed, match="compressor pigz failed"):
        for _ in range(64):  # the pipe buffer absorbs the first writes
            writer.write(PAYLOAD)
        writer.close()


def test_codec_aborting_kills_the_tool_when_the_backup_fails() -> None:
    _need("xz")
    sink = io.BytesIO()
    with pytest.raises(RuntimeError), aborting(get_codec("xz").writer(sink, 6, 2)) as writer:
        writer.write(PAYLOAD)
        raise RuntimeError("dump died")
    assert writer._proc.poll() is not None  # type: ignore[attr-defined]
    writer.close()  # closing after an abort is a no-op
