"""engines/process.py: exit status checked at EOF, stderr tail kept and masked, timeouts."""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from vya_backupdb.engines.process import (
    Command,
    ToolReader,
    _consumer_went_away,
    _environment,
    _stdbuf_library,
    feed,
    find_tool,
    run,
)
from vya_backupdb.errors import BackupFailed, RestoreFailed, ToolMissing

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-pw"


def _sh(script: str) -> Command:
    return Command(["/bin/sh", "-c", script], env={"PW": SECRET}, secrets=[SECRET])


def test_tool_reader_success_streams_all_output() -> None:
    with ToolReader(_sh("seq 1 100000")) as reader:
        data = b""
        while chunk := reader.read(4096):
            data += chunk
    assert data.splitlines()[-1] == b"100000"


def test_tool_reader_nonzero_exit_raises_with_masked_stderr_tail() -> None:
    with (
        pytest.raises(BackupFailed) as caught,
        ToolReader(_sh('echo partial; echo "fatal: auth for $PW failed" >&2; exit 3')) as reader,
    ):
        while reader.read(100):
            pass
    assert "exited with status 3" in caught.value.message
    assert "****" in caught.value.message
    assert SECRET not in caught.value.message
    assert SECRET not in (caught.value.details or "")


def test_tool_reader_timeout_kills_the_tool_and_says_so() -> None:
    start = time.monotonic()
    with pytest.raises(BackupFailed, match="timed out after 1s"), ToolReader(_sh("sleep 30")) as r:
        r.set_timeout(1)
        while r.read(100):
            pass
    assert time.monotonic() - start < 10


def test_tool_reader_early_exit_by_exception_kills_child() -> None:
    reader = ToolReader(_sh("yes"))
    with pytest.raises(RuntimeError), reader:
        reader.read(10)
        raise RuntimeError("consumer failed")
    assert reader._proc.poll() is not None


def test_tool_output_is_a_socket_pair_read_to_the_end() -> None:
    with ToolReader(_sh("head -c 3000000 /dev/zero")) as reader:
        assert stat.S_ISSOCK(os.fstat(reader._stdout.fileno()).st_mode)
        total = 0
        while chunk := reader.read(1 << 20):
            total += len(chunk)
    assert total == 3_000_000


def test_tool_output_read_ahead_comes_through_a_deep_pipe() -> None:
    # A pipe of the size asked (F_SETPIPE_SZ; root may exceed pipe-max-size, others get the
    # cap), read to the end; the exit status is still checked at EOF.
    with ToolReader(_sh("head -c 3000000 /dev/urandom"), pipe_size=1 << 20) as reader:
        fd = reader._stdout.fileno()
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        cap = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == (1 << 20 if os.geteuid() == 0 else cap)
        total = 0
        while chunk := reader.read(1 << 20):
            total += len(chunk)
    assert total == 3_000_000
    with (
        pytest.raises(BackupFailed, match="exited with status 4"),
        ToolReader(_sh("echo partial; exit 4"), pipe_size=1 << 20) as reader,
    ):
        while reader.read(100):
            pass


def test_a_pipe_is_not_used_for_a_stream_handed_to_another_tool() -> None:
    with ToolReader(_sh("echo x"), direct=True, pipe_size=1 << 20) as reader:
        assert stat.S_ISSOCK(os.fstat(reader._stdout.fileno()).st_mode)
        assert reader.read(10) == b"x\n"


def test_closing_a_piped_reader_early_kills_the_tool() -> None:
    reader = ToolReader(_sh("yes"), pipe_size=1 << 20)
    with pytest.raises(RuntimeError), reader:
        reader.read(10)
        raise RuntimeError("consumer failed")
    assert reader._proc.poll() is not None


def test_handed_off_producer_whose_consumer_stopped_early_is_not_at_fault() -> None:
    # The consumer exits with bytes unread in the socket: the producer's next write fails
    # with ECONNRESET (a pipe would kill it with SIGPIPE) — the consumer's doing, not its own.
    with ToolReader(_sh("head -c 50000000 /dev/zero"), direct=True) as producer:
        tail = feed(_sh("head -c 5 | wc -c"), producer, RestoreFailed, may_stop_reading=True)
        assert tail.strip() == "5"
        assert producer.exit_error(broken_pipe_ok=True) is None
        assert producer._proc.returncode != 0  # it did fail to write
    with ToolReader(_sh("echo data; echo 'corrupt block' >&2; exit 2"), direct=True) as producer:
        feed(_sh("cat >/dev/null"), producer, RestoreFailed)
        error = producer.exit_error(broken_pipe_ok=True)
        assert error is not None and "corrupt block" in error.message


@pytest.mark.parametrize(
    ("returncode", "stderr", "expected"),
    [
        (-signal.SIGPIPE, "", True),
        (70, "zstd: error 70 : Write error : cannot write block : Connection reset by peer", True),
        (1, "head: error writing 'standard output': Broken pipe", True),
        (1, "zstd: /*stdin*\\ : Data corruption detected", False),
        (-signal.SIGKILL, "", False),
        (0, "", False),
    ],
)
def test_consumer_went_away_tells_write_errors_from_failures(
    returncode: int, stderr: str, expected: bool
) -> None:
    assert _consumer_went_away(returncode, stderr) is expected


def test_command_display_masks_secrets() -> None:
    command = Command(["tool", f"--x={SECRET}"], secrets=[SECRET])
    assert SECRET not in command.display()


def test_feed_streams_stdin_and_reports_failure() -> None:
    tail = feed(_sh("wc -c"), io.BytesIO(b"x" * 5_000_000), RestoreFailed)
    assert tail.strip() == "5000000"
    with pytest.raises(RestoreFailed, match="status 4"):
        feed(_sh("cat >/dev/null; echo bad >&2; exit 4"), io.BytesIO(b"abc"), RestoreFailed)


def test_feed_gives_the_tool_a_socket_as_stdin() -> None:
    # Not a pipe: tools read their stdin 4 KiB at a time, and a writer on a full pipe is
    # woken for every such read (docs/performance.md, eleventh round).
    tail = feed(_sh("stat -L -c %F /dev/stdin; wc -c"), io.BytesIO(b"y" * 3_000_000), RestoreFailed)
    kind, count = tail.split("\n")[:2]
    assert kind == "socket"
    assert count.strip() == "3000000"


def test_feed_to_a_tool_that_stops_reading_early() -> None:
    # Exit 0 with bytes unread: fine only where the caller allows it (pg_restore --use-list).
    source = io.BytesIO(b"z" * 20_000_000)
    assert feed(_sh("head -c 5 >/dev/null; echo ok"), source, RestoreFailed,
                may_stop_reading=True).strip() == "ok"  # fmt: skip
    with pytest.raises(RestoreFailed, match="exited with status 1"):
        feed(_sh("head -c 5 >/dev/null"), io.BytesIO(b"z" * 20_000_000), RestoreFailed)


def test_run_returns_stdout_and_raises_on_failure() -> None:
    assert run(_sh("echo hi"), RestoreFailed).strip() == "hi"
    with pytest.raises(RestoreFailed):
        run(_sh("exit 2"), RestoreFailed)


def test_find_tool_missing_names_the_package() -> None:
    with pytest.raises(ToolMissing) as caught:
        find_tool(["vya-no-such-tool"], "some-package")
    assert "apt-get install some-package" in caught.value.hint


def test_find_tool_skips_debians_pg_wrapper_for_the_versioned_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vya_backupdb.engines import process

    wrapper = tmp_path / "share" / "pg_wrapper"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "pg_dump").symlink_to(wrapper)
    versioned = tmp_path / "lib" / "17" / "bin"
    versioned.mkdir(parents=True)
    (versioned / "pg_dump").write_text("#!/bin/sh\n")
    (versioned / "pg_dump").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.setattr(process, "_EXTRA_TOOL_DIRS", [str(versioned)])
    assert process.find_tool(["pg_dump"], "postgresql-client") == str(versioned / "pg_dump")
    # Without a versioned binary the wrapper is still better than nothing.
    monkeypatch.setattr(process, "_EXTRA_TOOL_DIRS", [])
    assert process.find_tool(["pg_dump"], "postgresql-client") == str(on_path / "pg_dump")


@pytest.fixture
def stdbuf(monkeypatch: pytest.MonkeyPatch) -> str:
    """coreutils' libstdbuf (skip without it), with no LD_PRELOAD of the caller's set."""
    library = _stdbuf_library()
    if library is None:
        pytest.skip("coreutils' libstdbuf is not installed")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    return library


def test_a_tool_reading_a_long_stdin_gets_a_big_stdio_buffer_through_libstdbuf(
    monkeypatch: pytest.MonkeyPatch, stdbuf: str
) -> None:
    library = stdbuf
    env = _environment(Command(["pg_restore"], stdin_buffer=1 << 20))
    assert (env["LD_PRELOAD"], env["_STDBUF_I"]) == (library, "1048576")
    assert "LD_PRELOAD" not in _environment(Command(["pg_restore"]))
    monkeypatch.setenv("LD_PRELOAD", "/opt/their.so")  # the user's own preload is kept
    env = _environment(Command(["pg_restore"], stdin_buffer=1 << 20))
    assert env["LD_PRELOAD"] == f"{library} /opt/their.so"
    # A real stdio reader (sed reads with getline) still reads every byte through it.
    data = b"".join(b"line %d\n" % i for i in range(200_000))
    out = feed(Command(["sed", "-n", "$="], stdin_buffer=1 << 20), io.BytesIO(data), RestoreFailed)
    assert out.strip() == "200000"


class _HeldOpen:
    """A stdin source that gives ``data`` and then blocks until ``release`` is set (the tool
    stays alive, its last partial buffer unwritten)."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)
        self.release = threading.Event()

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._data.read(size)
        if not chunk:
            self.release.wait(30)
        return chunk


def _writes_for_first_mib(stdout_buffer: int) -> int:
    """Run sed (a C stdio writer) copying 3 MiB through a deep pipe; return how many write
    calls it made by the time 1 MiB of its output had arrived (from /proc/PID/io)."""
    line = b"x" * 63 + b"\n"
    source = _HeldOpen(line * (3 * 2**20 // len(line)))
    command = Command(["sed", "-e", "s/x/y/"], stdout_buffer=stdout_buffer)
    with ToolReader(command, BackupFailed, stdin=source, pipe_size=1 << 20) as reader:
        received = 0
        while received < 2**20:
            received += len(reader.read(1 << 20))
        writes = int(
            next(
                row.split()[1]
                for row in Path(f"/proc/{reader._proc.pid}/io").read_text().splitlines()
                if row.startswith("syscw:")
            )
        )
        source.release.set()
        while reader.read(1 << 20):
            pass
    return writes


def test_a_dump_tool_writing_its_stdout_gets_a_big_stdio_buffer_through_libstdbuf(
    stdbuf: str,
) -> None:
    library = stdbuf
    env = _environment(Command(["pg_dump"], stdout_buffer=1 << 20))
    assert (env["LD_PRELOAD"], env["_STDBUF_O"]) == (library, "1048576")
    assert "_STDBUF_I" not in env
    both = _environment(Command(["x"], stdin_buffer=1 << 16, stdout_buffer=1 << 20))
    assert (both["LD_PRELOAD"], both["_STDBUF_I"], both["_STDBUF_O"]) == (
        library,
        "65536",
        "1048576",
    )
    if not Path("/proc/self/io").exists():
        pytest.skip("no per-process I/O accounting (/proc/PID/io) to count writes")
    # The default: 4 KiB writes, a wake-up of the reader each; with the buffer: 1 MiB ones.
    assert _writes_for_first_mib(0) >= 200
    assert _writes_for_first_mib(1 << 20) <= 2


# -- read ahead (a head start's dump, engines/pg_head.py) -------------------------------------
#: More than a pipe holds (1 MiB at most here): without a reader, the tool would block.
_AHEAD_BYTES = 6 * 1024 * 1024


def _patterned(n: int) -> bytes:
    """``n`` pseudo-random bytes: a swapped, lost or repeated chunk shows."""
    return hashlib.shake_256(b"read-ahead").digest(n)


def _writer(n: int, then: str = "exit 0") -> Command:
    """A tool writing ``_patterned(n)`` to stdout, then running ``then``."""
    code = (
        "import hashlib, sys; "
        f"sys.stdout.buffer.write(hashlib.shake_256(b'read-ahead').digest({n})); "
        "sys.stdout.flush()"
    )
    return Command(["/bin/sh", "-c", f'{sys.executable} -c "{code}" && {then}'])


def _read_all(reader: ToolReader, size: int = 1024 * 1024) -> bytes:
    parts = []
    while chunk := reader.read(size):
        parts.append(chunk)
    return b"".join(parts)


def _wait_exited(reader: ToolReader, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while reader._proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return reader._proc.poll() is not None


def test_read_ahead_lets_the_tool_finish_before_anyone_reads_and_serves_every_byte() -> None:
    with ToolReader(_writer(_AHEAD_BYTES), pipe_size=1024 * 1024) as reader:
        reader.read_ahead(64 * 1024 * 1024)
        assert _wait_exited(reader)  # it wrote 6 MiB with nobody reading: they were kept
        data = _read_all(reader, 100_000)  # reads of another size than the copy's chunks
    assert data == _patterned(_AHEAD_BYTES)


def test_read_ahead_stops_at_its_limit_then_the_stream_goes_on_in_order() -> None:
    with ToolReader(_writer(_AHEAD_BYTES), pipe_size=1024 * 1024) as reader:
        reader.read_ahead(1_500_000)
        ahead = reader._ahead
        assert ahead is not None
        deadline = time.monotonic() + 20
        while ahead._written < 1_500_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert ahead._written == 1_500_000  # not a byte more
        assert reader._proc.poll() is None  # the tool waits for the reader
        into = bytearray(300_000)
        first = bytes(into[: reader.readinto(into)])
        data = first + _read_all(reader)
    assert data == _patterned(_AHEAD_BYTES)


def test_read_ahead_of_a_tool_that_fails_still_fails_the_reader() -> None:
    with (
        pytest.raises(BackupFailed, match="exited with status 3"),
        ToolReader(_writer(2_000_000, "exit 3"), pipe_size=1024 * 1024) as reader,
    ):
        reader.read_ahead(64 * 1024 * 1024)
        assert _wait_exited(reader)
        assert _read_all(reader) == _patterned(2_000_000)  # what it wrote, then the failure


def test_read_ahead_abandoned_unread_kills_the_tool_and_closes_its_file() -> None:
    reader = ToolReader(_writer(_AHEAD_BYTES, "sleep 30"), pipe_size=1024 * 1024)
    reader.read_ahead(64 * 1024 * 1024)
    ahead = reader._ahead
    assert ahead is not None
    reader.abort()
    assert reader._proc.poll() is not None
    assert ahead._file.closed and reader._ahead is None


def test_read_ahead_keeps_a_chunk_its_file_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full while copying ahead: the chunk in hand is served after the file, not lost."""
    real_write = os.write
    calls = {"n": 0}

    def full_after_two(fd: int, data: bytes | memoryview) -> int:
        if threading.current_thread().name == "read-ahead":
            calls["n"] += 1
            if calls["n"] > 2:
                raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_two)
    with ToolReader(_writer(_AHEAD_BYTES), pipe_size=1024 * 1024) as reader:
        reader.read_ahead(64 * 1024 * 1024)
        deadline = time.monotonic() + 20
        while calls["n"] <= 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        data = _read_all(reader)
    assert calls["n"] == 3  # two chunks in the file, the third refused: copying stopped
    assert data == _patterned(_AHEAD_BYTES)


def test_a_direct_reader_cannot_read_ahead() -> None:
    with ToolReader(_sh("echo x"), direct=True) as reader:
        with pytest.raises(ValueError, match="handed off"):
            reader.read_ahead(1024)
        assert reader.read() == b"x\n"


def test_read_ahead_without_a_temporary_directory_just_reads_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    with ToolReader(_writer(2_000_000), pipe_size=1024 * 1024) as reader:
        reader.read_ahead(64 * 1024 * 1024)
        assert reader._ahead is None
        assert _read_all(reader) == _patterned(2_000_000)
