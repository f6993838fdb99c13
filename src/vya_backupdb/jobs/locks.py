"""Per-instance run locks: two runs of the same instance never overlap.

The lock is ``fcntl.flock`` on ``{base_path}/.locks/{instance}.lock``; the kernel drops it when
its process dies, however it dies. Inside the file the holder writes its pid, host, process
start time and when it started, so a second run can name the holder. A clean release empties
the file; a file still naming a holder whose process is gone is therefore stale (killed with
SIGKILL, host crash, or a filesystem where flock is not shared) and is taken over with a
warning. A holder on the same host that is still alive (same pid *and* same process start
time, so a recycled pid is not mistaken for it) keeps the lock even where flock is not
enforced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from vya_backupdb.catalog.layout import safe_component
from vya_backupdb.errors import LockBusy, StorageError

log = logging.getLogger("vya_backupdb.jobs.locks")

LOCK_DIR = ".locks"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a lock, as written in the lock file."""

    pid: int
    host: str
    started_at: str
    process_start: str | None = None
    command: str | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.started_at})"

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """Return the holder in a lock file's text; None when empty or unreadable."""
        try:
            data: Any = json.loads(text)
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                started_at=str(data.get("started_at", "?")),
                process_start=data.get("process_start"),
                command=data.get("command"),
            )
        except (ValueError, KeyError, TypeError):
            return None


def process_start_time(pid: int) -> str | None:
    """Return the kernel start time of ``pid`` (clock ticks since boot), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Return True when a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_path(base_path: Path, instance: str) -> Path:
    return base_path / LOCK_DIR / f"{safe_component(instance)}.lock"


class InstanceLock:
    """An exclusive, non-blocking lock on one instance. Use as a context manager."""

    def __init__(self, base_path: Path, instance: str, *, command: str | None = None):
        self.instance = instance
        self.path = lock_path(base_path, instance)
        self.command = command
        self._fd: int | None = None
        #: The stale holder taken over on acquire, if any (for callers and tests).
        self.took_over: LockHolder | None = None

    def acquire(self) -> None:
        """Take the lock; raise LockBusy naming the holder when another run has it, and
        StorageError when the lock directory cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot create the lock file {self.path}: {exc.strerror}",
                hint="Check that storage.base_path exists and is writable by this user.",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = LockHolder.parse(_read_all(fd))
            os.close(fd)
            raise self._busy(holder) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                f"cannot lock {self.path}: {exc.strerror}",
                hint="The filesystem may not support flock; put storage.base_path on a local "
                "filesystem or one with lock support.",
            ) from None
        previous = LockHolder.parse(_read_all(fd))
        if previous is not None and previous.pid != os.getpid():
            if previous.host == socket.gethostname() and _same_process_alive(previous):
                # flock was not enforced (e.g. some network filesystems), but the holder is
                # demonstrably running: never run twice.
                os.close(fd)
                raise self._busy(previous)
            log.warning(
                "taking over the stale lock of instance %s left by %s: that process is gone",
                self.instance,
                previous.describe(),
                extra={"instance": self.instance, "operation": "lock", "status": "stale"},
            )
            self.took_over = previous
        self._fd = fd
        self._write_holder()

    def _busy(self, holder: LockHolder | None) -> LockBusy:
        who = holder.describe() if holder else "another process"
        return LockBusy(
            f"instance {self.instance!r} is locked by {who}: another run is in progress",
            hint=f"Wait for it to finish (lock file {self.path}). If that process is gone "
            "the lock is released automatically; check with: ps -p "
            f"{holder.pid if holder else 'PID'}",
        )

    def _write_holder(self) -> None:
        assert self._fd is not None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "process_start": process_start_time(os.getpid()),
            "command": self.command,
        }
        data = (json.dumps(holder) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Release the lock (emptying the file marks a clean exit); idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@contextlib.contextmanager
def instance_locks(
    base_path: Path, instances: list[str], *, command: str | None = None
) -> Iterator[list[InstanceLock]]:
    """Hold the locks of all ``instances`` (sorted, so two runs cannot deadlock); raise
    LockBusy (releasing the ones already taken) when any is held elsewhere."""
    taken: list[InstanceLock] = []
    try:
        for name in sorted(set(instances)):
            lock = InstanceLock(base_path, name, command=command)
            lock.acquire()
            taken.append(lock)
        yield taken
    finally:
        for lock in reversed(taken):
            lock.release()


def _same_process_alive(holder: LockHolder) -> bool:
    if not pid_alive(holder.pid):
        return False
    if holder.process_start is None:
        return True
    return process_start_time(holder.pid) == holder.process_start


def _read_all(fd: int, limit: int = 64 * 1024) -> str:
    try:
        return os.pread(fd, limit, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""
