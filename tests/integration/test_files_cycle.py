"""Files instances through the CLI: full → incremental → differential, restore each point
(--latest, --at, --file) into fresh directories, with --include and --dry-run."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_files_engine import _build_tree, _diff, _restored, _snapshot, _write
from typer.testing import CliRunner

from vya_backupdb.cli.app import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def _config(
    tmp_path: Path, src: Path, storage: dict[str, Any] | None = None, **instance: Any
) -> Path:
    """Write a config with one files instance ``f`` over ``src`` and a store in ``b``."""
    config = tmp_path / "config.yaml"
    entry = {"id": "f", "type": "files", "paths": [f"{src}/**"], **instance}
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"base_path": str(tmp_path / "b"), **(storage or {})},
                "instances": [entry],
            }
        )
    )
    return config


def _vya(config: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output, result.stdout


def test_files_cli_chain_backup_and_restore_each_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _build_tree(src)
    config = _config(tmp_path, src, exclude=["*.tmp"])
    _write(src / "ignored.tmp", b"excluded by pattern\n")
    points: list[tuple[str, dict[str, object]]] = []

    def backup(strategy: str) -> str:
        code, out, stdout = _vya(config, "backup", "f", "--strategy", strategy, "--json")
        assert code == 0, out
        [result] = json.loads(stdout)["results"]
        assert result["status"] == "success"
        snapshot = _snapshot(src)
        entries = snapshot["entries"]
        assert isinstance(entries, dict)
        del entries[b"/ignored.tmp"]  # excluded: must not be restored
        points.append((result["file"], snapshot))
        time.sleep(1.1)  # one backup per second in the layout
        return str(result["file"])

    full = backup("full")
    assert full.endswith("_full.tar.zst")
    _write(src / "docs" / "added.txt", b"new file\n")
    os.unlink(src / "secret.key")
    shutil.rmtree(src / "a")
    backup("incremental")
    _write(src / "run.sh", b"#!/bin/sh\necho changed\n", mode=0o700)
    diff_file = backup("differential")
    assert diff_file.endswith("_differential.tar.zst")

    listing = json.loads(_vya(config, "list", "f", "--json")[2])["backups"]
    assert [b["strategy"] for b in listing] == ["full", "incremental", "differential"]

    # Each point restores exactly, deletions included.
    for index, (_name, expected) in enumerate(points):
        target = tmp_path / f"restore{index}"
        started = listing[index]["started_at"]
        code, out, _ = _vya(config, "restore", "f", "--at", started, "--target", str(target))
        assert code == 0, out
        problems = _diff(expected, _snapshot(_restored(target, src)))
        assert problems == [], problems[:10]

    # --latest is the last point; --file restores without naming the instance.
    latest = tmp_path / "latest"
    code, out, _ = _vya(config, "restore", "f", "--latest", "--target", str(latest))
    assert code == 0, out
    assert _diff(points[-1][1], _snapshot(_restored(latest, src))) == []
    by_file = tmp_path / "by-file"
    code, out, _ = _vya(
        config, "restore", "--file", str(tmp_path / "b" / full), "--target", str(by_file)
    )
    assert code == 0, out
    assert _diff(points[0][1], _snapshot(_restored(by_file, src))) == []

    # --dry-run lists and writes nothing; --include restores only a subtree.
    dry = tmp_path / "dry"
    code, out, _ = _vya(config, "restore", "f", "--latest", "--target", str(dry), "--dry-run")
    assert code == 0, out
    assert "added.txt" in out
    assert not dry.exists() or not any(dry.iterdir())
    only_docs = tmp_path / "only-docs"
    code, out, _ = _vya(
        config,
        "restore",
        "f",
        "--latest",
        "--target",
        str(only_docs),
        "--include",
        f"{src}/docs/**",
    )
    assert code == 0, out
    restored = _restored(only_docs, src)
    assert (restored / "docs" / "added.txt").read_bytes() == b"new file\n"
    assert not (restored / "run.sh").exists()

    # Restoring again into a non-empty target refuses without --overwrite.
    code, out, _ = _vya(config, "restore", "f", "--latest", "--target", str(latest))
    assert code != 0
    code, out, _ = _vya(config, "restore", "f", "--latest", "--target", str(latest), "--overwrite")
    assert code == 0, out


def test_files_backup_encrypted_restores_and_opens_with_standard_tools(tmp_path: Path) -> None:
    import subprocess

    from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file

    src = tmp_path / "src"
    src.mkdir()
    _write(src / "secret plans.txt", b"launch codes\n" * 1000)
    (src / "sub").mkdir()
    _write(src / "sub" / "b.bin", bytes(range(256)) * 100)
    secret, public = generate_identity()
    key = tmp_path / "age.key"
    write_identity_file(key, secret, public)
    config = _config(
        tmp_path, src, storage={"encryption": {"recipients": [public], "identity_file": str(key)}}
    )
    code, out, _ = _vya(config, "backup", "f")
    assert code == 0, out
    [archive] = (tmp_path / "b").rglob("*.tar.zst.age")
    [manifest] = (tmp_path / "b").rglob("*.manifest.jsonl.zst")
    assert archive.read_bytes().startswith(b"age-encryption.org/v1")
    assert manifest.read_bytes().startswith(b"age-encryption.org/v1")
    assert b"secret plans" not in manifest.read_bytes()
    if shutil.which("age") and shutil.which("zstd"):
        listing = subprocess.run(
            f"age -d -i {key} {archive} | zstd -dc | tar -tf -",
            shell=True,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "secret plans.txt" in listing
    target = tmp_path / "restored"
    code, out, _ = _vya(config, "restore", "f", "--latest", "--target", str(target))
    assert code == 0, out
    assert _diff(_snapshot(src), _snapshot(_restored(target, src))) == []
    code, out, _ = _vya(config, "verify", "f", "--level", "integrity")
    assert code == 0, out


def test_files_backup_reports_progress_lines_when_not_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _build_tree(src)
    config = _config(tmp_path, src)
    result = runner.invoke(
        app, ["--config", str(config), "backup", "f", "--progress-interval", "0"]
    )
    assert result.exit_code == 0, result.output
    line = " ".join(result.stderr.split())
    assert "progress f/files:" in line
    assert "/s" in line  # a rate
