"""Configuration of off-site storage (``storage.remotes``) and of backup encryption.

Credentials are never written here: the models only name where they come from (an environment
variable, a file, or an entry of the credential store), like the instances' ``password_*``.
"""

from __future__ import annotations

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


RemoteScheme = Literal["s3", "sftp"]


class RemoteConfig(FrozenModel):
    """One off-site store: ``s3://bucket/prefix`` or ``sftp://user@host:port/path``."""

    name: str = Field(..., pattern=_NAME_PATTERN, description="Name used by --remote NAME")
    url: str = Field(..., description="s3://bucket/prefix or sftp://user@host[:port]/path")
    endpoint_url: str | None = Field(
        None, description="S3: custom endpoint (MinIO, B2, R2, Ceph), e.g. https://minio:9000"
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
    key_file: Path | None = Field(None, description="SFTP: private key file")
    password_env: str | None = Field(None, description="SFTP: variable with the password")
    known_hosts: Path | None = Field(
        None, description="SFTP: known_hosts file to check the server key (default ~/.ssh/...)"
    )
    part_size_mib: int = Field(
        8, ge=5, le=5120, description="S3: multipart part size (bounded memory: one part)"
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
        if parts.scheme not in ("s3", "sftp"):
            raise ValueError(f"unsupported remote URL {value!r}: use s3://… or sftp://…")
        if not parts.hostname:
            raise ValueError(f"remote URL {value!r} names no bucket/host")
        if parts.password:
            raise ValueError("put no password in the URL; use password_env or key_file")
        return value

    @property
    def scheme(self) -> RemoteScheme:
        return "s3" if self.url.startswith("s3:") else "sftp"

    @property
    def bucket(self) -> str:
        """S3 bucket (the URL's host part)."""
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
        """The prefix (S3) or directory (SFTP) inside the remote, without slashes around."""
        return unquote(urlsplit(self.url).path).strip("/")
