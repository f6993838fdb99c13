"""Progress rendering: the pure figures, the periodic log lines, the bars, the choice between
them, and that progress never reaches stdout (``--json`` stays parseable)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner
from unit_helpers import write_sqlite_config

from vya_backupdb.cli import progress as progress_mod
from vya_backupdb.cli.app import app
from vya_backupdb.cli.progress import (
    BarProgress,
    LogProgress,
    choose_display,
    format_eta,
    format_progress,
    progress_figures,
    showing,
)
from vya_backupdb.jobs.demo import create_sqlite_demo

pytestmark = pytest.mark.unit

GiB = 1024**3
MiB = 1024**2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- pure figures


def test_progress_figures_with_total_gives_rate_fraction_and_eta() -> None:
    figures = progress_figures(done=100 * MiB, total=400 * MiB, elapsed=10.0)
    assert figures.rate == pytest.approx(10 * MiB)
    assert figures.fraction == pytest.approx(0.25)
    assert figures.eta == pytest.approx(30.0)


def test_progress_figures_without_total_gives_rate_only() -> None:
    figures = progress_figures(done=50 * MiB, total=None, elapsed=5.0)
    assert figures.rate == pytest.approx(10 * MiB)
    assert figures.fraction is None and figures.eta is None


def test_progress_figures_at_start_has_no_rate_nor_eta() -> None:
    figures = progress_figures(done=0, total=GiB, elapsed=0.0)
    assert figures.rate is None and figures.eta is None
    assert figures.fraction == 0.0


def test_progress_figures_past_the_total_gives_no_eta() -> None:
    figures = progress_figures(done=3 * GiB, total=2 * GiB, elapsed=10.0)
    assert figures.fraction == pytest.approx(1.5)
    assert figures.eta is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (27.4, "27s"), (59.6, "1m00s"), (245, "4m05s"), (3723, "1h02m03s"), (-3, "0s")],
)
def test_format_eta_for_durations_gives_compact_text(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


def test_format_progress_of_an_estimate_marks_the_total_with_a_tilde() -> None:
    figures = progress_figures(done=int(1.2 * GiB), total=int(3.4 * GiB), elapsed=14.457)
    text = format_progress(figures, estimated=True)
    assert text == "1.2 GiB of ~3.4 GiB (35%), 85.0 MiB/s, ETA 27s"


def test_format_progress_of_an_exact_total_has_no_tilde() -> None:
    figures = progress_figures(done=512 * MiB, total=GiB, elapsed=8.0)
    assert (
        format_progress(figures, estimated=False)
        == "512.0 MiB of 1.0 GiB (50%), 64.0 MiB/s, ETA 8s"
    )


def test_format_progress_past_an_estimate_says_so_without_eta() -> None:
    figures = progress_figures(done=3 * GiB, total=2 * GiB, elapsed=30.0)
    assert format_progress(figures, estimated=True) == (
        "3.0 GiB of ~2.0 GiB (past the estimate), 102.4 MiB/s"
    )


def test_format_progress_without_total_shows_bytes_and_rate() -> None:
    figures = progress_figures(done=10 * MiB, total=None, elapsed=2.0)
    assert format_progress(figures, estimated=True) == "10.0 MiB, 5.0 MiB/s"


# --------------------------------------------------------------------------- log lines


def _progress_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == progress_mod.LOGGER_NAME]


def test_log_progress_emits_at_most_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    display = LogProgress(10.0, clock=clock)
    report = display.backup_factory()("pg01", "app", 4 * GiB)
    assert report is not None
    caplog.set_level(logging.INFO, logger=progress_mod.LOGGER_NAME)
    for seconds, done in [(0.5, MiB), (5, 100 * MiB), (9.9, 200 * MiB)]:
        clock.now = 1000.0 + seconds
        report(done)
    assert _progress_records(caplog) == []  # nothing before the first interval
    clock.now = 1010.0
    report(GiB)
    clock.now = 1015.0
    report(int(1.5 * GiB))  # throttled: 5 s since the last line
    clock.now = 1020.0
    report(2 * GiB)
    lines = [r.getMessage() for r in _progress_records(caplog)]
    assert lines == [
        "progress pg01/app: 1.0 GiB of ~4.0 GiB (25%), 102.4 MiB/s, ETA 30s",
        "progress pg01/app: 2.0 GiB of ~4.0 GiB (50%), 102.4 MiB/s, ETA 20s",
    ]


def test_log_progress_lines_carry_fields_for_json_logs(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    display = LogProgress(2.0, clock=clock)
    report = display.backup_factory()("pg01", "app", None)
    assert report is not None
    caplog.set_level(logging.INFO, logger=progress_mod.LOGGER_NAME)
    clock.now += 4.0
    report(40 * MiB)
    [record] = _progress_records(caplog)
    assert record.getMessage() == "progress pg01/app: 40.0 MiB, 10.0 MiB/s"
    fields = {k: getattr(record, k) for k in ("instance", "database", "operation", "bytes")}
    assert fields == {
        "instance": "pg01",
        "database": "app",
        "operation": "backup",
        "bytes": 40 * MiB,
    }
    assert record.total is None  # type: ignore[attr-defined]
    assert record.rate == pytest.approx(10 * MiB)  # type: ignore[attr-defined]
    assert record.eta_seconds is None  # type: ignore[attr-defined]


def test_log_progress_of_parallel_transfers_throttles_each_separately(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    display = LogProgress(10.0, clock=clock)
    first = display.track("backup", "pg01", "a", 100 * MiB, estimated=True)
    clock.now += 5
    second = display.track("backup", "pg01", "b", 100 * MiB, estimated=True)
    assert first is not None and second is not None
    caplog.set_level(logging.INFO, logger=progress_mod.LOGGER_NAME)
    clock.now += 5  # 10 s for a, 5 s for b
    first(50 * MiB)
    second(50 * MiB)
    assert [r.database for r in _progress_records(caplog)] == ["a"]  # type: ignore[attr-defined]


def test_log_progress_of_restore_names_the_operation(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    display = LogProgress(1.0, clock=clock)
    report = display.track("restore", "pg01", "app", 100 * MiB)
    assert report is not None
    caplog.set_level(logging.INFO, logger=progress_mod.LOGGER_NAME)
    clock.now += 2
    report(25 * MiB)
    [record] = _progress_records(caplog)
    assert (
        record.getMessage()
        == "progress restore pg01/app: 25.0 MiB of 100.0 MiB (25%), 12.5 MiB/s, ETA 6s"
    )
    assert record.operation == "restore"  # type: ignore[attr-defined]
    assert record.total_estimated is False  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bars


def _bar_display() -> tuple[BarProgress, Progress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    rich_progress = progress_mod._make_rich_progress()
    rich_progress.live.console = console  # draw into the buffer, not the test's stderr
    return BarProgress(rich_progress), rich_progress, out


def test_bar_progress_adds_a_task_with_the_first_bytes_only() -> None:
    display, rich_progress, _ = _bar_display()
    report = display.track("restore", "pg01", "app", 100 * MiB)
    assert report is not None
    assert rich_progress.tasks == []  # no bar while a restore may still ask for confirmation
    with showing(display):
        report(10 * MiB)
        report(60 * MiB)
        [task] = rich_progress.tasks
        assert task.description == "restore pg01/app"
        assert task.completed == 60 * MiB and task.total == 100 * MiB
        assert rich_progress.live.is_started
    assert not rich_progress.live.is_started


def test_bar_progress_size_column_marks_estimates() -> None:
    display, rich_progress, _ = _bar_display()
    report = display.backup_factory()("pg01", "app", 2 * GiB)
    unknown = display.backup_factory()("pg01", "other", None)
    assert report is not None and unknown is not None
    with showing(display):
        report(GiB)
        unknown(5 * MiB)
        size_column = rich_progress.columns[2]
        first, second = rich_progress.tasks
        assert str(size_column(first)) == "1.0 GiB / ~2.0 GiB"  # type: ignore[operator]
        assert str(size_column(second)) == "5.0 MiB"  # type: ignore[operator]


def test_showing_stops_the_bars_when_the_block_raises() -> None:
    display, rich_progress, _ = _bar_display()
    report = display.track("backup", "pg01", "app", None)
    assert report is not None
    with pytest.raises(RuntimeError), showing(display):
        report(1)
        raise RuntimeError("boom")
    assert not rich_progress.live.is_started


# --------------------------------------------------------------------------- the choice


@pytest.mark.parametrize(
    ("log_format", "enabled", "terminal", "quiet", "kind"),
    [
        ("rich", True, True, False, BarProgress),
        ("rich", True, False, False, LogProgress),  # cron, CI
        ("json", True, True, False, LogProgress),
        ("rich", False, True, False, LogProgress),  # --no-progress
        ("rich", True, True, True, LogProgress),  # -q
    ],
)
def test_choose_display_for_the_situation_picks_bars_or_log_lines(
    log_format: str, enabled: bool, terminal: bool, quiet: bool, kind: type
) -> None:
    display = choose_display(
        log_format=log_format, enabled=enabled, terminal=terminal, quiet=quiet, interval=3
    )
    assert type(display) is kind
    if isinstance(display, LogProgress):
        assert display.interval == 3


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    create_sqlite_demo(data / "shop.db")
    return write_sqlite_config(tmp_path, data)


def test_backup_json_with_progress_lines_keeps_stdout_valid_json(sqlite_config: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            *("--config", str(sqlite_config), "--log-format", "json"),
            *("backup", "lite", "--json", "--progress-interval", "0"),
        ],
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    [db] = run["results"]
    assert db["status"] == "success"
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["component"] == "progress"]
    assert progress, result.stderr
    last = progress[-1]
    assert last["operation"] == "backup" and last["database"] == "shop.db"
    assert last["bytes"] == db["raw_bytes"]
    assert last["total"] > 0 and last["total_estimated"] is True  # the file size estimate


def test_backup_json_with_bars_in_a_terminal_keeps_stdout_valid_json(
    sqlite_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_mod, "stderr_is_terminal", lambda: True)
    result = CliRunner().invoke(app, ["--config", str(sqlite_config), "backup", "lite", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["status"] == "success"


def test_restore_and_verify_accept_progress_options(sqlite_config: Path) -> None:
    base = ["--config", str(sqlite_config)]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "backup", "lite"]).exit_code == 0
    verified = runner.invoke(app, [*base, "verify", "lite", "--no-progress", "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["ok"] is True
    restored = runner.invoke(
        app,
        [
            *base,
            *("restore", "lite", "-d", "shop.db", "--latest", "--target", "copy.db"),
            *("--no-progress", "--progress-interval", "0", "--json"),
        ],
    )
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["target_database"] == "copy.db"
