"""Compression codecs as streaming writers (backup) and readers (restore).

Each codec wraps a byte sink or source without ever holding a whole stream: compressors take
writes of any size and emit compressed chunks as they go; decompressors read the source in
chunks. zstd compresses on its own worker threads (the GIL is released), so compression runs
concurrently with the dump tool that feeds us.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import logging
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import zstandard

from vya_backupdb.config.models import CompressionConfig
from vya_backupdb.errors import BackupFailed

CHUNK = 1024 * 1024
log = logging.getLogger("vya_backupdb.pipeline")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class StreamWriter(Protocol):
    """A writer that must be closed to flush its trailer (it never closes the sink)."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Codec:
    name: str
    #: File-name suffix added after the artifact extension ('' for none).
    suffix: str
    default_level: int
    make_writer: Callable[[Writable, int, int], StreamWriter]
    make_reader: Callable[[Readable], Readable]

    def writer(self, sink: Writable, level: int | None = None, threads: int = 0) -> StreamWriter:
        """Return a compressing writer over ``sink`` (closing it does not close ``sink``)."""
        return self.make_writer(sink, self.default_level if level is None else level, threads)

    def reader(self, source: Readable) -> Readable:
        """Return a decompressing reader over ``source``."""
        return self.make_reader(source)


class _PassWriter:
    def __init__(self, sink: Writable):
        self._sink = sink

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        return len(data)

    def end_frame(self) -> None:
        return None

    def close(self) -> None:
        return None


class _IncrementalWriter:
    """Adapter for the stdlib's incremental compressor objects (zlib, bz2, lzma)."""

    def __init__(self, sink: Writable, compressor: _Compressor):
        self._sink = sink
        self._compressor = compressor
        self._closed = False

    def write(self, data: bytes, /) -> int:
        out = self._compressor.compress(data)
        if out:
            self._sink.write(out)
        return len(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            tail = self._compressor.flush()
            if tail:
                self._sink.write(tail)


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Decompressor(Protocol):
    def decompress(self, data: bytes, /) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


class _IncrementalReader:
    """Adapter turning a decompressor factory into a reader; handles concatenated members.

    The decompressor's outputs are kept as they come (a queue of pieces) and joined once per
    read: one copy of every byte. Appending them to a bytearray and slicing each read off it
    copied every byte three times (append, slice, bytes): the benchmark's 783 MB zstd backup
    decompressed in 0.33 s that way, 0.29 s this way (the ``zstd`` tool: 0.25–0.28 s).
    """

    def __init__(
        self,
        source: Readable,
        factory: Callable[[], _Decompressor],
        name: str,
        feed: int = 64 * 1024,
    ):
        # ``feed`` bounds memory: one call expands at most feed × the codec's maximal ratio
        # (about 1:1000 for gzip, far more for zstd/bz2/xz on runs of zeros), so the codecs
        # with huge ratios are fed small slices.
        self._feed = feed
        self._source = source
        self._factory = factory
        self._name = name
        self._dec = factory()
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._started = False

    def _fill(self, want: int) -> None:
        while self._buffered < want and not self._done:
            data = self._source.read(self._feed)
            if not data:
                if self._started and not self._dec.eof:
                    raise EOFError(f"{self._name} stream is truncated")
                self._done = True
                return
            while data:
                if self._dec.eof:
                    # Concatenated members (e.g. `cat a.gz b.gz`): start a new decompressor.
                    self._dec = self._factory()
                self._started = True
                out = self._dec.decompress(data)
                if out:
                    self._pieces.append(out)
                    self._buffered += len(out)
                data = self._dec.unused_data if self._dec.eof else b""

    def read(self, size: int = -1, /) -> bytes:
        want = size if size and size > 0 else CHUNK
        self._fill(want)
        pieces = self._pieces
        if not pieces:
            return b""
        if len(pieces[0]) >= want or len(pieces) == 1:
            first = pieces.popleft()
            if len(first) > want:
                pieces.appendleft(first[want:])
                first = first[:want]
            self._buffered -= len(first)
            return first
        taken: list[bytes] = []
        left = want
        while pieces and left > 0:
            piece = pieces.popleft()
            if len(piece) > left:
                pieces.appendleft(piece[left:])
                piece = piece[:left]
            taken.append(piece)
            left -= len(piece)
        out = b"".join(taken)
        self._buffered -= len(out)
        return out


class _ToolWriter:
    """Compress through an external multithreaded tool (pigz, ``xz -T``): our writes go to
    its stdin; a thread moves its stdout into ``sink``. ``close`` waits for the tool and
    checks its exit status; ``abort`` kills it (the backup failed: the output is dropped)."""

    def __init__(self, sink: Writable, argv: list[str]):
        self._sink = sink
        self._name = os.path.basename(argv[0])
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close/abort
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"{self._name}-out", daemon=True)
        self._thread.start()
        self._closed = False

    def _drain(self) -> None:
        assert self._proc.stdout is not None
        try:
            while data := self._proc.stdout.read(CHUNK):
                self._sink.write(data)
        except BaseException as exc:  # re-raised by write/close on the caller's thread
            self._error = exc
            self._proc.kill()

    def _failure(self, detail: str) -> BackupFailed:
        self._stderr.seek(0)
        message = self._stderr.read().decode("utf-8", "replace").strip()
        return BackupFailed(
            f"compressor {self._name} failed ({detail})",
            hint="Set compression.threads: 1 to compress in-process, or check the tool.",
            details=message[-2000:] or None,
        )

    def write(self, data: bytes, /) -> int:
        assert self._proc.stdin is not None
        if self._error is not None:
            raise self._error
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self._thread.join()
            if self._error is not None:
                raise self._error from None
            raise self._failure(f"exit status {self._proc.wait()}") from None
        return len(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        self._thread.join()
        returncode = self._proc.wait()
        try:
            if self._error is not None:
                raise self._error
            if returncode != 0:
                raise self._failure(f"exit status {returncode}")
        finally:
            self._stderr.close()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._proc.kill()
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._thread.join()
        self._proc.wait()
        self._stderr.close()


def _parallel_tool(name: str, threads: int) -> str | None:
    """Return the path of ``name`` when more than one thread is wanted and it is installed."""
    if _threads(threads) <= 1:
        return None
    path = shutil.which(name)
    if path is None:
        log.debug("%s is not installed: compressing on one thread", name)
    return path


def _gzip_writer(sink: Writable, level: int, threads: int) -> StreamWriter:
    pigz = _parallel_tool("pigz", threads)
    if pigz is not None:
        return _ToolWriter(sink, [pigz, "-c", "-n", f"-{level}", "-p", str(_threads(threads))])
    # wbits=31: gzip container, readable by gunzip. mtime 0 keeps output reproducible.
    return _IncrementalWriter(sink, zlib.compressobj(level, zlib.DEFLATED, 31))


def _gzip_reader(source: Readable) -> Readable:
    return _IncrementalReader(source, lambda: zlib.decompressobj(31), "gzip")


def _bz2_writer(sink: Writable, level: int, threads: int) -> StreamWriter:
    return _IncrementalWriter(sink, bz2.BZ2Compressor(level))


def _bz2_reader(source: Readable) -> Readable:
    return _IncrementalReader(source, bz2.BZ2Decompressor, "bzip2", feed=1024)


def _xz_writer(sink: Writable, level: int, threads: int) -> StreamWriter:
    xz = _parallel_tool("xz", threads)
    if xz is not None:
        return _ToolWriter(sink, [xz, "-c", f"-{level}", f"-T{_threads(threads)}"])
    return _IncrementalWriter(sink, lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=level))


def _xz_reader(source: Readable) -> Readable:
    return _IncrementalReader(
        source, lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ), "xz", feed=1024
    )


def _threads(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


class _ZstdWriter:
    def __init__(self, sink: Writable, level: int, threads: int):
        compressor = zstandard.ZstdCompressor(level=level, threads=_threads(threads))
        self._writer = compressor.stream_writer(sink, closefd=False)  # type: ignore[arg-type]

    def write(self, data: bytes, /) -> int:
        self._writer.write(data)
        return len(data)

    def end_frame(self) -> None:
        """End the current zstd frame (the next write starts a new, independent one)."""
        self._writer.flush(zstandard.FLUSH_FRAME)

    def close(self) -> None:
        self._writer.close()  # type: ignore[no-untyped-call]


def _zstd_reader(source: Readable) -> Readable:
    # decompressobj (not stream_reader) because it tells whether the last frame was complete:
    # a truncated backup must fail loudly, not restore half a database.
    return _IncrementalReader(
        source,
        lambda: zstandard.ZstdDecompressor().decompressobj(),
        "zstd",
        feed=2048,
    )


class _Lz4Writer:
    def __init__(self, sink: Writable, level: int, threads: int):
        import lz4.frame

        self._sink = sink
        self._compressor = lz4.frame.LZ4FrameCompressor(compression_level=level)
        self._sink.write(self._compressor.begin())

    def write(self, data: bytes, /) -> int:
        out = self._compressor.compress(data)
        if out:
            self._sink.write(out)
        return len(data)

    def close(self) -> None:
        self._sink.write(self._compressor.flush())


def _lz4_reader(source: Readable) -> Readable:
    import lz4.frame

    return _IncrementalReader(source, lz4.frame.LZ4FrameDecompressor, "lz4", feed=4096)


CODECS: dict[str, Codec] = {
    "none": Codec("none", "", 0, lambda s, lv, t: _PassWriter(s), lambda r: r),
    "gzip": Codec("gzip", ".gz", 6, _gzip_writer, _gzip_reader),
    "bzip2": Codec("bzip2", ".bz2", 9, _bz2_writer, _bz2_reader),
    "xz": Codec("xz", ".xz", 6, _xz_writer, _xz_reader),
    "zstd": Codec("zstd", ".zst", 3, _ZstdWriter, _zstd_reader),
    "lz4": Codec("lz4", ".lz4", 1, _Lz4Writer, _lz4_reader),
}


@contextlib.contextmanager
def aborting(writer: StreamWriter) -> Iterator[StreamWriter]:
    """Yield ``writer``; if the block fails, abort it (stop a compressing child process).
    On success the caller closes it, in the order its sinks need."""
    try:
        yield writer
    except BaseException:
        abort = getattr(writer, "abort", None)
        if abort is not None:
            abort()
        raise


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``; raise KeyError when unknown."""
    return CODECS[name]


def codec_for(config: CompressionConfig) -> tuple[Codec, int, int]:
    """Return (codec, level, threads) for a compression config."""
    codec = CODECS[config.algorithm]
    level = codec.default_level if config.level is None else config.level
    return codec, level, config.threads


def codec_from_suffix(filename: str) -> Codec:
    """Guess the codec from a file name (used only when no record says otherwise)."""
    for codec in CODECS.values():
        if codec.suffix and filename.endswith(codec.suffix):
            return codec
    return CODECS["none"]
