"""The configuration document before validation: find the file, parse it, overlay it.

Everything here works on plain mappings and imports no pydantic (~0.2 s with the models): a
backup's head start (cli/early.py) reads the document this way before the models load, and
:mod:`vya_backupdb.config.loader` validates the same document. See loader.py for the order of
precedence (file, ``environments[<--env>]``, ``VYA_*`` variables).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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

#: The top-level settings (``Settings``' fields; a unit test keeps the two equal): only
#: ``VYA_*`` variables whose first key is one of them are overrides.
SETTINGS_KEYS = frozenset({
    "cleanup", "environments", "hostname", "instances", "logging", "metrics", "notifications",
    "parallel", "retention", "schedules", "secrets", "status", "storage", "verification",
})  # fmt: skip

KeyPath = tuple[str | int, ...]


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


def read_document(
    path: Path | None, env: str | None, environ: Mapping[str, str] = os.environ
) -> tuple[Path, str, dict[str, Any]]:
    """Return the config file, its text and its document with the overlay and the ``VYA_*``
    overrides applied; raise ConfigError when missing or malformed."""
    located = locate_config(path, environ)
    if located is None:
        raise ConfigError(
            f"no configuration file found (searched: {searched_paths_text()})",
            hint="Create one with: vya-backupdb config init (then edit it), or pass --config PATH",
        )
    text = _read_text(located)
    data = parse(text, located)
    data = apply_environment(data, env, located)
    data = apply_env_overrides(data, environ, located)
    return located, text, data


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


def parse(text: str, path: Path) -> dict[str, Any]:
    """Return the parsed mapping; raise ConfigError when the text is not valid
    YAML/JSON or not a mapping."""
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
            f"{path}: the top level must be a mapping of settings, found {describe(data)}",
            hint="Start from the example: vya-backupdb config init --output /tmp/example.yaml",
        )
    return data


def line_map(text: str) -> dict[KeyPath, int]:
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
            f"found {describe(environments)}"
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
            f"{path}: environments.{env}: expected a mapping, found {describe(overlay)}"
        )
    if "environments" in overlay:
        raise ConfigError(f"{path}: environments.{env}: an overlay cannot define environments")
    merged = deep_merge(data, overlay)
    assert isinstance(merged, dict)
    return merged


def env_segment(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", value).upper()


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str], path: Path | None = None
) -> dict[str, Any]:
    """Return ``data`` with the ``VYA_*`` overrides applied; raise ConfigError on a bad one."""
    top_level = {name.upper(): name for name in SETTINGS_KEYS}
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
                f"environment variable {var}: cannot set a key inside a {describe(node)}",
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
        if env_segment(str(existing)) == segment.upper():
            return str(existing)
    return segment.lower()


def _instance_index(items: list[Any], segment: str, var: str) -> int:
    if segment.isdigit() and int(segment) < len(items):
        return int(segment)
    for index, item in enumerate(items):
        if isinstance(item, dict) and env_segment(str(item.get("id", ""))) == segment.upper():
            return index
    ids = ", ".join(str(i.get("id")) for i in items if isinstance(i, dict)) or "(none)"
    raise ConfigError(
        f"environment variable {var}: no instance matches {segment!r} (instances: {ids})",
        hint="Use the instance id in upper case with '-' and '.' written as '_', or its index.",
    )


def describe(value: Any) -> str:
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
