"""Helpers shared by the unit tests that run the CLI on a config in a temp directory."""

from __future__ import annotations

import json
from pathlib import Path


def write_sqlite_config(tmp_path: Path, data: Path) -> Path:
    """Write ``tmp_path/config.json``: one SQLite instance ``lite`` over ``data/*.db``, the
    store under ``tmp_path/store``."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "hostname": "h",
                "storage": {"base_path": str(tmp_path / "store")},
                "instances": [{"id": "lite", "type": "sqlite", "paths": [f"{data}/*.db"]}],
            }
        ),
        encoding="utf-8",
    )
    return config
