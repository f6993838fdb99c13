r"""Work a command starts before the CLI framework loads: the backup's head start.

A backup's dump tool used to wait for the command's start-up: the configuration models
(pydantic, ~0.2 s to import), Typer, the driver. :func:`start`, called by the console script
before anything imports them, recognises the plain form ``[global options] backup INSTANCE -d
DB [-d DB…] [options]`` and starts the dump of the first database
(:mod:`vya_backupdb.engines.pg_head`) from the configuration *document* — the file with its
overlay and ``VYA_*`` overrides, read without the models (config/document.py) — when the
instance is PostgreSQL and names its server and password plainly (``host``/``port``/
``socket``/``user``, ``password_env`` or ``password_file``). Otherwise (a password from the
credential store, …) it validates the configuration first, as the command will, and starts
the dump from that.

Either way the backup command then :func:`take`\ s it only when its own parsing ended with
the same config file, overlay, instance and databases, and the running psql and pg_dump are
exactly what the engine would run for the validated instance (same command lines, same
environments, same password: ``HeadStart.matches``); anything else is closed unused
(:func:`close`, also called at exit). Reading the document can therefore never make a backup
dump something other than what the validated configuration says.

This module imports neither Typer, pydantic nor the engines' drivers. Its parsing is
deliberately narrow: any option it does not know, ``--help``, ``--dry-run``, ``--all`` or a
second instance give no head start, and the command runs exactly as without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    #: The config file it was started from.
    path: Path
    head: HeadStart


@dataclass(frozen=True)
class _DocumentServer:
    """A PostgreSQL server as the configuration document names it (``PgServer``)."""

    host: str | None
    port: int | None
    socket: Path | None
    user: str | None

    @property
    def effective_host(self) -> str:
        return self.host or "localhost"

    @property
    def effective_port(self) -> int | None:
        return self.port or 5432


#: Instance keys whose value the document reading does not resolve itself (an encrypted or
#: stored password, a command, a size-dependent format): their instances take the validated
#: path.
_NOT_FROM_DOCUMENT = ("password", "password_command", "credential",
                      "directory_format_above_bytes")  # fmt: skip


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
        from vya_backupdb.config.document import read_document

        document = read_document(parsed.config, parsed.env, environ)
        _started = _from_document(parsed, document, environ)
        if _started is not None:
            return
        from vya_backupdb.config.loader import validate_document
        from vya_backupdb.engines import pg_head

        loaded = validate_document(*document, parsed.env)
        _loaded = (parsed, loaded)
        instance = loaded.settings.instance(parsed.instance)
        head = pg_head.start_named(loaded, instance, parsed.databases)
    except (VyaError, OSError):  # the command reports every problem itself
        return
    if head is not None and loaded.path is not None:
        _started = _Early(parsed, loaded.path, head)


def _from_document(
    parsed: Parsed, document: tuple[Path, str, dict[str, Any]], environ: Mapping[str, str]
) -> _Early | None:
    """Start the head start from the configuration ``document`` (config/document.py), before
    any validation; None when the instance is not one this reading resolves (see the module
    docstring)."""
    from vya_backupdb.engines import pg_head
    from vya_backupdb.engines.pg_commands import chooses_snapshot

    path, _, data = document
    instances = data.get("instances")
    entries = [
        entry
        for entry in (instances if isinstance(instances, list) else [])
        if isinstance(entry, dict) and entry.get("id") == parsed.instance
    ]
    if len(entries) != 1:
        return None
    found = _document_instance(entries[0], path.parent, environ)
    if found is None:
        return None
    server, password, fmt, options = found
    if chooses_snapshot(options):
        return None
    head = pg_head.start(parsed.instance, server, password, parsed.databases[0],
                         fmt=fmt, options=options)  # fmt: skip
    return None if head is None else _Early(parsed, path, head)


def _document_instance(
    entry: Mapping[str, object], config_dir: Path, environ: Mapping[str, str]
) -> tuple[_DocumentServer, str | None, str, tuple[str, ...]] | None:
    """Return (server, password, format, dump options) of a PostgreSQL instance entry whose
    values are plainly given; None for any other."""
    if entry.get("type") != "postgresql" or any(
        entry.get(key) is not None for key in _NOT_FROM_DOCUMENT
    ):
        return None
    texts = [entry.get(key) for key in ("host", "socket", "user")]
    port = entry.get("port")
    fmt = entry.get("format", "custom")
    options = entry.get("dump_options") or []
    if isinstance(port, str) and port.isdigit():
        port = int(port)  # VYA_INSTANCES__PG__PORT=5433
    if (
        not all(v is None or isinstance(v, str) for v in texts)
        or not (port is None or (isinstance(port, int) and not isinstance(port, bool)))
        or fmt not in ("custom", "plain")
        or not (isinstance(options, list) and all(isinstance(o, str) for o in options))
    ):
        return None
    host, socket, user = (None if v is None else str(v) for v in texts)
    password: str | None = None
    password_env, password_file = entry.get("password_env"), entry.get("password_file")
    if isinstance(password_env, str):
        password = environ.get(password_env)
    elif isinstance(password_file, str):
        from vya_backupdb.secrets.files import read_password_file

        path = Path(password_file).expanduser()
        try:
            password = read_password_file(path if path.is_absolute() else config_dir / path)[0]
        except (OSError, UnicodeDecodeError):
            return None
    if password is None:
        return None  # unset variable, or the credential store: the validated path
    from vya_backupdb.secrets.redaction import register_secret

    register_secret(password)
    server = _DocumentServer(host, port, None if socket is None else Path(socket), user)
    return server, password, str(fmt), tuple(options)


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
    instance and databases as ``loaded``, and the same commands as the validated instance
    gives (``HeadStart.matches``) — or None (closing any other)."""
    global _started
    early, _started = _started, None
    if early is None:
        return None
    same = (
        early.path == loaded.path
        and early.parsed.env == loaded.env
        and early.parsed.instance == instance
        and early.parsed.databases == tuple(databases)
        and _matches(early.head, loaded, instance, databases)
    )
    if same:
        return early.head
    early.head.close()
    return None


def _matches(head: HeadStart, loaded: LoadedConfig, name: str, databases: Sequence[str]) -> bool:
    from vya_backupdb.engines import pg_head
    from vya_backupdb.secrets.sources import password_for

    try:
        instance = loaded.settings.instance(name)
        # Before the password: a password_command (never a head start) is not run for this.
        if pg_head.wanted(instance, tuple(databases)) != head.db:
            return False
        return head.matches(instance, password_for(loaded, instance))
    except VyaError:
        return False


def close() -> None:
    """Stop a head start nothing took (the command failed before it got there)."""
    global _started, _loaded
    early, _started, _loaded = _started, None, None
    if early is not None:
        early.head.close()
