"""Google Cloud Storage via google-cloud-storage (and google-auth for the upload session).

``put`` streams with a resumable upload (https://cloud.google.com/storage/docs/performing-
resumable-uploads): it keeps one chunk (default 8 MiB, a multiple of 256 KiB) in memory and
sends each full chunk with an open-ended ``Content-Range: bytes A-B/*``; only a clean exit of
the ``with`` block sends the total size that finalizes the object. Until then no object exists
under the name, and an error cancels the session (DELETE of its URI), so an interrupted upload
never leaves one. A failed chunk is retried after asking the service how much it kept. An
object smaller than one chunk goes in a single request, also at the clean exit only.

``get`` reads the object in ranged chunks pinned to the generation it had when opened. The
SDK's own retries are turned off (``retry=None``): ours (``with_retries``) are the ones logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from vya_backupdb.errors import CredentialError, NotFoundError, StorageError, ToolMissing
from vya_backupdb.storage.base import ObjectInfo
from vya_backupdb.storage.cloud import PrefixedObjectStore, RangedReader, brief_message
from vya_backupdb.storage.remote import TransientStorageError, env_or_credential, with_retries

if TYPE_CHECKING:
    from vya_backupdb.config.models import Settings
    from vya_backupdb.config.remote import RemoteConfig

log = logging.getLogger("vya_backupdb.storage.gcs")

MIB = 1024 * 1024
#: Every chunk of a resumable upload but the last is a multiple of this.
CHUNK_MULTIPLE = 256 * 1024
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_RANGE = re.compile(r"^bytes=0-(\d+)$")

_CREDENTIAL_HINT = (
    "Check credentials_file / credentials_json_env (or the credential entry): a service account "
    "key that is current (not deleted or disabled) with the Storage Object Admin role on the "
    "bucket; then run: vya-backupdb remote test NAME"
)


def _bucket_missing(what: str, bucket: str) -> StorageError:
    return StorageError(
        f"{what}: the bucket {bucket!r} does not exist",
        hint=f"Create it (gcloud storage buckets create gs://{bucket}), or fix the bucket in "
        "the remote's url (gs://BUCKET/prefix).",
    )


def _translate(exc: Exception, what: str, bucket: str) -> Exception:
    """Return our error for a google-cloud / google-auth / requests error."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, api.NotFound):
        if "bucket does not exist" in str(exc.message).lower():
            return _bucket_missing(what, bucket)
        return NotFoundError(f"backup object not found: {what}")
    if isinstance(exc, api.Unauthorized | api.Forbidden):
        return CredentialError(
            f"{what}: access denied by Google Cloud Storage (HTTP {exc.code})",
            hint=_CREDENTIAL_HINT,
        )
    if isinstance(exc, api.GoogleAPICallError) and exc.code in _TRANSIENT_STATUS:
        return TransientStorageError(f"{what}: HTTP {exc.code} {brief_message(exc)}")
    if isinstance(exc, api.GoogleAPICallError):
        return StorageError(f"{what}: GCS error {exc.code}: {brief_message(exc)}")
    if isinstance(exc, auth.RefreshError):
        if getattr(exc, "retryable", False):
            return TransientStorageError(f"{what}: getting an access token: {brief_message(exc)}")
        return CredentialError(
            f"{what}: Google refused the credentials ({brief_message(exc)})",
            hint=_CREDENTIAL_HINT,
        )
    if isinstance(exc, auth.DefaultCredentialsError):
        return CredentialError(f"{what}: {brief_message(exc)}", hint=_CREDENTIAL_HINT)
    if isinstance(exc, auth.TransportError | requests.RequestException | ConnectionError):
        return TransientStorageError(f"{what}: {brief_message(exc)}")
    return exc


def _response_error(response: Any, what: str, bucket: str, *, initiating: bool) -> Exception:
    """Return our error for a failed HTTP response of the upload protocol."""
    status = int(response.status_code)
    try:
        detail = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        detail = (response.reason or "").strip()
    if status in (401, 403):
        return CredentialError(
            f"{what}: access denied by Google Cloud Storage (HTTP {status})",
            hint=_CREDENTIAL_HINT,
        )
    if status == 404 and initiating:
        return _bucket_missing(what, bucket)
    if status in (404, 410):
        return StorageError(
            f"{what}: the upload session expired or was cancelled (HTTP {status})",
            hint="Run the backup (or the upload) again.",
        )
    if status in _TRANSIENT_STATUS:
        return TransientStorageError(f"{what}: HTTP {status} {detail}".rstrip())
    return StorageError(f"{what}: GCS error {status}: {detail}".rstrip())


class _ResumableWriter:
    """Buffers one chunk; sends full chunks to a resumable upload session."""

    def __init__(self, storage: GcsStorage, key: str):
        self._s = storage
        self._key = key
        self._buffer = bytearray()
        self._session_url: str | None = None
        self._persisted = 0  # bytes the service has confirmed keeping
        self._uncertain = False  # a request failed: ask the service before sending more
        self._finished = False

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        while len(self._buffer) >= self._s.part_size:
            self._transmit(bytes(self._buffer[: self._s.part_size]), final=False)
            del self._buffer[: self._s.part_size]
        return len(data)

    # -- the protocol -------------------------------------------------------------------------
    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        try:
            return self._s.session.request(method, url, timeout=self._s.timeout, **kwargs)
        except Exception as exc:
            raise _translate(exc, what, self._s.bucket) from None

    def _initiate(self) -> str:
        url = f"{self._s.endpoint}/upload/storage/v1/b/{quote(self._s.bucket, safe='')}/o"

        def once() -> str:
            response = self._request(
                "POST",
                url,
                f"starting the upload of {self._key}",
                params={"uploadType": "resumable", "name": self._key},
                json={"name": self._key, "contentType": "application/octet-stream"},
                headers={"X-Upload-Content-Type": "application/octet-stream"},
            )
            if response.status_code != 200 or not response.headers.get("Location"):
                raise _response_error(
                    response, f"starting the upload of {self._key}", self._s.bucket, initiating=True
                )
            return str(response.headers["Location"])

        return with_retries(once, f"GCS upload start of {self._key}", self._s.retries)

    def _accept(self, response: Any, end: int, what: str) -> bool:
        """Record what a 308 / 200 says the service kept; return True when finalized."""
        status = int(response.status_code)
        if status in (200, 201):
            self._finished = True
            self._persisted = end
            return True
        if status == 308:
            match = _RANGE.match(response.headers.get("Range", ""))
            self._persisted = int(match.group(1)) + 1 if match else 0
            return False
        if status in _TRANSIENT_STATUS:
            self._uncertain = True
        raise _response_error(response, what, self._s.bucket, initiating=False)

    def _put_once(self, body: bytes, start: int, final: bool) -> bool:
        """Send what the service lacks of ``body`` (which starts at ``start``); return True
        when the object is finalized."""
        assert self._session_url is not None
        end = start + len(body)
        what = f"sending bytes {start}-{end} of {self._key}"
        try:
            if self._uncertain:  # a failed request may have been kept in part: ask
                response = self._request(
                    "PUT", self._session_url, what, headers={"Content-Range": "bytes */*"}
                )
                if self._accept(response, end, what):
                    return True
                self._uncertain = False
            offset = self._persisted
            if not start <= offset <= end:
                raise StorageError(
                    f"{what}: the service reports {offset} bytes kept, "
                    f"outside the chunk being sent",
                    hint="Run the backup (or the upload) again.",
                )
            payload = body if offset == start else body[offset - start :]
            total = str(end) if final else "*"
            if payload:
                content_range = f"bytes {offset}-{end - 1}/{total}"
            elif final:
                content_range = f"bytes */{end}"
            else:
                return False
            response = self._request(
                "PUT",
                self._session_url,
                what,
                data=payload,
                headers={"Content-Range": content_range},
            )
        except TransientStorageError:
            self._uncertain = True
            raise
        return self._accept(response, end, what)

    def _transmit(self, body: bytes, *, final: bool) -> None:
        if self._session_url is None:
            self._session_url = self._initiate()
        start = self._persisted
        end = start + len(body)
        while True:
            before = self._persisted
            finished = with_retries(
                lambda: self._put_once(body, start, final),
                f"GCS upload of {self._key} (bytes {start}-{end})",
                self._s.retries,
            )
            if finished or (not final and self._persisted >= end):
                return
            if self._persisted <= before:
                raise StorageError(
                    f"GCS upload of {self._key}: the service kept none of bytes {start}-{end}",
                    hint="Run the backup (or the upload) again.",
                )

    # -- end of the with block -----------------------------------------------------------------
    def commit(self) -> None:
        if self._session_url is None:
            body = bytes(self._buffer)
            blob = self._s.bucket_handle.blob(self._key)
            self._s._call(
                lambda: blob.upload_from_string(
                    body,
                    content_type="application/octet-stream",
                    timeout=self._s.timeout,
                    retry=None,
                ),
                f"upload of {self._key}",
                retry=True,
            )
            return
        self._transmit(bytes(self._buffer), final=True)
        self._buffer.clear()

    def abort(self) -> None:
        self._buffer.clear()
        if self._session_url is None or self._finished:
            return
        # Cancelling is tidiness, not safety: an unfinished session never becomes an object
        # and expires after a week.
        try:
            response = self._s.session.request("DELETE", self._session_url, timeout=10)
            if response.status_code not in (204, 499):
                log.info(
                    "the upload session of %s was not cancelled (HTTP %s); it expires unused",
                    self._key,
                    response.status_code,
                )
        except Exception as exc:
            # brief_message drops the session URI's query (its upload_id is a capability).
            log.info("could not cancel the upload session of %s: %s", self._key, brief_message(exc))


class GcsStorage(PrefixedObjectStore[_ResumableWriter]):
    """Objects under ``gs://bucket/prefix/``; names map to object names below the prefix."""

    service = "GCS"

    def __init__(
        self,
        client: Any,
        session: Any,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        part_size: int = 8 * MIB,
        retries: int = 5,
        timeout: float = 60,
        description: str | None = None,
        page_size: int = 1000,
    ):
        if part_size <= 0 or part_size % CHUNK_MULTIPLE:
            raise StorageError(f"GCS chunk size {part_size} is not a multiple of 256 KiB")
        #: A google.cloud.storage.Client (for reads, listing, small uploads, deletes).
        self.client = client
        #: A requests-like session that authenticates (google-auth AuthorizedSession): the
        #: resumable upload protocol is spoken over it.
        self.session = session
        self.bucket = bucket
        self.bucket_handle = client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint.rstrip("/")
        self.part_size = part_size
        self.retries = retries
        self.timeout = timeout
        self.page_size = page_size
        self.description = description or f"gs://{bucket}/{self.prefix}"

    @classmethod
    def from_config(
        cls,
        remote: RemoteConfig,
        environ: Mapping[str, str] = os.environ,
        settings: Settings | None = None,
    ) -> GcsStorage:
        """Return the storage of a ``gs://`` remote; raise CredentialError or ToolMissing."""
        try:
            from google.auth.transport.requests import AuthorizedSession
            from google.cloud import storage
        except ImportError:
            raise ToolMissing(
                "the Google Cloud Storage client library (google-cloud-storage) is not installed",
                hint="Install it in the tool's environment: "
                "pip install 'google-cloud-storage>=2.14,<4'",
            ) from None
        credentials, project = _credentials(remote, environ, settings)
        options = {"api_endpoint": remote.endpoint_url} if remote.endpoint_url else None
        client = storage.Client(
            project=project or "vya-backupdb", credentials=credentials, client_options=options
        )
        where = f" at {remote.endpoint_url}" if remote.endpoint_url else ""
        return cls(
            client,
            AuthorizedSession(credentials),  # type: ignore[no-untyped-call]
            remote.bucket,
            remote.path,
            endpoint=remote.endpoint_url or DEFAULT_ENDPOINT,
            part_size=remote.part_size_mib * MIB,
            retries=remote.retries,
            timeout=remote.timeout_seconds,
            description=f"{remote.name} (gs://{remote.bucket}/{remote.path}{where})",
        )

    def _translate(self, exc: Exception, what: str) -> Exception:
        return _translate(exc, what, self.bucket)

    def _writer(self, key: str) -> _ResumableWriter:
        return _ResumableWriter(self, key)

    def _download(self, blob: Any, offset: int, length: int) -> bytes:
        """Return bytes ``offset`` to ``offset + length - 1`` of ``blob`` as stored (one ranged
        GET; the SDK's retries and checksum are off: a range cannot be checksummed)."""
        data: bytes = blob.download_as_bytes(
            start=offset,
            end=offset + length - 1,
            raw_download=True,
            checksum=None,
            timeout=self.timeout,
            retry=None,
        )
        return data

    def _reload(self, name: str) -> Any:
        blob = self.bucket_handle.blob(self._key(name))
        self._call(lambda: blob.reload(timeout=self.timeout, retry=None), name)
        return blob

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[RangedReader]:
        from google.api_core.exceptions import NotFound

        found = self._reload(name)
        pinned = self.bucket_handle.blob(found.name, generation=found.generation)

        def fetch(offset: int, length: int) -> bytes:
            try:
                return self._download(pinned, offset, length)
            except NotFound:
                raise StorageError(
                    f"{name} was replaced or deleted while it was being read"
                ) from None
            except Exception as exc:
                raise _translate(exc, name, self.bucket) from None

        reader = RangedReader(
            fetch, int(found.size or 0), chunk_size=self.part_size, retries=self.retries, what=name
        )
        with contextlib.closing(reader):
            yield reader

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes of ``name`` from ``offset`` (a ranged GET)."""
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        if length <= 0:
            return b""
        blob = self.bucket_handle.blob(self._key(name))
        try:
            return self._download(blob, offset, length)
        except RequestRangeNotSatisfiable:  # offset at or past the end
            return b""
        except Exception as exc:
            raise _translate(exc, name, self.bucket) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        key_prefix = self._key_prefix(prefix)
        what = f"listing {prefix or '/'}"
        # Pages are fetched lazily (one page in memory); GCS returns names in lexicographic
        # order. Only finalized objects are listed.
        items = iter(
            self.client.list_blobs(
                self.bucket,
                prefix=key_prefix or None,
                page_size=self.page_size,
                timeout=self.timeout,
                retry=None,
            )
        )
        while True:
            try:
                blob = next(items)
            except StopIteration:
                return
            except Exception as exc:
                error = _translate(exc, what, self.bucket)
                if isinstance(error, NotFoundError):  # listing 404s only without a bucket
                    error = _bucket_missing(what, self.bucket)
                raise error from None
            modified = blob.updated.astimezone(UTC)
            yield ObjectInfo(self._name(blob.name), int(blob.size or 0), modified)

    def stat(self, name: str) -> ObjectInfo:
        blob = self._reload(name)
        return ObjectInfo(name, int(blob.size or 0), blob.updated.astimezone(UTC))

    def delete(self, name: str) -> None:
        blob = self.bucket_handle.blob(self._key(name))
        with contextlib.suppress(NotFoundError):
            self._call(lambda: blob.delete(timeout=self.timeout, retry=None), name)


def _credentials(
    remote: RemoteConfig, environ: Mapping[str, str], settings: Settings | None
) -> tuple[Any, str | None]:
    """Return (credentials, project) of a gs:// remote; raise CredentialError."""
    import google.auth
    from google.auth import exceptions as auth
    from google.auth.credentials import AnonymousCredentials

    what = f"remote {remote.name}"
    text = env_or_credential(
        remote.credentials_json_env, remote.credentials_json_credential, what, environ, settings
    )
    if text:
        source = (
            f"variable {remote.credentials_json_env}"
            if remote.credentials_json_env
            else f"credential store entry {remote.credentials_json_credential!r}"
        )
        return _service_account(text, f"{what}: the {source}")
    if remote.credentials_file is not None:
        path = remote.credentials_file.expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise CredentialError(
                f"{what}: cannot read credentials_file {path}: {exc.strerror or exc}",
                hint=_KEY_HINT,
            ) from None
        return _service_account(text, f"{what}: credentials_file {path}")
    if remote.endpoint_url:
        # An emulator (fake-gcs-server, gcp-storage-emulator) needs no credentials.
        return AnonymousCredentials(), "vya-backupdb"  # type: ignore[no-untyped-call]
    try:
        credentials, project = google.auth.default(scopes=SCOPES)
    except auth.DefaultCredentialsError:
        raise CredentialError(
            f"{what}: no Google Cloud credentials found",
            hint="Set credentials_file or credentials_json_env on the remote (or "
            "GOOGLE_APPLICATION_CREDENTIALS), or run on a machine with an attached "
            "service account.",
        ) from None
    return credentials, project


_KEY_HINT = (
    "Give the whole JSON key of a service account (gcloud iam service-accounts keys create "
    "KEY.json --iam-account NAME@PROJECT.iam.gserviceaccount.com)."
)


def _service_account(text: str, source: str) -> tuple[Any, str | None]:
    """Return (credentials, project) of a service account JSON key; raise CredentialError.

    Only service-account keys are accepted (not arbitrary credential configurations, which
    could point the token exchange at any URL or command).
    """
    from google.oauth2 import service_account

    from vya_backupdb.secrets.redaction import register_secret

    try:
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        register_secret(str(info.get("private_key") or ""))
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=SCOPES
        )
    except (ValueError, KeyError, TypeError):
        raise CredentialError(
            f"{source} holds no valid Google service account key", hint=_KEY_HINT
        ) from None
    project = info.get("project_id")
    return credentials, str(project) if project else None
