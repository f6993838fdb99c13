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

import copy
import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from vya_backupdb.config.models import InstanceConfig, Settings
from vya_backupdb.errors import ConfigError

ENV_CONFIG = "VYA_BACKUPDB_CONFIG"
ENV_PREFIX = "VYA_"
_RESERVED_PREFIX = "VYA_BACKUPDB_"

#: Searched in this order when neither ``--config`` nor ``$VYA_BACKUPDB_CONFIG`` is given.
CONFIG_SEARCH_PATHS: tuple[Path, ...] = (
    Path("config.yaml"),
    Path("~/.config/vya-backupdb/config.yaml"),
    Path("/etc/vya-backupdb/config.yaml"),
)

#: Key names whose values are secrets: never echoed back in an error message.
_SECRET_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)

KeyPath = tuple[str | int, ...]


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


def locate_config(explicit: Path | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Return the config file to use, or None when none exists.

    Raise ConfigError when an explicitly named file (``--config`` or ``$VYA_BACKUPDB_CONFIG``)
    does not exist.
    """
    named: list[tuple[Path, str]] = []
    if explicit is not None:
        named.append((explicit, "--config"))
    elif environ.get(ENV_CONFIG):
        named.append((Path(environ[ENV_CONFIG]), f"${ENV_CONFIG}"))
    for path, origin in named:
        path = path.expanduser()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(
                f"config file {path} (from {origin}) {what}",
                hint="Create one with: vya-backupdb config init --output " + str(path),
            )
        return path.absolute()
    for candidate in CONFIG_SEARCH_PATHS:
        path = candidate.expanduser()
        if path.is_file():
            return path.absolute()
    return None


def searched_paths_text() -> str:
    """Return the search order, one per line, for messages and docs."""
    lines = ["--config PATH", f"${ENV_CONFIG}"]
    lines += [str(p) for p in CONFIG_SEARCH_PATHS]
    return ", ".join(lines)


def load_settings(
    path: Path | None, env: str | None, environ: Mapping[str, str] = os.environ
) -> LoadedConfig:
    """Return the validated settings; raise ConfigError when missing, malformed or invalid."""
    located = locate_config(path, environ)
    if located is None:
        raise ConfigError(
            f"no configuration file found (searched: {searched_paths_text()})",
            hint="Create one with: vya-backupdb config init (then edit it), or pass --config PATH",
        )
    text = _read_text(located)
    data = _parse(text, located)
    data = apply_environment(data, env, located)
    data = apply_env_overrides(data, environ, located)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        # Line numbers only for the message: a second parse that a valid file need not pay.
        raise _validation_error(exc, located, _line_map(text), data, env) from None
    settings = resolve_relative_paths(settings, located.parent)
    return LoadedConfig(settings=settings, path=located, env=env)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start})",
            hint="Save the file as UTF-8 YAML or JSON.",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file: {exc.strerror}",
            hint=f"Check its permissions: ls -l {path}",
        ) from None


def parse_document(text: str, path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Return the parsed mapping and a map of key path -> line number (1-based).

    Raise ConfigError when the text is not valid YAML/JSON or not a mapping.
    """
    return _parse(text, path), _line_map(text)


def _parse(text: str, path: Path) -> dict[str, Any]:
    """Return the parsed mapping; raise ConfigError like :func:`parse_document`."""
    is_json = path.suffix.lower() == ".json"
    data: Any
    if is_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}",
                hint="Fix the syntax (a JSON linter such as 'python3 -m json.tool' shows it).",
            ) from None
    else:
        import yaml  # only YAML files need it (~10 ms to import)

        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            raise ConfigError(
                f"{path}{where}: invalid YAML: {problem}",
                hint="Check indentation (spaces, not tabs) and quoting around ':' and '#'.",
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of settings, found {_describe(data)}",
            hint="Start from the example: vya-backupdb config init --output /tmp/example.yaml",
        )
    return data


def _line_map(text: str) -> dict[KeyPath, int]:
    # JSON is (nearly) YAML, so composing the text with the YAML parser gives line numbers for
    # both formats; when it cannot, errors simply carry no line.
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[KeyPath, int] = {}

    def walk(node: yaml.Node, prefix: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value)
                lines[(*prefix, key)] = key_node.start_mark.line + 1
                walk(value_node, (*prefix, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*prefix, index)] = item.start_mark.line + 1
                walk(item, (*prefix, index))

    if root is not None:
        walk(root, ())
    return lines


def deep_merge(base: Any, overlay: Any) -> Any:
    """Return ``overlay`` merged over ``base``.

    Mappings merge key by key; lists of instances (mappings with an ``id``) merge by id, new
    ids being appended; any other value is replaced.
    """
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(overlay, list) and _all_have_ids(overlay):
        result = [copy.deepcopy(item) for item in base]
        positions = {item.get("id"): i for i, item in enumerate(result) if isinstance(item, dict)}
        for item in overlay:
            if item["id"] in positions:
                index = positions[item["id"]]
                result[index] = deep_merge(result[index], item)
            else:
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(overlay)


def _all_have_ids(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "id" in i for i in items)


def apply_environment(data: dict[str, Any], env: str | None, path: Path) -> dict[str, Any]:
    """Return ``data`` with ``environments[env]`` merged over it; raise ConfigError if unknown."""
    if env is None:
        return data
    environments = data.get("environments") or {}
    if not isinstance(environments, dict):
        raise ConfigError(
            f"{path}: environments: expected a mapping of name -> overlay, "
            f"found {_describe(environments)}"
        )
    if env not in environments:
        known = ", ".join(sorted(str(k) for k in environments)) or "(none defined)"
        raise ConfigError(
            f"{path}: unknown environment {env!r} (known: {known})",
            hint="Pass one of the names under 'environments:' to --env, or add an overlay.",
        )
    overlay = environments[env] or {}
    if not isinstance(overlay, dict):
        raise ConfigError(
            f"{path}: environments.{env}: expected a mapping, found {_describe(overlay)}"
        )
    if "environments" in overlay:
        raise ConfigError(f"{path}: environments.{env}: an overlay cannot define environments")
    merged = deep_merge(data, overlay)
    assert isinstance(merged, dict)
    return merged


def _env_segment(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", value).upper()


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str], path: Path | None = None
) -> dict[str, Any]:
    """Return ``data`` with the ``VYA_*`` overrides applied; raise ConfigError on a bad one."""
    top_level = {name.upper(): name for name in Settings.model_fields}
    result = copy.deepcopy(data)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name.startswith(_RESERVED_PREFIX):
            continue
        segments = name[len(ENV_PREFIX) :].split("__")
        if segments[0].upper() not in top_level:
            continue
        segments[0] = top_level[segments[0].upper()]
        _set_override(result, segments, _override_value(environ[name]), name)
    return result


def _override_value(raw: str) -> Any:
    if raw.strip().startswith(("[", "{")):
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


def _set_override(data: dict[str, Any], segments: Sequence[str], value: Any, var: str) -> None:
    node: Any = data
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if isinstance(node, list):
            index = _instance_index(node, segment, var)
            if last:
                node[index] = value
                return
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(
                f"environment variable {var}: cannot set a key inside a {_describe(node)}",
                hint="Check the variable name: keys are separated by '__'.",
            )
        key = _match_key(node, segment)
        if last:
            node[key] = value
            return
        if key not in node or node[key] is None:
            node[key] = [] if key == "instances" else {}
        node = node[key]


def _match_key(node: dict[str, Any], segment: str) -> str:
    for existing in node:
        if _env_segment(str(existing)) == segment.upper():
            return str(existing)
    return segment.lower()


def _instance_index(items: list[Any], segment: str, var: str) -> int:
    if segment.isdigit() and int(segment) < len(items):
        return int(segment)
    for index, item in enumerate(items):
        if isinstance(item, dict) and _env_segment(str(item.get("id", ""))) == segment.upper():
            return index
    ids = ", ".join(str(i.get("id")) for i in items if isinstance(i, dict)) or "(none)"
    raise ConfigError(
        f"environment variable {var}: no instance matches {segment!r} (instances: {ids})",
        hint="Use the instance id in upper case with '-' and '.' written as '_', or its index.",
    )


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


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


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
        return f"{message}; found {_describe(found)}"
    if present and isinstance(found, dict | list) and kind.endswith("_type"):
        return f"{message}; found {_describe(found)}"
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
    return f"{ENV_PREFIX}INSTANCES__{_env_segment(instance.id)}__"
