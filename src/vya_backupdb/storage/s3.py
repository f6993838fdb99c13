"""S3 and S3-compatible storage (AWS, MinIO, Backblaze B2, Cloudflare R2, Ceph) via boto3.

``put`` streams: it keeps one part (default 8 MiB) in memory, sends it with UploadPart, and
only a clean exit of the ``with`` block completes the multipart upload; an error aborts it, so
an interrupted upload never leaves an object under the name. An object smaller than one part
is sent with a single PutObject, also at the clean exit only. ``get`` streams the body and
resumes a dropped download with a Range request from the offset reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

from vya_backupdb.errors import CredentialError, NotFoundError, StorageError, ToolMissing
from vya_backupdb.storage.base import ObjectInfo
from vya_backupdb.storage.cloud import PrefixedObjectStore
from vya_backupdb.storage.remote import TransientStorageError, env_or_credential

if TYPE_CHECKING:
    from vya_backupdb.config.models import Settings
    from vya_backupdb.config.remote import RemoteConfig

log = logging.getLogger("vya_backupdb.storage.s3")

MIB = 1024 * 1024
_TRANSIENT_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
}
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _translate(exc: Exception, what: str) -> Exception:
    """Return our error for a boto error: NotFound, Credential, Transient or Storage."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "") or code)
        if code in _MISSING_CODES:
            return NotFoundError(f"backup object not found: {what}")
        if code == "NoSuchBucket":
            return StorageError(
                f"{what}: the bucket does not exist",
                hint="Create it, or fix the bucket in the remote's url (s3://BUCKET/prefix).",
            )
        if code in _AUTH_CODES:
            return CredentialError(
                f"{what}: access denied by the S3 service ({code})",
                hint="Check access_key_env/secret_key_env (or the credential entries) and the "
                "bucket policy; then run: vya-backupdb remote test NAME",
            )
        if code in _TRANSIENT_CODES:
            return TransientStorageError(f"{what}: {code} {message}")
        return StorageError(f"{what}: S3 error {code}: {message}")
    if isinstance(exc, NoCredentialsError):
        return CredentialError(
            f"{what}: no S3 credentials",
            hint="Set access_key_env and secret_key_env on the remote.",
        )
    if isinstance(exc, ConnectionError | HTTPClientError):
        return TransientStorageError(f"{what}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {exc}")
    return exc


class _MultipartWriter:
    """Buffers one part; uploads parts as they fill (each part retried on its own)."""

    def __init__(self, storage: S3Storage, key: str):
        self._s = storage
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        while len(self._buffer) >= self._s.part_size:
            self._send_part(bytes(self._buffer[: self._s.part_size]))
            del self._buffer[: self._s.part_size]
        return len(data)

    def _send_part(self, body: bytes) -> None:
        if self._upload_id is None:
            response = self._s._client_call(
                "create_multipart_upload",
                self._key,
                retry=True,
                Bucket=self._s.bucket,
                Key=self._key,
            )
            self._upload_id = str(response["UploadId"])
        number = len(self._parts) + 1
        response = self._s._client_call(
            "upload_part",
            self._key,
            retry=True,
            Bucket=self._s.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"ETag": response["ETag"], "PartNumber": number})

    def commit(self) -> None:
        if self._upload_id is None:
            self._s._client_call(
                "put_object",
                self._key,
                retry=True,
                Bucket=self._s.bucket,
                Key=self._key,
                Body=bytes(self._buffer),
            )
            return
        if self._buffer or not self._parts:
            self._send_part(bytes(self._buffer))
            self._buffer.clear()
        self._s._client_call(
            "complete_multipart_upload",
            self._key,
            retry=True,
            Bucket=self._s.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                self._s._client_call(
                    "abort_multipart_upload",
                    self._key,
                    retry=True,
                    Bucket=self._s.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                )
            except StorageError as exc:  # the original error matters more; a lifecycle rule
                log.warning("could not abort the upload of %s: %s", self._key, exc.message)


class _ResumingReader:
    """The object's body; a dropped connection resumes with a Range request."""

    def __init__(self, storage: S3Storage, key: str, name: str):
        self._s = storage
        self._key = key
        self._name = name
        self._offset = 0
        self._body = self._open()

    def _open(self) -> Any:
        extra = {"Range": f"bytes={self._offset}-"} if self._offset else {}
        response = self._s._client_call(
            "get_object",
            self._name,
            retry=bool(self._offset),  # resuming: the wrapper's retries are behind us
            Bucket=self._s.bucket,
            Key=self._key,
            **extra,
        )
        return response["Body"]

    def read(self, size: int = -1, /) -> bytes:
        want = size if size and size > 0 else MIB
        attempts = 0
        while True:
            try:
                data: bytes = self._body.read(want)
                self._offset += len(data)
                return data
            except Exception as exc:
                error = _translate(exc, f"reading {self._name}")
                if not isinstance(error, TransientStorageError) or attempts >= self._s.retries:
                    raise error from None
                attempts += 1
                with contextlib.suppress(Exception):
                    self._body.close()
                self._body = self._open()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()


class S3Storage(PrefixedObjectStore[_MultipartWriter]):
    """Objects under ``s3://bucket/prefix/``; names map to keys below the prefix."""

    service = "S3"

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = 8 * MIB,
        retries: int = 5,
        description: str | None = None,
        page_size: int = 1000,
    ):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.retries = retries
        self.page_size = page_size
        self.description = description or f"s3://{bucket}/{self.prefix}"

    @classmethod
    def from_config(
        cls,
        remote: RemoteConfig,
        environ: Mapping[str, str] = os.environ,
        settings: Settings | None = None,
    ) -> S3Storage:
        """Return the storage of an ``s3://`` remote; raise CredentialError or ToolMissing."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ToolMissing(
                "the S3 client library (boto3) is not installed",
                hint="Install it in the tool's environment: pip install 'boto3>=1.34,<2'",
            ) from None
        access = env_or_credential(
            remote.access_key_env,
            remote.access_key_credential,
            f"remote {remote.name}",
            environ,
            settings,
        )
        secret = env_or_credential(
            remote.secret_key_env,
            remote.secret_key_credential,
            f"remote {remote.name}",
            environ,
            settings,
        )
        config = Config(
            region_name=remote.region or "us-east-1",
            s3={"addressing_style": "path" if remote.path_style else "auto"},
            # Our retries (with_retries) are explicit and logged; boto's own are turned off.
            retries={"total_max_attempts": 1},
            connect_timeout=remote.timeout_seconds,
            read_timeout=remote.timeout_seconds,
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=remote.endpoint_url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=config,
        )
        where = f" at {remote.endpoint_url}" if remote.endpoint_url else ""
        return cls(
            client,
            remote.bucket,
            remote.path,
            part_size=remote.part_size_mib * MIB,
            retries=remote.retries,
            description=f"{remote.name} (s3://{remote.bucket}/{remote.path}{where})",
        )

    def _translate(self, exc: Exception, what: str) -> Exception:
        return _translate(exc, what)

    def _writer(self, key: str) -> _MultipartWriter:
        return _MultipartWriter(self, key)

    def _client_call(self, method: str, what: str, *, retry: bool = False, **kwargs: Any) -> Any:
        """Call a client method; raise our errors (TransientStorageError for a retryable one).

        ``retry``: retry here, for the steps of a put that the caller cannot replay; the
        idempotent operations are retried by the RetryingStorage wrapper instead.
        """
        return self._call(
            lambda: getattr(self.client, method)(**kwargs),
            what,
            retry=retry,
            retry_what=f"S3 {method} of {what}",
        )

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[_ResumingReader]:
        with contextlib.closing(_ResumingReader(self, self._key(name), name)) as reader:
            yield reader

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of ``name`` from ``offset`` (a ranged GET)."""
        response = self._client_call(
            "get_object",
            name,
            Bucket=self.bucket,
            Key=self._key(name),
            Range=f"bytes={offset}-{offset + length - 1}",
        )
        data: bytes = response["Body"].read()
        return data

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        key_prefix = self._key_prefix(prefix)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": key_prefix,
                "MaxKeys": self.page_size,
            }
            if token:
                kwargs["ContinuationToken"] = token
            page = self._client_call("list_objects_v2", f"listing {prefix or '/'}", **kwargs)
            # S3 returns keys in UTF-8 byte order, which is code point order: already sorted.
            for item in page.get("Contents", []):
                modified = item["LastModified"].astimezone(UTC)
                yield ObjectInfo(self._name(item["Key"]), int(item["Size"]), modified)
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def stat(self, name: str) -> ObjectInfo:
        head = self._client_call("head_object", name, Bucket=self.bucket, Key=self._key(name))
        return ObjectInfo(name, int(head["ContentLength"]), head["LastModified"].astimezone(UTC))

    def delete(self, name: str) -> None:
        self._client_call("delete_object", name, Bucket=self.bucket, Key=self._key(name))
