"""Logging set-up: rich (human) or JSON lines on stderr, optionally a log file too.

Every handler carries the :class:`~vya_backupdb.secrets.redaction.RedactingFilter`, so a
password can reach no log output whatever the code that logged it. Components log through
``get_logger("engines.postgresql")`` and pass context as ``extra={"instance": ..., ...}``;
JSON lines carry those fields as top-level keys.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from vya_backupdb.errors import UsageError
from vya_backupdb.secrets.redaction import STANDARD_RECORD_ATTRS, RedactingFilter, redact

ROOT_LOGGER = "vya_backupdb"
LOG_FORMATS = ("rich", "json")
_MARK = "_vya_handler"


def level_for(verbosity: int) -> int:
    """Return the log level for ``-v`` (1+ = DEBUG), default (0 = INFO), ``-q`` (-1 = WARNING)."""
    if verbosity >= 1:
        return logging.DEBUG
    if verbosity < -1:
        return logging.ERROR
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO


def _component(name: str) -> str:
    if name == ROOT_LOGGER:
        return "core"
    return name.removeprefix(ROOT_LOGGER + ".")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: timestamp (ISO-8601 UTC), level, component, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "component": _component(record.name),
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in STANDARD_RECORD_ATTRS and not name.startswith("_"):
                payload[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = redact(record.exc_text)
        return json.dumps(payload, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Plain text for log files: time, level, component, message and ``key=value`` extras."""

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="seconds")
        extras = " ".join(
            f"{name}={value}"
            for name, value in vars(record).items()
            if name not in STANDARD_RECORD_ATTRS and not name.startswith("_")
        )
        line = f"{stamp} {record.levelname:<7} {_component(record.name)}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + redact(record.exc_text)
        return line


def _mark(handler: logging.Handler) -> logging.Handler:
    handler.addFilter(RedactingFilter())
    setattr(handler, _MARK, True)
    return handler


def configure(fmt: str, file: Path | None, verbosity: int) -> None:
    """Install the handlers on the ``vya_backupdb`` logger (replacing earlier ones).

    Raise UsageError when ``fmt`` is unknown or the log file cannot be opened.
    """
    if fmt not in LOG_FORMATS:
        raise UsageError(
            f"unknown log format {fmt!r}", hint=f"Use one of: {', '.join(LOG_FORMATS)}"
        )
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, _MARK, False):
            logger.removeHandler(handler)
            handler.close()
    level = level_for(verbosity)
    logger.setLevel(level)
    # Our handlers only: the application's log lines are not duplicated by a root handler.
    logger.propagate = False

    console_handler: logging.Handler
    if fmt == "json":
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(JsonLinesFormatter())
    else:
        console_handler = RichHandler(
            console=Console(stderr=True, highlight=False),
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="[%X]",
        )
    console_handler.setLevel(level)
    logger.addHandler(_mark(console_handler))

    if file is not None:
        try:
            file.expanduser().parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(file.expanduser(), encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot open the log file {file}: {exc.strerror}",
                hint="Choose a writable path with --log-file or logging.file.",
            ) from None
        file_handler.setFormatter(JsonLinesFormatter() if fmt == "json" else PlainFormatter())
        file_handler.setLevel(level)
        logger.addHandler(_mark(file_handler))


def get_logger(component: str) -> logging.Logger:
    """Return the logger of ``component`` (e.g. ``"jobs.backup"``) under ``vya_backupdb``."""
    if component == ROOT_LOGGER or component.startswith(ROOT_LOGGER + "."):
        return logging.getLogger(component)
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")
