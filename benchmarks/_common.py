"""Shared helpers of the benchmark scripts: timing, peak RSS of the vya process, tables.

Not part of the product: these scripts measure it. Everything external runs without a shell
(pipelines are chained ``Popen`` objects), and passwords travel through the environment or
0600 files, as in the product itself.
"""

from __future__ import annotations

import compileall
import contextlib
import datetime as _dt
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Runs the real console entry point in-process and records the peak RSS of *this* process
# (ru_maxrss of RUSAGE_SELF: the vya process alone, never its pg_dump/zstd children) at exit.
_RSS_PROBE = """\
import atexit, resource, sys
_out = sys.argv[1]
def _report():
    with open(_out, "w") as handle:
        handle.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(_report)
sys.argv = ["vya-backupdb", *sys.argv[2:]]
from vya_backupdb.cli.entry import main
main()
"""


def median(values: Sequence[float]) -> float:
    """Return the median of ``values``."""
    return float(statistics.median(values))


def fmt_runs(values: Sequence[float]) -> str:
    """Return the individual run times as a short list, e.g. ``12.1/12.4/12.0``."""
    return "/".join(f"{v:.1f}" for v in values)


def run_pipeline(
    stages: Sequence[Sequence[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdin: Path | None = None,
    stdout: Path | None = None,
) -> float:
    """Run ``stages`` as ``a | b | c`` (no shell); return the wall seconds; raise
    RuntimeError naming the stage that failed."""
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        sink = stack.enter_context(stdout.open("wb")) if stdout else subprocess.DEVNULL
        start = time.perf_counter()
        previous: int | object = source
        try:
            for index, argv in enumerate(stages):
                last = index == len(stages) - 1
                proc = subprocess.Popen(
                    list(argv),
                    stdin=previous,  # type: ignore[arg-type]
                    stdout=sink if last else subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=dict(env) if env is not None else None,
                )
                if procs and procs[-1].stdout is not None:
                    # Only the next stage may hold the pipe, so SIGPIPE reaches the writer.
                    procs[-1].stdout.close()
                procs.append(proc)
                previous = proc.stdout
            errors = [p.communicate()[1] for p in reversed(procs)]
        except BaseException:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            raise
        wall = time.perf_counter() - start
    for proc, argv, err in zip(procs, stages, reversed(errors), strict=True):
        if proc.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(argv)} exited {proc.returncode}: "
                f"{err.decode(errors='replace')[-2000:]}"
            )
    return wall


_COMPILED: list[bool] = []


def _compile_once() -> None:
    if not _COMPILED:
        compileall.compile_dir(str(ROOT / "src"), quiet=1)
        _COMPILED.append(True)


@dataclass
class VyaCli:
    """Runs ``vya-backupdb`` commands in a child Python process that reports its peak RSS."""

    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def run(self, *args: str) -> tuple[float, int]:
        """Run ``vya-backupdb -c CONFIG -q ARGS``; return (wall seconds, peak RSS in KiB)."""
        fd, rss_name = tempfile.mkstemp(prefix="vya-bench-rss-")
        os.close(fd)
        argv = [sys.executable, "-c", _RSS_PROBE, rss_name, "-c", str(self.config), "-q", *args]
        env = dict(self.env)
        env["PYTHONPATH"] = str(ROOT / "src")
        # Like an installed package: compiled modules (a shell with PYTHONDONTWRITEBYTECODE
        # would otherwise recompile ~30 modules at every start, ~0.1 s).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        _compile_once()
        try:
            with self.log.open("ab") as log:
                log.write(f"\n$ vya-backupdb {shlex.join(args)}\n".encode())
                log.flush()
                start = time.perf_counter()
                done = subprocess.run(argv, stdout=log, stderr=log, env=env, check=False)
                wall = time.perf_counter() - start
            if done.returncode != 0:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"vya-backupdb {shlex.join(args)} exited {done.returncode}:\n{tail}"
                )
            rss = int(Path(rss_name).read_text() or 0)
        finally:
            os.unlink(rss_name)
        return wall, rss


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "(not installed)"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "(unknown)"


def machine_info(tools: Mapping[str, Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """Return (label, value) pairs describing the machine and the tool versions."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = [
        ("date", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("CPUs (nproc)", f"{os.cpu_count()} × {cpu}"),
        ("RAM", f"{total_kib / 2**20:.1f} GiB"),
        ("OS", f"{platform.platform()}"),
        ("Python", platform.python_version()),
        ("load average at start", load),
    ]
    for label, argv in (tools or {}).items():
        rows.append((label, _first_line(argv)))
    return rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return a GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        # A pipe inside a cell (shell pipelines) would split it: escape it.
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def write_result(prefix: str, text: str) -> Path:
    """Write ``text`` to benchmarks/results/{prefix}-{timestamp}.md; return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{prefix}-{_dt.datetime.now():%Y%m%d-%H%M}.md"
    path.write_text(text)
    return path


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so every ``finally`` (server stops) runs."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_step(message: str) -> None:
    """Print a progress line with the time of day (to stderr, so stdout stays the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(action: Callable[[], object]) -> float:
    """Return the wall seconds ``action`` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
