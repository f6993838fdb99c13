"""observability.logging: rich / JSON lines, log file, levels, and redaction on every handler."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from vya_backupdb.errors import UsageError
from vya_backupdb.observability.logging import ROOT_LOGGER, configure, get_logger, level_for
from vya_backupdb.secrets.redaction import clear_registered_secrets, register_secret

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    clear_registered_secrets()


def test_level_for_verbosity_maps_flags() -> None:
    assert level_for(2) == logging.DEBUG
    assert level_for(1) == logging.DEBUG
    assert level_for(0) == logging.INFO
    assert level_for(-1) == logging.WARNING


def test_configure_json_writes_one_object_per_line_with_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "logs" / "vya.jsonl"
    configure("json", log_file, 0)
    log = get_logger("jobs.backup")
    log.info(
        "dumped %s",
        "app",
        extra={"instance": "pg1", "database": "app", "operation": "backup", "bytes": 42},
    )
    log.debug("hidden at INFO")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "INFO"
    assert entry["component"] == "jobs.backup"
    assert entry["message"] == "dumped app"
    assert entry["instance"] == "pg1"
    assert entry["database"] == "app"
    assert entry["operation"] == "backup"
    assert entry["bytes"] == 42
    assert entry["timestamp"].endswith("+00:00")
    err = capsys.readouterr().err.strip().splitlines()
    assert json.loads(err[-1])["message"] == "dumped app"


def test_configure_masks_secrets_in_console_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_secret("pw-Zebra-77")
    log_file = tmp_path / "vya.log"
    configure("rich", log_file, 1)
    log = get_logger("engines.x")
    log.warning(
        "connecting with pw-Zebra-77 to postgresql://u:other@h", extra={"pw": "pw-Zebra-77"}
    )
    try:
        raise RuntimeError("PGPASSWORD=leaky failed")
    except RuntimeError:
        log.exception("tool failed")
    text = log_file.read_text()
    err = capsys.readouterr().err
    for output in (text, err):
        assert "pw-Zebra-77" not in output
        assert "other@" not in output
    assert "leaky" not in text
    assert "connecting with **** to postgresql://u:****@h" in text
    assert "WARNING" in text
    assert "engines.x" in text


def test_configure_quiet_hides_info(tmp_path: Path) -> None:
    log_file = tmp_path / "q.log"
    configure("rich", log_file, -1)
    get_logger("x").info("not shown")
    get_logger("x").warning("shown")
    assert log_file.read_text().count("\n") == 1
    assert "shown" in log_file.read_text()


def test_configure_twice_replaces_handlers(tmp_path: Path) -> None:
    configure("json", tmp_path / "a.log", 0)
    configure("json", tmp_path / "b.log", 0)
    get_logger("x").info("once")
    assert (tmp_path / "a.log").read_text() == ""
    assert len((tmp_path / "b.log").read_text().splitlines()) == 1


def test_configure_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown log format 'xml'"):
        configure("xml", None, 0)


def test_configure_unwritable_log_file_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot open the log file"):
        configure("rich", blocker / "sub" / "x.log", 0)


def test_get_logger_prefixes_component() -> None:
    assert get_logger("jobs").name == "vya_backupdb.jobs"
    assert get_logger("vya_backupdb.cli").name == "vya_backupdb.cli"
