"""The README's main command: the demo cycle runs and proves source and restore match."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vya_backupdb.cli.app import app
from vya_backupdb.jobs.demo import sqlite_fingerprint

pytestmark = pytest.mark.integration


def test_demo_without_servers_completes_and_matches(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo"), "--no-servers"])
    assert result.exit_code == 0, result.output
    assert "demo complete" in result.output
    data = tmp_path / "demo" / "data"
    assert sqlite_fingerprint(data / "shop.db") == sqlite_fingerprint(data / "shop_restored.db")
    assert list((tmp_path / "demo" / "backups").rglob("*.sqlite.zst.sha256"))
    assert (tmp_path / "demo" / "config.yaml").is_file()
    # The demo's config is a normal config: list works on it.
    listed = CliRunner().invoke(
        app, ["--config", str(tmp_path / "demo" / "config.yaml"), "list", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    assert '"demo-sqlite"' in listed.stdout


def test_demo_detects_a_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vya_backupdb.jobs.demo as demo

    monkeypatch.setattr(demo, "sqlite_fingerprint", lambda path: {"path": str(path)})
    report = demo.run_demo(tmp_path / "d", servers=False)
    assert not report.ok
    assert any("MISMATCH" in step.detail for step in report.steps)
