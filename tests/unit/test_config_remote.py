"""Remote URLs and credential fields: schemes, containers/buckets, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vya_backupdb.config.remote import RemoteConfig

pytestmark = pytest.mark.unit

_AZURE_KEY = {"account_name": "acct1", "account_key_env": "AZ_KEY"}


def _remote(url: str, **fields: Any) -> RemoteConfig:
    return RemoteConfig.model_validate({"name": "r", "url": url, **fields})


@pytest.mark.parametrize("scheme", ["azure", "az"])
def test_remote_azure_url_gives_scheme_container_and_prefix(scheme: str) -> None:
    remote = _remote(f"{scheme}://backups-01/vya/prod/", **_AZURE_KEY)
    assert remote.scheme == "azure"
    assert remote.bucket == "backups-01"
    assert remote.path == "vya/prod"


def test_remote_gs_url_gives_scheme_bucket_and_prefix() -> None:
    remote = _remote("gs://my_bucket.example/vya")
    assert (remote.scheme, remote.bucket, remote.path) == ("gs", "my_bucket.example", "vya")


def test_remote_existing_schemes_are_unchanged() -> None:
    assert _remote("s3://b/p").scheme == "s3"
    assert _remote("sftp://u@h:2222/srv").scheme == "sftp"


@pytest.mark.parametrize(
    ("url", "fields", "message"),
    [
        ("ftp://x/y", {}, "unsupported remote URL"),
        ("azure://container/p", {}, "needs account_name"),
        ("azure://container/p", {"account_name": "acct1"}, "needs account_name"),
        ("azure://container/p?sv=2024&sig=SECRET", _AZURE_KEY, "no query"),
        ("azure://user@container/p", _AZURE_KEY, "no query"),
        ("azure://container:443/p", _AZURE_KEY, "no port"),
        ("azure://Backups/p", _AZURE_KEY, "not a valid container name"),
        ("azure://ab/p", _AZURE_KEY, "not a valid container name"),
        ("azure://a--b/p", _AZURE_KEY, "not a valid container name"),
        (
            "azure://container/p",
            {**_AZURE_KEY, "sas_token_env": "SAS"},
            "not both",
        ),
        (
            "azure://container/p",
            {"connection_string_env": "CS", "account_name": "acct1"},
            "already names the account",
        ),
        (
            "azure://container/p",
            {"connection_string_env": "CS", "endpoint_url": "http://127.0.0.1:10000/a"},
            "already names the endpoint",
        ),
        ("azure://container/p", {**_AZURE_KEY, "part_size_mib": 4096}, "at most 4000 MiB"),
        ("gs://b/p#frag", {}, "no query"),
        ("gs://-bad/p", {}, "not a valid bucket name"),
        (
            "gs://bucket/p",
            {"credentials_file": "/k.json", "credentials_json_env": "K"},
            "not several",
        ),
        ("s3://bucket/p", {"account_name": "acct1"}, "only apply to azure://"),
        ("azure://container/p", {**_AZURE_KEY, "credentials_json_env": "K"}, "only apply to gs"),
        ("s3://bucket/p", {"endpoint_url": "https://h/?X-Amz-Signature=1"}, "carries no user"),
        ("s3://bucket/p", {"endpoint_url": "https://key:secret@h/"}, "carries no user"),
        ("gs://bucket/p", {"endpoint_url": "localhost:4443"}, "is not an http"),
    ],
)
def test_remote_invalid_combinations_are_refused_with_a_reason(
    url: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _remote(url, **fields)


@pytest.mark.parametrize(
    "fields",
    [
        _AZURE_KEY,
        {"account_name": "acct1", "account_key_credential": "azure-key"},
        {"account_name": "acct1", "sas_token_env": "SAS"},
        {"account_name": "acct1", "sas_token_credential": "azure-sas"},
        {"connection_string_env": "CS"},
        {"connection_string_credential": "azure-cs"},
    ],
)
def test_remote_azure_accepts_each_credential_source(fields: dict[str, Any]) -> None:
    assert _remote("azure://container/p", **fields).scheme == "azure"


def test_remote_gs_needs_no_credential_fields() -> None:
    # Anonymous against an emulator, or Application Default Credentials.
    assert _remote("gs://bucket", endpoint_url="http://127.0.0.1:9023").path == ""
