"""Benchmark: every compression algorithm and level on a real database dump.

Uses the product's own codecs (``vya_backupdb.pipeline.codecs``: the writers a backup
compresses through and the readers a restore decompresses through, fed in the same 1 MiB
chunks as ``pipeline.stream.pump``), then the command-line tools for reference (zstd, gzip,
pigz when installed, xz, bzip2, lz4).

By default it builds a ~200 MiB PostgreSQL database (pgbench tables plus a text/JSON-heavy
table, as in benchmarks/run.py) on a throwaway server and dumps it with ``pg_dump`` (plain
format, what compresses worst-case like a MySQL dump; ``--format custom`` for the default
PostgreSQL artifact); ``--dump FILE`` measures any file instead.

    .venv/bin/python benchmarks/compression.py                  # ~200 MiB plain pg_dump
    .venv/bin/python benchmarks/compression.py --pg-mb 50 --format custom
    .venv/bin/python benchmarks/compression.py --dump /path/to/dump.sql

Prints a markdown report (also written to benchmarks/results/compression-<date>.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    ROOT,
    log_step,
    machine_info,
    markdown_table,
    run_pipeline,
    sigterm_as_interrupt,
    write_result,
)

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from vya_backupdb.pipeline.codecs import CHUNK, get_codec

MIB = 2**20

#: (algorithm, level, threads) measured through the product's codecs. threads matters for
#: zstd (in-process), gzip (pigz when installed) and xz (xz -T); bzip2 and lz4 use one thread.
PRODUCT_MATRIX: list[tuple[str, int, int]] = [
    ("none", 0, 0),
    ("gzip", 1, 1),
    ("gzip", 6, 1),
    ("gzip", 6, 2),
    ("gzip", 9, 1),
    ("bzip2", 9, 1),
    ("xz", 1, 1),
    ("xz", 6, 1),
    ("xz", 6, 2),
    ("zstd", 1, 2),
    ("zstd", 3, 1),
    ("zstd", 3, 2),
    ("zstd", 9, 2),
    ("zstd", 19, 2),
    ("lz4", 1, 1),
    ("lz4", 9, 1),
]

#: name → (compress argv, decompress argv), both filters stdin → stdout.
CLI_MATRIX: dict[str, tuple[list[str], list[str]]] = {
    "zstd -3 -T2": (["zstd", "-3", "-T2", "-q", "-c"], ["zstd", "-d", "-q", "-c"]),
    "zstd -19 -T2": (["zstd", "-19", "-T2", "-q", "-c"], ["zstd", "-d", "-q", "-c"]),
    "gzip -1": (["gzip", "-1", "-c"], ["gzip", "-d", "-c"]),
    "gzip -6": (["gzip", "-6", "-c"], ["gzip", "-d", "-c"]),
    "pigz -6 -p 2": (["pigz", "-6", "-p", "2", "-c"], ["pigz", "-d", "-c"]),
    "bzip2 -9": (["bzip2", "-9", "-c"], ["bzip2", "-d", "-c"]),
    "xz -6 -T2": (["xz", "-6", "-T2", "-c"], ["xz", "-d", "-c"]),
    "lz4 -1": (["lz4", "-1", "-q", "-c"], ["lz4", "-d", "-q", "-c"]),
}


@dataclass
class Measured:
    name: str
    level: str
    threads: str
    size: int
    compress_s: float
    decompress_s: float


def measure_codec(source: Path, out: Path, name: str, level: int, threads: int) -> Measured:
    """Compress ``source`` into ``out`` and read it back through the product's codec; raise
    RuntimeError when the round trip does not give back as many bytes."""
    codec = get_codec(name)
    start = time.perf_counter()
    with source.open("rb") as reader, out.open("wb") as sink:
        writer = codec.writer(sink, level, threads)
        while data := reader.read(CHUNK):
            writer.write(data)
        writer.close()
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    total = 0
    with out.open("rb") as raw:
        decoded = codec.reader(raw)
        while data := decoded.read(CHUNK):
            total += len(data)
    decompress_s = time.perf_counter() - start
    if total != source.stat().st_size:
        raise RuntimeError(f"{name} {level}: read back {total} bytes of {source.stat().st_size}")
    return Measured(
        name,
        str(level) if name != "none" else "—",
        str(threads) if name in ("zstd", "gzip", "xz") else "1",
        out.stat().st_size,
        compress_s,
        decompress_s,
    )


def measure_cli(
    source: Path, out: Path, label: str, argvs: tuple[list[str], list[str]]
) -> Measured:
    """Time a command-line compressor and its decompressor on ``source``."""
    compress, decompress = argvs
    compress_s = run_pipeline([compress], stdin=source, stdout=out)
    back = out.with_suffix(".back")
    decompress_s = run_pipeline([decompress], stdin=out, stdout=back)
    if back.stat().st_size != source.stat().st_size:
        raise RuntimeError(f"{label}: round trip changed the size")
    back.unlink()
    return Measured(label, "", "", out.stat().st_size, compress_s, decompress_s)


def make_dump(work: Path, mib: float, fmt: str) -> Path:
    """Build a ~``mib`` MiB database on a throwaway server and return its pg_dump file."""
    from run import PG_SETTINGS, build_pg_bench

    from harness.postgres import start_server

    pg = start_server("compression", PG_SETTINGS)
    try:
        build_pg_bench(pg, mib / 1024)
        dump = work / ("bench.sql" if fmt == "plain" else "bench.dump")
        argv = [str(pg.bin_dir / "pg_dump"), "-d", "bench", "-f", str(dump)]
        argv += ["-Fp"] if fmt == "plain" else ["-Fc", "-Z0"]
        run_pipeline([argv], env=pg.libpq_env())
    finally:
        pg.stop()
    return dump


def rows_of(results: list[Measured], raw: int) -> list[tuple[str, ...]]:
    rows = []
    for m in results:
        rows.append(
            (
                m.name,
                m.level,
                m.threads,
                f"{m.size / MIB:.1f}",
                f"{raw / max(m.size, 1):.2f}",
                f"{m.compress_s:.2f}",
                f"{raw / MIB / m.compress_s:.0f}",
                f"{m.decompress_s:.2f}",
                f"{raw / MIB / m.decompress_s:.0f}",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", type=Path, help="measure this file instead of a fresh dump")
    parser.add_argument("--pg-mb", type=float, default=200, help="database size, MiB")
    parser.add_argument("--format", choices=("plain", "custom"), default="plain")
    parser.add_argument("--skip-slow", action="store_true", help="leave out xz 6 and zstd 19")
    args = parser.parse_args()

    machine = machine_info(
        {
            "zstd": ["zstd", "--version"],
            "gzip": ["gzip", "--version"],
            "pigz": ["pigz", "--version"],
            "xz": ["xz", "--version"],
            "zstandard (Python)": [
                sys.executable,
                "-c",
                "import zstandard; print(zstandard.__version__, zstandard.ZSTD_VERSION)",
            ],
        }
    )
    work = Path(tempfile.mkdtemp(prefix="vya-compression-", dir="/var/tmp"))
    with sigterm_as_interrupt():
        try:
            if args.dump:
                source = args.dump
                what = f"`{source.name}` (given)"
            else:
                log_step(f"building a ~{args.pg_mb:g} MiB database and dumping it ...")
                source = make_dump(work, args.pg_mb, args.format)
                what = f"pg_dump ({args.format} format) of a pgbench + text/JSON database"
            raw = source.stat().st_size
            # Warm the page cache: every codec then reads from memory, not from disk.
            with source.open("rb") as handle:
                while handle.read(CHUNK * 8):
                    pass
            product: list[Measured] = []
            for name, level, threads in PRODUCT_MATRIX:
                if args.skip_slow and (name, level) in (("xz", 6), ("zstd", 19)):
                    continue
                log_step(f"vya codec {name} {level} (threads {threads}) ...")
                product.append(measure_codec(source, work / "out", name, level, threads))
            cli: list[Measured] = []
            for label, argvs in CLI_MATRIX.items():
                if shutil.which(argvs[0][0]) is None:
                    log_step(f"{argvs[0][0]} is not installed: skipping {label}")
                    continue
                if args.skip_slow and label == "zstd -19 -T2":
                    continue
                log_step(f"cli {label} ...")
                cli.append(measure_cli(source, work / "cli.out", label, argvs))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    headers = [
        "algorithm",
        "level",
        "threads",
        "size MiB",
        "ratio",
        "compress s",
        "compress MiB/s",
        "decompress s",
        "decompress MiB/s",
    ]
    text = "\n".join(
        [
            "# Compression on a real dump",
            "",
            markdown_table(["machine", ""], machine),
            "",
            f"Input: {what}, {raw / MIB:.1f} MiB. MiB/s are of uncompressed data, "
            "one run each, page cache warm.",
            "",
            "## Through the product's codecs (pipeline/codecs.py)",
            "",
            markdown_table(headers, rows_of(product, raw)),
            "",
            "## Command-line tools, for reference",
            "",
            markdown_table(["tool", *headers[3:]], [(r[0], *r[3:]) for r in rows_of(cli, raw)]),
            "",
            "Reproduce: `"
            + shlex.join([".venv/bin/python", "benchmarks/compression.py", *sys.argv[1:]])
            + "`",
            "",
        ]
    )
    print(text)
    path = write_result("compression", text)
    log_step(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
