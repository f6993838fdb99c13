"""Azure Blob storage (and Azurite) via azure-storage-blob.

``put`` streams: it keeps one part (default 8 MiB) in memory and sends each full part with Put
Block under a block id unique to this upload; only a clean exit of the ``with`` block commits
the block list (Put Block List). An interrupted upload therefore leaves no blob: its blocks
stay uncommitted, invisible to list and get, and Azure discards them after a week. An object
smaller than one part goes in a single Put Blob, also at the clean exit only.

``get`` reads the blob in ranged chunks (at most 4 MiB) pinned to the ETag it had when
opened: a dropped connection is retried from the offset reached, and a blob replaced meanwhile
is an error, never a mix of two versions. The SDK's own retries are turned off: ours
(``with_retries``) are the ones that are logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

from vya_backupdb.errors import CredentialError, NotFoundError, StorageError, ToolMissing
from vya_backupdb.storage.base import ObjectInfo
from vya_backupdb.storage.cloud import PrefixedObjectStore, RangedReader, brief_message
from vya_backupdb.storage.remote import TransientStorageError, env_or_credential

if TYPE_CHECKING:
    from vya_backupdb.config.models import Settings
    from vya_backupdb.config.remote import RemoteConfig

log = logging.getLogger("vya_backupdb.storage.azure")

MIB = 1024 * 1024
#: A block blob holds at most 50,000 committed blocks.
MAX_BLOCKS = 50_000
#: Largest ranged read. The SDK briefly holds about 9 bytes per byte of a download (it builds
#: ``list(stream)`` with the byte count as length hint), so reads stay at its own default
#: chunk size, 4 MiB (about 36 MiB peak), whatever the part size.
READ_CHUNK = 4 * MIB
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"OperationTimedOut", "ServerBusy", "InternalError"}


def _error_code(exc: Any) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _translate(exc: Exception, what: str, container: str) -> Exception:
    """Return our error for an Azure SDK error: NotFound, Credential, Transient or Storage."""
    from azure.core.exceptions import (
        AzureError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, HttpResponseError):
        status = int(exc.status_code or 0)
        code = _error_code(exc)
        if code == "ContainerNotFound":
            return StorageError(
                f"{what}: the container {container!r} does not exist",
                hint="Create it (az storage container create --name "
                f"{container}), or fix the container in the remote's url "
                "(azure://CONTAINER/prefix).",
            )
        if status == 404 or code == "BlobNotFound":
            return NotFoundError(f"backup object not found: {what}")
        if status in (401, 403):
            return CredentialError(
                f"{what}: access denied by Azure Storage ({code or status})",
                hint="Check account_name and account_key_env / sas_token_env / "
                "connection_string_env (or the credential entries), and the SAS token's "
                "permissions (read, add, create, write, delete, list) and expiry; then run: "
                "vya-backupdb remote test NAME",
            )
        if status == 412 or code == "ConditionNotMet":
            return StorageError(
                f"{what}: the blob was replaced while it was being read",
                hint="Another writer changed it; run the command again.",
            )
        if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
            return TransientStorageError(f"{what}: HTTP {status} {code}".rstrip())
        return StorageError(
            f"{what}: Azure error {code or status}: {brief_message(exc)}",
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientStorageError(f"{what}: {brief_message(exc)}")
    if isinstance(exc, AzureError):
        return StorageError(f"{what}: {brief_message(exc)}")
    return exc


class _BlockWriter:
    """Buffers one part; stages full parts as blocks (each retried on its own)."""

    def __init__(self, storage: AzureStorage, key: str):
        self._s = storage
        self._key = key
        self._blob = storage.container.get_blob_client(key)
        self._buffer = bytearray()
        # Same-length ids, unique to this upload: a concurrent or earlier interrupted upload
        # of the same name never mixes its uncommitted blocks with ours.
        self._upload = secrets.token_hex(8)
        self._blocks: list[str] = []

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        while len(self._buffer) >= self._s.part_size:
            self._stage(bytes(self._buffer[: self._s.part_size]))
            del self._buffer[: self._s.part_size]
        return len(data)

    def _stage(self, body: bytes) -> None:
        if len(self._blocks) >= MAX_BLOCKS:
            raise StorageError(
                f"{self._key}: an Azure blob holds at most {MAX_BLOCKS} blocks",
                hint="Raise part_size_mib on the remote.",
            )
        block_id = f"{self._upload}-{len(self._blocks):08d}"
        self._s._call(
            lambda: self._blob.stage_block(block_id, body, length=len(body)),
            f"block {len(self._blocks) + 1} of {self._key}",
            retry=True,
        )
        self._blocks.append(block_id)

    def commit(self) -> None:
        if not self._blocks:
            body = bytes(self._buffer)
            self._s._call(
                lambda: self._blob.upload_blob(
                    body, length=len(body), overwrite=True, max_concurrency=1
                ),
                f"upload of {self._key}",
                retry=True,
            )
            return
        if self._buffer:
            self._stage(bytes(self._buffer))
            self._buffer.clear()
        self._s._call(
            lambda: self._blob.commit_block_list(self._blocks),
            f"commit of {self._key}",
            retry=True,
        )

    def abort(self) -> None:
        # Nothing to undo: staged blocks are never visible without a commit, and Azure
        # garbage-collects uncommitted blocks after a week.
        self._buffer.clear()


class AzureStorage(PrefixedObjectStore[_BlockWriter]):
    """Objects under ``azure://container/prefix/``; names map to blob names below the prefix."""

    service = "Azure"

    def __init__(
        self,
        container: Any,
        prefix: str = "",
        *,
        part_size: int = 8 * MIB,
        retries: int = 5,
        description: str | None = None,
        page_size: int = 1000,
    ):
        #: An azure.storage.blob.ContainerClient (with the SDK's retries turned off).
        self.container = container
        self.container_name = str(getattr(container, "container_name", "container"))
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.retries = retries
        self.page_size = page_size
        self.description = description or f"azure://{self.container_name}/{self.prefix}"

    @classmethod
    def from_config(
        cls,
        remote: RemoteConfig,
        environ: Mapping[str, str] = os.environ,
        settings: Settings | None = None,
    ) -> AzureStorage:
        """Return the storage of an ``azure://`` remote; raise CredentialError or ToolMissing."""
        try:
            from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise ToolMissing(
                "the Azure Blob client library (azure-storage-blob) is not installed",
                hint="Install it in the tool's environment: "
                "pip install 'azure-storage-blob>=12.19,<13'",
            ) from None
        what = f"remote {remote.name}"
        part = remote.part_size_mib * MIB
        options: dict[str, Any] = {
            # Our retries (with_retries) are explicit and logged; the SDK's are turned off.
            "retry_total": 0,
            "connection_timeout": remote.timeout_seconds,
            "read_timeout": remote.timeout_seconds,
            "max_single_put_size": part,
            "max_block_size": part,
            "max_single_get_size": READ_CHUNK,
            "max_chunk_get_size": READ_CHUNK,
        }
        connection = env_or_credential(
            remote.connection_string_env,
            remote.connection_string_credential,
            what,
            environ,
            settings,
        )
        if connection:
            try:
                service = BlobServiceClient.from_connection_string(connection, **options)
            except ValueError:
                raise CredentialError(
                    f"{what}: the Azure connection string is malformed",
                    hint="Copy it again (portal: Access keys → Connection string, or: "
                    "az storage account show-connection-string --name ACCOUNT).",
                ) from None
            where = f"account {service.account_name}"
        else:
            assert remote.account_name is not None  # the config model requires it here
            key = env_or_credential(
                remote.account_key_env, remote.account_key_credential, what, environ, settings
            )
            credential: Any
            if key:
                try:
                    base64.b64decode(key, validate=True)
                except (binascii.Error, ValueError):
                    raise CredentialError(
                        f"{what}: the Azure account key is not valid base64",
                        hint="Copy the key again (portal: Access keys, or: "
                        "az storage account keys list --account-name ACCOUNT).",
                    ) from None
                credential = AzureNamedKeyCredential(remote.account_name, key)
            else:
                sas = env_or_credential(
                    remote.sas_token_env, remote.sas_token_credential, what, environ, settings
                )
                credential = AzureSasCredential((sas or "").lstrip("?"))
            account_url = (
                remote.endpoint_url or f"https://{remote.account_name}.blob.core.windows.net"
            )
            service = BlobServiceClient(account_url, credential=credential, **options)
            where = f"{account_url.rstrip('/')}"
        return cls(
            service.get_container_client(remote.bucket),
            remote.path,
            part_size=part,
            retries=remote.retries,
            description=f"{remote.name} (azure://{remote.bucket}/{remote.path} at {where})",
        )

    def _translate(self, exc: Exception, what: str) -> Exception:
        return _translate(exc, what, self.container_name)

    def _writer(self, key: str) -> _BlockWriter:
        return _BlockWriter(self, key)

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[RangedReader]:
        from azure.core import MatchConditions

        key = self._key(name)
        blob = self.container.get_blob_client(key)
        properties = self._call(blob.get_blob_properties, name)
        etag = properties.etag

        def fetch(offset: int, length: int) -> bytes:
            try:
                downloader = blob.download_blob(
                    offset=offset,
                    length=length,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                    max_concurrency=1,
                )
                data: bytes = downloader.readall()
            except Exception as exc:
                error = _translate(exc, name, self.container_name)
                if isinstance(error, NotFoundError):
                    error = StorageError(f"{name} was deleted while it was being read")
                raise error from None
            return data

        reader = RangedReader(
            fetch,
            int(properties.size),
            chunk_size=min(self.part_size, READ_CHUNK),
            retries=self.retries,
            what=name,
        )
        with contextlib.closing(reader):
            yield reader

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes of ``name`` from ``offset`` (a ranged GET)."""
        if length <= 0:
            return b""
        blob = self.container.get_blob_client(self._key(name))
        try:
            data: bytes = blob.download_blob(
                offset=offset, length=length, max_concurrency=1
            ).readall()
        except Exception as exc:
            if getattr(exc, "status_code", None) == 416:  # offset at or past the end
                return b""
            raise _translate(exc, name, self.container_name) from None
        return data

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        key_prefix = self._key_prefix(prefix)
        what = f"listing {prefix or '/'}"
        # Pages are fetched lazily (one page in memory); the service returns names in
        # lexicographic order, and uncommitted blobs are not listed.
        items = self._call(
            lambda: iter(
                self.container.list_blobs(
                    name_starts_with=key_prefix or None, results_per_page=self.page_size
                )
            ),
            what,
        )
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception as exc:
                raise _translate(exc, what, self.container_name) from None
            modified = item.last_modified.astimezone(UTC)
            yield ObjectInfo(self._name(item.name), int(item.size), modified)

    def stat(self, name: str) -> ObjectInfo:
        blob = self.container.get_blob_client(self._key(name))
        properties = self._call(blob.get_blob_properties, name)
        return ObjectInfo(name, int(properties.size), properties.last_modified.astimezone(UTC))

    def delete(self, name: str) -> None:
        blob = self.container.get_blob_client(self._key(name))
        with contextlib.suppress(NotFoundError):
            self._call(lambda: blob.delete_blob(delete_snapshots="include"), name)
