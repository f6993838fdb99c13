"""SFTP storage against a real OpenSSH server on loopback: atomic writes, host key checking,
reconnection, and a full backup → SFTP → restore round trip through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from remote_helpers import check_remote_test_ok, check_restore_matches, vya, write_config

from harness.sftp import SftpServer, sftp_server  # noqa: F401
from vya_backupdb.errors import CredentialError
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.storage.remote import RetryingStorage

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, server: SftpServer, **storage: Any) -> Path:
    return write_config(tmp_path, server.remote(tmp_path.name), **storage)


def test_sftp_interrupted_put_leaves_no_file_on_the_server(
    tmp_path: Path,
    sftp_server: SftpServer,  # noqa: F811
) -> None:
    storage = sftp_server.storage(tmp_path.name)
    with pytest.raises(RuntimeError), storage.put("h/i/x.dump") as writer:
        writer.write(b"x" * 100_000)
        raise RuntimeError("dump died")
    server_dir = sftp_server.root / tmp_path.name
    assert [p for p in server_dir.rglob("*") if p.is_file()] == []
    with storage.put("h/i/x.dump") as writer:
        writer.write(b"complete")
    assert (server_dir / "h" / "i" / "x.dump").read_bytes() == b"complete"
    assert (server_dir / "h" / "i" / "x.dump").stat().st_mode & 0o007 == 0
    storage.close()


def test_sftp_dropped_connection_is_reopened_by_the_retry_wrapper(
    tmp_path: Path,
    sftp_server: SftpServer,  # noqa: F811
) -> None:
    inner = sftp_server.storage(tmp_path.name)
    storage = RetryingStorage(inner, retries=2, base_delay=0.01)
    with storage.put("a") as writer:
        writer.write(b"1")
    inner._client.get_transport().close()  # the network dropped the session
    assert storage.stat("a").size == 1
    assert [o.name for o in storage.list("")] == ["a"]
    inner.close()


def test_sftp_unknown_host_key_is_refused(
    tmp_path: Path,
    sftp_server: SftpServer,  # noqa: F811
) -> None:
    from vya_backupdb.config.remote import RemoteConfig
    from vya_backupdb.storage.sftp import SftpStorage

    (tmp_path / "empty_known_hosts").write_text("")
    config = {**sftp_server.remote("x"), "known_hosts": str(tmp_path / "empty_known_hosts")}
    storage = SftpStorage.from_config(RemoteConfig.model_validate(config))
    with pytest.raises(CredentialError, match="host key"):
        storage.exists("anything")


def test_sftp_backup_streams_to_remote_only_and_restores_exactly(
    tmp_path: Path,
    sftp_server: SftpServer,  # noqa: F811
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = _config(tmp_path, sftp_server, auto_upload=True, keep_local=False)
    code, out = vya(config, "backup", "lite", "--json")
    assert code == 0, out
    [result] = json.loads(out)["results"]
    on_server = sftp_server.root / tmp_path.name / result["file"]
    assert on_server.is_file()
    assert not (tmp_path / "backups").exists()
    code, out = vya(config, "list", "--remote", "nas", "--json")
    assert code == 0, out
    assert len(json.loads(out)["backups"]) == 1
    check_restore_matches(tmp_path, config, target="r.db")


def test_sftp_remote_test_reports_range_read_and_no_leftovers(
    tmp_path: Path,
    sftp_server: SftpServer,  # noqa: F811
) -> None:
    config = _config(tmp_path, sftp_server)
    check_remote_test_ok(config, "nas")
    server_dir = sftp_server.root / tmp_path.name
    assert not server_dir.exists() or [p for p in server_dir.rglob("*") if p.is_file()] == []
