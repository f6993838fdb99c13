"""Configuration of off-site storage (``storage.remotes``) and of backup encryption.

Credentials are never written here: the models only name where they come from (an environment
variable, a file, or an entry of the credential store), like the instances' ``password_*``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from vya_backupdb.config.base import FrozenModel
from vya_backupdb.config.retention import RetentionConfig

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class EncryptionConfig(FrozenModel):
    """age encryption of backups (https://age-encryption.org; the ``age`` CLI decrypts them)."""

    enabled: bool = Field(
        True, description="false turns encryption off (e.g. for one instance under a global one)"
    )
    recipients: list[str] = Field(
        default_factory=list,
        description="Public keys (age1…) to encrypt to; several allowed (any one decrypts)",
    )
    passphrase_env: str | None = Field(
        None,
        description="Encrypt with the passphrase in this variable (scrypt) when no recipients; "
        "also used to decrypt",
    )
    identity_file: Path | None = Field(
        None, description="age identity file (AGE-SECRET-KEY-1…), needed only to restore/verify"
    )
    identity_env: str | None = Field(
        None, description="Variable holding the identity (AGE-SECRET-KEY-1…), instead of a file"
    )
    identity_credential: str | None = Field(
        None, description="Credential store entry holding the identity (credentials set NAME)"
    )

    @field_validator("recipients")
    @classmethod
    def _recipients_are_age_keys(cls, value: list[str]) -> list[str]:
        # Imported here: the pipeline imports config models, not the other way round.
        from vya_backupdb.errors import UsageError
        from vya_backupdb.pipeline.encryption import parse_recipient

        for recipient in value:
            try:
                parse_recipient(recipient)
            except UsageError as exc:
                raise ValueError(exc.message) from None
        return value

    @model_validator(mode="after")
    def _one_way_to_encrypt(self) -> EncryptionConfig:
        if self.recipients and self.passphrase_env:
            raise ValueError(
                "give recipients or passphrase_env, not both (age allows a passphrase only alone)"
            )
        return self

    @property
    def encrypts(self) -> bool:
        """True when new backups are encrypted under this config."""
        return self.enabled and bool(self.recipients or self.passphrase_env)


RemoteScheme = Literal["s3", "sftp", "azure", "gs"]

#: URL scheme -> backend (``az://`` is an alias of ``azure://``).
_SCHEMES: dict[str, RemoteScheme] = {
    "s3": "s3",
    "sftp": "sftp",
    "azure": "azure",
    "az": "azure",
    "gs": "gs",
}
# Azure container names: 3-63 of a-z, 0-9 and single hyphens; GCS bucket names: 3-222 of a-z,
# 0-9, '-', '_' and '.', starting and ending with a letter or digit.
_CONTAINER_PATTERN = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_GCS_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")

_AZURE_FIELDS = (
    "account_name",
    "account_key_env",
    "account_key_credential",
    "connection_string_env",
    "connection_string_credential",
    "sas_token_env",
    "sas_token_credential",
)
_GCS_FIELDS = ("credentials_file", "credentials_json_env", "credentials_json_credential")


class RemoteConfig(FrozenModel):
    """One off-site store: ``s3://bucket/prefix``, ``sftp://user@host:port/path``,
    ``azure://container/prefix`` or ``gs://bucket/prefix``."""

    name: str = Field(..., pattern=_NAME_PATTERN, description="Name used by --remote NAME")
    url: str = Field(
        ...,
        description="s3://bucket/prefix, sftp://user@host[:port]/path, "
        "azure://container/prefix (or az://) or gs://bucket/prefix",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3: custom endpoint (MinIO, B2, R2, Ceph), e.g. https://minio:9000; "
        "Azure: blob endpoint (default https://ACCOUNT.blob.core.windows.net; Azurite: "
        "http://127.0.0.1:10000/devstoreaccount1); GCS: API endpoint (an emulator)",
    )
    region: str | None = Field(None, description="S3: region (default us-east-1)")
    path_style: bool = Field(
        False, description="S3: path-style addressing (MinIO and most self-hosted services)"
    )
    access_key_env: str | None = Field(None, description="S3: variable with the access key id")
    secret_key_env: str | None = Field(None, description="S3: variable with the secret key")
    access_key_credential: str | None = Field(
        None, description="S3: credential store entry with the access key id"
    )
    secret_key_credential: str | None = Field(
        None, description="S3: credential store entry with the secret key"
    )
    account_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]{3,24}$",
        description="Azure: storage account name (not needed with a connection string)",
    )
    account_key_env: str | None = Field(
        None, description="Azure: variable with the storage account key"
    )
    account_key_credential: str | None = Field(
        None, description="Azure: credential store entry with the storage account key"
    )
    connection_string_env: str | None = Field(
        None,
        description="Azure: variable with a connection string (instead of account_name + key)",
    )
    connection_string_credential: str | None = Field(
        None, description="Azure: credential store entry with a connection string"
    )
    sas_token_env: str | None = Field(
        None, description="Azure: variable with a SAS token (instead of the account key)"
    )
    sas_token_credential: str | None = Field(
        None, description="Azure: credential store entry with a SAS token"
    )
    credentials_file: Path | None = Field(None, description="GCS: service account key file (JSON)")
    credentials_json_env: str | None = Field(
        None, description="GCS: variable with a service account key (the JSON text)"
    )
    credentials_json_credential: str | None = Field(
        None, description="GCS: credential store entry with a service account key (JSON text)"
    )
    key_file: Path | None = Field(None, description="SFTP: private key file")
    password_env: str | None = Field(None, description="SFTP: variable with the password")
    known_hosts: Path | None = Field(
        None, description="SFTP: known_hosts file to check the server key (default ~/.ssh/...)"
    )
    part_size_mib: int = Field(
        8,
        ge=5,
        le=5120,
        description="S3 multipart part / Azure block / GCS chunk size (memory: one part)",
    )
    retries: int = Field(5, ge=0, le=20, description="Retries of transient errors, with backoff")
    timeout_seconds: float = Field(60, gt=0, description="Network timeout of one request")
    retention: RetentionConfig | None = Field(
        None, description="Retention on this remote (default: the instance's / global one)"
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        scheme = _SCHEMES.get(parts.scheme)
        if scheme is None:
            raise ValueError(
                f"unsupported remote URL {value!r}: use s3://…, sftp://…, azure://… or gs://…"
            )
        if not parts.hostname:
            raise ValueError(f"remote URL {value!r} names no bucket/container/host")
        if parts.password:
            raise ValueError("put no password in the URL; use password_env or key_file")
        if scheme in ("azure", "gs"):
            if parts.query or parts.fragment or parts.username is not None:
                raise ValueError(
                    f"a {parts.scheme}:// URL carries no query, fragment or user "
                    "(credentials such as a SAS token go in sas_token_env / "
                    "connection_string_env / credentials_json_env, never in the URL)"
                )
            if parts.port is not None:
                raise ValueError(
                    f"remote URL {value!r}: no port here; set endpoint_url for another endpoint"
                )
            pattern = _CONTAINER_PATTERN if scheme == "azure" else _GCS_BUCKET_PATTERN
            if not pattern.match(parts.netloc):
                what = "container" if scheme == "azure" else "bucket"
                raise ValueError(
                    f"{parts.netloc!r} is not a valid {what} name (lowercase letters, digits "
                    f"and hyphens{', dots, underscores' if scheme == 'gs' else ''}; "
                    f"{'3-63' if scheme == 'azure' else '3-222'} characters)"
                )
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_carries_no_secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint_url {value!r} is not an http(s):// URL")
        if parts.username is not None or parts.query or parts.fragment:
            raise ValueError(
                "endpoint_url carries no user, password, query or fragment (a SAS token or "
                "key goes in its *_env / *_credential field, never in a URL)"
            )
        return value

    @model_validator(mode="after")
    def _credentials_fit_the_scheme(self) -> RemoteConfig:
        scheme = self.scheme
        for fields, owner in ((_AZURE_FIELDS, "azure"), (_GCS_FIELDS, "gs")):
            stray = [f for f in fields if getattr(self, f) is not None]
            if stray and scheme != owner:
                raise ValueError(
                    f"{', '.join(stray)} only apply to {owner}:// remotes (this one is {scheme}://)"
                )
        if scheme == "azure":
            self._check_azure()
        elif scheme == "gs":
            given = [f for f in _GCS_FIELDS if getattr(self, f) is not None]
            if len(given) > 1:
                raise ValueError(f"give one of {', '.join(given)}, not several")
        return self

    def _check_azure(self) -> None:
        connection = self.connection_string_env or self.connection_string_credential
        key = self.account_key_env or self.account_key_credential
        sas = self.sas_token_env or self.sas_token_credential
        if self.part_size_mib > 4000:
            raise ValueError("part_size_mib: an Azure block holds at most 4000 MiB")
        if connection:
            if key or sas or self.account_name:
                raise ValueError(
                    "a connection string already names the account and its key or SAS: "
                    "drop account_name / account_key_* / sas_token_* (or the connection string)"
                )
            if self.endpoint_url:
                raise ValueError(
                    "a connection string already names the endpoint (BlobEndpoint=…): "
                    "drop endpoint_url"
                )
            return
        if not self.account_name or not (key or sas):
            raise ValueError(
                "an azure:// remote needs account_name with account_key_env / "
                "account_key_credential (or sas_token_env / sas_token_credential), or "
                "connection_string_env / connection_string_credential"
            )
        if key and sas:
            raise ValueError("give the account key or a SAS token, not both")

    @property
    def scheme(self) -> RemoteScheme:
        """The backend: s3, sftp, azure (``azure://`` or ``az://``) or gs."""
        return _SCHEMES[urlsplit(self.url).scheme]

    @property
    def bucket(self) -> str:
        """S3 / GCS bucket or Azure container (the URL's host part)."""
        return urlsplit(self.url).netloc

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 22

    @property
    def user(self) -> str | None:
        user = urlsplit(self.url).username
        return unquote(user) if user else None

    @property
    def path(self) -> str:
        """The prefix (S3, Azure, GCS) or directory (SFTP) inside the remote, without slashes
        around."""
        return unquote(urlsplit(self.url).path).strip("/")
