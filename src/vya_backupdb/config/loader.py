"""Find, parse, overlay and validate the configuration file, once, at the edge.

Order of precedence (later wins): the file, then ``environments[<--env>]`` deep-merged over it,
then ``VYA_``-prefixed environment variables:

* ``VYA_HOSTNAME=db-host-1`` sets ``hostname``;
* ``VYA_STORAGE__BASE_PATH=/srv/backups`` sets ``storage.base_path`` (``__`` separates keys);
* ``VYA_STORAGE__COMPRESSION__LEVEL=9`` sets a nested key;
* ``VYA_INSTANCES__PG_MAIN__PORT=5433`` sets ``port`` of the instance whose id is ``pg-main``
  (the id is compared case-insensitively with ``-`` and ``.`` read as ``_``), or give the index:
  ``VYA_INSTANCES__0__PORT=5433``;
* a value starting with ``[`` or ``{`` is read as YAML/JSON
  (``VYA_INSTANCES__PG__DATABASES=[a, b]``); other values stay strings
  and pydantic converts them (``5433`` -> int, ``true`` -> bool).

Only variables whose first key is a top-level setting are overrides, so unrelated ``VYA_*``
variables (for example one named by ``password_env``) are left alone; ``VYA_BACKUPDB_*``
(``VYA_BACKUPDB_CONFIG``, ``VYA_BACKUPDB_MASTER_KEY``) are never overrides.

Every problem becomes a :class:`~vya_backupdb.errors.ConfigError` naming the file, the key path
(``instances[1].port``), the line when known, what was expected and what was found.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from vya_backupdb.config.document import (
    CONFIG_SEARCH_PATHS,
    ENV_CONFIG,
    ENV_PREFIX,
    KeyPath,
    apply_env_overrides,
    apply_environment,
    deep_merge,
    describe,
    env_segment,
    line_map,
    locate_config,
    read_document,
    searched_paths_text,
)
from vya_backupdb.config.models import InstanceConfig, Settings
from vya_backupdb.errors import ConfigError

__all__ = [
    "CONFIG_SEARCH_PATHS",
    "ENV_CONFIG",
    "LoadedConfig",
    "apply_env_overrides",
    "apply_environment",
    "deep_merge",
    "format_key_path",
    "load_settings",
    "locate_config",
    "searched_paths_text",
    "validate_document",
]

#: Key names whose values are secrets: never echoed back in an error message.
_SECRET_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings and where they came from."""

    settings: Settings
    path: Path | None
    env: str | None

    @property
    def directory(self) -> Path | None:
        """Return the directory of the config file (relative paths resolve against it)."""
        return self.path.parent if self.path is not None else None


def load_settings(
    path: Path | None, env: str | None, environ: Mapping[str, str] = os.environ
) -> LoadedConfig:
    """Return the validated settings; raise ConfigError when missing, malformed or invalid."""
    located, text, data = read_document(path, env, environ)
    return validate_document(located, text, data, env)


def validate_document(
    located: Path, text: str, data: dict[str, Any], env: str | None
) -> LoadedConfig:
    """Return the settings of a document :func:`read_document` returned (``env``: its
    overlay); raise ConfigError naming every invalid key, with its line in ``text``."""
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        # Line numbers only for the message: a second parse that a valid file need not pay.
        raise _validation_error(exc, located, line_map(text), data, env) from None
    settings = resolve_relative_paths(settings, located.parent)
    return LoadedConfig(settings=settings, path=located, env=env)


def resolve_relative_paths(settings: Settings, base: Path) -> Settings:
    """Return settings whose relative (and ``~``) paths are made absolute against ``base``."""

    def fix(value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        return value if value.is_absolute() else base / value

    def fix_str(value: str) -> str:
        expanded = os.path.expanduser(value)
        return expanded if os.path.isabs(expanded) else str(base / expanded)

    instances = []
    for inst in settings.instances:
        update: dict[str, Any] = {"password_file": fix(inst.password_file)}
        if inst.type == "sqlite":
            update["paths"] = [fix_str(p) for p in inst.paths]
        instances.append(inst.model_copy(update=update))
    storage = settings.storage.model_copy(update={"base_path": fix(settings.storage.base_path)})
    secrets = settings.secrets.model_copy(
        update={
            "directory": fix(settings.secrets.directory),
            "master_key_file": fix(settings.secrets.master_key_file),
        }
    )
    logging_cfg = settings.logging.model_copy(update={"file": fix(settings.logging.file)})
    return settings.model_copy(
        update={
            "instances": instances,
            "storage": storage,
            "secrets": secrets,
            "logging": logging_cfg,
        }
    )


# --- error rendering ---------------------------------------------------------------------


def format_key_path(loc: Sequence[str | int]) -> str:
    """Return ``('instances', 1, 'port')`` as ``instances[1].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _lookup(data: Any, loc: Sequence[str | int]) -> tuple[bool, Any]:
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            return False, None
    return True, node


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Return the model class that holds the last key of ``loc`` (for 'allowed keys')."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        found = _inner_model(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (list, Union, UnionType, dict):
        for arg in get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _clean_loc(loc: Sequence[str | int]) -> KeyPath:
    # pydantic inserts pseudo-segments such as 'function-after[...]' for validators.
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "(" not in p))


def _line_for(loc: KeyPath, lines: Mapping[KeyPath, int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _explain(error: Mapping[str, Any], loc: KeyPath, data: Any) -> str:
    kind = error.get("type", "")
    key = str(loc[-1]) if loc else ""
    secret = bool(_SECRET_KEY.search(key)) and not key.endswith(("_env", "_file", "_command"))
    if kind == "extra_forbidden":
        model = _model_at(loc)
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{suggestion} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    present, found = _lookup(data, loc)
    if present and not secret and not isinstance(found, dict | list):
        return f"{message}; found {describe(found)}"
    if present and isinstance(found, dict | list) and kind.endswith("_type"):
        return f"{message}; found {describe(found)}"
    return message


def _instance_label(loc: KeyPath, data: Any) -> str:
    if len(loc) >= 2 and loc[0] == "instances" and isinstance(loc[1], int):
        present, item = _lookup(data, loc[:2])
        if present and isinstance(item, dict) and item.get("id"):
            return f" (instance {item['id']!r})"
    return ""


def _validation_error(
    exc: ValidationError,
    path: Path,
    lines: Mapping[KeyPath, int],
    data: Any,
    env: str | None,
) -> ConfigError:
    problems = []
    for error in exc.errors():
        loc = _clean_loc(error.get("loc", ()))
        line = _line_for(loc, lines)
        where = f"{path}, line {line}" if line else str(path)
        problems.append(
            f"{where}: {format_key_path(loc)}{_instance_label(loc, data)}: "
            f"{_explain(error, loc, data)}"
        )
    overlay = f" (with environment {env!r} applied)" if env else ""
    if len(problems) == 1:
        message = f"invalid configuration{overlay}: {problems[0]}"
        details = None
    else:
        message = f"invalid configuration{overlay}: {len(problems)} problems, first: {problems[0]}"
        details = "\n".join(problems)
    return ConfigError(
        message,
        details=details,
        hint="Fix the key(s) above; 'vya-backupdb config init --output /tmp/example.yaml' "
        "writes a commented example of every setting.",
    )


def instance_env_prefix(instance: InstanceConfig) -> str:
    """Return the ``VYA_INSTANCES__<ID>__`` prefix that overrides keys of ``instance``."""
    return f"{ENV_PREFIX}INSTANCES__{env_segment(instance.id)}__"
