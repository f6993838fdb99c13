"""Benchmark: a MariaDB safe restore over an existing database that has views and triggers.

The safe mode restores into a temporary database and swaps it in under the target's name
(MariaDB has no RENAME DATABASE). Since the eleventh round the swap moves the tables and
creates the views, triggers and routines again (engines/mysql_move.py) instead of copying
the database through a dump and a load; this script measures what that leaves: the safe
restore next to the fast one (which drops the target and restores into it), and next to
the safe restore of the same data without code objects (a plain RENAME TABLE swap).

Starts its own throwaway MariaDB (temp dir, free loopback port, stopped at the end), builds
``app`` (``--mib`` MiB of text rows, a view, a trigger, a procedure) and ``plain`` (the same
tables, no code objects), backs both up, restores each once to create the target, then
alternates the timed restores (medians of ``--runs``).

    .venv/bin/python benchmarks/safe_swap.py              # 130 MiB, 3 runs (~2 min)
    .venv/bin/python benchmarks/safe_swap.py --mib 500 --runs 5

Not a test: it prints a table and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
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
    sigterm_as_interrupt,
    write_result,
)
from run import DOCS_SQL_MARIADB, MARIADB_ARGS, MIB, my_size

sys.path.insert(0, str(ROOT / "tests"))

CODE_OBJECTS = (
    "CREATE TABLE log (n INT AUTO_INCREMENT PRIMARY KEY, id INT);"
    "CREATE VIEW recent AS SELECT id, title FROM docs WHERE id > 1000;"
    "CREATE TRIGGER docs_ai AFTER INSERT ON docs FOR EACH ROW INSERT INTO log (id) VALUES (NEW.id);"
    "CREATE PROCEDURE touch(IN n INT) UPDATE docs SET title = title WHERE id = n"
)

KINDS = {"app": "a view, a trigger, a procedure", "plain": "tables only"}


def build(my: Any, db: str, mib: float, code: bool) -> int:
    my.create_db(db)
    my.sql("CREATE TABLE docs (id INT PRIMARY KEY, title VARCHAR(200), body TEXT, doc JSON)", db)
    rows, step = 0, 100_000
    while my_size(my, db) < mib * MIB:
        my.sql(DOCS_SQL_MARIADB.format(lo=rows + 1, hi=rows + step), db)
        rows += step
    if code:
        my.sql(CODE_OBJECTS, db)
    else:
        my.sql("CREATE TABLE log (n INT AUTO_INCREMENT PRIMARY KEY, id INT)", db)
    return my_size(my, db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=130, help="size of each database, MiB")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args()

    from harness.mariadb import _start as start_mariadb

    machine = machine_info({"MariaDB server": [shutil.which("mariadbd") or "mariadbd", "-V"]})
    work = Path(tempfile.mkdtemp(prefix="vya-safe-swap-", dir="/var/tmp"))
    my = None
    rows: list[list[str]] = []
    sizes: dict[str, int] = {}
    started = time.monotonic()
    with sigterm_as_interrupt():
        try:
            log_step(f"work dir {work}; starting a throwaway MariaDB ...")
            my = start_mariadb("safe-swap", "VYA_BENCH_MARIADB_PASSWORD", MARIADB_ARGS)
            for db, code in (("app", True), ("plain", False)):
                log_step(f"building {db} ({args.mib:g} MiB, code objects: {code}) ...")
                sizes[db] = build(my, db, args.mib, code)
            config = work / "config.json"
            config.write_text(
                json.dumps(
                    {
                        "hostname": "bench",
                        "storage": {
                            "base_path": str(work / "store"),
                            "compression": {"algorithm": "zstd", "level": 3, "threads": 2},
                        },
                        "instances": [{**my.instance_config("my"), "users": False}],
                    }
                )
            )
            vya = VyaCli(config, work / "vya.log")
            for db in ("app", "plain"):
                vya.run("backup", "my", "-d", db, "--no-progress")
                target = f"{db}_copy"
                restore = ("restore", "my", "-d", db, "--latest", "--target", target, "--yes")
                vya.run(*restore, "--mode", "fast", "--no-progress")  # the existing target
                log_step(f"timing safe and fast restores of {db} over {target} ...")
                safe: list[float] = []
                fast: list[float] = []
                for i in range(args.runs):
                    order = (("safe", safe), ("fast", fast))
                    for mode, times in order if i % 2 == 0 else reversed(order):
                        times.append(vya.run(*restore, "--mode", mode, "--no-progress")[0])
                rows.append(
                    [
                        f"`{db}` ({sizes[db] / MIB:.0f} MiB, {KINDS[db]})",
                        f"{median(safe):.1f} s",
                        f"{median(fast):.1f} s",
                        f"{median(safe) / median(fast):.2f}×",
                        f"safe {fmt_runs(safe)} · fast {fmt_runs(fast)}",
                    ]
                )
        finally:
            if my is not None:
                my.stop()
                shutil.rmtree(my.datadir.parent, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(
        ["database", "restore --mode safe", "restore --mode fast", "safe / fast", "runs (s)"], rows
    )
    text = "\n".join(
        [
            "# vya-backupdb: MariaDB safe restore over an existing database",
            "",
            markdown_table(["machine", ""], machine),
            "",
            f"Medians of {args.runs} run(s), alternating. The safe restore also takes a safety "
            "backup of the existing target first; the fast one drops it.",
            "",
            table,
            "",
            f"- Whole run: {(time.monotonic() - started) / 60:.0f} min.",
            "",
            f"Reproduce: `.venv/bin/python benchmarks/safe_swap.py --mib {args.mib:g}"
            f" --runs {args.runs}`",
        ]
    )
    print(text)
    path = write_result("safe-swap", text)
    log_step(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
