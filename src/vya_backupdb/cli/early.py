"""Work a command starts before the CLI framework loads: the backup's head start.

Typer and the pydantic adapters it builds for every parameter take ~75 ms to import and set
up, and a backup's dump tool used to wait for them (issue 6 compares the whole run with the
native pipeline). :func:`start`, called by the console script before anything imports Typer,
recognises the plain form ``[global options] backup INSTANCE -d DB [-d DB…] [options]``,
loads the configuration exactly as the command will, and starts the dump of the first
database (:mod:`vya_backupdb.engines.pg_head`). The backup command then :func:`take`\\ s it —
only when its own parsing ended with the same config file, overlay, instance, databases and
instance settings; anything else is closed unused (:func:`close`, also called at exit).

This module imports neither Typer nor the engines' drivers. Its parsing is deliberately
narrow: any option it does not know, ``--help``, ``--dry-run``, ``--all`` or a second
instance give no head start, and the command runs exactly as without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vya_backupdb.errors import VyaError

if TYPE_CHECKING:
    from vya_backupdb.config.loader import LoadedConfig
    from vya_backupdb.engines.pg_head import HeadStart

#: Global options (before the command) that take a value, and those that do not (cli/app.py
#: reads the command name past them too; ``-v`` may also be repeated there: ``-vv``).
GLOBAL_VALUE_OPTIONS = frozenset({"--config", "-c", "--env", "--log-format", "--log-file"})
GLOBAL_FLAG_OPTIONS = frozenset({"--verbose", "--quiet", "-q"})
#: ``backup`` options that do not change what is dumped, with a value or without.
_BACKUP_VALUES = frozenset({"--jobs", "-j", "--progress-interval"})
_BACKUP_FLAGS = frozenset({"--no-users", "--json", "--no-progress", "--verify", "--no-verify"})


@dataclass(frozen=True)
class Parsed:
    """What :func:`parse` read from a plain backup command line."""

    config: Path | None
    env: str | None
    instance: str
    databases: tuple[str, ...]


@dataclass
class _Early:
    parsed: Parsed
    loaded: LoadedConfig
    head: HeadStart


_started: _Early | None = None
#: The configuration :func:`start` loaded, for the command to use rather than load it again.
_loaded: tuple[Parsed, LoadedConfig] | None = None


def parse(argv: Sequence[str]) -> Parsed | None:
    """Return the config, overlay, instance and databases of ``[global options] backup|b
    INSTANCE -d DB…``; None for any other command line, or one this parser is not sure of."""
    config: str | None = None
    env: str | None = None
    words = list(argv)
    index = 0
    while index < len(words) and words[index].startswith("-"):
        word, _, inline = words[index].partition("=")
        if word in GLOBAL_VALUE_OPTIONS:
            if inline:
                value = inline
                index += 1
            elif index + 1 < len(words):
                value = words[index + 1]
                index += 2
            else:
                return None
            if word in ("--config", "-c"):
                config = value
            elif word == "--env":
                env = value
        elif (word in GLOBAL_FLAG_OPTIONS or word == "-v") and not inline:
            index += 1
        else:
            return None
    if index >= len(words) or words[index] not in ("backup", "b"):
        return None
    instances: list[str] = []
    databases: list[str] = []
    index += 1
    while index < len(words):
        word, _, inline = words[index].partition("=")
        if word in ("--database", "-d") or word in _BACKUP_VALUES:
            if not inline and index + 1 >= len(words):
                return None
            value = inline or words[index + 1]
            if word in ("--database", "-d"):
                databases.append(value)
            index += 1 if inline else 2
        elif word in _BACKUP_FLAGS and not inline:
            index += 1
        elif word.startswith("-"):
            return None  # --dry-run, --all, --help, --strategy, an unknown option, "--"
        else:
            instances.append(words[index])
            index += 1
    if len(instances) != 1 or not databases:
        return None
    return Parsed(Path(config) if config else None, env, instances[0], tuple(databases))


def start(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Start the head start of a plain backup command line (see the module docstring).
    Never raises: any problem leaves it to the command, which reports it."""
    global _started, _loaded
    parsed = parse(argv)
    if parsed is None or any(k.startswith("_") and k.endswith("_COMPLETE") for k in environ):
        return
    try:
        from vya_backupdb.config.loader import load_settings
        from vya_backupdb.engines import pg_head

        loaded = load_settings(parsed.config, parsed.env, environ)
        _loaded = (parsed, loaded)
        instance = loaded.settings.instance(parsed.instance)
        head = pg_head.start_named(loaded, instance, parsed.databases)
    except (VyaError, OSError):  # the command reports every problem itself
        return
    if head is not None:
        _started = _Early(parsed, loaded, head)


def loaded_config(config: Path | None, env: str | None) -> LoadedConfig | None:
    """Return the configuration :func:`start` loaded when the command asks for the same file
    and overlay (once; None otherwise): a backup of a MariaDB, SQLite or files instance named
    with ``-d`` does not validate its config twice."""
    global _loaded
    early, _loaded = _loaded, None
    if early is None or (early[0].config, early[0].env) != (config, env):
        return None
    return early[1]


def take(loaded: LoadedConfig, instance: str, databases: Sequence[str]) -> HeadStart | None:
    """Return the head start begun for this very backup — same config file and overlay,
    instance, databases and instance settings as ``loaded`` — or None (closing any other)."""
    global _started
    early, _started = _started, None
    if early is None:
        return None
    same = (
        early.loaded.path == loaded.path
        and early.loaded.env == loaded.env
        and early.parsed.instance == instance
        and early.parsed.databases == tuple(databases)
        and _instance(early.loaded, instance) == _instance(loaded, instance)
    )
    if same:
        return early.head
    early.head.close()
    return None


def close() -> None:
    """Stop a head start nothing took (the command failed before it got there)."""
    global _started, _loaded
    early, _started, _loaded = _started, None, None
    if early is not None:
        early.head.close()


def _instance(loaded: LoadedConfig, name: str) -> object:
    try:
        return loaded.settings.instance(name)
    except VyaError:  # not found: never equal to a found one
        return None
