"""The small application object passed to every command, and error rendering."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer

from vya_backupdb.errors import VyaError

if TYPE_CHECKING:
    from rich.console import Console

    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.config.models import Settings

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class AppContext:
    """Global options, and the configuration loaded once on first use."""

    config_path: Path | None = None
    env: str | None = None
    log_format: str | None = None
    log_file: Path | None = None
    verbosity: int = 0
    _loaded: LoadedConfig | None = field(default=None, repr=False)
    _logging_ready: bool = field(default=False, repr=False)

    @property
    def out(self) -> Console:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @property
    def err(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    def loaded(self, *, logging: bool = True) -> LoadedConfig:
        """Return the validated configuration; raise ConfigError when it is missing or bad.
        Logging is set up from it too, unless ``logging`` is False (the caller then calls
        :meth:`setup_logging` itself, a moment later)."""
        if self._loaded is None:
            from vya_backupdb.cli import early
            from vya_backupdb.config.loader import load_settings

            self._loaded = early.loaded_config(self.config_path, self.env) or load_settings(
                self.config_path, self.env
            )
        if logging:
            self.setup_logging()
        return self._loaded

    @property
    def settings(self) -> Settings:
        return self.loaded().settings

    def setup_logging(self) -> None:
        """Configure logging from the flags, falling back to the config's logging section."""
        if self._logging_ready:
            return
        from vya_backupdb.observability.logging import configure

        cfg = self._loaded.settings.logging if self._loaded is not None else None
        verbosity = self.verbosity
        if verbosity == 0 and cfg is not None:  # flags win; otherwise the config's level
            verbosity = {"DEBUG": 1, "INFO": 0, "WARNING": -1, "ERROR": -2}[cfg.level]
        configure(
            fmt=self.log_format or (cfg.format if cfg else "rich"),
            file=self.log_file or (cfg.file if cfg else None),
            verbosity=verbosity,
        )
        self._logging_ready = True


def get_app(ctx: typer.Context) -> AppContext:
    obj = ctx.obj if ctx.obj is not None else ctx.find_root().obj
    if not isinstance(obj, AppContext):  # pragma: no cover - only when invoked oddly
        obj = AppContext()
        ctx.obj = obj
    return obj


def render_error(error: VyaError) -> None:
    """Print an error, its details and its hint to stderr (never a traceback)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/] {error.message}", markup=True)
    if error.details:
        for line in error.details.rstrip().splitlines():
            console.print(f"  {line}", markup=False)
    if error.hint:
        console.print(f"[yellow]hint:[/] {error.hint}", markup=True)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn VyaError into a rendered message and its documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except VyaError as error:
            render_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: partial output was removed\n")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # never a traceback: a bug gets a short message and exit 1
            from vya_backupdb.secrets.redaction import redact

            logging.getLogger("vya.cli").debug("internal error", exc_info=True)
            render_error(
                VyaError(
                    f"internal error: {type(exc).__name__}: {redact(str(exc))}",
                    hint="This is a bug. Run again with -v --log-file vya.log and report it "
                    "with the log (secrets are masked in it).",
                )
            )
            raise typer.Exit(1) from None

    return wrapper
