"""Unattended runs: ``run --scheduled`` (called by systemd timers / cron) and ``daemon``.

A scheduled run of one schedule:

1. checks the window: the run belongs to the due time it is within ``tolerance_minutes`` of
   (see :mod:`vya_backupdb.policies.schedule`); outside every window it does nothing, and a due
   time that was missed by more than the tolerance is reported with a warning;
2. skips a due time that already ran (a small state file per schedule), so a timer that fires
   twice, or cron entries covering both DST offsets, back up once;
3. takes the per-instance locks (:mod:`vya_backupdb.jobs.locks`) and runs the backup job;
4. notifies (never failing) and exports metrics (Pushgateway, textfile).

A stop request (the ``stop`` event, set on SIGTERM by the CLI) lets the database being dumped
finish and starts no other; a second SIGTERM aborts it (the partial object is removed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vya_backupdb.catalog.layout import new_run_id, safe_component
from vya_backupdb.errors import LockBusy, NotFoundError, UsageError
from vya_backupdb.jobs.backup import (
    BackupJob,
    BackupRequest,
    DatabaseResult,
    ProgressFactory,
    RunResult,
)
from vya_backupdb.jobs.locks import LOCK_DIR, instance_locks
from vya_backupdb.policies.schedule import WindowDecision, next_due, window_decision

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.config.models import InstanceConfig
    from vya_backupdb.config.ops import ScheduleConfig
    from vya_backupdb.engines.base import Engine, ServerInfo
    from vya_backupdb.observability.notify import Delivery, Notifier

log = logging.getLogger("vya_backupdb.jobs.scheduled")

#: The daemon re-reads the clock at least this often (suspend/resume, clock steps).
MAX_SLEEP_SECONDS = 60.0


class StopRequested(KeyboardInterrupt):
    """Raised between databases once a stop was requested (unwinds like Ctrl-C)."""


class StoppableBackupJob(BackupJob):
    """A BackupJob that checks a stop event before each database and keeps partial results."""

    def __init__(self, *args: Any, stop: threading.Event, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stop = stop
        self.completed: list[DatabaseResult] = []
        self.last_run: RunResult | None = None

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise StopRequested

    def _keep(self, result: DatabaseResult) -> DatabaseResult:
        if not any(result is done for done in self.completed):
            self.completed.append(result)
        return result

    def backup_database(
        self,
        engine: Engine,
        server: ServerInfo,
        instance: InstanceConfig,
        database: str,
        estimate: int | None = None,
        strategy: str = "full",
    ) -> DatabaseResult:
        self._check_stop()
        return self._keep(
            super().backup_database(engine, server, instance, database, estimate, strategy)
        )

    def backup_users(
        self, engine: Engine, server: ServerInfo, instance: InstanceConfig
    ) -> DatabaseResult:
        self._check_stop()
        return self._keep(super().backup_users(engine, server, instance))

    def _write_run_log(self, run: RunResult) -> str | None:
        # BackupJob.run writes the log also when interrupted: keep the run it wrote, with the
        # databases that finished inside the interrupted instance.
        for result in self.completed:
            if not any(result is r for r in run.results):
                run.results.append(result)
        self.last_run = run
        return super()._write_run_log(run)


@dataclass
class ScheduledOutcome:
    """What one scheduled (or manual ``run``) execution did."""

    schedule: str
    status: str  # ran | skipped | locked
    reason: str = ""
    due: datetime | None = None
    run: RunResult | None = None
    lock_error: LockBusy | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    metric_problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """Return 0 (ran fine or nothing due), 10 (locked), or the run's exit code
        (:attr:`RunResult.exit_code`: failures, 9 for a failed off-site copy, 130)."""
        if self.status == "locked":
            return LockBusy.exit_code
        if self.run is None:
            return 0
        return self.run.exit_code

    def as_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "status": self.status,
            "reason": self.reason,
            "due": self.due.isoformat() if self.due else None,
            "run": self.run.as_dict() if self.run else None,
            "notifications": [
                {
                    "channel": d.channel,
                    "event": d.event,
                    "ok": d.ok,
                    "skipped": d.skipped,
                    "error": d.error,
                }
                for d in self.deliveries
            ],
            "metric_problems": self.metric_problems,
            "exit_code": self.exit_code,
        }


class ScheduledRunner:
    """Runs schedules (or instance lists) with locks, then notifies and exports metrics."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        log_file: Path | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop: threading.Event | None = None,
        progress: ProgressFactory | None = None,
    ):
        self.loaded = loaded
        self.settings = loaded.settings
        self.log_file = log_file
        self.clock = clock
        self.stop = stop or threading.Event()
        self.progress = progress
        self.base_path = self.settings.storage.base_path

    # -- schedules -------------------------------------------------------------------------
    def schedule(self, name: str) -> ScheduleConfig:
        """Return the schedule called ``name``; raise NotFoundError when there is none."""
        for schedule in self.settings.schedules:
            if schedule.effective_name == name:
                return schedule
        known = ", ".join(s.effective_name for s in self.settings.schedules) or "(none)"
        raise NotFoundError(
            f"unknown schedule {name!r}",
            hint=f"Configured schedules: {known}. See 'schedules:' in the config.",
        )

    def state_path(self, schedule: ScheduleConfig) -> Path:
        return (
            self.base_path / LOCK_DIR / f"schedule-{safe_component(schedule.effective_name)}.json"
        )

    def last_due_run(self, schedule: ScheduleConfig) -> datetime | None:
        """Return the due time the schedule last ran for (None when never or unreadable)."""
        try:
            data = json.loads(self.state_path(schedule).read_text(encoding="utf-8"))
            return datetime.fromisoformat(data["due"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remember(self, schedule: ScheduleConfig, due: datetime, run: RunResult | None) -> None:
        path = self.state_path(schedule)
        payload = {
            "due": due.isoformat(),
            "run_id": run.run_id if run else None,
            "at": self.clock().isoformat(),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(payload) + "\n", encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:  # the worst case is one repeated run: never fail for it
            log.warning(
                "cannot record the state of schedule %s: %s", schedule.effective_name, exc.strerror
            )

    def run_schedule(self, schedule: ScheduleConfig, *, force: bool = False) -> ScheduledOutcome:
        """Run ``schedule`` if a due time's window contains now (always with ``force``)."""
        name = schedule.effective_name
        now = self.clock()
        decision = window_decision(schedule, now)
        if not force:
            skipped = self._skip_reason(schedule, decision)
            if skipped is not None:
                return skipped
        due = decision.due if decision.in_window and decision.due else now
        log.info(
            "schedule %s: %s",
            name,
            "forced run" if force else decision.reason,
            extra={"operation": "schedule", "schedule": name},
        )
        outcome = self.run_instances(tuple(schedule.instances), label=name)
        outcome.due = due
        if outcome.status == "ran":
            self._remember(schedule, due, outcome.run)
        return outcome

    def _skip_reason(
        self, schedule: ScheduleConfig, decision: WindowDecision
    ) -> ScheduledOutcome | None:
        name = schedule.effective_name
        last = self.last_due_run(schedule)
        if decision.in_window:
            if last is not None and decision.due is not None and last >= decision.due:
                reason = f"already ran for the due time {decision.due.isoformat()}"
                log.info("schedule %s: %s", name, reason)
                return ScheduledOutcome(name, "skipped", reason, due=decision.due)
            return None
        missed = decision.due is not None and last is not None and last < decision.due
        if missed:
            reason = f"missed: {decision.reason}"
            log.warning(
                "schedule %s %s; run it by hand with: vya-backupdb run --scheduled "
                "--schedule %s --force",
                name,
                reason,
                name,
                extra={"operation": "schedule", "schedule": name, "status": "missed"},
            )
            outcome = ScheduledOutcome(name, "skipped", reason, due=decision.due)
            self._remember(schedule, decision.due or self.clock(), None)
            outcome.deliveries = self._notify_note(f"Schedule {name} {reason}")
            return outcome
        reason = f"not due: {decision.reason}"
        log.info("schedule %s: %s", name, reason)
        return ScheduledOutcome(name, "skipped", reason, due=decision.due)

    def due_schedules(self) -> list[ScheduleConfig]:
        """Return the schedules whose window contains now and that did not run for it yet."""
        due = []
        for schedule in self.settings.schedules:
            decision = window_decision(schedule, self.clock())
            last = self.last_due_run(schedule)
            if decision.in_window and decision.due and (last is None or last < decision.due):
                due.append(schedule)
        return due

    def run_due(self, *, force: bool = False) -> list[ScheduledOutcome]:
        """Run every schedule (``run --scheduled`` without ``--schedule``)."""
        if not self.settings.schedules:
            raise UsageError(
                "no schedules are configured",
                hint="Add one under 'schedules:' (docs/scheduling.md), or name instances: "
                "vya-backupdb run INSTANCE",
            )
        outcomes = []
        for schedule in self.settings.schedules:
            if self.stop.is_set():
                break
            outcomes.append(self.run_schedule(schedule, force=force))
        return outcomes

    # -- one run with locks, notification and metrics ---------------------------------------
    def run_instances(self, instances: tuple[str, ...], *, label: str) -> ScheduledOutcome:
        """Back up ``instances`` (all when empty) under their locks, notify, export metrics."""
        from vya_backupdb.jobs.backup import resolve_instances

        names = [i.id for i in resolve_instances(self.loaded, instances)]
        outcome = ScheduledOutcome(label, "ran")
        try:
            with instance_locks(self.base_path, names, command=f"run {label}"):
                outcome.run = self._backup(tuple(names))
        except LockBusy as exc:
            log.error("%s", exc.message, extra={"operation": "lock", "status": "busy"})
            outcome.status = "locked"
            outcome.reason = exc.message
            outcome.lock_error = exc
            outcome.deliveries = self._notify_note(f"Run {label} did not start: {exc.message}")
            return outcome
        outcome.deliveries = self._notifier().send(outcome.run)
        outcome.metric_problems = self._export(outcome.run)
        return outcome

    def _backup(self, instances: tuple[str, ...]) -> RunResult:
        job = StoppableBackupJob(
            self.loaded, stop=self.stop, progress=self.progress, clock=self.clock
        )
        try:
            return job.run(BackupRequest(instances=instances))
        except KeyboardInterrupt:
            run = job.last_run
            if run is None:  # stopped before the job started its run
                now = self.clock()
                run = RunResult(new_run_id(now), started_at=now, finished_at=now)
            run.interrupted = True
            log.warning(
                "run stopped on request after %d database(s)",
                len(run.results),
                extra={"operation": "backup", "status": "interrupted"},
            )
            if not self.stop.is_set():  # a real Ctrl-C, not a graceful stop: keep unwinding
                raise
            return run

    def _notifier(self) -> Notifier:
        from vya_backupdb.observability.notify import Notifier

        return Notifier(self.settings, log_file=self.log_file, config_dir=self.loaded.directory)

    def _notify_note(self, note: str) -> list[Delivery]:
        now = self.clock()
        run = RunResult(new_run_id(now), started_at=now, finished_at=now)
        result: list[Delivery] = self._notifier().send(run, event="warning", notes=[note])
        return result

    def _export(self, run: RunResult) -> list[str]:
        from vya_backupdb.observability.metrics import export_after_run
        from vya_backupdb.wiring import make_catalog

        return export_after_run(self.settings, make_catalog(self.settings), run)


class Daemon:
    """The built-in scheduler: sleep until a schedule is due, run it, repeat until stopped."""

    def __init__(self, runner: ScheduledRunner):
        if not runner.settings.schedules:
            raise UsageError(
                "the daemon has nothing to do: no schedules are configured",
                hint="Add one under 'schedules:' (docs/scheduling.md).",
            )
        self.runner = runner
        self.outcomes: list[ScheduledOutcome] = []

    def next_wakeup(self) -> datetime:
        """Return the earliest next due time over all schedules (UTC)."""
        now = self.runner.clock()
        return min(next_due(s, now) for s in self.runner.settings.schedules)

    def run_forever(self) -> None:
        """Loop until ``runner.stop`` is set; return normally (the CLI exits 0)."""
        stop = self.runner.stop
        upcoming = self.next_wakeup()
        log.info(
            "daemon started; next due time %s",
            upcoming.isoformat(),
            extra={"operation": "daemon", "status": "started"},
        )
        while not stop.is_set():
            for schedule in self.runner.due_schedules():
                if stop.is_set():
                    break
                with contextlib.suppress(UsageError, NotFoundError):
                    self.outcomes.append(self.runner.run_schedule(schedule))
            if stop.is_set():
                break
            now = self.runner.clock()
            wait = (self.next_wakeup() - now) / timedelta(seconds=1)
            stop.wait(max(0.05, min(wait, MAX_SLEEP_SECONDS)))
        log.info("daemon stopped", extra={"operation": "daemon", "status": "stopped"})
