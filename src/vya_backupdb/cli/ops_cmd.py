"""Unattended operation: ``run``, ``daemon``, ``schedule``, ``notify``, ``metrics``, ``status``."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from vya_backupdb.cli.context import AppContext, get_app, handle_errors, render_error
from vya_backupdb.cli.render import human_bytes, plain_json
from vya_backupdb.errors import UsageError, VyaError

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.config.ops import ScheduleConfig
    from vya_backupdb.jobs.scheduled import ScheduledOutcome


@contextlib.contextmanager
def graceful_stop(stop: threading.Event, grace_seconds: float) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set ``stop``: the running database may finish for up to
    ``grace_seconds`` (0: abort it at once, cleanly); a second signal aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread (e.g. tests in a thread)
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def on_term(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() or grace_seconds <= 0:
            stop.set()
            raise KeyboardInterrupt
        stop.set()
        signal.setitimer(signal.ITIMER_REAL, grace_seconds)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _log_file(state: AppContext, loaded: LoadedConfig) -> Path | None:
    return state.log_file or loaded.settings.logging.file


def _render_outcome(state: AppContext, outcome: ScheduledOutcome) -> None:
    out = state.out
    if outcome.status != "ran" or outcome.run is None:
        out.print(f"{outcome.schedule}: {outcome.status} — {outcome.reason}", markup=False)
        return
    run = outcome.run
    table = Table(title=f"{outcome.schedule}: run {run.run_id}")
    for column in ("instance", "database", "status", "size", "error"):
        table.add_column(column)
    for r in run.results:
        table.add_row(
            r.instance,
            r.database,
            r.status,
            human_bytes(r.size_bytes),
            r.error.message if r.error else "",
        )
    out.print(table)
    if run.interrupted:
        out.print("stopped on request before the end", markup=False)
    for d in outcome.deliveries:
        if not d.skipped:
            out.print(
                f"notify {d.channel}: {'sent' if d.ok else 'FAILED: ' + str(d.error)}",
                markup=False,
            )
    for problem in outcome.metric_problems:
        out.print(f"metrics: {problem}", markup=False)


def run_cmd(
    ctx: typer.Context,
    instances: Annotated[
        list[str] | None, typer.Argument(help="Instances to back up now (default: all)")
    ] = None,
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled", help="Run the schedules that are due now (what timers and cron call)"
        ),
    ] = False,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="With --scheduled: only this schedule")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --scheduled: run even outside the window")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON")] = False,
) -> None:
    """Back up with locks, then notify and export metrics (the unattended form of backup).

    Exit status: 0 ok or nothing due, 10 when an instance is locked by another run, 130 when
    stopped by SIGTERM, else the failed backups' exit code (see backup).
    """
    from vya_backupdb.jobs.scheduled import ScheduledRunner

    state = get_app(ctx)
    loaded = state.loaded()
    if (schedule or force) and not scheduled:
        raise UsageError("--schedule and --force go with --scheduled")
    if scheduled and instances:
        raise UsageError("give instances or --scheduled, not both")
    stop = threading.Event()
    from vya_backupdb.cli.progress import display_for, showing

    # Unattended runs log a progress line per database every 60 s (bars in a terminal).
    display = display_for(state, enabled=True, interval=60)
    runner = ScheduledRunner(
        loaded,
        log_file=_log_file(state, loaded),
        stop=stop,
        progress=display.backup_factory(),
    )
    with showing(display), graceful_stop(stop, 0):
        if scheduled and schedule:
            outcomes = [runner.run_schedule(runner.schedule(schedule), force=force)]
        elif scheduled:
            outcomes = runner.run_due(force=force)
        else:
            outcomes = [runner.run_instances(tuple(instances or ()), label="manual")]
    if json_out:
        typer.echo(plain_json([o.as_dict() for o in outcomes]))
    else:
        for outcome in outcomes:
            _render_outcome(state, outcome)
            if outcome.lock_error is not None:
                render_error(outcome.lock_error)
    codes = [o.exit_code for o in outcomes if o.exit_code]
    if codes:
        raise typer.Exit(codes[0])


def daemon_cmd(
    ctx: typer.Context,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="On SIGTERM, let the running database finish for up to this many seconds "
            "(0: abort it at once, cleanly)",
        ),
    ] = 0.0,
) -> None:
    """Run the configured schedules in the foreground (containers, hosts without cron).

    SIGTERM or Ctrl-C stops it: no new database starts, the running one finishes within
    --grace or is aborted cleanly (partial output removed); then it exits 0.
    """
    from vya_backupdb.jobs.scheduled import Daemon, ScheduledRunner

    state = get_app(ctx)
    loaded = state.loaded()
    stop = threading.Event()
    runner = ScheduledRunner(loaded, log_file=_log_file(state, loaded), stop=stop)
    daemon = Daemon(runner)
    state.err.print(
        f"vya-backupdb daemon: {len(loaded.settings.schedules)} schedule(s); next due "
        f"{daemon.next_wakeup().isoformat()}",
        markup=False,
    )
    with graceful_stop(stop, grace):
        try:
            daemon.run_forever()
        except KeyboardInterrupt:
            if not stop.is_set():
                raise
    state.err.print("vya-backupdb daemon: stopped", markup=False)


# -- schedule ---------------------------------------------------------------------------------

schedule_app = typer.Typer(
    help="Generate or install systemd timers / cron entries for the configured schedules.",
    no_args_is_help=True,
)


def _executable(given: Path | None) -> Path:
    if given is not None:
        return given.expanduser().absolute()
    beside = Path(sys.executable).parent / "vya-backupdb"
    if beside.exists():
        return beside.absolute()
    found = shutil.which("vya-backupdb")
    if found:
        return Path(found).absolute()
    raise UsageError(
        "cannot find the vya-backupdb executable",
        hint="Give its absolute path with --executable.",
    )


def _selected(loaded: LoadedConfig, names: list[str] | None) -> list[object]:
    settings = loaded.settings
    if not settings.schedules:
        raise UsageError(
            "no schedules are configured", hint="Add them under 'schedules:' (docs/scheduling.md)."
        )
    if not names:
        return list(settings.schedules)
    by_name = {s.effective_name: s for s in settings.schedules}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UsageError(
            f"unknown schedule {missing[0]!r}", hint=f"Configured: {', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


def _schedule_targets(
    ctx: typer.Context,
    names: list[str] | None,
    systemd: bool,
    cron: bool,
    executable: Path | None,
) -> tuple[AppContext, Path, Path, list[ScheduleConfig]]:
    """Return (app state, vya executable, config path, selected schedules) for generate and
    install; raise UsageError unless exactly one of --systemd / --cron is given."""
    from vya_backupdb.config.ops import ScheduleConfig

    if systemd == cron:
        raise UsageError("choose one of --systemd or --cron")
    state = get_app(ctx)
    loaded = state.loaded()
    schedules = [s for s in _selected(loaded, names) if isinstance(s, ScheduleConfig)]
    return state, _executable(executable), _config_path(loaded), schedules


def _config_path(loaded: LoadedConfig) -> Path:
    if loaded.path is None:
        raise UsageError(
            "schedules need a config file", hint="Pass it with --config /abs/path/config.yaml"
        )
    return loaded.path.absolute()


_KIND_HELP = "Generate for systemd (.service + .timer) or cron"


@schedule_app.command("generate")
@handle_errors
def schedule_generate(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Schedules (default: all)")] = None,
    systemd: Annotated[bool, typer.Option("--systemd", help=_KIND_HELP)] = False,
    cron: Annotated[bool, typer.Option("--cron", help=_KIND_HELP)] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write files here (default: print)")
    ] = None,
    executable: Annotated[
        Path | None, typer.Option("--executable", help="Absolute path of vya-backupdb")
    ] = None,
) -> None:
    """Print (or write to --output DIR) the timers or crontab lines; installs nothing."""
    from vya_backupdb.jobs import schedule_install as si

    state, exe, config, schedules = _schedule_targets(ctx, names, systemd, cron, executable)
    if systemd:
        units = [si.systemd_units(s, exe, config) for s in schedules]
        if output is not None:
            for path in si.install_systemd(units, output, None):
                state.out.print(f"wrote {path}", markup=False)
            return
        for pair in units:
            typer.echo(f"# {pair.service_name}\n{pair.service}\n# {pair.timer_name}\n{pair.timer}")
        return
    lines = [line for s in schedules for line in si.cron_lines(s, exe, config)]
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        target = output / "vya-backupdb.crontab"
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        state.out.print(f"wrote {target}", markup=False)
        return
    typer.echo("\n".join(lines))


@schedule_app.command("install")
@handle_errors
def schedule_install(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Schedules (default: all)")] = None,
    systemd: Annotated[bool, typer.Option("--systemd", help=_KIND_HELP)] = False,
    cron: Annotated[bool, typer.Option("--cron", help=_KIND_HELP)] = False,
    user: Annotated[
        bool, typer.Option("--user", help="systemd: install as user units (systemctl --user)")
    ] = False,
    unit_dir: Annotated[
        Path | None, typer.Option("--unit-dir", help="systemd: unit directory override")
    ] = None,
    crontab_file: Annotated[
        Path | None,
        typer.Option("--crontab-file", help="cron: edit this file instead of the user crontab"),
    ] = None,
    executable: Annotated[
        Path | None, typer.Option("--executable", help="Absolute path of vya-backupdb")
    ] = None,
) -> None:
    """Install the timers (and enable them) or the crontab entries; idempotent."""
    from vya_backupdb.jobs import schedule_install as si

    state, exe, config, schedules = _schedule_targets(ctx, names, systemd, cron, executable)
    if systemd:
        directory = unit_dir or _default_unit_dir(user)
        units = [si.systemd_units(s, exe, config) for s in schedules]
        systemctl = None if unit_dir is not None else si.real_systemctl(user)
        for path in si.install_systemd(units, directory, systemctl):
            state.out.print(f"installed {path}", markup=False)
        return
    backend = _crontab(crontab_file)
    si.install_cron(
        backend, {s.effective_name: si.cron_lines(s, exe, config) for s in schedules}, config
    )
    state.out.print(f"installed {len(schedules)} schedule(s) in the crontab", markup=False)


def _default_unit_dir(user: bool) -> Path:
    return Path.home() / ".config/systemd/user" if user else Path("/etc/systemd/system")


def _crontab(path: Path | None):  # type: ignore[no-untyped-def]
    from vya_backupdb.jobs import schedule_install as si

    return si.FileCrontab(path) if path is not None else si.UserCrontab()


@schedule_app.command("list")
@handle_errors
def schedule_list(
    ctx: typer.Context,
    user: Annotated[bool, typer.Option("--user", help="systemd: user units")] = False,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir")] = None,
    crontab_file: Annotated[Path | None, typer.Option("--crontab-file")] = None,
) -> None:
    """List the configured schedules with their next due time, and what is installed."""
    from datetime import UTC, datetime

    from vya_backupdb.jobs import schedule_install as si
    from vya_backupdb.policies.schedule import next_due

    state = get_app(ctx)
    settings = state.loaded().settings
    now = datetime.now(UTC)
    table = Table(title="Schedules")
    for column in ("name", "instances", "when", "timezone", "next due (UTC)"):
        table.add_column(column)
    for s in settings.schedules:
        when = s.cron or f"{','.join(str(d) for d in s.weekdays)} at {s.time}"
        table.add_row(
            s.effective_name,
            ", ".join(s.instances) or "(all)",
            when,
            s.timezone,
            next_due(s, now).isoformat(timespec="minutes"),
        )
    state.out.print(table)
    timers = si.list_systemd(unit_dir or _default_unit_dir(user))
    state.out.print(f"systemd timers installed: {', '.join(timers) or '(none)'}", markup=False)
    try:
        entries = si.list_cron(_crontab(crontab_file))
    except Exception as exc:
        state.out.print(f"crontab: not readable ({exc})", markup=False)
        return
    state.out.print(f"crontab entries installed: {len(entries)}", markup=False)
    for name, config, _line in entries:
        state.out.print(f"  {name}  ({config})", markup=False)


@schedule_app.command("remove")
@handle_errors
def schedule_remove(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Schedules (default: all)")] = None,
    systemd: Annotated[bool, typer.Option("--systemd", help=_KIND_HELP)] = False,
    cron: Annotated[bool, typer.Option("--cron", help=_KIND_HELP)] = False,
    user: Annotated[bool, typer.Option("--user", help="systemd: user units")] = False,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir")] = None,
    crontab_file: Annotated[Path | None, typer.Option("--crontab-file")] = None,
) -> None:
    """Remove installed timers or crontab entries (of this config; others are untouched)."""
    from vya_backupdb.jobs import schedule_install as si

    if systemd == cron:
        raise UsageError("choose one of --systemd or --cron")
    state = get_app(ctx)
    if systemd:
        systemctl = None if unit_dir is not None else si.real_systemctl(user)
        removed = si.remove_systemd(unit_dir or _default_unit_dir(user), names or None, systemctl)
        state.out.print(f"removed: {', '.join(removed) or '(nothing)'}", markup=False)
        return
    config = _config_path(state.loaded())
    count = si.remove_cron(_crontab(crontab_file), config, names or None)
    state.out.print(f"removed {count} crontab line(s)", markup=False)


# -- notify -----------------------------------------------------------------------------------

notify_app = typer.Typer(help="Notification channels.", no_args_is_help=True)


@notify_app.command("test")
@handle_errors
def notify_test(
    ctx: typer.Context,
    channel: Annotated[
        int | None, typer.Option("--channel", help="Only this channel (0 = the first)")
    ] = None,
) -> None:
    """Send a test message to every channel (or one); exit 1 when any fails."""
    from vya_backupdb.observability.notify import Notifier

    state = get_app(ctx)
    loaded = state.loaded()
    notifier = Notifier(
        loaded.settings, log_file=_log_file(state, loaded), config_dir=loaded.directory
    )
    if not notifier.channels:
        raise UsageError(
            "no notification channels are configured",
            hint="Add them under 'notifications:' (docs/notifications.md).",
        )
    failed = 0
    for d in notifier.test(channel):
        state.out.print(f"{d.channel}: {'ok' if d.ok else 'FAILED: ' + str(d.error)}", markup=False)
        failed += not d.ok
    if failed:
        raise typer.Exit(1)


# -- metrics ----------------------------------------------------------------------------------

metrics_app = typer.Typer(help="Prometheus metrics.", no_args_is_help=True)


@metrics_app.command("serve")
@handle_errors
def metrics_serve(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: metrics.port)")] = None,
    bind: Annotated[
        str | None, typer.Option("--bind", help="Address (default: metrics.listen_address)")
    ] = None,
) -> None:
    """Serve /metrics, computed from the catalog on each scrape, until SIGTERM/Ctrl-C."""
    from vya_backupdb.observability.metrics import serve
    from vya_backupdb.wiring import make_catalog

    state = get_app(ctx)
    settings = state.loaded().settings
    port = port or settings.metrics.port
    address = bind or settings.metrics.listen_address
    server, _thread = serve(make_catalog(settings), port, address)
    state.err.print(f"serving metrics on http://{address}:{port}/metrics", markup=False)
    stop = threading.Event()
    with graceful_stop(stop, 0), contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()


@metrics_app.command("push")
@handle_errors
def metrics_push(ctx: typer.Context) -> None:
    """Push to the Pushgateway and write the textfile now (as after each run)."""
    from vya_backupdb.observability.metrics import export_after_run
    from vya_backupdb.wiring import make_catalog

    state = get_app(ctx)
    settings = state.loaded().settings
    if not settings.metrics.pushgateway_url and settings.metrics.textfile_path is None:
        raise UsageError("neither metrics.pushgateway_url nor metrics.textfile_path is configured")
    problems = export_after_run(settings, make_catalog(settings), None)
    for problem in problems:
        state.err.print(f"metrics: {problem}", markup=False)
    if problems:
        raise typer.Exit(9)


# -- status -----------------------------------------------------------------------------------


def status_cmd(
    ctx: typer.Context,
    instances: Annotated[
        list[str] | None, typer.Argument(help="Instances (default: all configured)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Age, size and trend of the newest backups, with a verdict against the thresholds.

    Exit status (Nagios convention): 0 ok, 1 warning, 2 critical, 3 unknown (also when the
    check cannot run: configuration error, unreadable storage).
    """
    from vya_backupdb.jobs.status import check_status
    from vya_backupdb.wiring import make_catalog

    state = get_app(ctx)
    try:
        settings = state.loaded().settings
        report = check_status(settings, make_catalog(settings), instances=tuple(instances or ()))
    except VyaError as error:
        # A check that cannot run is UNKNOWN for a monitoring system, whatever the cause.
        render_error(error)
        raise typer.Exit(3) from None
    if json_out:
        typer.echo(plain_json(report.as_dict()))
    else:
        state.out.print(report.summary(), markup=False)
        table = Table()
        for column in ("instance", "database", "verdict", "age", "size", "trend", "verified"):
            table.add_column(column)
        for d in report.databases:
            table.add_row(
                d.instance,
                d.database,
                d.verdict,
                "-" if d.age_hours is None else f"{d.age_hours:.1f} h",
                "-" if d.size_bytes is None else human_bytes(d.size_bytes),
                "-" if d.size_change_percent is None else f"{d.size_change_percent:+.0f}%",
                d.verification or "-",
            )
        state.out.print(table)
        for d in report.databases:
            for reason in d.reasons:
                state.out.print(f"{d.instance}/{d.database}: {reason}", markup=False)
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("run")(handle_errors(run_cmd))
    app.command("daemon")(handle_errors(daemon_cmd))
    app.command("status")(handle_errors(status_cmd))
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(notify_app, name="notify")
    app.add_typer(metrics_app, name="metrics")
