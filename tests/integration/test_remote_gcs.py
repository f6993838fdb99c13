"""Google Cloud Storage against gcp-storage-emulator on loopback: resumable uploads finalized
only on success, interrupted uploads that leave no object, retries that resume from what the
service kept, credentials through the CLI, and full backup → GCS → restore round trips.

The emulator checks no credentials, so service-account keys are exercised against a small
OAuth token endpoint on loopback that, like Google's, grants a token only to a JWT signed with
the service account's registered key (``invalid_grant`` otherwise).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from remote_helpers import (
    OBJECT_STORE_CHECKS,
    assert_no_local_files,
    check_backup_ok,
    check_chunked_reads,
    check_encrypted_listing,
    check_interrupted_overwrite_keeps_previous,
    check_interrupted_uploads_leave_nothing,
    check_list_sorted_by_prefix,
    check_lists_and_verifies,
    check_missing_container,
    check_missing_variable_exits_3,
    check_persistent_failure,
    check_remote_test_ok,
    check_restore_after_local_loss,
    check_restore_matches,
    check_small_and_empty_objects,
    demo_with_encryption,
    read_digest,
    vya,
    write_config,
    write_object,
)

from harness.gcs import GcsServer, gcs_server  # noqa: F401
from vya_backupdb.errors import CredentialError, NotFoundError
from vya_backupdb.jobs.demo import create_sqlite_demo
from vya_backupdb.storage.gcs import CHUNK_MULTIPLE, MIB, GcsStorage

pytestmark = pytest.mark.integration

_counter = iter(range(10**6))
CHUNK = 4 * CHUNK_MULTIPLE  # 1 MiB
BLOCK = 200_000  # the size of each write: not a divisor of the chunk size, writes straddle chunks


@pytest.fixture
def bucket(gcs_server: GcsServer) -> str:  # noqa: F811
    return gcs_server.new_bucket(f"vya-test-{os.getpid()}-{next(_counter)}")


def _write(storage: GcsStorage, name: str, size: int, fail: bool = False) -> str:
    return write_object(storage, name, size, block=BLOCK, fail=fail)


class _RecordingSession:
    """The real upload session, recording each request's method and Content-Range."""

    def __init__(self, session: Any):
        self._session = session
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.requests.append((method, kwargs.get("headers", {}).get("Content-Range", "")))
        return self._session.request(method, url, **kwargs)


def _session() -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(AnonymousCredentials())


def test_gcs_resumable_upload_sends_chunks_and_reads_back_exactly(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    session = _RecordingSession(_session())
    storage = gcs_server.storage(bucket, "backups", session=session, part_size=CHUNK)
    size = 3 * MIB + 123
    expected = _write(storage, "h/i/db/x.dump.zst", size)
    assert session.requests == [
        ("POST", ""),
        ("PUT", f"bytes 0-{MIB - 1}/*"),
        ("PUT", f"bytes {MIB}-{2 * MIB - 1}/*"),
        ("PUT", f"bytes {2 * MIB}-{3 * MIB - 1}/*"),
        ("PUT", f"bytes {3 * MIB}-{size - 1}/{size}"),  # the total size finalizes
    ]
    check_chunked_reads(storage, "h/i/db/x.dump.zst", expected, size, MIB)  # 1 MiB chunks


def test_gcs_exact_multiple_of_the_chunk_is_finalized_by_an_empty_request(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    session = _RecordingSession(_session())
    storage = gcs_server.storage(bucket, "", session=session, part_size=CHUNK)
    expected = _write(storage, "x", 2 * MIB)
    assert session.requests[-1] == ("PUT", f"bytes */{2 * MIB}")
    assert read_digest(storage, "x") == expected


def test_gcs_small_object_is_one_request_at_the_end(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    session = _RecordingSession(_session())
    storage = gcs_server.storage(bucket, "", session=session, part_size=CHUNK)
    expected = _write(storage, "a/small", 1000)
    assert session.requests == []  # no resumable session: one upload by the client library
    check_small_and_empty_objects(storage, expected, block=BLOCK)


def test_gcs_interrupted_upload_leaves_no_object_and_is_never_finalized(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    session = _RecordingSession(_session())
    storage = gcs_server.storage(bucket, "backups", session=session, part_size=CHUNK)
    check_interrupted_uploads_leave_nothing(storage, 2 * MIB + 10, block=BLOCK)
    # Two open-ended chunks went out, then a cancel (DELETE) instead of a final request.
    assert session.requests == [
        ("POST", ""),
        ("PUT", f"bytes 0-{MIB - 1}/*"),
        ("PUT", f"bytes {MIB}-{2 * MIB - 1}/*"),
        ("DELETE", ""),
    ]
    with pytest.raises(NotFoundError), storage.get("a/big.dump"):
        pass


def test_gcs_interrupted_overwrite_keeps_the_previous_object_intact(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    storage = gcs_server.storage(bucket, "", part_size=CHUNK)
    check_interrupted_overwrite_keeps_previous(storage, MIB, block=BLOCK)


def test_gcs_list_is_sorted_and_filtered_by_prefix(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    storage = gcs_server.storage(bucket, "p", page_size=2)
    check_list_sorted_by_prefix(storage, block=BLOCK)


class _FlakySession:
    """The real session; after ``skip`` good chunk uploads (PUT with a body), the next
    ``failures`` ones fail with a dropped connection.

    ``after_sending``: the request reaches the service (which keeps the bytes) and only the
    answer is lost — the case where resending the chunk blindly would corrupt the upload.
    """

    def __init__(self, session: Any, failures: int, *, after_sending: bool, skip: int = 0):
        self._session = session
        self.failures = failures
        self.after_sending = after_sending
        self.skip = skip

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if method == "PUT" and kwargs.get("data"):
            if self.skip > 0:
                self.skip -= 1
            elif self.failures > 0:
                self.failures -= 1
                if self.after_sending:
                    self._session.request(method, url, **kwargs)
                raise requests.ConnectionError("Connection reset by peer")
        return self._session.request(method, url, **kwargs)


# Only chunks after the first, and never the final one, fail: the emulator answers a status
# query made before it kept any byte with "Range: bytes=0-0" (one byte kept) where GCS sends
# no Range header, and forgets a finalized session (404) where GCS answers 200 with the object.
@pytest.mark.parametrize("after_sending", [False, True], ids=["request-lost", "answer-lost"])
def test_gcs_transient_chunk_failures_are_retried_from_what_the_service_kept(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
    after_sending: bool,
) -> None:
    flaky = _FlakySession(_session(), 2, after_sending=after_sending, skip=1)
    storage = gcs_server.storage(bucket, "p", session=flaky, part_size=CHUNK, retries=3)
    expected = _write(storage, "x", 3 * MIB + 5)
    assert flaky.failures == 0
    assert read_digest(storage, "x") == expected
    assert storage.stat("x").size == 3 * MIB + 5


def test_gcs_persistent_failure_gives_storage_error_and_no_object(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    flaky = _FlakySession(_session(), 100, after_sending=False)
    storage = gcs_server.storage(bucket, "p", session=flaky, part_size=CHUNK, retries=1)
    check_persistent_failure(storage, 2 * MIB, block=BLOCK)


def test_gcs_missing_bucket_is_a_storage_error_with_a_hint(
    gcs_server: GcsServer,  # noqa: F811
) -> None:
    storage = gcs_server.storage("no-such-bucket", part_size=CHUNK)
    check_missing_container(storage, "gcloud storage buckets create", 2 * MIB, block=BLOCK)


# -- a Google-like OAuth token endpoint for service-account keys ----------------------------------
class _TokenServer:
    """Grants an access token to a JWT signed by the registered key, ``invalid_grant`` else."""

    def __init__(self, registered_public_pem: str):
        self.registered = registered_public_pem
        self.granted = 0
        self.refused = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from google.auth import jwt

                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                try:
                    jwt.decode(form["assertion"][0], certs=owner.registered, verify=True)
                except (ValueError, KeyError):
                    owner.refused += 1
                    status, body = (
                        400,
                        {
                            "error": "invalid_grant",
                            "error_description": "Invalid JWT Signature.",
                        },
                    )
                else:
                    owner.granted += 1
                    status = 200
                    body = {"access_token": "ya29.test", "expires_in": 3600, "token_type": "Bearer"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _rsa_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture(scope="module")
def token_server() -> Iterator[tuple[_TokenServer, str, str]]:
    """Yield (server, JSON key with the registered private key, JSON key with another one)."""
    registered, public = _rsa_pair()
    other, _ = _rsa_pair()
    server = _TokenServer(public)

    def key_json(private: str) -> str:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": "vya-test",
                "private_key_id": "0123456789abcdef",
                "private_key": private,
                "client_email": "backup@vya-test.iam.gserviceaccount.com",
                "client_id": "1234567890",
                "token_uri": server.url,
            }
        )

    try:
        yield server, key_json(registered), key_json(other)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# -- through the CLI -------------------------------------------------------------------------
def test_gcs_keep_local_false_backup_lists_verifies_and_restores_from_the_remote(
    tmp_path: Path,
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    create_sqlite_demo(tmp_path / "data" / "shop.db")
    config = write_config(tmp_path, gcs_server.remote(bucket), auto_upload=True, keep_local=False)
    check_backup_ok(config, "--no-users")
    assert_no_local_files(tmp_path)
    names = [b.name for b in gcs_server.client().list_blobs(bucket)]
    assert any(n.startswith("vya/testhost/lite/") and n.endswith(".sqlite.zst") for n in names)
    assert any(n.endswith(".sqlite.zst.sha256") for n in names)
    assert any(n.endswith(".metadata.json") for n in names)
    check_lists_and_verifies(config)
    check_restore_matches(tmp_path, config, "--remote", "offsite", target="back.db")


def test_gcs_encrypted_backup_with_a_service_account_key_restores_exactly(
    tmp_path: Path,
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
    token_server: tuple[_TokenServer, str, str],
) -> None:
    server, good_key, _ = token_server
    encryption = demo_with_encryption(tmp_path)
    remote = {**gcs_server.remote(bucket), "credentials_json_env": "VYA_TEST_GCS_KEY"}
    config = write_config(tmp_path, remote, auto_upload=True, encryption=encryption)
    env = {"VYA_TEST_GCS_KEY": good_key}
    granted = server.granted
    check_backup_ok(config, "--no-users", env=env)
    assert server.granted > granted  # the key really went through the token exchange
    check_encrypted_listing(config, env=env)
    check_restore_after_local_loss(tmp_path, config, env=env)


def test_gcs_remote_test_reports_every_check_ok(
    tmp_path: Path,
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
) -> None:
    config = write_config(tmp_path, gcs_server.remote(bucket))
    assert check_remote_test_ok(config) >= OBJECT_STORE_CHECKS
    assert list(gcs_server.client().list_blobs(bucket)) == []


def test_gcs_wrong_key_through_the_cli_exits_3_without_the_key(
    tmp_path: Path,
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
    token_server: tuple[_TokenServer, str, str],
) -> None:
    server, _, wrong_key = token_server
    remote = {**gcs_server.remote(bucket), "credentials_json_env": "VYA_TEST_GCS_KEY"}
    config = write_config(tmp_path, remote)
    refused = server.refused
    code, out = vya(config, "list", "--remote", "offsite", env={"VYA_TEST_GCS_KEY": wrong_key})
    assert code == 3, out
    assert server.refused > refused
    assert "refused the credentials" in out and "invalid_grant" in out
    private = json.loads(wrong_key)["private_key"]
    assert private.splitlines()[1] not in out

    code, out = vya(config, "list", "--remote", "offsite", env={"VYA_TEST_GCS_KEY": "{not json"})
    assert code == 3, out
    assert "no valid Google service account key" in out and "{not json" not in out

    check_missing_variable_exits_3(config, "VYA_TEST_GCS_KEY")


def test_gcs_wrong_key_is_a_credential_error_before_any_upload(
    gcs_server: GcsServer,  # noqa: F811
    bucket: str,
    token_server: tuple[_TokenServer, str, str],
) -> None:
    from vya_backupdb.config.remote import RemoteConfig

    _, _, wrong_key = token_server
    remote = RemoteConfig.model_validate(
        {**gcs_server.remote(bucket), "credentials_json_env": "K", "part_size_mib": 5}
    )
    storage = GcsStorage.from_config(remote, {"K": wrong_key})
    with pytest.raises(CredentialError):
        _write(storage, "x", 6 * MIB)  # the resumable session cannot even start
    with pytest.raises(CredentialError):
        _write(storage, "y", 10)  # nor the single-request upload
    assert list(gcs_server.client().list_blobs(bucket)) == []
