"""The cloud backends' error mapping and chunked reader, without a server.

The emulators cannot produce every answer of the real services (gcp-storage-emulator checks
no credentials, so never answers 403); the mapping of those answers is pinned here.
"""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from google.api_core import exceptions as api
from google.auth.exceptions import RefreshError

from vya_backupdb.errors import CredentialError, NotFoundError, StorageError
from vya_backupdb.storage import azure, gcs
from vya_backupdb.storage.cloud import RangedReader, brief_message
from vya_backupdb.storage.remote import TransientStorageError

pytestmark = pytest.mark.unit


def _azure_error(status: int, code: str) -> HttpResponseError:
    error = HttpResponseError(message=f"{code}\nRequestId: 1\nContent: <xml/>")
    error.status_code = status
    error.error_code = code
    return error


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "AuthorizationFailure", CredentialError),
        (403, "AuthorizationPermissionMismatch", CredentialError),
        (404, "BlobNotFound", NotFoundError),
        (503, "ServerBusy", TransientStorageError),
        (500, "OperationTimedOut", TransientStorageError),
        (409, "LeaseIdMissing", StorageError),
    ],
)
def test_azure_translate_maps_service_answers(status: int, code: str, expected: type) -> None:
    error = azure._translate(_azure_error(status, code), "x", "cont")
    assert type(error) is expected


def test_azure_translate_missing_container_is_a_storage_error_with_hint() -> None:
    error = azure._translate(_azure_error(404, "ContainerNotFound"), "x", "cont")
    assert type(error) is StorageError
    assert "cont" in error.message and "az storage container create" in error.hint


def test_azure_translate_connection_error_is_transient_without_the_sas_query() -> None:
    exc = ServiceRequestError("Max retries exceeded with url: /c/x?sv=2024&sig=SECRET (refused)")
    error = azure._translate(exc, "x", "cont")
    assert isinstance(error, TransientStorageError)
    assert "SECRET" not in error.message


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api.Forbidden("denied"), CredentialError),
        (api.Unauthorized("no token"), CredentialError),
        (api.NotFound("No such object: b/x"), NotFoundError),
        (api.NotFound("The specified bucket does not exist."), StorageError),
        (api.from_http_status(503, "backend"), TransientStorageError),
        (api.from_http_status(429, "rate"), TransientStorageError),
        (api.from_http_status(408, "slow"), TransientStorageError),
        (api.BadRequest("bad"), StorageError),
        (requests.ConnectionError("reset"), TransientStorageError),
        (
            RefreshError("invalid_grant: Invalid JWT Signature.", {}, retryable=False),
            CredentialError,
        ),
        (RefreshError("temporarily unavailable", {}, retryable=True), TransientStorageError),
    ],
)
def test_gcs_translate_maps_service_answers(exc: Exception, expected: type) -> None:
    assert type(gcs._translate(exc, "x", "b")) is expected


def test_brief_message_keeps_the_first_line_and_drops_url_queries() -> None:
    exc = ValueError("GET https://h/c/x?sig=SECRET&sv=1 failed\nmore lines")
    assert brief_message(exc) == "GET https://h/c/x?… failed"
    assert len(brief_message(ValueError("x" * 1000))) == 300


def test_ranged_reader_serves_each_chunk_and_retries_a_failed_one() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    calls: list[tuple[int, int]] = []
    failures = iter([True, False])

    def fetch(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        if offset == 4096 and next(failures, False):
            raise TransientStorageError("dropped")
        return data[offset : offset + length]

    reader = RangedReader(fetch, len(data), chunk_size=4096, retries=1, what="x")
    out = b"".join(iter(lambda: reader.read(1000), b""))
    assert out == data
    assert calls == [(0, 4096), (4096, 4096), (4096, 4096), (8192, 2048)]


def test_ranged_reader_gives_up_after_its_retries() -> None:
    def fetch(offset: int, length: int) -> bytes:
        raise TransientStorageError("dropped")

    reader = RangedReader(fetch, 10, chunk_size=4, retries=1, what="x")
    with pytest.raises(StorageError, match="after 2 attempt"):
        reader.read(4)


def test_ranged_reader_of_an_empty_object_fetches_nothing() -> None:
    def fetch(offset: int, length: int) -> bytes:
        raise AssertionError("no fetch expected")

    assert RangedReader(fetch, 0, chunk_size=4, retries=0, what="x").read(10) == b""
