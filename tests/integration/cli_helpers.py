"""Shared helpers for tests that drive the CLI with a config written to a temp directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from vya_backupdb.cli.app import app

runner = CliRunner()


def write_config(tmp_path: Path, instances: list[dict[str, Any]], **storage: Any) -> Path:
    """Write a config with these instances and a store under ``tmp_path/backups``."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostname": "h",
                "storage": {"base_path": str(tmp_path / "backups"), **storage},
                "instances": instances,
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    return config


def vya(config: Path, *args: str) -> tuple[int, str]:
    """Run the CLI on ``config``; return (exit code, stdout+stderr)."""
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output
