"""A real Azure Blob service on loopback for the tests: Azurite (Microsoft's emulator).

Runs ``azurite-blob`` (installed by scripts/bootstrap.sh under .cache/azurite) as a subprocess
on a free port with its data in a temporary directory, once per session, with the emulator's
well-known development account. Import the fixture into a test module:
``from harness.azure import azurite  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]
AZURITE = ROOT / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's documented development account (public; it only opens the local emulator).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def service(self) -> Any:
        """Return a BlobServiceClient of the emulator (for setting up and inspecting)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string, retry_total=0)

    def new_container(self, name: str) -> str:
        """Create container ``name``; return its name."""
        self.service().create_container(name)
        return name

    def remote(self, container: str, name: str = "offsite") -> dict[str, object]:
        """Return a storage.remotes entry (account key in VYA_TEST_AZURE_KEY)."""
        return {
            "name": name,
            "url": f"azure://{container}/vya",
            "endpoint_url": self.endpoint,
            "account_name": ACCOUNT,
            "account_key_env": "VYA_TEST_AZURE_KEY",
            "retries": 1,
        }

    def storage(self, container: str, prefix: str = "", **kwargs: Any):  # type: ignore[no-untyped-def]
        """Return an AzureStorage of ``container`` (SDK retries off, as in production)."""
        from azure.storage.blob import BlobServiceClient

        from vya_backupdb.storage.azure import AzureStorage

        service = BlobServiceClient.from_connection_string(
            self.connection_string, retry_total=0, connection_timeout=10, read_timeout=30
        )
        return AzureStorage(service.get_container_client(container), prefix, **kwargs)


def _azurite_command() -> str:
    override = os.environ.get("VYA_AZURITE_BLOB")
    if override:
        return override
    if AZURITE.exists():
        return str(AZURITE)
    found = shutil.which("azurite-blob")
    if found:
        return found
    pytest.fail(
        f"Azurite is not installed ({AZURITE} is missing): run scripts/bootstrap.sh, which "
        "installs it with npm (Node.js needed), or set VYA_AZURITE_BLOB to an azurite-blob "
        "executable",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Yield a running Azurite blob service on 127.0.0.1 (stopped afterwards)."""
    command = _azurite_command()
    if shutil.which("node") is None:
        pytest.fail("Azurite needs Node.js (node) on PATH: run scripts/bootstrap.sh", pytrace=False)
    location = tmp_path_factory.mktemp("azurite")
    port = free_port()
    log = (location / "azurite.log").open("wb")
    argv = [command, "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    argv += ["--location", str(location), "--silent", "--skipApiVersionCheck", "--loose"]
    argv += ["--disableTelemetry"]  # no calls home from the test suite
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log.close()
                output = (location / "azurite.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Azurite did not start: {output}", pytrace=False)
            time.sleep(0.1)
    try:
        yield Azurite(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
