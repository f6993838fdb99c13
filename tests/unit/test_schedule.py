"""Schedule windows across DST, cron parsing, systemd units and crontab install/remove."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vya_backupdb.config.ops import ScheduleConfig
from vya_backupdb.jobs import schedule_install as si
from vya_backupdb.policies.schedule import (
    cron_times,
    due_times,
    next_due,
    on_calendar,
    parse_cron,
    previous_due,
    window_decision,
)

pytestmark = pytest.mark.unit

SP = "America/Sao_Paulo"
VENV_EXE = Path(__file__).resolve().parents[2] / ".venv/bin/vya-backupdb"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sched(**kw: object) -> ScheduleConfig:
    base: dict[str, object] = {"instances": ["db1"], "timezone": SP}
    base.update(kw)
    return ScheduleConfig.model_validate(base)


def test_next_due_sao_paulo_before_and_after_dst_start_uses_each_offset() -> None:
    s = sched(time="02:30")
    # 2018-11-03: BRT (-3) -> 05:30 UTC; DST started 2018-11-04 00:00 -> BRST (-2) -> 04:30.
    assert next_due(s, utc(2018, 11, 3)) == utc(2018, 11, 3, 5, 30)
    assert next_due(s, utc(2018, 11, 4, 6)) == utc(2018, 11, 5, 4, 30)


def test_next_due_sao_paulo_time_in_spring_gap_runs_one_gap_later() -> None:
    # 2018-11-04 00:00-01:00 did not exist in Sao Paulo: 00:30 runs at 01:30 BRST (03:30 UTC).
    s = sched(time="00:30")
    assert next_due(s, utc(2018, 11, 4)) == utc(2018, 11, 4, 3, 30)
    assert next_due(s, utc(2018, 11, 4)).astimezone(ZoneInfo(SP)).hour == 1


def test_due_times_sao_paulo_repeated_hour_at_dst_end_runs_once() -> None:
    # 2019-02-16 23:00-24:00 happened twice (DST ended at midnight).
    s = sched(time="23:30")
    dues = list(due_times(s, utc(2019, 2, 16, 12), utc(2019, 2, 17, 12)))
    assert dues == [utc(2019, 2, 17, 1, 30)]  # the first occurrence (-2)


def test_next_due_sao_paulo_after_dst_abolished_stays_minus_three() -> None:
    s = sched(time="02:30")
    assert next_due(s, utc(2019, 11, 4)) == utc(2019, 11, 4, 5, 30)


def test_next_due_berlin_spring_forward_and_fall_back_are_correct() -> None:
    s = sched(time="02:30", timezone="Europe/Berlin")
    # 2024-03-31 02:00 -> 03:00: 02:30 does not exist, runs at 03:30 CEST = 01:30 UTC.
    assert next_due(s, utc(2024, 3, 31)) == utc(2024, 3, 31, 1, 30)
    # 2024-10-27 03:00 -> 02:00: 02:30 happens twice, runs at the first (CEST) = 00:30 UTC.
    assert list(due_times(s, utc(2024, 10, 26, 12), utc(2024, 10, 27, 12))) == [
        utc(2024, 10, 27, 0, 30)
    ]
    assert next_due(s, utc(2024, 10, 28)) == utc(2024, 10, 28, 1, 30)  # CET again


def test_next_due_weekdays_skip_weekend() -> None:
    s = sched(time="02:30", weekdays=[0, 1, 2, 3, 4], timezone="UTC")
    # 2024-06-08 is a Saturday: next run is Monday the 10th.
    assert next_due(s, utc(2024, 6, 8)) == utc(2024, 6, 10, 2, 30)
    assert previous_due(s, utc(2024, 6, 9, 12)) == utc(2024, 6, 7, 2, 30)


def test_window_decision_within_tolerance_runs_beyond_is_missed() -> None:
    s = sched(time="02:30", timezone="UTC", tolerance_minutes=30)
    inside = window_decision(s, utc(2024, 6, 10, 2, 59))
    assert inside.in_window and inside.due == utc(2024, 6, 10, 2, 30)
    outside = window_decision(s, utc(2024, 6, 10, 3, 1))
    assert not outside.in_window and "tolerance" in outside.reason
    early = window_decision(s, utc(2024, 6, 10, 2, 29, 59, 500000))
    assert early.in_window and early.due == utc(2024, 6, 10, 2, 30)
    before = window_decision(s, utc(2024, 6, 10, 2, 29))
    assert not before.in_window


def test_window_decision_tolerance_respects_dst_local_time() -> None:
    s = sched(time="02:30", tolerance_minutes=30)
    # Nov 2018 in BRST: due 04:30 UTC; at 05:10 UTC (40 min late) it is missed.
    assert window_decision(s, utc(2018, 11, 5, 4, 50)).in_window
    assert not window_decision(s, utc(2018, 11, 5, 5, 10)).in_window


def test_parse_cron_names_steps_and_sunday_seven_are_understood() -> None:
    spec = parse_cron("*/15 1-3 * * mon-fri")
    assert spec.minutes == (0, 15, 30, 45)
    assert spec.hours == (1, 2, 3)
    assert spec.weekdays == (0, 1, 2, 3, 4)
    assert parse_cron("0 0 * * 7").weekdays == (6,)
    assert parse_cron("@daily").minutes == (0,)


@pytest.mark.parametrize("bad", ["61 * * * *", "* * *", "0 0 L * *", "0 0 * * 5#2", "x y z a b"])
def test_parse_cron_invalid_expression_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_cron(bad)


def test_cron_schedule_dom_or_dow_rule_like_cron() -> None:
    s = sched(cron="15 3 1 * mon", timezone="UTC")
    dues = list(due_times(s, utc(2024, 6, 30), utc(2024, 7, 16)))
    # July 1st (a Monday and the 1st), 8th and 15th (Mondays).
    assert dues == [utc(2024, 7, 1, 3, 15), utc(2024, 7, 8, 3, 15), utc(2024, 7, 15, 3, 15)]


def test_cron_schedule_in_zone_follows_dst() -> None:
    s = sched(cron="0 2 * * *", timezone="Europe/Berlin")
    assert next_due(s, utc(2024, 3, 30)) == utc(2024, 3, 30, 1)  # CET
    assert next_due(s, utc(2024, 3, 31, 2)) == utc(2024, 4, 1, 0)  # CEST


def test_schedule_config_requires_one_form() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ScheduleConfig.model_validate({"time": "02:30", "cron": "0 2 * * *"})
    with pytest.raises(ValueError, match="time zone"):
        ScheduleConfig.model_validate({"time": "02:30", "timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="HH:MM"):
        ScheduleConfig.model_validate({"time": "2:30pm"})


def test_on_calendar_weekday_form_carries_zone() -> None:
    s = sched(time="02:30", weekdays=[0, 1, 2, 3, 4])
    assert on_calendar(s) == [f"Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00 {SP}"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize(
    "kw",
    [
        {"time": "02:30", "weekdays": [0, 1, 2, 3, 4]},
        {"time": "23:05", "timezone": "Europe/Berlin"},
        {"cron": "*/20 1,13 * 1-6 *", "timezone": "UTC"},
        {"cron": "15 3 1 * mon", "timezone": "Asia/Tokyo"},
    ],
)
def test_on_calendar_next_elapse_matches_next_due(kw: dict[str, object]) -> None:
    s = sched(**kw)
    now = datetime.now(UTC)
    ours = next_due(s, now)
    elapses = []
    for spec in on_calendar(s):
        out = subprocess.run(
            ["systemd-analyze", "calendar", spec],
            capture_output=True,
            text=True,
            check=True,
            env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        ).stdout
        match = re.search(r"\(in UTC\): \w+ (\S+ \S+) UTC", out) or re.search(
            r"Next elapse: \w+ (\S+ \S+) UTC", out
        )
        assert match, out
        elapses.append(datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC))
    assert min(elapses) == ours


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert VENV_EXE.exists()
    config = tmp_path / "my config.yaml"  # a space: ExecStart quoting must hold
    config.write_text("{}\n")
    s = sched(time="02:30", weekdays=[0, 1, 2, 3, 4], randomized_delay_seconds=600)
    pair = si.systemd_units(s, VENV_EXE, config)
    written = si.install_systemd([pair], tmp_path / "units", None)
    assert {p.name for p in written} == {"vya-backupdb-db1.service", "vya-backupdb-db1.timer"}
    assert "Persistent=true" in pair.timer and "RandomizedDelaySec=600" in pair.timer
    assert f'"{config}"' in pair.service
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, written)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert si.list_systemd(tmp_path / "units") == ["vya-backupdb-db1.timer"]
    assert si.remove_systemd(tmp_path / "units", None, None) == ["vya-backupdb-db1"]
    assert not list((tmp_path / "units").iterdir())


def test_systemd_units_relative_paths_are_refused(tmp_path: Path) -> None:
    from vya_backupdb.errors import UsageError

    with pytest.raises(UsageError, match="absolute"):
        si.systemd_units(sched(time="02:30"), Path("vya-backupdb"), tmp_path / "c.yaml")


def test_cron_times_foreign_zone_covers_both_offsets() -> None:
    s = sched(time="02:30")  # Sao Paulo had DST until 2019: 04:30 and 05:30 UTC
    assert cron_times(s, ZoneInfo("UTC"), utc(2018, 6, 1)) == ["30 4,5 * * *"]
    assert cron_times(s, ZoneInfo("UTC"), utc(2024, 6, 1)) == ["30 5 * * *"]


def test_cron_times_same_zone_is_exact() -> None:
    s = sched(time="02:30", weekdays=[0, 6], timezone="Europe/Berlin")
    assert cron_times(s, ZoneInfo("Europe/Berlin"), utc(2024, 1, 1)) == ["30 2 * * 1,0"]
    c = sched(cron="15 3 * * *", timezone="UTC")
    assert cron_times(c, ZoneInfo("Etc/UTC"), utc(2024, 1, 1)) == ["15 3 * * *"]


def test_crontab_install_is_idempotent_and_remove_keeps_other_lines(tmp_path: Path) -> None:
    crontab = si.FileCrontab(tmp_path / "crontab")
    crontab.write("MAILTO=ops@example.com\n0 1 * * * /usr/bin/other-job\n")
    config = tmp_path / "config.yaml"
    exe = Path("/opt/vya/bin/vya-backupdb")
    a = sched(name="nightly", time="02:30", timezone="UTC")
    b = sched(name="files", cron="15 3 * * *", timezone="UTC")
    lines = {
        s.effective_name: si.cron_lines(s, exe, config, host_zone=ZoneInfo("UTC")) for s in (a, b)
    }
    first = si.install_cron(crontab, lines, config)
    second = si.install_cron(crontab, lines, config)
    assert first == second == crontab.read()
    assert "/usr/bin/other-job" in first and "MAILTO=" in first
    entries = si.list_cron(crontab)
    assert [(n, c) for n, c, _ in entries] == [("nightly", str(config)), ("files", str(config))]
    assert entries[0][2].startswith(
        f"30 2 * * * {exe} --config {config} run --scheduled --schedule nightly"
    )
    assert si.remove_cron(crontab, config, ["nightly"]) == 1
    assert [n for n, _, _ in si.list_cron(crontab)] == ["files"]
    assert si.remove_cron(crontab, config, None) == 1
    text = crontab.read()
    assert "vya-backupdb" not in text
    assert text == "MAILTO=ops@example.com\n0 1 * * * /usr/bin/other-job\n"


def test_crontab_install_other_config_entries_untouched(tmp_path: Path) -> None:
    crontab = si.FileCrontab(tmp_path / "crontab")
    exe = Path("/opt/vya/bin/vya-backupdb")
    s = sched(name="nightly", time="02:30", timezone="UTC")
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    si.install_cron(crontab, {"nightly": si.cron_lines(s, exe, one)}, one)
    si.install_cron(crontab, {"nightly": si.cron_lines(s, exe, two)}, two)
    assert sorted(c for _, c, _ in si.list_cron(crontab)) == [str(one), str(two)]
    si.remove_cron(crontab, one, None)
    assert [c for _, c, _ in si.list_cron(crontab)] == [str(two)]


def test_next_due_never_firing_cron_raises() -> None:
    s = sched(cron="0 0 31 2 *", timezone="UTC")
    with pytest.raises(ValueError, match="never fires"):
        next_due(s, utc(2024, 1, 1))


def test_due_times_span_is_half_open() -> None:
    s = sched(time="02:30", timezone="UTC")
    start = utc(2024, 6, 10, 2, 30)
    assert list(due_times(s, start, start + timedelta(days=1))) == [start + timedelta(days=1)]
