"""Benchmark: vya-backupdb next to the native tools on PostgreSQL and MariaDB (issue 6 targets).

Builds, on throwaway local servers (temp dirs, free loopback ports, stopped at the end even on
Ctrl-C/SIGTERM), a PostgreSQL database of ``--pg-gb`` GiB (pgbench tables plus a text/JSON-heavy
``docs`` table), four smaller databases for the parallel test, a larger copy for the memory
test (``--rss-gb``), and a MariaDB database of ``--mariadb-mb`` MiB (text/JSON, blobs, numbers).
Then measures, medians of ``--runs`` runs, each as a ratio to the native tool run in the same
session:

* PostgreSQL backup: vya (custom format, zstd -3, 2 threads) vs ``pg_dump -Fc -Z0 | zstd -3 -T2``
  and vs the legacy ``pg_dump | gzip``;
* PostgreSQL restore: vya ``--mode fast --jobs 2`` vs ``pg_restore -j 2`` of the same dump
  (uncompressed file), and single-stream restore vs ``pg_restore``;
* MariaDB backup vs ``mariadb-dump --single-transaction … | zstd -3 -T2``; restore vs
  ``mariadb DB < dump``;
* MariaDB parallel format (``mysql_format: parallel``, ``jobs: 2``): backup vs the same
  ``mariadb-dump | zstd`` runs and vs ``mydumper -t 2``; restore ``--mode fast --jobs 2`` vs the
  same ``mariadb DB < dump`` runs and vs ``myloader -t 2``;
* ``--jobs 2`` vs ``--jobs 1`` over an instance with four databases;
* peak RSS of the vya process (its children excluded) on the 1 GiB and the larger database.

    .venv/bin/python benchmarks/run.py --quick        # minutes: small sizes, one run
    .venv/bin/python benchmarks/run.py                # 1 GiB / 500 MiB / 3 runs / 4 GiB RSS

Prints a markdown report (also written to benchmarks/results/run-<date>.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    VyaCli,
    fmt_runs,
    log_step,
    machine_info,
    markdown_table,
    median,
    run_pipeline,
    sigterm_as_interrupt,
    timed,
    write_result,
)

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

MIB = 2**20
GIB = 2**30
#: pgbench: about 15 MiB of tables and indexes per scale unit.
PGBENCH_MIB_PER_SCALE = 15.0
#: Time allowed for InnoDB to write out the build's dirty pages before the measurements.
INNODB_FLUSH_BUDGET_S = 300.0
#: Time allowed to grow the memory-test database (the issue asks for 4 GiB "if feasible").
RSS_BUILD_BUDGET_S = 600.0
RSS_TARGET_MIB = 150.0

PG_SETTINGS = {
    "timezone": "'UTC'",
    "shared_buffers": "'512MB'",
    "maintenance_work_mem": "'256MB'",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "autovacuum": "off",
}
MARIADB_ARGS = [
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--innodb-buffer-pool-size=1G",
    "--innodb-log-file-size=512M",
    "--max-allowed-packet=256M",
]
# What the product's MariaDB engine passes (engines/mysql.py DUMP_OPTIONS / RESTORE_OPTIONS),
# so both sides dump and load the same thing.
MARIADB_DUMP_OPTIONS = [
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--tz-utc",
    "--no-tablespaces",
]
MARIADB_RESTORE_OPTIONS = ["--binary-mode", "--default-character-set=utf8mb4", "--comments"]

DOCS_SQL_PG = """
INSERT INTO docs
SELECT i,
       'title ' || md5(i::text),
       md5(random()::text) || ' ' || md5(i::text) || ' the quick brown fox jumps over the dog '
           || repeat(md5((i %% 1000)::text), 16),
       jsonb_build_object(
           'id', i, 'name', 'user' || i,
           'tags', jsonb_build_array('a' || (i %% 100), 'b' || (i %% 37)),
           'score', random(), 'created', now() - make_interval(secs => i),
           'note', md5(random()::text))
FROM generate_series(%s::bigint, %s::bigint) AS i
"""

DOCS_SQL_MARIADB = """
INSERT INTO docs
SELECT seq,
       CONCAT('title ', MD5(seq)),
       CONCAT(MD5(RAND()), ' ', MD5(seq), ' the quick brown fox jumps over the dog ',
              REPEAT(MD5(seq % 1000), 16)),
       JSON_OBJECT('id', seq, 'name', CONCAT('user', seq),
                   'tags', JSON_ARRAY(CONCAT('a', seq % 100), CONCAT('b', seq % 37)),
                   'score', RAND(), 'note', MD5(RAND()))
FROM seq_{lo}_to_{hi}
"""


@dataclass
class Row:
    """One line of the report."""

    what: str
    vya: str
    native: str
    ratio: str
    target: str
    verdict: str
    runs: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sizes: list[tuple[str, str]] = field(default_factory=list)

    def compare(
        self,
        what: str,
        vya: list[float],
        native: list[float],
        *,
        target: str,
        limit: float | None = None,
        speedup: float | None = None,
        labels: tuple[str, str] = ("vya", "native"),
        paired: bool = True,
    ) -> None:
        """Add a vya-vs-native row: ratio = vya / native (or native / vya for a speed-up).

        ``paired``: the two lists came from one :func:`alternate` call, run *i* of each back
        to back; the runs column then also gives the median and range of the per-pair
        ratios, which a slow spell of the machine shifts less than it shifts either list
        (the verdict stays on the ratio of the medians)."""
        v, n = median(vya), median(native)
        if speedup is not None:
            ratio = n / v
            ok = ratio >= speedup
            shown = f"{ratio:.2f}× faster"
        else:
            ratio = v / n
            ok = limit is not None and ratio <= limit
            shown = f"{ratio:.2f}×"
        self.rows.append(
            Row(
                what,
                f"{v:.1f} s",
                f"{n:.1f} s",
                shown,
                target,
                "PASS" if ok else "FAIL",
                f"{labels[0]} {fmt_runs(vya)} · {labels[1]} {fmt_runs(native)}"
                + (pair_summary(vya, native, speedup is not None) if paired else ""),
            )
        )

    def rss(self, what: str, kib: list[int], extra: str = "") -> None:
        peak = max(kib) / 1024
        self.rows.append(
            Row(
                what,
                f"{peak:.0f} MiB",
                "—",
                "—",
                f"< {RSS_TARGET_MIB:.0f} MiB",
                "PASS" if peak < RSS_TARGET_MIB else "FAIL",
                extra or "max of runs: " + "/".join(f"{k / 1024:.0f}" for k in kib),
            )
        )


def pair_summary(vya: list[float], native: list[float], speedup: bool) -> str:
    """`` · pairs 1.08× (0.95–1.22×)``: median and range of the per-run ratios."""
    if len(vya) != len(native) or len(vya) < 2:
        return ""
    ratios = sorted((n / v) if speedup else (v / n) for v, n in zip(vya, native, strict=True))
    return f" · pairs {median(ratios):.2f}× ({ratios[0]:.2f}–{ratios[-1]:.2f}×)"


# -- PostgreSQL -------------------------------------------------------------------------------
def pg_size(pg: Any, db: str) -> int:
    with pg.connect() as conn:
        return int(conn.execute("SELECT pg_database_size(%s)", (db,)).fetchone()[0])


def pg_exec(pg: Any, db: str, statement: str, params: tuple[Any, ...] | None = None) -> None:
    with pg.connect(db) as conn:
        conn.execute(statement, params)


def build_pg_bench(pg: Any, gib: float) -> int:
    """Create ``bench``: pgbench tables for half of ``gib`` GiB, text/JSON ``docs`` rows for the
    rest; return the number of docs rows."""
    env = pg.libpq_env()
    target = int(gib * GIB)
    scale = max(1, math.ceil(gib * 1024 * 0.5 / PGBENCH_MIB_PER_SCALE))
    log_step(f"PostgreSQL: pgbench -i -s {scale} bench ...")
    pg.create_db("bench")
    run_pipeline([[str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "bench"]], env=env)
    pg_exec(
        pg,
        "bench",
        "CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text, doc jsonb)",
    )
    rows, step = 0, 100_000 if gib >= 0.5 else 20_000
    while pg_size(pg, "bench") < target:
        pg_exec(pg, "bench", DOCS_SQL_PG, (rows + 1, rows + step))
        rows += step
        log_step(f"  docs: {rows} rows, bench = {pg_size(pg, 'bench') / MIB:.0f} MiB")
    pg_exec(pg, "bench", "VACUUM ANALYZE")
    return rows


def build_pg(pg: Any, work: Path, gib: float, rss_gib: float) -> dict[str, int]:
    """Create bench (gib), par_1..par_4 and big (rss_gib); return their sizes in bytes."""
    env = pg.libpq_env()
    pgbench = str(pg.bin_dir / "pgbench")
    scale = max(1, math.ceil(gib * 1024 * 0.5 / PGBENCH_MIB_PER_SCALE))
    rows = build_pg_bench(pg, gib)

    log_step("PostgreSQL: par_1..par_4 for the parallel test ...")
    par_scale = max(1, scale // 6)
    pg.create_db("par_1")
    run_pipeline([[pgbench, "-i", "-q", "-s", str(par_scale), "par_1"]], env=env)
    for n in (2, 3, 4):
        pg.create_db(f"par_{n}", "TEMPLATE par_1")

    log_step(f"PostgreSQL: big (>= {rss_gib:g} GiB, at most {RSS_BUILD_BUDGET_S:.0f}s) ...")
    pg.create_db("big", "TEMPLATE bench")
    start, k = time.monotonic(), 0
    while pg_size(pg, "big") < rss_gib * GIB and time.monotonic() - start < RSS_BUILD_BUDGET_S:
        k += 1
        pg_exec(
            pg,
            "big",
            "INSERT INTO docs SELECT id + %s, title, body, doc FROM docs WHERE id <= %s",
            (k * rows, rows),
        )
        log_step(f"  big = {pg_size(pg, 'big') / MIB:.0f} MiB")
    sizes = {db: pg_size(pg, db) for db in ("bench", "par_1", "big")}
    (work / "raw").mkdir(exist_ok=True)
    return sizes


# -- MariaDB ----------------------------------------------------------------------------------
def my_size(my: Any, db: str) -> int:
    my.sql("ANALYZE TABLE docs, blobs, orders", db)
    row = my.query(
        "SELECT SUM(data_length + index_length) FROM information_schema.tables"
        " WHERE table_schema = %s",
        args=(db,),
    )
    return int(row[0][0] or 0)


def build_mariadb(my: Any, mib: float) -> int:
    """Create the shop database of about ``mib`` MiB; return its size in bytes."""
    log_step(f"MariaDB: shop (>= {mib:g} MiB) ...")
    my.create_db("shop")
    my.sql(
        "CREATE TABLE docs (id INT PRIMARY KEY, title VARCHAR(200), body TEXT, doc JSON);"
        "CREATE TABLE blobs (id INT PRIMARY KEY, data BLOB);"
        "CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(12,2),"
        " placed DATETIME, status VARCHAR(20), KEY (customer))",
        "shop",
    )
    blobs = max(1000, int(mib * 100))
    orders = max(10_000, int(mib * 2000))
    my.sql(
        f"INSERT INTO blobs SELECT seq, CONCAT(RANDOM_BYTES(1024), RANDOM_BYTES(512))"
        f" FROM seq_1_to_{blobs}",
        "shop",
    )
    my.sql(
        f"INSERT INTO orders SELECT seq, seq % 9973, ROUND(RAND() * 1000, 2),"
        f" '2020-01-01' + INTERVAL seq SECOND, ELT(1 + seq % 4, 'new', 'paid', 'sent', 'done')"
        f" FROM seq_1_to_{orders}",
        "shop",
    )
    rows, step = 0, 100_000
    while my_size(my, "shop") < mib * MIB:
        my.sql(DOCS_SQL_MARIADB.format(lo=rows + 1, hi=rows + step), "shop")
        rows += step
        log_step(f"  docs: {rows} rows, shop = {my_size(my, 'shop') / MIB:.0f} MiB")
    return my_size(my, "shop")


def mariadb_client_args(my: Any, cnf: Path) -> list[str]:
    return [
        f"--defaults-extra-file={cnf}",
        f"--host={my.host}",
        f"--port={my.port}",
        "--protocol=TCP",
    ]


# -- the run ----------------------------------------------------------------------------------
def write_config(path: Path, store: Path, pg: Any, my: Any) -> None:
    instances = [
        pg.instance_config("pg", users=False),
        pg.instance_config("pgpar", users=False, databases=["par_*"]),
        {**my.instance_config("my"), "users": False},
        {**my.instance_config("mypar"), "users": False, "mysql_format": "parallel", "jobs": 2},
    ]
    config = {
        "hostname": "bench",
        "storage": {
            "base_path": str(store),
            "compression": {"algorithm": "zstd", "level": 3, "threads": 2},
        },
        "instances": instances,
    }
    path.write_text(json.dumps(config, indent=2))


def quiesce(pg: Any, my: Any) -> None:
    """After the build: write PostgreSQL's dirty buffers, InnoDB's dirty pages and the OS's
    dirty pages out now, not during the first timed runs (the build leaves several GiB to
    write; InnoDB's page cleaner otherwise trickles its ~500 MiB out over the next minutes,
    beside the PostgreSQL comparisons)."""
    log_step("checkpoint, InnoDB flush and sync after the build ...")
    pg_exec(pg, "postgres", "CHECKPOINT")
    pct, capacity, capacity_max = my.query(
        "SELECT @@GLOBAL.innodb_max_dirty_pages_pct, @@GLOBAL.innodb_io_capacity,"
        " @@GLOBAL.innodb_io_capacity_max"
    )[0]
    # At its default pace (200 pages/s) the flush of a 100 MiB build took a minute.
    my.query("SET GLOBAL innodb_io_capacity_max = 40000")
    my.query("SET GLOBAL innodb_io_capacity = 20000")
    my.query("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        deadline = time.monotonic() + INNODB_FLUSH_BUDGET_S
        while time.monotonic() < deadline:
            rows = my.query("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            if int(rows[0][1]) == 0:
                break
            time.sleep(1)
        else:
            log_step(f"  InnoDB still has dirty pages after {INNODB_FLUSH_BUDGET_S:.0f}s")
    finally:
        my.query(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(pct)}")
        my.query(f"SET GLOBAL innodb_io_capacity = {int(capacity)}")
        my.query(f"SET GLOBAL innodb_io_capacity_max = {int(capacity_max)}")
    os.sync()


def alternate(
    runs: int, first: Callable[[], float], second: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run both ``runs`` times, alternating which goes first (drift hits both alike), after
    one untimed warm-up run of each (caches, the servers' buffers, the first run's outlier)."""
    first()
    second()
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    return a, b


def measure(args: argparse.Namespace, work: Path, pg: Any, my: Any, report: Report) -> None:
    store = work / "store"
    config = work / "config.json"
    write_config(config, store, pg, my)
    vya = VyaCli(config, work / "vya.log")
    env = pg.libpq_env()
    bin_dir = pg.bin_dir
    pg_dump, pg_restore = str(bin_dir / "pg_dump"), str(bin_dir / "pg_restore")
    zstd = shutil.which("zstd") or "zstd"
    gzip = shutil.which("gzip") or "gzip"
    runs = args.runs
    raw = work / "raw"
    backup_rss: list[int] = []

    # PostgreSQL backup ------------------------------------------------------------------
    log_step("PostgreSQL backup ...")

    def vya_pg_backup() -> float:
        wall, rss = vya.run("backup", "pg", "-d", "bench", "--no-users")
        backup_rss.append(rss)
        return wall

    def native_zstd() -> float:
        return run_pipeline(
            [[pg_dump, "-Fc", "-Z0", "-d", "bench"], [zstd, "-3", "-T2", "-q", "-c"]],
            env=env,
            stdout=raw / "native.dump.zst",
        )

    def legacy_gzip() -> float:
        return run_pipeline(
            [[pg_dump, "-d", "bench"], [gzip, "-c"]], env=env, stdout=raw / "legacy.sql.gz"
        )

    vya_b, nat_b = alternate(runs, vya_pg_backup, native_zstd)
    legacy = [legacy_gzip() for _ in range(runs)]
    report.compare(
        "PostgreSQL backup vs `pg_dump -Fc -Z0 | zstd -3 -T2`", vya_b, nat_b,
        target="≤ 1.10×", limit=1.10,
    )  # fmt: skip
    report.compare(
        "PostgreSQL backup vs legacy `pg_dump | gzip`", vya_b, legacy,
        target="≥ 2× faster", speedup=2.0, paired=False,
    )  # fmt: skip
    report.rss(f"peak RSS, vya backup of bench ({report_size(report, 'bench')})", backup_rss)
    report.notes.append(
        f"PostgreSQL output sizes: vya {newest_size(store, 'bench') / MIB:.0f} MiB, "
        f"pg_dump|zstd {(raw / 'native.dump.zst').stat().st_size / MIB:.0f} MiB, "
        f"pg_dump|gzip {(raw / 'legacy.sql.gz').stat().st_size / MIB:.0f} MiB"
    )

    # PostgreSQL restore -----------------------------------------------------------------
    log_step("PostgreSQL restore ...")
    run_pipeline([[pg_dump, "-Fc", "-Z0", "-d", "bench", "-f", str(raw / "bench.dump")]], env=env)
    restore_rss: list[int] = []

    def settle() -> None:
        """Before each timed restore, of either tool: write out the previous run's ~2 GiB
        (tables, indexes, WAL) now, so that no run pays for the writes of the one before —
        measured here, that spread single runs from 3.8 to 6 s and hid a real difference."""
        pg_exec(pg, "postgres", "CHECKPOINT")
        os.sync()

    def vya_restore(jobs: int) -> Callable[[], float]:
        def go() -> float:
            pg.drop_db("r_vya")
            settle()
            wall, rss = vya.run(
                "restore", "pg", "-d", "bench", "--latest", "--target", "r_vya",
                "--mode", "fast", "--jobs", str(jobs), "--yes",
            )  # fmt: skip
            restore_rss.append(rss)
            pg.drop_db("r_vya")
            return wall

        return go

    def native_restore(jobs: int) -> Callable[[], float]:
        def go() -> float:
            pg.drop_db("r_native")
            argv = [pg_restore, "--exit-on-error", "-d", "r_native", str(raw / "bench.dump")]
            if jobs > 1:
                argv[1:1] = ["-j", str(jobs)]
            settle()
            wall = timed(lambda: (pg.create_db("r_native"), run_pipeline([argv], env=env)))
            pg.drop_db("r_native")
            return wall

        return go

    vya_r2, nat_r2 = alternate(runs, vya_restore(2), native_restore(2))
    report.compare(
        "PostgreSQL restore `--mode fast --jobs 2` vs `pg_restore -j 2`", vya_r2, nat_r2,
        target="≤ 1.15×", limit=1.15,
    )  # fmt: skip

    def native_restore_stored(jobs: int) -> Callable[[], float]:
        """What a DBA does by hand with the same stored backup: decompress it to a file
        (pg_restore -j needs one), then pg_restore -j."""

        def go() -> float:
            pg.drop_db("r_native")
            stored = sorted(store.rglob("bench_*_full.dump.zst"), key=lambda p: p.stat().st_mtime)
            spool = raw / "from-stored.dump"
            unpack = [zstd, "-dcq", str(stored[-1])]
            argv = [pg_restore, "--exit-on-error", "-j", str(jobs), "-d", "r_native", str(spool)]
            settle()
            wall = timed(
                lambda: (
                    run_pipeline([unpack], stdout=spool),
                    pg.create_db("r_native"),
                    run_pipeline([argv], env=env),
                )
            )
            spool.unlink()
            pg.drop_db("r_native")
            return wall

        return go

    vya_s2, nat_s2 = alternate(runs, vya_restore(2), native_restore_stored(2))
    report.compare(
        "PostgreSQL restore `--jobs 2` vs `zstd -dc stored > f && pg_restore -j 2 f` "
        "(same stored backup)", vya_s2, nat_s2,
        target="(≤ 1.00×, informative)", limit=1.0,
    )  # fmt: skip
    vya_r1, nat_r1 = alternate(runs, vya_restore(1), native_restore(1))
    report.compare(
        "PostgreSQL restore single stream vs `pg_restore`", vya_r1, nat_r1,
        target="(≤ 1.15×, informative)", limit=1.15,
    )  # fmt: skip
    report.rss("peak RSS, vya restore of bench (jobs 2 and 1)", restore_rss)

    # Parallel ---------------------------------------------------------------------------
    log_step("parallel: --jobs 2 vs --jobs 1 over par_1..par_4 ...")

    def vya_jobs(n: int) -> Callable[[], float]:
        return lambda: vya.run("backup", "pgpar", "--no-users", "--jobs", str(n))[0]

    par2, par1 = alternate(runs, vya_jobs(2), vya_jobs(1))
    report.compare(
        "4 databases, `backup --jobs 2` vs `--jobs 1` (native column: vya --jobs 1)",
        par2, par1, target="< 1.00× (faster)", limit=0.999, labels=("jobs 2", "jobs 1"),
    )  # fmt: skip

    # MariaDB ----------------------------------------------------------------------------
    log_step("MariaDB backup ...")
    cnf = work / "my.cnf"
    cnf.write_text(f'[client]\nuser=root\npassword="{my.password}"\n')
    cnf.chmod(0o600)
    client_args = mariadb_client_args(my, cnf)
    mariadb_dump = shutil.which("mariadb-dump") or "mysqldump"
    mariadb = shutil.which("mariadb") or "mysql"
    my_rss: list[int] = []

    def vya_my_backup() -> float:
        wall, rss = vya.run("backup", "my", "-d", "shop", "--no-users")
        my_rss.append(rss)
        return wall

    def native_my_backup() -> float:
        return run_pipeline(
            [
                [mariadb_dump, *client_args, *MARIADB_DUMP_OPTIONS, "--", "shop"],
                [zstd, "-3", "-T2", "-q", "-c"],
            ],
            stdout=raw / "shop.sql.zst",
        )

    vya_mb, nat_mb = alternate(runs, vya_my_backup, native_my_backup)
    report.compare(
        "MariaDB backup vs `mariadb-dump --single-transaction … | zstd -3 -T2`", vya_mb, nat_mb,
        target="≤ 1.10×", limit=1.10,
    )  # fmt: skip
    report.notes.append(
        f"MariaDB output sizes: vya {newest_size(store, 'shop') / MIB:.0f} MiB, "
        f"mariadb-dump|zstd {(raw / 'shop.sql.zst').stat().st_size / MIB:.0f} MiB"
    )

    log_step("MariaDB restore ...")
    run_pipeline(
        [[mariadb_dump, *client_args, *MARIADB_DUMP_OPTIONS, "--", "shop"]],
        stdout=raw / "shop.sql",
    )

    def vya_my_restore(jobs: int) -> Callable[[], float]:
        def go() -> float:
            my.drop_db("r_vya")
            wall, rss = vya.run(
                "restore", "my", "-d", "shop", "--latest", "--target", "r_vya",
                "--mode", "fast", "--yes", "--jobs", str(jobs),
            )  # fmt: skip
            my_rss.append(rss)
            my.drop_db("r_vya")
            return wall

        return go

    def native_my_restore() -> float:
        my.drop_db("r_native")

        def go() -> None:
            my.create_db("r_native")
            run_pipeline(
                [[mariadb, *client_args, *MARIADB_RESTORE_OPTIONS, "--database=r_native"]],
                stdin=raw / "shop.sql",
            )

        wall = timed(go)
        my.drop_db("r_native")
        return wall

    # The same sql backup: --jobs 2 loads its tables' sections with two clients (as the
    # PostgreSQL rows use pg_restore -j 2); --jobs 1 runs it as one script.
    vya_mr, nat_mr = alternate(runs, vya_my_restore(2), native_my_restore)
    report.compare(
        "MariaDB restore `--mode fast --jobs 2` vs `mariadb DB < dump`", vya_mr, nat_mr,
        target="≤ 1.00× (no slower)", limit=1.0,
    )  # fmt: skip
    vya_mr1 = [vya_my_restore(1)() for _ in range(runs)]
    report.compare(
        "MariaDB restore single stream (`--jobs 1`) vs `mariadb DB < dump`", vya_mr1, nat_mr,
        target="(≤ 1.00×, informative)", limit=1.0, paired=False,
    )  # fmt: skip
    report.rss("peak RSS, vya backup + restore of shop", my_rss)
    measure_mariadb_parallel(
        vya, my, raw, runs, report, cnf, native_backup=nat_mb, native_restore=nat_mr
    )

    # Memory on the larger database ------------------------------------------------------
    log_step("memory: vya backup of big ...")
    big_rss: list[int] = []
    walls = []
    for _ in range(max(1, min(runs, 2))):
        wall, rss = vya.run("backup", "pg", "-d", "big", "--no-users")
        big_rss.append(rss)
        walls.append(wall)
    report.rss(
        f"peak RSS, vya backup of big ({report_size(report, 'big')})",
        big_rss,
        extra=f"wall {fmt_runs(walls)} s; RSS per run: "
        + "/".join(f"{k / 1024:.0f}" for k in big_rss),
    )


def measure_mariadb_parallel(
    vya: VyaCli,
    my: Any,
    raw: Path,
    runs: int,
    report: Report,
    cnf: Path,
    *,
    native_backup: list[float],
    native_restore: list[float],
) -> None:
    """The parallel format (jobs 2) next to the single-stream native runs of this session and
    next to mydumper/myloader with 2 threads (their output uncompressed: they get a head start)."""
    log_step("MariaDB parallel format (jobs 2) vs mydumper/myloader -t 2 ...")
    mydumper = shutil.which("mydumper")
    myloader = shutil.which("myloader")
    if mydumper is None or myloader is None:
        report.notes.append("mydumper/myloader not installed: parallel comparison skipped.")
        return
    where = ["-h", my.host, "-P", str(my.port)]
    out_dir = raw / "mydumper"
    par_rss: list[int] = []

    def vya_par_backup() -> float:
        wall, rss = vya.run("backup", "mypar", "-d", "shop", "--no-users")
        par_rss.append(rss)
        return wall

    def native_mydumper() -> float:
        shutil.rmtree(out_dir, ignore_errors=True)
        return run_pipeline(
            [
                [mydumper, f"--defaults-file={cnf}", *where, "-B", "shop", "-o", str(out_dir),
                 "-t", "2", "--trx-consistency-only", "-R", "-E", "-G", "-v", "1"],
            ]
        )  # fmt: skip

    vya_pb, nat_pb = alternate(runs, vya_par_backup, native_mydumper)
    report.compare(
        "MariaDB parallel backup (jobs 2) vs `mariadb-dump … | zstd -3 -T2`",
        vya_pb, native_backup, target="≤ 1.10× (informative)", limit=1.10, paired=False,
    )  # fmt: skip
    report.compare(
        "MariaDB parallel backup (jobs 2) vs `mydumper -t 2` (uncompressed)",
        vya_pb, nat_pb, target="≤ 1.25× (informative)", limit=1.25,
        labels=("vya", "mydumper"),
    )  # fmt: skip
    files = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    report.notes.append(
        f"MariaDB parallel output sizes: vya {newest_size(raw.parent / 'store', 'shop') / MIB:.0f}"
        f" MiB (tar, zstd), mydumper {sum(f.stat().st_size for f in files) / MIB:.0f} MiB "
        f"({len(files)} files, uncompressed)"
    )

    def vya_par_restore() -> float:
        my.drop_db("r_vya")
        wall, rss = vya.run(
            "restore", "mypar", "-d", "shop", "--latest", "--target", "r_vya",
            "--mode", "fast", "--jobs", "2", "--yes",
        )  # fmt: skip
        par_rss.append(rss)
        my.drop_db("r_vya")
        return wall

    def native_myloader() -> float:
        my.drop_db("r_native")

        def go() -> None:
            my.create_db("r_native")
            run_pipeline(
                [
                    [myloader, f"--defaults-file={cnf}", *where, "-d", str(out_dir),
                     "-s", "shop", "-B", "r_native", "-t", "2", "-v", "1"],
                ]
            )  # fmt: skip

        wall = timed(go)
        my.drop_db("r_native")
        return wall

    vya_pr, nat_pr = alternate(runs, vya_par_restore, native_myloader)
    report.compare(
        "MariaDB parallel restore `--mode fast --jobs 2` vs `mariadb DB < dump`",
        vya_pr, native_restore, target="< 1.00× (faster)", limit=0.999, paired=False,
    )  # fmt: skip
    report.compare(
        "MariaDB parallel restore `--mode fast --jobs 2` vs `myloader -t 2`",
        vya_pr, nat_pr, target="(≤ 1.10×, informative)", limit=1.10, labels=("vya", "myloader"),
    )  # fmt: skip
    report.rss("peak RSS, vya parallel backup + restore of shop", par_rss)


def report_size(report: Report, db: str) -> str:
    for label, value in report.sizes:
        if label.startswith(db):
            return value
    return "?"


def newest_size(store: Path, db: str) -> int:
    files = sorted(store.rglob(f"{db}_*_full.*.zst"), key=lambda p: p.stat().st_mtime)
    return files[-1].stat().st_size if files else 0


def render(args: argparse.Namespace, report: Report, machine: list[tuple[str, str]]) -> str:
    lines = ["# vya-backupdb benchmark: next to the native tools", ""]
    lines.append(markdown_table(["machine", ""], machine))
    lines.append("")
    lines.append(markdown_table(["database", "size"], report.sizes))
    lines.append("")
    lines.append(
        f"Medians of {args.runs} run(s), after one untimed warm-up run of each command; "
        "ratio = vya / native (lower is better) unless marked "
        "“faster”. vya: zstd level 3, 2 threads, PostgreSQL custom format (`pg_dump -Fc -Z0` "
        "inside)."
    )
    lines.append("")
    lines.append(
        markdown_table(
            ["measurement", "vya", "native", "ratio", "target", "result", "runs (s)"],
            [(r.what, r.vya, r.native, r.ratio, r.target, r.verdict, r.runs) for r in report.rows],
        )
    )
    lines.append("")
    lines.extend(f"- {note}" for note in report.notes)
    lines.append("")
    lines.append(
        "Reproduce: `" + shlex.join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]]) + "`"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-gb", type=float, default=1.0, help="bench size, GiB (default 1)")
    parser.add_argument("--mariadb-mb", type=float, default=500, help="shop size, MiB")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--rss-gb", type=float, default=4.0, help="memory-test database, GiB")
    parser.add_argument("--quick", action="store_true", help="0.1 GiB / 50 MiB / 1 run / 0.3")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()
    if args.quick:
        args.pg_gb, args.mariadb_mb, args.runs, args.rss_gb = 0.1, 50, 1, 0.3

    from harness.mariadb import _start as start_mariadb
    from harness.postgres import find_bin_dir, start_server

    bin_dir = find_bin_dir() or Path("/usr/lib/postgresql/15/bin")
    tools = {
        "pg_dump": [str(bin_dir / "pg_dump"), "--version"],
        "PostgreSQL server": [str(bin_dir / "postgres"), "--version"],
        "mariadb-dump": [shutil.which("mariadb-dump") or "mariadb-dump", "--version"],
        "mydumper": [shutil.which("mydumper") or "mydumper", "--version"],
        "MariaDB server": [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--version"],
        "zstd": [shutil.which("zstd") or "zstd", "--version"],
        "gzip": [shutil.which("gzip") or "gzip", "--version"],
        "vya-backupdb": [sys.executable, "-c", _VERSION],
    }
    machine = machine_info(tools)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vya-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    pg = my = None
    started = time.monotonic()
    with sigterm_as_interrupt():
        try:
            log_step(f"work dir {work}; starting throwaway servers ...")
            pg = start_server("bench", PG_SETTINGS)
            my = start_mariadb("bench-mariadb", "VYA_BENCH_MARIADB_PASSWORD", MARIADB_ARGS)
            t = time.monotonic()
            sizes = build_pg(pg, work, args.pg_gb, args.rss_gb)
            shop = build_mariadb(my, args.mariadb_mb)
            quiesce(pg, my)
            report.sizes = [
                ("bench (PostgreSQL: pgbench + docs)", f"{sizes['bench'] / GIB:.2f} GiB"),
                ("par_1..par_4 (PostgreSQL, each)", f"{sizes['par_1'] / MIB:.0f} MiB"),
                ("big (PostgreSQL, memory test)", f"{sizes['big'] / GIB:.2f} GiB"),
                ("shop (MariaDB: docs, blobs, orders)", f"{shop / MIB:.0f} MiB"),
            ]
            if sizes["big"] < args.rss_gb * GIB:
                report.notes.append(
                    f"big reached {sizes['big'] / GIB:.2f} GiB of the {args.rss_gb:g} GiB asked "
                    f"within the {RSS_BUILD_BUDGET_S:.0f}s build budget."
                )
            report.notes.append(f"Building the databases took {time.monotonic() - t:.0f}s.")
            measure(args, work, pg, my, report)
        finally:
            log_step("stopping servers ...")
            if my is not None:
                my.stop()
                shutil.rmtree(my.datadir.parent, ignore_errors=True)
            if pg is not None:
                pg.stop()
            shutil.rmtree(work, ignore_errors=True)
    report.notes.append(f"Whole run: {(time.monotonic() - started) / 60:.0f} min.")
    text = render(args, report, machine)
    print(text)
    path = write_result("run-quick" if args.quick else "run", text)
    log_step(f"written to {path.relative_to(ROOT)}")


_VERSION = (
    f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); "
    "import vya_backupdb; print(vya_backupdb.__version__)"
)

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
