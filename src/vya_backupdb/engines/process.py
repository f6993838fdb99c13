"""Running external tools (pg_dump, mariadb-dump, psql, ...) safely.

Rules (STYLE.md rule 5 and 6): argv is built by pure functions elsewhere and run here without
a shell; secrets travel through the environment or 0600 temporary files, never argv; stderr is
drained concurrently and its tail kept for error messages (with secrets masked); the exit status
is checked at EOF; the child is killed when the reader is closed early.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import glob
import logging
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from vya_backupdb.errors import BackupFailed, ToolMissing, VyaError

log = logging.getLogger("vya_backupdb.engines.process")

STDERR_TAIL_LINES = 30
COPY_CHUNK = 1024 * 1024
#: The pipe a dump that is read ahead comes through (see _channel).
DUMP_PIPE_SIZE = 1024 * 1024
#: The stdio buffer of a dump tool writing to such a pipe (``Command.stdout_buffer``): one
#: write fills the pipe at most, and our 1 MiB reads take it in one piece.
DUMP_STDOUT_BUFFER = DUMP_PIPE_SIZE

# PostgreSQL's versioned bin dirs, newest first: Debian keeps the tools there, with wrappers
# in /usr/bin that pick a version per cluster.
_EXTRA_TOOL_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Command:
    """An argv ready to run, plus extra environment (which may hold secrets)."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    #: Values to mask in anything displayed or logged (passwords).
    secrets: Sequence[str] = ()
    #: For a tool that reads a long stream from its stdin through C stdio (pg_restore, psql
    #: ``-f -``): the stdio buffer size to give it, as ``stdbuf -i`` would (see
    #: :func:`_environment`); 0 leaves the tool's default (4 KiB reads).
    stdin_buffer: int = 0
    #: For a tool that writes a long stream to its stdout through C stdio (pg_dump,
    #: mariadb-dump): its stdio buffer size, as ``stdbuf -o`` would; 0 leaves the default
    #: (4 KiB writes into a pipe).
    stdout_buffer: int = 0

    def display(self) -> str:
        """Return the command line for logs and metadata, with secrets masked."""
        return mask(shlex.join(self.argv), self.secrets)


def mask(text: str, secrets: Sequence[str]) -> str:
    """Return ``text`` with every secret value replaced by ``****``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


def find_tool(names: Sequence[str], package: str) -> str:
    """Return the absolute path of the first tool of ``names`` found; raise ToolMissing."""
    for name in names:
        found = shutil.which(name)
        if found and os.path.basename(os.path.realpath(found)) == "pg_wrapper":
            # Debian's pg_wrapper (a Perl script, ~40 ms a call) picks the newest installed
            # version for a remote host anyway: run that version's binary directly.
            found = _versioned(name) or found
        found = found or _versioned(name)
        if found:
            return found
    raise ToolMissing(
        f"{names[0]} is not installed (looked for: {', '.join(names)})",
        hint=f"Install the Debian package '{package}': sudo apt-get install {package}",
    )


def _versioned(name: str) -> str | None:
    for directory in _EXTRA_TOOL_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool_version(path: str) -> str:
    """Return the first line of ``path --version`` (empty string when it fails)."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


_versions: dict[str, Future[str]] = {}
_versions_lock = threading.Lock()


def prefetch_tool_version(path: str) -> None:
    """Start looking up ``path --version`` on a daemon thread (once per path and process), so
    that :func:`cached_tool_version` finds it ready instead of waiting for the tool to start."""
    with _versions_lock:
        if path in _versions:
            return
        future: Future[str] = Future()
        _versions[path] = future

    def lookup() -> None:
        try:
            future.set_result(tool_version(path))
        except BaseException as exc:  # pragma: no cover - tool_version catches what it expects
            future.set_exception(exc)

    threading.Thread(target=lookup, name="tool-version", daemon=True).start()


def cached_tool_version(path: str) -> str:
    """Return :func:`tool_version` of ``path``, looked up once per process."""
    prefetch_tool_version(path)
    return _versions[path].result()


@contextlib.contextmanager
def secret_file(content: str, suffix: str = "") -> Iterator[Path]:
    """Yield a 0600 temporary file holding ``content``; remove it afterwards."""
    fd, name = tempfile.mkstemp(prefix="vya-", suffix=suffix)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


class _StderrCollector(threading.Thread):
    """Drains a child's stderr so it can never block, keeping the last lines."""

    def __init__(self, stream: IO[bytes], secrets: Sequence[str]):
        super().__init__(daemon=True, name="stderr-drain")
        self._stream = stream
        self._secrets = secrets
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.lines.append(mask(line, self._secrets))
        self._stream.close()

    def tail(self) -> str:
        return "\n".join(self.lines)


#: Where coreutils installs the library behind ``stdbuf`` (Debian/Ubuntu, Fedora/RHEL, SUSE).
_STDBUF_LIBRARIES = (
    "/usr/libexec/coreutils/libstdbuf.so",
    "/usr/lib/coreutils/libstdbuf.so",
    "/usr/lib64/coreutils/libstdbuf.so",
)


@functools.cache
def _stdbuf_library() -> str | None:
    return next((p for p in _STDBUF_LIBRARIES if os.path.isfile(p)), None)


def _environment(command: Command) -> dict[str, str]:
    env = dict(os.environ)
    env.update(command.env)
    env.setdefault("LC_ALL", "C.UTF-8")
    wanted = command.stdin_buffer > 0 or command.stdout_buffer > 0
    library = _stdbuf_library() if wanted else None
    if library is not None:
        # What ``stdbuf -i SIZE -o SIZE`` does, without a wrapper process: the tool reads its
        # stdin, or writes its stdout, SIZE bytes at a time instead of 4 KiB — on a 1 GiB
        # dump or restore, 250 000 fewer system calls and wake-ups of the process at the
        # other end (docs/performance.md, eighth and ninth rounds). Without coreutils'
        # library the tool just keeps its default buffers.
        preload = env.get("LD_PRELOAD", "").strip()
        env["LD_PRELOAD"] = f"{library} {preload}" if preload else library
        if command.stdin_buffer > 0:
            env["_STDBUF_I"] = str(command.stdin_buffer)
        if command.stdout_buffer > 0:
            env["_STDBUF_O"] = str(command.stdout_buffer)
    return env


def _spawn(command: Command, stdin: int | IO[bytes] | None, stdout: int | IO[bytes] | None):  # type: ignore[no-untyped-def]
    try:
        return subprocess.Popen(
            list(command.argv),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=_environment(command),
            start_new_session=True,  # Ctrl-C reaches us, we stop the child deliberately
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"cannot run {command.argv[0]}: {exc.strerror}") from None


def _channel(pipe_size: int | None = None) -> tuple[int, int]:
    """Return the descriptors (ours, the child's) of a stream from a child's stdout.

    By default a Unix socket pair, not a pipe: the readers of these streams when they are
    handed to another tool (pg_restore, the mariadb client) read their stdin 4 KiB at a
    time, and a writer blocked on a full 64 KiB pipe is woken after every one of those reads;
    a socket wakes it once half its buffer is free. Measured on a 1 GiB dump: a sixth of the
    context switches and ~0.5 s less CPU (docs/performance.md). The difference a consumer
    sees: when it exits with bytes unread, the writer gets ECONNRESET instead of SIGPIPE (see
    :func:`_consumer_went_away`).

    ``pipe_size``: a pipe of that many bytes instead (Linux F_SETPIPE_SZ, capped by
    /proc/sys/fs/pipe-max-size; 64 KiB where it cannot be set), for a dump that we read in
    1 MiB chunks: its writes queue up instead of handing over every few KiB (seventh round:
    half the context switches for mariadb-dump), and a dump tool writing 1 MiB at a time
    (``Command.stdout_buffer``) fills it with one write that one of our reads takes whole
    (ninth round: per backup of the 1 GiB benchmark database, pg_dump's 191,229 writes and
    our 173,594 reads became 810 and 1,854; docs/performance.md).
    """
    if pipe_size is None:
        ours, theirs = socket.socketpair()
        return ours.detach(), theirs.detach()
    read_end, write_end = os.pipe()
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        for size in (pipe_size, _pipe_max_size()):
            try:
                fcntl.fcntl(read_end, set_size, size)
                break
            except OSError:  # above pipe-max-size for an unprivileged user: try the cap
                continue
    return read_end, write_end


def _pipe_max_size() -> int:
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return 65536


def _consumer_went_away(returncode: int, stderr_tail: str) -> bool:
    """Whether a producer failed only because its reader stopped reading: killed by SIGPIPE
    (a pipe), or a write error EPIPE/ECONNRESET (a socket; LC_ALL=C.UTF-8 keeps the
    messages in English)."""
    if returncode == -signal.SIGPIPE:
        return True
    return returncode > 0 and any(
        os.strerror(code) in stderr_tail for code in (errno.EPIPE, errno.ECONNRESET)
    )


def _failure(
    error_cls: type[VyaError], command: Command, returncode: int, stderr_tail: str
) -> VyaError:
    tool = Path(command.argv[0]).name
    if returncode < 0:
        what = f"{tool} was killed by signal {signal.Signals(-returncode).name}"
    else:
        what = f"{tool} exited with status {returncode}"
    last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "(no error output)"
    return error_cls(f"{what}: {last}", details=stderr_tail or None)


class ToolReader:
    """A child process whose stdout is read as a byte stream.

    Use as a context manager: leaving the block after EOF waits for the child and raises
    ``error_cls`` (with the stderr tail) when it failed; leaving it early or by an exception
    kills the child. A failed dump therefore can never look like a complete stream.

    ``pipe_size``: read the tool's stdout through a pipe of that size rather than a socket
    (see :func:`_channel`; ignored when ``direct``).
    """

    def __init__(
        self,
        command: Command,
        error_cls: type[VyaError] = BackupFailed,
        *,
        direct: bool = False,
        stdin: Readable | IO[bytes] | None = None,
        pipe_size: int | None = None,
    ):
        self.command = command
        #: feed() may connect this tool's stdout straight to the next tool's stdin.
        self.direct = direct
        self._error_cls = error_cls
        # ``stdin``: an open file (it has a descriptor) is read by the tool itself, no byte
        # through us — its offset, shared with the tool, tells how far the tool has read; any
        # other stream is written to the tool's stdin by a thread of ours.
        fed = stdin is not None and not hasattr(stdin, "fileno")
        child_stdin = subprocess.PIPE if fed else stdin or subprocess.DEVNULL
        # A stream that may go straight to another tool stays a socket (see _channel).
        ours, theirs = _channel(None if direct else pipe_size)
        try:
            self._proc = _spawn(command, child_stdin, theirs)  # type: ignore[arg-type]
        except BaseException:
            os.close(ours)
            raise
        finally:
            os.close(theirs)
        assert self._proc.stderr is not None
        self._stdout = open(ours, "rb")  # noqa: SIM115 - closed by finish/abort
        self._stderr = _StderrCollector(self._proc.stderr, command.secrets)
        self._stderr.start()
        self._feeder: threading.Thread | None = None
        self._feed_error: OSError | None = None
        if fed:
            # E.g. compressed frames for a decompressor; it ends when the tool stops reading
            # (killed, or done early).
            self._feeder = threading.Thread(
                target=self._feed_stdin, args=(stdin,), name="tool-stdin", daemon=True
            )
            self._feeder.start()
        self._eof = False
        self._handed_off = False
        self._timer: threading.Timer | None = None
        self._timeout: float | None = None
        self._timed_out = False
        self._ahead: _ReadAhead | None = None

    def _feed_stdin(self, source: Readable) -> None:
        assert self._proc.stdin is not None
        try:
            while chunk := source.read(COPY_CHUNK):
                self._proc.stdin.write(chunk)
        except (BrokenPipeError, ValueError):  # the tool exited or was killed: it says why
            pass
        except OSError as exc:  # our source failed: the tool saw a short input
            self._feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def _join_feeder(self) -> None:
        if self._feeder is not None:
            self._feeder.join()

    def set_timeout(self, seconds: float) -> None:
        """Kill the tool when it has not finished ``seconds`` from now (a per-database limit);
        leaving the block then raises ``error_cls`` saying it timed out."""
        self._timeout = seconds
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self._timed_out = True
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def read_ahead(self, limit: int) -> None:
        """Until the first read, copy up to ``limit`` bytes of the tool's output to an unnamed
        temporary file, on a thread: a tool started before its reader is ready (a backup's
        head start, engines/pg_head.py) runs instead of waiting on a full pipe. Reads serve
        those bytes first, in order; past ``limit`` the tool waits for the reader as usual.
        Not for a ``direct`` reader (its descriptor goes to another process as is)."""
        if self.direct:
            raise ValueError("a direct reader's output is handed off, not read ahead")
        try:
            self._ahead = _ReadAhead(self._stdout.fileno(), limit)
        except OSError as exc:  # no temporary file (TMPDIR full or read-only): no read-ahead
            log.debug("no read-ahead for %s: %s", Path(self.command.argv[0]).name, exc)

    def _take_ahead(self) -> _ReadAhead | None:
        ahead = self._ahead
        if ahead is not None and ahead.stop():
            return ahead
        self._ahead = None
        if ahead is not None:
            ahead.close()
        return None

    def read(self, size: int = -1, /) -> bytes:
        size = size if size and size > 0 else COPY_CHUNK
        ahead = self._take_ahead() if self._ahead is not None else None
        data: bytes = ahead.read(size) if ahead is not None else self._stdout.read(size)
        if not data:
            self._eof = True
        return data

    def handoff(self) -> IO[bytes]:
        """Give the tool's stdout to another process (feed), which reads it directly.

        From then on the consumer's exit status is what counts: it may stop reading early
        (the tool then fails its next write), so :meth:`finish` only reaps the tool. Use it for
        data already verified (e.g. a decompressor over a checksummed file).
        """
        self._eof = True
        self._handed_off = True
        stdout: IO[bytes] = self._stdout
        return stdout

    def release(self) -> None:
        """Close our copy of a handed-off stdout (the consumer holds its own)."""
        with contextlib.suppress(OSError):
            self._stdout.close()

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if self._ahead is not None:
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        n = self._stdout.readinto(buffer)
        if not n:
            self._eof = True
        return int(n or 0)

    def finish(self) -> None:
        """Wait for the child after EOF; raise ``error_cls`` when it exited non-zero."""
        if not self._eof:
            while self.read(COPY_CHUNK):
                pass
        returncode = self._proc.wait()
        self._join_feeder()
        self._cancel_timer()
        self._stderr.join(timeout=10)
        self._stdout.close()
        if self._feed_error is not None:
            tool = Path(self.command.argv[0]).name
            raise self._error_cls(f"reading the input of {tool} failed: {self._feed_error}")
        if self._timed_out:
            tool = Path(self.command.argv[0]).name
            raise self._error_cls(
                f"{tool} timed out after {self._timeout:.0f}s and was stopped",
                hint="Raise timeout_seconds for this instance, or look for locks blocking the "
                "dump (pg_stat_activity / SHOW PROCESSLIST).",
                details=self._stderr.tail() or None,
            )
        if returncode != 0 and not self._handed_off:
            raise _failure(self._error_cls, self.command, returncode, self._stderr.tail())

    def exit_error(self, *, broken_pipe_ok: bool = False) -> VyaError | None:
        """Wait for a handed-off tool; return the ``error_cls`` its exit status means, or None.

        For a consumer that must read the whole stream (a client executing a script): its
        exit status alone cannot tell a complete input from one cut short by the producer.
        ``broken_pipe_ok``: failing because the consumer stopped reading first (SIGPIPE,
        EPIPE, ECONNRESET) is not an error.
        None too when the output was never handed off (the tool may be waiting for a reader;
        leaving the block checks it as for any reader).
        """
        if not self._handed_off:
            return None
        returncode = self._proc.wait()
        self._stderr.join(timeout=10)
        if returncode == 0 or (
            broken_pipe_ok and _consumer_went_away(returncode, self._stderr.tail())
        ):
            return None
        return _failure(self._error_cls, self.command, returncode, self._stderr.tail())

    def abort(self) -> None:
        """Kill the child (and its process group) and reap it."""
        self._cancel_timer()
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._join_feeder()
        self._stderr.join(timeout=5)
        if self._ahead is not None:
            self._ahead.stop()
            self._ahead.close()
            self._ahead = None
        with contextlib.suppress(OSError):
            self._stdout.close()

    @property
    def stderr_tail(self) -> str:
        return self._stderr.tail()

    def __enter__(self) -> ToolReader:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.finish()
        except BaseException:
            self.abort()
            raise


class _ReadAhead:
    """A thread copying a stream's first bytes to an unnamed temporary file (0600, gone when
    closed or when the process dies) until :meth:`stop`; then :meth:`read` serves them."""

    #: How long the thread waits for output before it looks whether it should stop.
    POLL = 0.05

    def __init__(self, fd: int, limit: int):
        self._fd = fd
        self._limit = limit
        self._file = tempfile.TemporaryFile(prefix="vya-read-ahead-")  # noqa: SIM115 - close()
        self._stopping = threading.Event()
        self._written = 0
        #: A chunk read from the stream that the file did not take (e.g. disk full): served
        #: after the file, never lost.
        self._kept = b""
        self._stopped = False
        self._thread = threading.Thread(target=self._copy, name="read-ahead", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        out = self._file.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while not self._stopping.is_set() and self._written < self._limit:
                if not selector.select(self.POLL):
                    continue
                try:
                    chunk = os.read(self._fd, min(COPY_CHUNK, self._limit - self._written))
                except OSError:
                    return  # the reader sees the same error, or EOF, on its own read
                if not chunk:
                    return  # EOF: the reader's next read of the stream says so again
                done = 0
                try:
                    while done < len(chunk):
                        done += os.write(out, memoryview(chunk)[done:])
                except OSError:
                    self._kept = chunk[done:]
                    return
                finally:
                    self._written += done

    def stop(self) -> bool:
        """Stop copying (waits for the chunk in hand); return whether there are bytes to
        serve. Idempotent."""
        if not self._stopped:
            self._stopping.set()
            self._thread.join()
            self._stopped = True
            self._file.seek(0)
            log.debug("read ahead: %d bytes while the reader got ready", self._written)
        return self._remaining() > 0

    def _remaining(self) -> int:
        return self._written - self._file.tell() + len(self._kept)

    def read(self, size: int) -> bytes:
        data = self._file.read(min(size, self._written - self._file.tell()))
        if data:
            return data
        data, self._kept = self._kept[:size], self._kept[size:]
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def feed(
    command: Command,
    source: Readable | None,
    error_cls: type[VyaError],
    *,
    stdout_tail: bool = True,
    may_stop_reading: bool = False,
    cancel: threading.Event | None = None,
) -> str:
    """Run ``command`` with ``source`` streamed to its stdin; return the stdout tail.

    A ``source`` that is itself a tool's output (:class:`ToolReader`, ``direct=True``) becomes
    the command's stdin as is: the bytes go from one process to the other, not through us.
    Raise ``error_cls`` with the stderr tail when the tool fails, or when it stops reading
    early — unless ``may_stop_reading`` (a tool that reads only what it needs, such as
    ``pg_restore --use-list`` on a stream) and it then exits 0. Setting ``cancel`` stops it.
    """
    direct = isinstance(source, ToolReader) and source.direct
    stdin: int | IO[bytes] | None = subprocess.DEVNULL
    sock: socket.socket | None = None  # ours; the tool gets the other end as its stdin
    theirs: socket.socket | None = None
    if direct:
        assert isinstance(source, ToolReader)
        stdin = source.handoff()
    elif source is not None:
        # A socket, not a pipe, for the same reason as _channel: the tools we feed read
        # their stdin 4 KiB at a time, and a writer on a full pipe is woken for each read.
        sock, theirs = socket.socketpair()
        stdin = theirs.fileno()
    out_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; bounded by tool output
    try:
        proc = _spawn(command, stdin, out_file)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    finally:
        if theirs is not None:
            theirs.close()
    if direct:
        assert isinstance(source, ToolReader)
        source.release()  # the child has its copy; ours would keep the producer blocked
    assert proc.stderr is not None
    collector = _StderrCollector(proc.stderr, command.secrets)
    collector.start()
    broken = False
    try:
        if direct:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        raise error_cls("stopped: another worker failed") from None
        elif sock is not None:
            assert source is not None
            try:
                while chunk := source.read(COPY_CHUNK):
                    if cancel is not None and cancel.is_set():
                        raise error_cls("stopped: another worker failed")
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the tool stopped reading
                broken = True
            finally:
                sock.close()
        returncode = proc.wait()
    except BaseException:
        if sock is not None:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out_file.close()
        raise
    collector.join(timeout=10)
    out_file.seek(0, os.SEEK_END)
    size = out_file.tell()
    out_file.seek(max(0, size - 8192))
    tail = mask(out_file.read().decode("utf-8", errors="replace"), command.secrets)
    out_file.close()
    if returncode != 0 or (broken and not may_stop_reading):
        err = collector.tail() or tail
        raise _failure(error_cls, command, returncode if returncode else 1, err)
    return tail if stdout_tail else ""


def run(command: Command, error_cls: type[VyaError], *, timeout: float = 300) -> str:
    """Run a short command; return its stdout; raise ``error_cls`` with stderr when it fails."""
    try:
        proc = subprocess.run(
            list(command.argv),
            capture_output=True,
            env=_environment(command),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"cannot run {command.argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise error_cls(f"{Path(command.argv[0]).name} timed out after {timeout:.0f}s") from None
    stdout = proc.stdout.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        stderr = mask(proc.stderr.decode("utf-8", errors="replace"), command.secrets)
        raise _failure(error_cls, command, proc.returncode, stderr)
    return mask(stdout, command.secrets)
