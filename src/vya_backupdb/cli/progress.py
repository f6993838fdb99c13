"""Progress of backups, restores and verifications: rich bars in a terminal, log lines elsewhere.

The jobs report progress through plain callbacks (bytes read so far); this module is the only
place that turns those numbers into something a person sees:

* in a terminal (stderr is a TTY, human log format, no ``--no-progress``): one rich bar per
  database, with bytes done, the total (``~`` when it is the database size estimate), the
  transfer rate and an ETA — on stderr, so ``--json`` output on stdout stays clean;
* anywhere else (cron, CI, ``--log-format json``, ``--no-progress``): a log line per database at
  most every ``interval`` seconds, through the ``vya_backupdb.progress`` logger, with the
  figures as extra fields so JSON lines carry them.

Databases are dumped on worker threads (``--jobs``): each callback is used by one thread, the
rich ``Progress`` locks its own state, and logging is thread-safe.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vya_backupdb.cli.render import human_bytes

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID
    from rich.text import Text

    from vya_backupdb.catalog.records import BackupRecord
    from vya_backupdb.cli.context import AppContext

#: The logger of progress lines. Under ``vya_backupdb`` (not the short ``vya`` tree, which a
#: human console shows from WARNING only) so that cron mail and CI logs get them at INFO.
LOGGER_NAME = "vya_backupdb.progress"
DEFAULT_INTERVAL = 10.0

Callback = Callable[[int], None]
BackupProgressFactory = Callable[[str, str, int | None], Callback | None]
VerifyProgressFactory = Callable[["BackupRecord", str], Callback | None]
TransferProgressFactory = Callable[["BackupRecord"], Callback | None]

log = logging.getLogger(LOGGER_NAME)


# --------------------------------------------------------------------------- pure figures


@dataclass(frozen=True)
class Figures:
    """What one progress report says: rate in bytes/s, fraction done and seconds left (None
    when unknown: no elapsed time yet, no total, or past an estimated total)."""

    done: int
    total: int | None
    rate: float | None
    fraction: float | None
    eta: float | None


def progress_figures(done: int, total: int | None, elapsed: float) -> Figures:
    """Return the rate (average since the start), the fraction and the ETA of a transfer.

    The average over the whole transfer is steadier than a window for long dumps, whose speed
    swings from table to table. An ETA is only given while ``done`` is below ``total``: past an
    estimate (pg's database size counts indexes that the dump does not hold), there is no
    honest figure.
    """
    rate = done / elapsed if elapsed > 0 and done > 0 else None
    if total is None or total <= 0:
        return Figures(done, total, rate, None, None)
    fraction = done / total
    eta = (total - done) / rate if rate is not None and done < total else None
    return Figures(done, total, rate, fraction, eta)


def format_eta(seconds: float) -> str:
    """Return ``27s``, ``4m05s`` or ``1h02m03s``."""
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_progress(figures: Figures, *, estimated: bool) -> str:
    """Return e.g. ``1.2 GiB of ~3.4 GiB (35%), 85.0 MiB/s, ETA 27s``."""
    text = human_bytes(figures.done)
    if figures.total is not None and figures.total > 0:
        mark = "~" if estimated else ""
        text += f" of {mark}{human_bytes(figures.total)}"
        if figures.fraction is not None and figures.fraction <= 1:
            text += f" ({figures.fraction:.0%})"
        elif estimated:
            text += " (past the estimate)"
    if figures.rate is not None:
        text += f", {human_bytes(int(figures.rate))}/s"
    if figures.eta is not None:
        text += f", ETA {format_eta(figures.eta)}"
    return text


# --------------------------------------------------------------------------- displays


class ProgressDisplay:
    """Turns byte counts into feedback; this base shows nothing (used when disabled)."""

    def track(
        self,
        operation: str,
        instance: str,
        database: str,
        total: int | None,
        *,
        estimated: bool = False,
    ) -> Callback | None:
        """Return the callback that receives the bytes done so far for one transfer (None
        when nothing is shown)."""
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    # -- adapters to the jobs' hooks -------------------------------------------------------
    def backup_factory(self) -> BackupProgressFactory:
        """Return the ``progress`` factory of BackupJob: raw bytes against the size estimate."""

        def factory(instance: str, database: str, estimate: int | None) -> Callback | None:
            return self.track("backup", instance, database, estimate, estimated=True)

        return factory

    def restore_callback(self, record: BackupRecord) -> Callback | None:
        """Return the ``progress`` callback of RestoreJob: stored bytes against the file size."""
        info = record.backup_info
        return self.track("restore", info.instance, info.database, record.file_info.size)

    def verify_factory(self) -> VerifyProgressFactory:
        """Return the ``progress`` factory of VerifyJob: stored bytes of each pass."""

        def factory(record: BackupRecord, stage: str) -> Callback | None:
            info = record.backup_info
            return self.track(
                f"verify {stage}", info.instance, info.database, record.file_info.size
            )

        return factory

    def transfer_factory(self, operation: str) -> TransferProgressFactory:
        """Return the ``progress`` factory of remote upload/download: bytes of each data
        object against its size."""

        def factory(record: BackupRecord) -> Callback | None:
            info = record.backup_info
            return self.track(operation, info.instance, info.database, record.file_info.size)

        return factory


class LogProgress(ProgressDisplay):
    """Periodic log lines: one per transfer at most every ``interval`` seconds.

    Nothing is logged before the first interval has passed, so short transfers stay quiet.
    """

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval = interval
        self.logger = logger
        self.clock = clock

    def track(
        self,
        operation: str,
        instance: str,
        database: str,
        total: int | None,
        *,
        estimated: bool = False,
    ) -> Callback | None:
        started = self.clock()
        last = [started]
        seen = [0]
        label = f"{instance}/{database}"
        kind = operation.split(" ", 1)[0]  # "verify integrity" logs operation "verify"

        def report(done: int) -> None:
            # Never backwards (a restore's workers and its main stream both report).
            done = seen[0] = max(done, seen[0])
            now = self.clock()
            if now - last[0] < self.interval:
                return
            last[0] = now
            figures = progress_figures(done, total, now - started)
            self.logger.info(
                "progress %s%s: %s",
                "" if kind == "backup" else f"{operation} ",
                label,
                format_progress(figures, estimated=estimated),
                extra={
                    "instance": instance,
                    "database": database,
                    "operation": kind,
                    "bytes": done,
                    "total": total,
                    "total_estimated": estimated,
                    "rate": round(figures.rate, 1) if figures.rate is not None else None,
                    "eta_seconds": round(figures.eta, 1) if figures.eta is not None else None,
                },
            )

        return report


class BarProgress(ProgressDisplay):
    """Rich progress bars on stderr, one per transfer (cleared when the command ends).

    The live display starts with the first bytes reported and stops in :func:`showing`.
    """

    def __init__(self, progress: Progress | None = None):
        self._progress = progress or _make_rich_progress()
        self._lock = threading.Lock()
        self._started = False

    def track(
        self,
        operation: str,
        instance: str,
        database: str,
        total: int | None,
        *,
        estimated: bool = False,
    ) -> Callback | None:
        prefix = "" if operation == "backup" else f"{operation} "
        tasks: list[TaskID] = []
        seen = [0]

        def report(done: int) -> None:
            # Never backwards (a restore's workers and its main stream both report).
            done = seen[0] = max(done, seen[0])
            # The bar appears with the first bytes, not before: a restore asks for
            # confirmation first, and a prompt under a live display is unreadable.
            if not tasks:
                self.start()
                tasks.append(
                    self._progress.add_task(
                        f"{prefix}{instance}/{database}",
                        total=total if total and total > 0 else None,
                        estimated=estimated,
                    )
                )
            self._progress.update(tasks[0], completed=done)

        return report

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._progress.start()
                self._started = True

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._progress.stop()
                self._started = False


def _make_rich_progress() -> Progress:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn

    class SizeColumn(ProgressColumn):
        """``1.2 GiB / ~3.4 GiB``: ``~`` marks a database size estimate."""

        def render(self, task: Task) -> Text:
            from rich.text import Text

            done = human_bytes(int(task.completed))
            if task.total is None:
                return Text(done)
            mark = "~" if task.fields.get("estimated") else ""
            return Text(f"{done} / {mark}{human_bytes(int(task.total))}")

    class RateEtaColumn(ProgressColumn):
        """Rate (rich's recent-speed window) and ETA from :func:`progress_figures`."""

        def render(self, task: Task) -> Text:
            from rich.text import Text

            speed = task.speed
            if not speed:
                return Text("")
            text = f"{human_bytes(int(speed))}/s"
            if task.total is not None and task.completed < task.total:
                text += f"  ETA {format_eta((task.total - task.completed) / speed)}"
            return Text(text)

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        SizeColumn(),
        RateEtaColumn(),
        console=Console(stderr=True),
        transient=True,
        speed_estimate_period=30.0,
    )


# --------------------------------------------------------------------------- choosing


def stderr_is_terminal() -> bool:
    """Return whether stderr is an interactive terminal (bars make sense there)."""
    return sys.stderr.isatty()


def choose_display(
    *,
    log_format: str,
    enabled: bool = True,
    interval: float = DEFAULT_INTERVAL,
    terminal: bool | None = None,
    quiet: bool = False,
) -> ProgressDisplay:
    """Return bars in a terminal with the human log format, else periodic log lines.

    ``enabled`` False (``--no-progress``) and ``quiet`` (``-q``) never draw bars; their log
    lines then follow the log level as any other INFO line does.
    """
    is_terminal = stderr_is_terminal() if terminal is None else terminal
    if enabled and not quiet and is_terminal and log_format != "json":
        return BarProgress()
    return LogProgress(interval)


def display_for(app: AppContext, *, enabled: bool, interval: float) -> ProgressDisplay:
    """Return the display for a command from its global options (log format, -q) and
    ``--no-progress`` / ``--progress-interval``."""
    settings = app.settings
    log_format = app.log_format or settings.logging.format
    return choose_display(
        log_format=log_format, enabled=enabled, interval=interval, quiet=app.verbosity < 0
    )


@contextmanager
def showing(display: ProgressDisplay) -> Iterator[ProgressDisplay]:
    """Run the block with ``display`` available, and always take its bars down after (also on
    errors and Ctrl-C, so the error message is not drawn under a live display)."""
    try:
        yield display
    finally:
        display.stop()
