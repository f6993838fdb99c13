"""S3 storage against a real S3-protocol server on loopback (moto's server mode): streaming
multipart uploads, aborts that leave nothing, pagination, retries, and a full backup → S3 →
restore round trip through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from remote_helpers import (
    OBJECT_STORE_CHECKS,
    assert_no_local_files,
    check_backup_ok,
    check_encrypted_listing,
    check_interrupted_uploads_leave_nothing,
    check_missing_variable_exits_3,
    check_persistent_failure,
    check_remote_test_ok,
    check_restore_after_local_loss,
    check_restore_matches,
    demo_with_encryption,
    runner,
    vya,
    write_config,
    write_object,
)

from harness.s3 import ACCESS_KEY, SECRET_KEY, new_bucket, s3_client, s3_endpoint  # noqa: F401
from vya_backupdb.cli.app import app
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.pipeline.encryption import generate_identity, write_identity_file
from vya_backupdb.storage.s3 import MIB, S3Storage

pytestmark = pytest.mark.integration

_counter = iter(range(10**6))
ENV = {"VYA_TEST_S3_KEY": ACCESS_KEY, "VYA_TEST_S3_SECRET": SECRET_KEY}


@pytest.fixture
def bucket(s3_endpoint: str) -> str:  # noqa: F811
    return new_bucket(s3_endpoint, f"vya-test-{os.getpid()}-{next(_counter)}")


def _storage(endpoint: str, bucket: str, **kwargs: Any) -> S3Storage:
    return S3Storage(s3_client(endpoint), bucket, "backups", part_size=5 * MIB, **kwargs)


def _write(storage: S3Storage, name: str, size: int, fail: bool = False) -> str:
    return write_object(storage, name, size, block=MIB, fail=fail)


def test_s3_multipart_upload_streams_parts_and_reads_back_exactly(
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    storage = _storage(s3_endpoint, bucket)
    expected = _write(storage, "h/i/db/x.dump.zst", 12 * MIB + 123)
    head = s3_client(s3_endpoint).head_object(Bucket=bucket, Key="backups/h/i/db/x.dump.zst")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    digest = hashlib.sha256()
    with storage.get("h/i/db/x.dump.zst") as reader:
        while chunk := reader.read(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == expected
    assert storage.stat("h/i/db/x.dump.zst").size == 12 * MIB + 123
    assert storage.read_range("h/i/db/x.dump.zst", 10, 5) != b""


def test_s3_interrupted_multipart_upload_leaves_no_object_and_no_pending_upload(
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    storage = _storage(s3_endpoint, bucket)
    check_interrupted_uploads_leave_nothing(storage, 11 * MIB, block=MIB)
    uploads = s3_client(s3_endpoint).list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads")


def test_s3_list_follows_continuation_pages_in_order(
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    storage = _storage(s3_endpoint, bucket, page_size=2)
    names = [f"h/i/{n}" for n in ("e", "a", "d", "b", "c")]
    for name in names:
        _write(storage, name, 10)
    assert [o.name for o in storage.list("h/")] == sorted(names)


class _FlakyClient:
    """The real client, with the first ``failures`` calls of one method answered by a 503."""

    def __init__(self, client: Any, method: str, failures: int):
        self._client = client
        self._method = method
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def flaky(**kwargs: Any) -> Any:
            if self.failures > 0:
                self.failures -= 1
                raise ClientError({"Error": {"Code": "503", "Message": "Slow Down"}}, name)
            return real(**kwargs)

        return flaky


def test_s3_transient_part_failure_is_retried_and_upload_completes(
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    flaky = _FlakyClient(s3_client(s3_endpoint), "upload_part", failures=2)
    storage = S3Storage(flaky, bucket, "p", part_size=5 * MIB, retries=3)
    _write(storage, "x", 6 * MIB)
    assert flaky.failures == 0
    assert storage.stat("x").size == 6 * MIB


def test_s3_persistent_failure_gives_storage_error_and_no_object(
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    flaky = _FlakyClient(s3_client(s3_endpoint), "upload_part", failures=100)
    storage = S3Storage(flaky, bucket, "p", part_size=5 * MIB, retries=1)
    check_persistent_failure(storage, 6 * MIB, block=MIB)
    assert not s3_client(s3_endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads")


# -- through the CLI -------------------------------------------------------------------------
def _config(tmp_path: Path, endpoint: str, bucket: str, **storage: Any) -> Path:
    remote = {
        "name": "offsite",
        "url": f"s3://{bucket}/vya",
        "endpoint_url": endpoint,
        "path_style": True,
        "access_key_env": "VYA_TEST_S3_KEY",
        "secret_key_env": "VYA_TEST_S3_SECRET",
        "retries": 1,
    }
    return write_config(tmp_path, remote, **storage)


def _vya(config: Path, *args: str) -> tuple[int, str]:
    return vya(config, *args, env=ENV)


def test_s3_encrypted_backup_auto_uploaded_restores_from_remote_exactly(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    encryption = demo_with_encryption(tmp_path)
    config = _config(tmp_path, s3_endpoint, bucket, auto_upload=True, encryption=encryption)
    check_backup_ok(config, env=ENV)
    check_encrypted_listing(config, env=ENV)
    check_restore_after_local_loss(tmp_path, config, env=ENV)


def test_s3_keep_local_false_streams_straight_to_the_remote(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = _config(tmp_path, s3_endpoint, bucket, auto_upload=True, keep_local=False)
    code, out = _vya(config, "backup", "lite")
    assert code == 0, out
    assert_no_local_files(tmp_path)
    keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith(".sqlite.zst") for k in keys)
    assert any(k.endswith(".metadata.json") for k in keys)
    check_restore_matches(tmp_path, config, target="r.db", env=ENV)


def test_s3_remote_upload_then_download_copies_each_backup_once(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = _config(tmp_path, s3_endpoint, bucket)
    assert _vya(config, "backup", "lite")[0] == 0
    code, out = _vya(config, "remote", "upload", "offsite", "--all", "--json")
    assert code == 0, out
    assert len(json.loads(out)["copied"]) == 1
    code, out = _vya(config, "remote", "upload", "offsite", "--all", "--json")
    assert json.loads(out)["skipped"] and not json.loads(out)["copied"]
    shutil.rmtree(tmp_path / "backups")
    code, out = _vya(config, "remote", "download", "offsite", "lite", "--json")
    assert code == 0, out
    assert len(json.loads(out)["copied"]) == 1
    code, out = _vya(config, "restore", "lite", "-d", "shop.db", "--latest", "--target", "d.db")
    assert code == 0, out


def test_s3_remote_test_reports_every_check_ok(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    config = _config(tmp_path, s3_endpoint, bucket)
    assert check_remote_test_ok(config, env=ENV) >= OBJECT_STORE_CHECKS
    assert "Contents" not in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)


def test_s3_remote_missing_credentials_variable_is_a_credential_error(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    config = _config(tmp_path, s3_endpoint, bucket)
    check_missing_variable_exits_3(config, "VYA_TEST_S3_KEY")


def test_s3_verify_and_cleanup_work_directly_against_the_remote(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = _config(tmp_path, s3_endpoint, bucket, auto_upload=True)
    raw = yaml.safe_load(config.read_text())
    raw["storage"]["remotes"][0]["retention"] = {"keep_last": 1}
    config.write_text(yaml.safe_dump(raw))
    for _ in range(2):
        assert _vya(config, "backup", "lite", "--no-users")[0] == 0
        time.sleep(1.1)
    code, out = _vya(config, "verify", "lite", "--remote", "offsite", "--json")
    assert code == 0, out
    results = json.loads(out)["results"]
    assert len(results) == 2
    assert all(r["outcome"] == "ok" for r in results)
    # The remote keeps only the newest (its own retention); the local store keeps both.
    code, out = _vya(config, "cleanup", "--remote", "offsite", "--json")
    assert code == 0, out
    remote_left = json.loads(_vya(config, "list", "--remote", "offsite", "--json")[1])["backups"]
    local_left = json.loads(_vya(config, "list", "--json")[1])["backups"]
    assert len(remote_left) == 1
    assert len(local_left) == 2
    assert remote_left[0]["id"] == max(b["id"] for b in local_left)


def test_s3_failed_auto_upload_exits_9_keeps_the_local_backup_and_can_be_retried(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
) -> None:
    """The off-site copy failing is not silent: exit 9 (storage), the run says which remote
    missed which backup, the local backup is good, and `remote upload` catches up."""
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    bucket = f"not-yet-{os.getpid()}-{next(_counter)}"
    config = _config(tmp_path, s3_endpoint, bucket, auto_upload=True)
    invoked = runner.invoke(app, ["--config", str(config), "backup", "lite", "--json"], env=ENV)
    assert invoked.exit_code == 9, invoked.output
    [result] = json.loads(invoked.stdout)["results"]
    assert result["status"] == "success"
    assert result["offsite_failed"] == ["offsite"]
    assert "bucket does not exist" in result["warnings"][0]
    code, out = _vya(config, "backup", "lite")
    assert code == 9
    assert "off-site copy to offsite failed" in out
    assert "vya-backupdb remote upload offsite" in " ".join(out.split())
    assert list((tmp_path / "backups").rglob("*.sqlite.zst"))  # the backups themselves exist

    new_bucket(s3_endpoint, bucket)
    code, out = _vya(config, "remote", "upload", "offsite", "--all", "--json")
    assert code == 0, out
    assert len(json.loads(out)["copied"]) == 2


def test_s3_upload_and_download_report_progress_lines_when_not_a_terminal(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = _config(tmp_path, s3_endpoint, bucket)
    assert _vya(config, "backup", "lite", "--no-users")[0] == 0
    for verb in ("upload", "download"):
        args = ["--config", str(config), "remote", verb, "offsite", "--all", "--force"]
        result = runner.invoke(app, [*args, "--progress-interval", "0"], env=ENV)
        assert result.exit_code == 0, result.output
        line = " ".join(result.stderr.split())
        assert f"progress {verb} lite/shop.db:" in line
        assert "100%" in line or "of" in line
    # The automatic copy after a backup reports its progress too.
    auto = _config(tmp_path, s3_endpoint, bucket, auto_upload=True)
    result = runner.invoke(
        app,
        ["--config", str(auto), "backup", "lite", "--no-users", "--progress-interval", "0"],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert "progress upload lite/shop.db:" in " ".join(result.stderr.split())


@pytest.mark.postgres
def test_s3_postgres_backup_straight_to_remote_restores_into_a_fresh_database_exactly(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
    bucket: str,
    pg_server: Any,
) -> None:
    """A real database, encrypted, streamed to S3 only (keep_local: false), restored from
    the remote with parallel workers into a fresh database: schema and data identical."""
    from pg_compare import compare_databases

    source = "s3 source «ünï»"
    for role in ("vya_app_owner", "vya_app_reader"):
        pg_server.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role}; END IF; END $$;"
        )
    pg_server.drop_db(source)
    pg_server.create_db(source)
    pg_server.psql(Path(__file__).with_name("pg_fixtures.sql").read_text(), dbname=source)
    secret, public = generate_identity()
    write_identity_file(tmp_path / "age.key", secret, public)
    config = _config(
        tmp_path, s3_endpoint, bucket, auto_upload=True, keep_local=False,
        encryption={"recipients": [public], "identity_file": str(tmp_path / "age.key")},
    )  # fmt: skip
    data = yaml.safe_load(config.read_text())
    data["instances"] = [pg_server.instance_config("pg", databases=[source], users=False)]
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    target = "from s3 «ünï»"
    pg_server.drop_db(target)
    try:
        code, out = _vya(config, "backup", "pg")
        assert code == 0, out
        assert_no_local_files(tmp_path)
        restored = runner.invoke(app, [
            "--config", str(config), "--log-format", "json", "restore", "pg", "-d", source,
            "--latest",
            "--remote", "offsite", "--target", target, "--jobs", "2", "-y",
        ], env=ENV)  # fmt: skip
        assert restored.exit_code == 0, restored.output
        log = " ".join(restored.stderr.split())
        # Downloaded once (checksum, restore and both workers read the local copy).
        assert log.count("downloading ") == 1
        assert "from offsite" in log
        assert "2 data worker(s) reading their own streams" in log
        assert compare_databases(pg_server, source, pg_server, target) == []
    finally:
        pg_server.drop_db(target)
        pg_server.drop_db(source)
