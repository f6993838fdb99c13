"""Turn schedules into systemd timers or crontab entries: generate, install, list, remove.

Both call ``<abs vya-backupdb> --config <abs config> run --scheduled --schedule NAME``; the
window check in ``run --scheduled`` makes the time zone exact whatever the host's zone is.

systemd: one ``vya-backupdb-NAME.service`` (oneshot) + ``.timer`` (``Persistent=true``, so a
run missed while the host was off starts at boot; ``OnCalendar`` carries the schedule's IANA
zone). cron: one or more lines per schedule, each ending with a tag comment naming the
schedule and the config, so ``install`` replaces its own lines (idempotent) and ``remove``
finds them, leaving every other line of the crontab untouched.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vya_backupdb.config.ops import ScheduleConfig
from vya_backupdb.engines.process import Command, feed, find_tool, run
from vya_backupdb.errors import StorageError, UsageError, VyaError
from vya_backupdb.policies.schedule import cron_times, on_calendar

UNIT_PREFIX = "vya-backupdb-"
CRON_TAG = "# vya-backupdb:"
_MANAGED = "# Managed by vya-backupdb (schedule install); edit the config, then re-install."
_TAG_RE = re.compile(r"#\s*vya-backupdb:schedule=(?P<name>\S+)\s+config=(?P<config>.+)$")


def unit_base(schedule: ScheduleConfig) -> str:
    """Return the unit name stem, e.g. ``vya-backupdb-prod-pg-01``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", schedule.effective_name)
    return f"{UNIT_PREFIX}{safe}"


def run_argv(executable: Path, config: Path, schedule: ScheduleConfig) -> list[str]:
    """Return the argv the timer or cron entry runs (absolute paths)."""
    return [
        str(executable),
        "--config",
        str(config),
        "run",
        "--scheduled",
        "--schedule",
        schedule.effective_name,
    ]


def _systemd_quote(arg: str) -> str:
    # systemd splits ExecStart on whitespace and expands '%' specifiers: quote and escape.
    arg = arg.replace("%", "%%")
    if re.search(r"[\s\"'\\;$]", arg):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def _check_absolute(executable: Path, config: Path) -> None:
    for what, path in (("vya-backupdb executable", executable), ("config file", config)):
        if not path.is_absolute():
            raise UsageError(
                f"the {what} path {path} is not absolute",
                hint="Timers and cron run outside your shell: give absolute paths.",
            )


@dataclass(frozen=True)
class UnitPair:
    base: str
    service: str  # file contents
    timer: str

    @property
    def service_name(self) -> str:
        return f"{self.base}.service"

    @property
    def timer_name(self) -> str:
        return f"{self.base}.timer"


def systemd_units(
    schedule: ScheduleConfig,
    executable: Path,
    config: Path,
    *,
    environment_file: Path | None = None,
) -> UnitPair:
    """Return the .service and .timer of ``schedule``; raise UsageError for relative paths."""
    _check_absolute(executable, config)
    base = unit_base(schedule)
    name = schedule.effective_name
    exec_start = " ".join(_systemd_quote(a) for a in run_argv(executable, config, schedule))
    env_file = environment_file or config.parent / "vya-backupdb.env"
    service = "\n".join(
        [
            _MANAGED,
            "[Unit]",
            f"Description=VYA BackupDB scheduled backup ({name})",
            "Documentation=https://github.com/vya/backupdb/blob/main/docs/scheduling.md",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            # Secrets for notifications/passwords (SMTP_PW=...); '-': optional.
            f"EnvironmentFile=-{_systemd_quote(str(env_file))}",
            f"ExecStart={exec_start}",
            # SIGTERM (systemctl stop) aborts the current dump cleanly; exit 130 then.
            "SuccessExitStatus=0",
            "TimeoutStopSec=120",
            "Nice=10",
            "IOSchedulingClass=best-effort",
            "IOSchedulingPriority=7",
            "",
        ]
    )
    timer_lines = [
        _MANAGED,
        "[Unit]",
        f"Description=VYA BackupDB schedule {name}",
        "",
        "[Timer]",
        *(f"OnCalendar={spec}" for spec in on_calendar(schedule)),
        "Persistent=true",
        "AccuracySec=1min",
    ]
    if schedule.randomized_delay_seconds:
        timer_lines.append(f"RandomizedDelaySec={schedule.randomized_delay_seconds}")
    timer_lines += [f"Unit={base}.service", "", "[Install]", "WantedBy=timers.target", ""]
    return UnitPair(base=base, service=service, timer="\n".join(timer_lines))


# -- systemd install ----------------------------------------------------------------------

Systemctl = Callable[[Sequence[str]], None]


def real_systemctl(user: bool = False) -> Systemctl:
    """Return a function running ``systemctl [--user] ARGS``; raise ToolMissing when absent."""
    tool = find_tool(["systemctl"], "systemd")

    def call(args: Sequence[str]) -> None:
        run(Command([tool, *(["--user"] if user else []), *args]), VyaError, timeout=60)

    return call


def install_systemd(
    units: Sequence[UnitPair], unit_dir: Path, systemctl: Systemctl | None
) -> list[Path]:
    """Write the units to ``unit_dir``; with ``systemctl``, reload and enable the timers.

    Return the written paths; raise StorageError when the directory cannot be written.
    """
    written = []
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        for pair in units:
            for filename, text in (
                (pair.service_name, pair.service),
                (pair.timer_name, pair.timer),
            ):
                path = unit_dir / filename
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)
                written.append(path)
    except OSError as exc:
        raise StorageError(
            f"cannot write systemd units to {unit_dir}: {exc.strerror}",
            hint="Run as root for /etc/systemd/system, or use --user, or --output DIR.",
        ) from None
    if systemctl is not None:
        systemctl(["daemon-reload"])
        for pair in units:
            systemctl(["enable", "--now", pair.timer_name])
    return written


def list_systemd(unit_dir: Path) -> list[str]:
    """Return the names of the vya-backupdb timers in ``unit_dir`` that we manage."""
    if not unit_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in unit_dir.glob(f"{UNIT_PREFIX}*.timer")
        if _MANAGED in p.read_text(encoding="utf-8", errors="replace")
    )


def remove_systemd(
    unit_dir: Path, names: Sequence[str] | None, systemctl: Systemctl | None
) -> list[str]:
    """Disable and delete our timers (those of ``names``, or all); return the removed bases."""
    removed = []
    for timer in list_systemd(unit_dir):
        base = timer.removesuffix(".timer")
        if names is not None and base not in {f"{UNIT_PREFIX}{n}" for n in names}:
            continue
        if systemctl is not None:
            # Already disabled or unknown to systemd: deleting the files is enough.
            with contextlib.suppress(VyaError):
                systemctl(["disable", "--now", timer])
        for suffix in (".timer", ".service"):
            (unit_dir / f"{base}{suffix}").unlink(missing_ok=True)
        removed.append(base)
    if removed and systemctl is not None:
        systemctl(["daemon-reload"])
    return removed


# -- cron -----------------------------------------------------------------------------------


def host_timezone() -> ZoneInfo:
    """Return the host's IANA zone (from $TZ or /etc/localtime), UTC when unknown."""
    import os

    candidates = []
    if os.environ.get("TZ"):
        candidates.append(os.environ["TZ"].lstrip(":"))
    try:
        target = Path("/etc/localtime").resolve()
        if "zoneinfo" in target.parts:
            candidates.append("/".join(target.parts[target.parts.index("zoneinfo") + 1 :]))
    except OSError:
        pass
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


def cron_tag(schedule: ScheduleConfig, config: Path) -> str:
    return f"{CRON_TAG}schedule={schedule.effective_name} config={config}"


def cron_lines(
    schedule: ScheduleConfig,
    executable: Path,
    config: Path,
    *,
    host_zone: ZoneInfo | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Return the crontab lines of ``schedule`` (each ending with its tag)."""
    _check_absolute(executable, config)
    zone = host_zone or host_timezone()
    # cron runs the command through /bin/sh, where '%' means newline: escape it.
    command = shlex.join(run_argv(executable, config, schedule)).replace("%", "\\%")
    tag = cron_tag(schedule, config)
    return [
        f"{when} {command} >/dev/null 2>&1 {tag}"
        for when in cron_times(schedule, zone, now or datetime.now(UTC))
    ]


class CrontabBackend(Protocol):
    def read(self) -> str: ...

    def write(self, text: str) -> None: ...


class FileCrontab:
    """A crontab kept in a plain file (tests, /etc/cron.d-style files)."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path)


class UserCrontab:
    """The invoking user's crontab, through the ``crontab`` command."""

    def __init__(self, crontab: str | None = None):
        self.tool = crontab or find_tool(["crontab"], "cron")

    def read(self) -> str:
        try:
            return run(Command([self.tool, "-l"]), VyaError, timeout=30)
        except VyaError as exc:
            # 'no crontab for USER' is an empty crontab, not an error.
            if "no crontab" in f"{exc.message} {exc.details or ''}":
                return ""
            raise

    def write(self, text: str) -> None:
        feed(Command([self.tool, "-"]), io.BytesIO(text.encode("utf-8")), VyaError)


def _strip(text: str, keep: Callable[[str, str], bool]) -> tuple[list[str], int]:
    """Return the lines without our tagged ones for which ``keep(name, config)`` is False."""
    out, dropped = [], 0
    for line in text.splitlines():
        match = _TAG_RE.search(line)
        if match and not keep(match["name"], match["config"].strip()):
            dropped += 1
            continue
        if line.strip() == _MANAGED and match is None:
            dropped += 1
            continue
        out.append(line)
    return out, dropped


def install_cron(
    backend: CrontabBackend, lines_by_schedule: dict[str, list[str]], config: Path
) -> str:
    """Replace this config's entries for those schedules by ``lines_by_schedule``; return the
    new crontab text. Running it twice gives the same crontab."""
    kept, _ = _strip(
        backend.read(), lambda name, cfg: not (cfg == str(config) and name in lines_by_schedule)
    )
    while kept and not kept[-1].strip():
        kept.pop()
    new = [line for lines in lines_by_schedule.values() for line in lines]
    text = "\n".join([*kept, *([""] if kept else []), _MANAGED, *new]) + "\n"
    # Keep only one managed-header line: _strip removed the old ones.
    backend.write(text)
    return text


def list_cron(backend: CrontabBackend) -> list[tuple[str, str, str]]:
    """Return (schedule, config, line) of every tagged entry."""
    found = []
    for line in backend.read().splitlines():
        match = _TAG_RE.search(line)
        if match:
            found.append((match["name"], match["config"].strip(), line))
    return found


def remove_cron(backend: CrontabBackend, config: Path | None, names: Sequence[str] | None) -> int:
    """Remove our entries (of ``config`` when given, of ``names`` when given); return how
    many lines went."""
    text = backend.read()
    kept, _dropped = _strip(
        text,
        lambda name, cfg: (
            not ((config is None or cfg == str(config)) and (names is None or name in names))
        ),
    )
    entries_left = any(_TAG_RE.search(line) for line in kept)
    if entries_left:  # other configs still have entries: keep a header above them
        first = next(i for i, line in enumerate(kept) if _TAG_RE.search(line))
        kept.insert(first, _MANAGED)
    while kept and not kept[-1].strip():
        kept.pop()
    backend.write("\n".join(kept) + ("\n" if kept else ""))
    return sum(1 for line in text.splitlines() if _TAG_RE.search(line)) - sum(
        1 for line in kept if _TAG_RE.search(line)
    )
