"""Benchmark: upload throughput to a loopback S3 server, and the cost of age encryption.

Reproduce:  .venv/bin/python benchmarks/remote_bench.py [--mib 256]

Three backups of the same data through the real pipeline (write_backup_object: zstd level 3,
sha256, atomic storage writer): local unencrypted, local encrypted (age, X25519), and
encrypted to S3 (moto's server mode on 127.0.0.1, multipart parts of 8 MiB). The data is a
synthetic SQL-like dump (compressible about 3:1, like real dumps). Goal: encryption adds less
than 10 % wall time to a local backup.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vya_backupdb.catalog import layout
from vya_backupdb.jobs.store import write_backup_object
from vya_backupdb.pipeline.codecs import get_codec
from vya_backupdb.pipeline.encryption import EncryptionPlan, generate_identity, parse_recipient
from vya_backupdb.storage.base import Storage
from vya_backupdb.storage.local import LocalStorage

MIB = 1024 * 1024


class _SyntheticDump(io.RawIOBase):
    """``size`` bytes of INSERT lines with random-ish values, generated as they are read."""

    def __init__(self, size: int):
        rng = random.Random(42)
        lines = [
            f"INSERT INTO orders VALUES ({i}, 'customer-{rng.randint(1, 10**6)}', "
            f"{rng.random() * 1000:.2f}, '2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}');\n"
            for i in range(20_000)
        ]
        self._block = "".join(lines).encode()
        self._left = size
        self._pos = 0

    def read(self, size: int = -1, /) -> bytes:
        want = min(self._left, size if size and size > 0 else MIB)
        out = bytearray()
        while len(out) < want:
            # A quarter of fresh random hex keeps the ratio near a real dump's (about 3:1).
            out += os.urandom(16 * 1024).hex().encode()
            take = min(96 * 1024, len(self._block) - self._pos)
            out += self._block[self._pos : self._pos + take]
            self._pos = (self._pos + take) % len(self._block)
        del out[want:]
        self._left -= len(out)
        return bytes(out)


def _run(storage: Storage, size: int, plan: EncryptionPlan | None, name: str) -> tuple[float, int]:
    codec = get_codec("zstd")
    suffix = ".zst" + (plan.suffix if plan else "")
    names = layout.BackupNames(stem=f"bench/{name}", data=f"bench/{name}.sql{suffix}")

    @contextlib.contextmanager
    def source() -> Iterator[_SyntheticDump]:
        yield _SyntheticDump(size)

    t0 = time.perf_counter()
    _, stored = write_backup_object(storage, lambda s: names, source, codec, 3, 0, encryption=plan)
    return time.perf_counter() - t0, stored.stored_bytes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _best(runs: int, action: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    results = [action() for _ in range(runs)]
    return min(r[0] for r in results), results[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="raw dump size in MiB")
    parser.add_argument("--runs", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    size = args.mib * MIB
    plan = EncryptionPlan((parse_recipient(generate_identity()[1]),))
    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalStorage(Path(tmp))
        rows.append(("local, zstd", *_best(args.runs, lambda: _run(local, size, None, "plain"))))
        rows.append(
            ("local, zstd + age", *_best(args.runs, lambda: _run(local, size, plan, "enc")))
        )

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from vya_backupdb.storage.s3 import S3Storage

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        client.create_bucket(Bucket="bench")
        s3 = S3Storage(client, "bench", "vya")
        rows.append(("S3 (loopback), zstd + age", *_best(1, lambda: _run(s3, size, plan, "s3"))))
    finally:
        server.stop()

    base = rows[0][1]
    print(f"raw dump: {args.mib} MiB, best of {args.runs} (S3: 1 run), {os.cpu_count()} CPU(s)")
    print(f"{'pipeline':<28} {'seconds':>8} {'raw MiB/s':>10} {'stored MiB':>11} {'vs local':>9}")
    for label, seconds, stored in rows:
        print(
            f"{label:<28} {seconds:>8.2f} {args.mib / seconds:>10.1f} {stored / MIB:>11.1f} "
            f"{(seconds / base - 1) * 100:>+8.1f}%"
        )
    print("reproduce: .venv/bin/python benchmarks/remote_bench.py --mib", args.mib)


if __name__ == "__main__":
    main()
