"""Shared set-up for the unattended-operation tests: a SQLite instance and its config."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml

from vya_backupdb.config.loader import LoadedConfig, load_settings
from vya_backupdb.jobs.demo import create_sqlite_demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_config(tmp_path: Path, extra: dict[str, Any] | None = None, dbs: int = 1) -> Path:
    """Write a config with one SQLite instance 'lite' (``dbs`` database files); return it."""
    data = tmp_path / "data"
    for i in range(dbs):
        create_sqlite_demo(data / f"shop{i}.db")
    config: dict[str, Any] = {
        "hostname": "testhost",
        "storage": {"base_path": str(tmp_path / "backups")},
        "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}],
    }
    config.update(extra or {})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load(path: Path) -> LoadedConfig:
    return load_settings(path, None)
