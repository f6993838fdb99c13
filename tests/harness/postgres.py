"""Throwaway PostgreSQL servers for the integration tests (a pytest plugin).

``pg_server`` starts one cluster per test session: initdb into a temporary directory under /tmp,
SCRAM authentication with a random superuser password, listening on 127.0.0.1 on a free port
(retried on collision), its unix socket inside the temporary directory, fsync off. It is stopped
(``pg_ctl stop -m immediate``) and removed at the end of the session.

``pg_server_alt`` is a second cluster, started only when a test asks for it, whose defaults differ
(time zone, DateStyle, IntervalStyle, bytea_output, extra_float_digits, locale): restoring into it
proves that dumped values never depend on the target's defaults.

PostgreSQL refuses to run as root: when the tests run as root, every server command runs as the
``postgres`` OS user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)
SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """Return the directory holding initdb/pg_ctl/postgres (PostgreSQL 15 first), or None."""
    for candidate in PG_BIN_CANDIDATES:
        if all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        directory = Path(initdb).resolve().parent
        if (directory / "pg_ctl").is_file() and (directory / "postgres").is_file():
            return directory
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    return None


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses root; as another user (CI without root) we simply run it ourselves.
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *argv]
    return argv


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class PgServer:
    """A running throwaway PostgreSQL cluster."""

    bin_dir: Path
    base_dir: Path
    port: int
    password: str
    password_env: str
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    version_num: int = 0
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a psycopg/libpq connection string for ``dbname`` (password included)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.password,
            dbname=dbname,
        )

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> Any:
        """Return a psycopg connection to ``dbname`` as the superuser."""
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)

    def libpq_env(self, dbname: str | None = None) -> dict[str, str]:
        """Return the environment for libpq tools (psql, pg_dump) talking to this server."""
        env = dict(os.environ)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.superuser,
            PGPASSWORD=self.password,
            PGAPPNAME="vya-tests",
        )
        if dbname is not None:
            env["PGDATABASE"] = dbname
        return env

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` through psql (ON_ERROR_STOP) and return its unaligned tuples-only output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                f"dbname={_conninfo_quote(dbname)}",
                "-f",
                "-",
            ],
            input=sql.encode(),
            capture_output=True,
            env=self.libpq_env(),
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"psql failed ({result.returncode}) on {dbname!r}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode()

    def create_db(self, name: str, options: str = "") -> None:
        """Create database ``name`` (``options`` is raw SQL after the name, e.g. TEMPLATE)."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} {}").format(sql.Identifier(name), sql.SQL(options))
            )

    def drop_db(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def database_exists(self, name: str) -> bool:
        with self.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def instance_config(self, id: str, **overrides: Any) -> dict[str, Any]:
        """Return a config ``instances:`` entry for this server (password through env)."""
        os.environ[self.password_env] = self.password
        entry: dict[str, Any] = {
            "id": id,
            "type": "postgresql",
            "host": self.host,
            "port": self.port,
            "user": self.superuser,
            "password_env": self.password_env,
        }
        entry.update(overrides)
        return entry

    def instance(self, id: str = "pg-test", **overrides: Any) -> Any:
        """Return a validated ``InstanceConfig`` for this server."""
        from vya_backupdb.config.models import InstanceConfig

        return InstanceConfig.model_validate(self.instance_config(id, **overrides))

    def stop(self) -> None:
        """Stop the server immediately and remove its directory."""
        subprocess.run(
            _as_server_user(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]
            ),
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def start_server(
    label: str,
    settings: Mapping[str, str],
    *,
    locale: str = "C.UTF-8",
    attempts: int = 5,
) -> PgServer:
    """Return a started throwaway cluster; raise RuntimeError when it cannot start."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
            "install the Debian package 'postgresql' (scripts/bootstrap.sh does it)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(
                f"running as root but there is no {SERVER_USER!r} OS user to run PostgreSQL"
            )
    # /tmp is traversable by everyone; the directory itself belongs to the server user.
    base = Path(tempfile.mkdtemp(prefix=f"vya-pg-{label}-", dir="/tmp"))
    base.chmod(0o755)
    _chown_to_server_user(base)
    password = secrets.token_urlsafe(18)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _chown_to_server_user(pwfile)
    init = subprocess.run(
        _as_server_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                SERVER_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                f"--locale={locale}",
                "--no-sync",
            ]
        ),
        capture_output=True,
        check=False,
        timeout=300,
    )
    pwfile.unlink()
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')}")
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{base}'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "'32MB'",
        "max_connections": "40",
        "logging_collector": "off",
        **settings,
    }
    with (base / "data" / "postgresql.conf").open("a") as handle:
        handle.write("\n# vya test harness\n")
        for key, value in conf.items():
            handle.write(f"{key} = {value}\n")
    server_env = dict(os.environ, LC_ALL="C.UTF-8")
    server_env.pop("PGPASSWORD", None)
    last_log = ""
    for _ in range(attempts):
        port = free_port()
        log = base / "server.log"
        started = subprocess.run(
            _as_server_user(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(base / "data"),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port}",
                    "start",
                ]
            ),
            capture_output=True,
            check=False,
            timeout=120,
            env=server_env,
        )
        if started.returncode == 0:
            server = PgServer(
                bin_dir=bin_dir,
                base_dir=base,
                port=port,
                password=password,
                password_env=f"VYA_TEST_PG_{label.upper()}_PASSWORD",
                settings=dict(settings),
            )
            with server.connect() as conn:
                row = conn.execute("SHOW server_version_num").fetchone()
            server.version_num = int(row[0])
            return server
        last_log = log.read_text(errors="replace") if log.exists() else started.stderr.decode()
        # A port taken between free_port() and the bind: try another one.
        if "could not bind" not in last_log and "Address already in use" not in last_log:
            break
        time.sleep(0.2)
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL test server did not start:\n{last_log[-3000:]}")


#: Defaults of the alternate server: every one of them changes how values are printed or parsed.
ALT_SETTINGS: dict[str, str] = {
    "timezone": "'Pacific/Chatham'",
    "log_timezone": "'Pacific/Chatham'",
    "datestyle": "'SQL, DMY'",
    "intervalstyle": "'sql_standard'",
    "bytea_output": "'escape'",
    "extra_float_digits": "-3",
    "default_text_search_config": "'pg_catalog.simple'",
    "lc_monetary": "'C'",
    "lc_numeric": "'C'",
    "lc_time": "'C'",
}


@contextlib.contextmanager
def _server(label: str, settings: Mapping[str, str], locale: str) -> Iterator[PgServer]:
    server = start_server(label, settings, locale=locale)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the whole session (UTC, ISO dates)."""
    with _server("main", {"timezone": "'UTC'", "datestyle": "'ISO, MDY'"}, "C.UTF-8") as server:
        yield server


@pytest.fixture(scope="session")
def pg_server_alt() -> Iterator[PgServer]:
    """A second server whose defaults differ from ``pg_server`` (started on first use)."""
    with _server("alt", ALT_SETTINGS, "C") as server:
        yield server
