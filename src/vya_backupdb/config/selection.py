"""Which databases of an instance are backed up: a pure function over names and settings."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from vya_backupdb.config.models import SYSTEM_DATABASES, InstanceConfig

_GLOB_CHARS = frozenset("*?[")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def select_databases(names: Iterable[str], instance: InstanceConfig) -> list[str]:
    """Return the names to back up, in the given order, without duplicates.

    System databases (``SYSTEM_DATABASES``) are dropped unless ``include_system_databases`` is
    set or one is named exactly (not by a glob) in ``databases``; a non-empty ``databases`` list
    keeps only names matching one of its glob patterns; ``exclude_databases`` globs always win.
    """
    explicit = {p for p in instance.databases if not _GLOB_CHARS & set(p)}
    selected: list[str] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        if (
            name in SYSTEM_DATABASES
            and not instance.include_system_databases
            and name not in explicit
        ):
            continue
        if instance.databases and not _matches(name, instance.databases):
            continue
        if _matches(name, instance.exclude_databases):
            continue
        selected.append(name)
    return selected
