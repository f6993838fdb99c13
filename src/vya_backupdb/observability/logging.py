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
SHORT_ROOT_LOGGER = "vya"
#: Keys every JSON line about an operation carries (null when not applicable).
OPERATION_FIELDS = (
    "instance",
    "dbms",
    "database",
    "operation",
    "duration_seconds",
    "size_bytes",
    "compression_ratio",
    "status",
)
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
    if name in (ROOT_LOGGER, SHORT_ROOT_LOGGER):
        return "core"
    return name.removeprefix(ROOT_LOGGER + ".").removeprefix(SHORT_ROOT_LOGGER + ".")


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
        if "operation" in payload:
            # One schema for every operation line: monitors can rely on each key existing.
            for name in OPERATION_FIELDS:
                payload.setdefault(name, None)
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
    # Modules log under "vya_backupdb.*" and, in jobs/, under the short "vya.*". Both trees
    # reach the log file and JSON lines (no operation line is lost); on a human (rich)
    # console the short tree shows warnings and errors only, as it always did, so command
    # output stays the command's own.
    main_logger = logging.getLogger(ROOT_LOGGER)
    short_logger = logging.getLogger(SHORT_ROOT_LOGGER)
    level = level_for(verbosity)
    for each in (main_logger, short_logger):
        for handler in list(each.handlers):
            if getattr(handler, _MARK, False):
                each.removeHandler(handler)
                handler.close()
        each.setLevel(level)
        # Our handlers only: the application's log lines are not duplicated by a root handler.
        each.propagate = False

    console_handler = _console_handler(fmt, level)
    main_logger.addHandler(console_handler)
    if fmt == "json":
        short_logger.addHandler(console_handler)
    else:
        short_logger.addHandler(_console_handler(fmt, max(level, logging.WARNING)))

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
        _mark(file_handler)
        main_logger.addHandler(file_handler)
        short_logger.addHandler(file_handler)


def _console_handler(fmt: str, level: int) -> logging.Handler:
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler = RichHandler(
            console=Console(stderr=True, highlight=False),
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="[%X]",
        )
    handler.setLevel(level)
    return _mark(handler)


def get_logger(component: str) -> logging.Logger:
    """Return the logger of ``component`` (e.g. ``"jobs.backup"``) under ``vya_backupdb``."""
    if component == ROOT_LOGGER or component.startswith(ROOT_LOGGER + "."):
        return logging.getLogger(component)
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")
