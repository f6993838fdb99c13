"""Benchmark: the files engine (+ zstd level 3, 2 threads) against GNU tar with gzip and zstd.

Builds a tree (default 50 000 files / 1 GiB; ``--quick``: 5 000 files / 64 MiB), warms the page
cache, then runs each method in its own child process and reports wall time, output size and
peak RSS (the child's ``ru_maxrss``, tar's compressor child included). Finally changes 1 % of
the files and times an incremental backup against the full's manifest.

    .venv/bin/python benchmarks/files_bench.py --quick
    .venv/bin/python benchmarks/files_bench.py --files 50000 --size-mb 1024

Not a test: it prints a table and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def build_tree(base: Path, files: int, size_mb: int, seed: int = 42) -> int:
    """Create ``files`` files totalling about ``size_mb`` MiB; return the bytes written."""
    rng = random.Random(seed)
    total = size_mb * 1024 * 1024
    mean = max(1, total // files)
    words = [f"word{n:05d} " for n in range(2000)]
    text = "".join(rng.choice(words) for _ in range(200_000)).encode()
    written = 0
    per_dir = 500
    for index in range(files):
        directory = base / f"d{index // per_dir:04d}" / f"s{(index % per_dir) // 50:02d}"
        if index % 50 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        # Sizes spread around the mean (many small files, a few larger ones).
        size = min(int(rng.expovariate(1 / mean)) + 1, 8 * mean + 1)
        half = size // 2
        start = rng.randrange(0, len(text) - half - 1)
        # Half incompressible, half text: a realistic mix for the codecs.
        content = os.urandom(size - half) + text[start : start + half]
        (directory / f"file{index:06d}.dat").write_bytes(content)
        written += size
    return written


def timed(argv: list[str]) -> tuple[float, int]:
    """Run ``argv`` in a fresh child wrapper; return (wall seconds, peak RSS KiB of its tree)."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True)\n"
        "wall = time.perf_counter() - t\n"
        "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *argv], check=True, capture_output=True, text=True
    )
    wall, rss = out.stdout.split()
    return float(wall), int(rss)


def run_engine(args: argparse.Namespace) -> None:
    """Child mode: one files-engine backup to ``args.out`` (+ manifest), zstd 3, 2 threads."""
    import zstandard

    from vya_backupdb.config.models import InstanceConfig
    from vya_backupdb.engines.files import FilesEngine

    engine = FilesEngine(InstanceConfig(id="bench", type="files", paths=[f"{args.tree}/**"]))
    codec = zstandard.ZstdCompressor(level=3, threads=2)
    base = None
    if args.base_manifest:
        base = zstandard.ZstdDecompressor().stream_reader(open(args.base_manifest, "rb"))  # noqa: SIM115
    with (
        open(args.out, "wb") as raw,
        open(args.out + ".manifest.zst", "wb") as raw_manifest,
        codec.stream_writer(raw, closefd=False) as out,
        zstandard.ZstdCompressor(level=3).stream_writer(raw_manifest, closefd=False) as manifest,
    ):
        result = engine.archive(
            out,
            manifest,
            backup_id=Path(args.out).name,
            strategy=args.strategy,
            base_manifest=base,
        )
    print(json.dumps({"files": result.files, "unchanged": result.unchanged}), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="5 000 files / 64 MiB")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the tree and outputs")
    # Child mode (internal).
    parser.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--base-manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        run_engine(args)
        return
    if args.quick:
        args.files, args.size_mb = 5_000, 64

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vya-files-bench-", dir="/var/tmp"))
    tree = work / "tree"
    outputs = work / "out"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir(parents=True)
    print(f"building {args.files} files / {args.size_mb} MiB in {tree} ...", flush=True)
    t = time.perf_counter()
    data_bytes = build_tree(tree, args.files, args.size_mb)
    print(f"  built {data_bytes / 2**20:.0f} MiB in {time.perf_counter() - t:.1f}s", flush=True)
    # Warm the page cache so every method reads from memory, not disk.
    subprocess.run(["tar", "-cf", "/dev/null", "-C", str(tree), "."], check=True)

    rel = str(tree).lstrip("/")
    me = [sys.executable, str(Path(__file__).resolve()), "--engine", "--tree", str(tree)]
    methods = {
        "vya files engine (zstd -3, 2 threads)": [*me, "--out", str(outputs / "vya.tar.zst")],
        "tar -czf": ["tar", "-czf", str(outputs / "gnu.tar.gz"), "-C", "/", rel],
        "tar -I 'zstd -3 -T2' -cf": [
            "tar",
            "-I",
            "zstd -3 -T2",
            "-cf",
            str(outputs / "gnu.tar.zst"),
            "-C",
            "/",
            rel,
        ],
    }
    files = {
        "vya files engine (zstd -3, 2 threads)": outputs / "vya.tar.zst",
        "tar -czf": outputs / "gnu.tar.gz",
        "tar -I 'zstd -3 -T2' -cf": outputs / "gnu.tar.zst",
    }
    rows = []
    for name, argv in methods.items():
        print(f"running {name} ...", flush=True)
        wall, rss = timed(argv)
        rows.append((name, wall, files[name].stat().st_size, rss))

    # 1 % of the files change; the incremental compares with the full's manifest.
    rng = random.Random(7)
    all_files = sorted(tree.rglob("*.dat"))
    changed = rng.sample(all_files, max(1, len(all_files) // 100))
    for path in changed:
        path.write_bytes(os.urandom(2048) + path.read_bytes()[2048:])
    print(f"running incremental after changing {len(changed)} files ...", flush=True)
    inc_out = outputs / "vya-inc.tar.zst"
    wall, rss = timed(
        [
            *me,
            "--out",
            str(inc_out),
            "--strategy",
            "incremental",
            "--base-manifest",
            str(outputs / "vya.tar.zst.manifest.zst"),
        ]
    )
    rows.append(
        (f"vya incremental ({len(changed)} files changed)", wall, inc_out.stat().st_size, rss)
    )

    print()
    print(f"tree: {args.files} files, {data_bytes / 2**20:.0f} MiB, {os.cpu_count()} CPUs")
    print(f"{'method':<42} {'wall s':>8} {'output MiB':>11} {'ratio':>6} {'peak RSS MiB':>13}")
    for name, wall, size, rss in rows:
        print(
            f"{name:<42} {wall:>8.2f} {size / 2**20:>11.1f} {data_bytes / max(size, 1):>6.2f} "
            f"{rss / 1024:>13.1f}"
        )
    manifest_size = (outputs / "vya.tar.zst.manifest.zst").stat().st_size
    print(f"(vya manifest, zstd: {manifest_size / 2**20:.2f} MiB, not counted above)")
    print()
    print("reproduce:", shlex.join([sys.executable, *sys.argv]))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept: {work}")
    resource.getrusage(resource.RUSAGE_SELF)  # keep the import meaningful for linters


if __name__ == "__main__":
    main()
