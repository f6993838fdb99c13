"""A Google Cloud Storage JSON-API server on loopback for the tests: gcp-storage-emulator,
started in-process (its HTTP server runs in a thread) on a free port, in memory.

What it implements and what it does not (checked against the installed version): resumable
uploads with chunked ``Content-Range`` and status queries, ranged downloads, prefix listing
(sorted by name) — but no paging of listings (one page, whatever the page size), no
cancellation of a resumable session (DELETE answers 501), and no authentication at all.
Import the fixture into a test module: ``from harness.gcs import gcs_server  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.postgres import free_port


@dataclass(frozen=True)
class GcsServer:
    port: int
    server: Any  # gcp_storage_emulator.server.Server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """Return an anonymous google.cloud.storage.Client of the emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="vya-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def new_bucket(self, name: str) -> str:
        """Create bucket ``name``; return its name."""
        self.client().create_bucket(name)
        return name

    def pending_uploads(self) -> int:
        """Return how many resumable upload sessions the emulator holds unfinished."""
        return len(self.server._storage.resumable)

    def remote(self, bucket: str, name: str = "offsite") -> dict[str, object]:
        """Return a storage.remotes entry (anonymous: the emulator checks no credentials)."""
        return {
            "name": name,
            "url": f"gs://{bucket}/vya",
            "endpoint_url": self.endpoint,
            "retries": 1,
        }

    def storage(self, bucket: str, prefix: str = "", *, session: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
        """Return a GcsStorage of ``bucket``; ``session`` replaces the upload session."""
        from google.auth.credentials import AnonymousCredentials
        from google.auth.transport.requests import AuthorizedSession

        from vya_backupdb.storage.gcs import GcsStorage

        return GcsStorage(
            self.client(),
            session or AuthorizedSession(AnonymousCredentials()),
            bucket,
            prefix,
            endpoint=self.endpoint,
            **kwargs,
        )


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """Yield a running GCS emulator on 127.0.0.1 (stopped afterwards)."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        yield GcsServer(port, server)
    finally:
        server.stop()
