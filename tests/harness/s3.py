"""A real S3-protocol server on loopback for the tests: moto's server mode, in a thread.

Import the fixture into a test module: ``from harness.s3 import s3_endpoint  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.postgres import free_port

ACCESS_KEY = "vya-test-access"
SECRET_KEY = "vya-test-secret-key"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Yield the endpoint URL of a throwaway S3 server on 127.0.0.1 (stopped afterwards)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    """Return a boto3 client of the test server (for creating buckets, inspecting uploads)."""
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def new_bucket(endpoint: str, name: str) -> str:
    """Create bucket ``name`` on the test server; return its name."""
    s3_client(endpoint).create_bucket(Bucket=name)
    return name
