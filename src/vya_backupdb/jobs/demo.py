"""The one-command demo: a complete backup → list → restore → compare cycle.

It creates ``./demo`` with a demo SQLite database and a demo config, adds any PostgreSQL or
MariaDB server reachable locally without a password (a throwaway ``vya_demo`` database is
created there), backs everything up, restores each database under a new name and compares
source and restore table by table (row contents, not only counts).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vya_backupdb.config.loader import LoadedConfig, load_settings
from vya_backupdb.errors import VyaError

DEMO_DB = "vya_demo"

_DEMO_ROWS = [
    (1, "Ada Lovelace", "ada@example.com", 1815.12, b"\x00\x01\xfe\xff"),
    (2, "Grace Hopper", "grace@example.com", 1906.5, b"COBOL"),
    (3, "Zoë 🚀 Ünïcode", "zoe@example.com", -0.25, bytes(range(256))),
]


@dataclass
class DemoStep:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class DemoReport:
    directory: Path
    config: Path
    steps: list[DemoStep] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps if not step.name.startswith("skip"))


def create_sqlite_demo(path: Path) -> None:
    """Create (or recreate) the demo SQLite database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                email TEXT UNIQUE, balance REAL, avatar BLOB);
            CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT,
                customer_id INTEGER REFERENCES customers(id), total NUMERIC, note TEXT);
            CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
            CREATE INDEX orders_customer ON orders(customer_id);
            """
        )
        conn.executemany("INSERT INTO customers VALUES (?,?,?,?,?)", _DEMO_ROWS)
        conn.executemany(
            "INSERT INTO orders (customer_id, total, note) VALUES (?,?,?)",
            [(1 + i % 3, i * 7.5, f"order {i} for the vya_demo database") for i in range(500)],
        )
        conn.commit()


def sqlite_fingerprint(path: Path) -> dict[str, str]:
    """Return a sha256 of every table's rows (ordered), plus the schema."""
    out: dict[str, str] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        schema = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ).fetchall()
        out["__schema__"] = hashlib.sha256(repr(schema).encode()).hexdigest()
        for (table,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        ):
            digest = hashlib.sha256()
            quoted = '"' + table.replace('"', '""') + '"'
            for row in conn.execute(f"SELECT * FROM {quoted} ORDER BY 1"):  # noqa: S608
                digest.update(repr(row).encode())
            out[table] = digest.hexdigest()
    return out


def _probe_postgres() -> dict[str, Any] | None:
    try:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return None
    return {
        "id": "local-pg",
        "type": "postgresql",
        "host": "127.0.0.1",
        "port": 5432,
        "user": "postgres",
        "databases": [DEMO_DB],
    }


def _probe_mariadb() -> dict[str, Any] | None:
    try:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=2)
        conn.close()
    except Exception:
        return None
    return {
        "id": "local-mariadb",
        "type": "mariadb",
        "host": "127.0.0.1",
        "port": 3306,
        "user": "root",
        "databases": [DEMO_DB],
    }


def _seed_postgres() -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DB} WITH (FORCE)")
        conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DB}_restored WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DEMO_DB}")
    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname=DEMO_DB, autocommit=True
    ) as conn:
        conn.execute(
            "CREATE TABLE customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "name text, email text, balance numeric(12,2), avatar bytea, "
            "created timestamptz DEFAULT now())"
        )
        for _, name, email, balance, avatar in _DEMO_ROWS:
            conn.execute(
                "INSERT INTO customers (name, email, balance, avatar) VALUES (%s,%s,%s,%s)",
                (name, email, balance, avatar),
            )


def _seed_mariadb() -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DEMO_DB}")
            cur.execute(f"DROP DATABASE IF EXISTS {DEMO_DB}_restored")
            cur.execute(f"CREATE DATABASE {DEMO_DB} CHARACTER SET utf8mb4")
            cur.execute(
                f"CREATE TABLE {DEMO_DB}.customers (id INT AUTO_INCREMENT PRIMARY KEY, "
                "name VARCHAR(100), email VARCHAR(100), balance DECIMAL(12,2), avatar BLOB)"
            )
            cur.executemany(
                f"INSERT INTO {DEMO_DB}.customers (name, email, balance, avatar) "  # noqa: S608
                "VALUES (%s,%s,%s,%s)",
                [row[1:] for row in _DEMO_ROWS],
            )
        conn.commit()
    finally:
        conn.close()


def write_demo_config(directory: Path, servers: list[dict[str, Any]]) -> Path:
    config = {
        "storage": {"base_path": "backups", "compression": {"algorithm": "zstd", "level": 3}},
        "instances": [
            {"id": "demo-sqlite", "type": "sqlite", "paths": ["data/*.db"]},
            *servers,
        ],
    }
    path = directory / "config.yaml"
    header = "# VYA BackupDB demo configuration, written by `vya-backupdb demo`.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_demo(
    directory: Path,
    *,
    servers: bool = True,
    on_step: Callable[[DemoStep], None] | None = None,
) -> DemoReport:
    """Run the demo cycle in ``directory``; return what happened step by step."""
    from vya_backupdb.jobs.backup import BackupJob, BackupRequest
    from vya_backupdb.jobs.restore import RestoreJob, RestoreRequest
    from vya_backupdb.wiring import make_engine

    directory = directory.resolve()
    sqlite_path = directory / "data" / "shop.db"
    create_sqlite_demo(sqlite_path)
    found: list[dict[str, Any]] = []
    report = DemoReport(directory, directory / "config.yaml")

    def step(name: str, ok: bool, detail: str = "") -> None:
        item = DemoStep(name, ok, detail)
        report.steps.append(item)
        if on_step is not None:
            on_step(item)

    step("create demo SQLite database", True, str(sqlite_path))
    if servers and os.environ.get("VYA_DEMO_SERVERS", "1") != "0":
        for probe, seed, label in (
            (_probe_postgres, _seed_postgres, "PostgreSQL"),
            (_probe_mariadb, _seed_mariadb, "MariaDB"),
        ):
            entry = probe()
            if entry is None:
                step(f"skip {label}", True, "no server reachable on localhost without password")
                continue
            try:
                seed()
            except Exception as exc:
                step(f"skip {label}", True, f"could not create the demo database: {exc}")
                continue
            found.append(entry)
            step(f"found local {label}", True, f"database {DEMO_DB} created")
    config_path = write_demo_config(directory, found)
    report.config = config_path
    loaded: LoadedConfig = load_settings(config_path, None)
    run = BackupJob(loaded).run(BackupRequest(users=False))
    for result in run.results:
        detail = (
            result.record.file_info.name
            if result.record
            else (result.error.message if result.error else "")
        )
        step(f"backup {result.instance}/{result.database}", result.status == "success", detail)
    restore = RestoreJob(loaded)
    for result in run.results:
        if result.status != "success" or result.record is None:
            continue
        instance = loaded.settings.instance(result.instance)
        source_db = result.database
        target = "shop_restored.db" if instance.type == "sqlite" else f"{DEMO_DB}_restored"
        try:
            restored = restore.run(
                RestoreRequest(
                    instance=instance.id,
                    database=source_db,
                    latest=True,
                    target=target,
                    mode="fast",
                ),
                confirm=lambda _q: True,
            )
            engine = make_engine(loaded, instance)
            if instance.type == "sqlite":
                same = sqlite_fingerprint(sqlite_path) == sqlite_fingerprint(
                    sqlite_path.with_name(target)
                )
            else:
                same = engine.table_stats(source_db) == engine.table_stats(target) and bool(
                    restored.row_check.get("ok")
                )
            step(
                f"restore {instance.id}/{source_db} → {target} and compare",
                same,
                "source and restore match" if same else "MISMATCH between source and restore",
            )
        except VyaError as exc:
            step(f"restore {instance.id}/{source_db}", False, exc.message)
    return report
