"""Throwaway MariaDB servers for the integration tests.

``mariadb_server`` starts one ``mariadbd`` per test session in a temporary directory, on a
free loopback port, with binary logging on (so binlog coordinates can be tested) and a random
root password; nothing else is created. ``mariadb_server_alt`` (started only when a test asks
for it) has different server defaults — latin1 character set, a +05:30 time zone, no binary
log — to prove that restored values never depend on the target's defaults.

The password never appears in any argv: SQL goes through PyMySQL (password keyword argument).
When the binaries are missing the fixtures skip with the reason (CI turns such skips into a
failure, see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec")
_START_TIMEOUT = 60.0
_PORT_ATTEMPTS = 5


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version_num(version: str) -> int:
    major, minor, patch = (
        int("".join(c for c in p if c.isdigit()) or 0) for p in version.split("-")[0].split(".")[:3]
    )
    return major * 10000 + minor * 100 + patch


def quote_identifier(name: str) -> str:
    """Return ``name`` as a backtick-quoted MariaDB identifier."""
    return "`" + name.replace("`", "``") + "`"


@dataclass
class MariadbServer:
    """A running throwaway server. ``sql`` runs a statement as root and returns its text."""

    host: str
    port: int
    superuser: str
    password: str
    socket: str
    datadir: Path
    password_env: str
    version: str = ""
    version_num: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def connect(self, db: str | None = None, **kwargs: Any) -> pymysql.connections.Connection:
        """Return a new autocommit PyMySQL connection as the superuser (utf8mb4)."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.password,
            database=db,
            charset="utf8mb4",
            autocommit=True,
            **kwargs,
        )

    def query(
        self, statement: str, db: str | None = None, args: Any = None
    ) -> list[tuple[Any, ...]]:
        """Return all rows of ``statement`` (run as the superuser)."""
        with contextlib.closing(self.connect(db)) as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())

    def sql(self, statement: str, db: str | None = None) -> str:
        """Run ``statement`` (several may be separated by ';'); return rows as tab-joined lines."""
        with (
            contextlib.closing(self.connect(db, client_flag=CLIENT.MULTI_STATEMENTS)) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(statement)
            lines: list[str] = []
            while True:
                for row in cur.fetchall() or ():
                    lines.append("\t".join("NULL" if v is None else str(v) for v in row))
                if not cur.nextset():
                    break
            return "\n".join(lines)

    def create_db(self, name: str, charset: str = "utf8mb4", collation: str | None = None) -> None:
        collate = f" COLLATE {collation}" if collation else ""
        self.sql(f"CREATE DATABASE {quote_identifier(name)} CHARACTER SET {charset}{collate}")

    def drop_db(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")

    def load_sql(self, path: Path, db: str | None = None) -> None:
        """Run the SQL file ``path`` through the mariadb client (password in a 0600 file)."""
        client = _which("mariadb") or _which("mysql")
        if client is None:
            pytest.skip("the mariadb client is missing: install the Debian package mariadb-client")
        fd, cnf = tempfile.mkstemp(prefix="vya-test-", suffix=".cnf")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f'[client]\nuser=root\npassword="{self.password}"\n')
            argv = [
                client,
                f"--defaults-extra-file={cnf}",
                f"--host={self.host}",
                f"--port={self.port}",
                "--protocol=TCP",
                "--default-character-set=utf8mb4",
            ]
            if db is not None:
                argv.append(f"--database={db}")
            with path.open("rb") as source:
                done = subprocess.run(argv, stdin=source, capture_output=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"loading {path} failed: {done.stderr.decode(errors='replace')}")
        finally:
            os.unlink(cnf)

    def instance_config(self, id: str, **overrides: Any) -> dict[str, Any]:
        """Return a config ``instances:`` entry pointing at this server (password via env)."""
        entry: dict[str, Any] = {
            "id": id,
            "type": "mariadb",
            "host": self.host,
            "port": self.port,
            "user": self.superuser,
            "password_env": self.password_env,
        }
        entry.update(overrides)
        return entry

    def stop(self) -> None:
        """Stop the server (SIGTERM is a clean shutdown for mariadbd) and wait for it."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _start(name: str, password_env: str, extra_args: Sequence[str]) -> MariadbServer:
    mariadbd = _which("mariadbd") or _which("mysqld")
    install_db = _which("mariadb-install-db") or _which("mysql_install_db")
    if mariadbd is None or install_db is None:
        pytest.skip(
            "MariaDB server binaries not found (mariadbd, mariadb-install-db): "
            "install the Debian package mariadb-server (scripts/bootstrap.sh does it)"
        )
    base = Path(tempfile.mkdtemp(prefix=f"vya-{name}-"))
    datadir = base / "data"
    install = subprocess.run(
        [
            install_db,
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            f"--datadir={datadir}",
            "--user=root",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
    sock = str(base / "mysqld.sock")
    errlog = base / "error.log"
    password = secrets.token_urlsafe(18)
    last_error = ""
    for _attempt in range(_PORT_ATTEMPTS):
        port = _free_port()
        argv = [
            mariadbd,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--pid-file={base / 'mysqld.pid'}",
            f"--tmpdir={base}",
            f"--log-error={errlog}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--user=root",
            # Accounts are matched by address, not by a reverse DNS lookup of 127.0.0.1.
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=50",
            "--performance-schema=OFF",
            *extra_args,
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                # Root has no password yet; the socket is private to this temp dir.
                conn = pymysql.connect(unix_socket=sock, user="root", autocommit=True)
            except pymysql.err.OperationalError:
                time.sleep(0.2)
                continue
            ready = True
            break
        if ready:
            break
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        last_error = errlog.read_text(errors="replace")[-3000:] if errlog.exists() else ""
        if "Address already in use" not in last_error:
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError(f"mariadbd did not start:\n{last_error}")
    else:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(
            f"mariadbd found no free port after {_PORT_ATTEMPTS} attempts:\n{last_error}"
        )

    try:
        with contextlib.closing(conn), conn.cursor() as cur:
            # install-db creates root@localhost, root@127.0.0.1, root@::1 and root@<hostname>
            # without a password. The hostname entry is inert under --skip-name-resolve: remove
            # it; give the others one password so no path stays open.
            cur.execute(
                "DELETE FROM mysql.global_priv WHERE User = 'root'"
                " AND Host NOT IN ('localhost', '127.0.0.1', '::1')"
            )
            cur.execute("DELETE FROM mysql.proxies_priv WHERE Host NOT IN ('localhost', '')")
            cur.execute("FLUSH PRIVILEGES")
            for host in ("localhost", "127.0.0.1", "::1"):
                cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, password))
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
    except BaseException:
        proc.kill()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)
        raise
    os.environ[password_env] = password
    return MariadbServer(
        host="127.0.0.1",
        port=port,
        superuser="root",
        password=password,
        socket=sock,
        datadir=datadir,
        password_env=password_env,
        version=version,
        version_num=_version_num(version),
        _proc=proc,
    )


@contextlib.contextmanager
def _server(name: str, password_env: str, extra_args: Sequence[str]) -> Iterator[MariadbServer]:
    server = _start(name, password_env, extra_args)
    try:
        yield server
    finally:
        server.stop()
        os.environ.pop(password_env, None)
        shutil.rmtree(server.datadir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariadbServer]:
    """A MariaDB server with binary logging on, for the whole session."""
    with _server(
        "mariadb",
        "VYA_TEST_MARIADB_PASSWORD",
        [
            "--log-bin=binlog",
            "--server-id=1",
            "--binlog-format=ROW",
            # What Debian's packaged config sets, so the alt server really differs.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ],
    ) as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_server_alt() -> Iterator[MariadbServer]:
    """A second server with other defaults: latin1, time zone +05:30, no binary log."""
    with _server(
        "mariadb-alt",
        "VYA_TEST_MARIADB_ALT_PASSWORD",
        [
            "--character-set-server=latin1",
            "--collation-server=latin1_swedish_ci",
            "--default-time-zone=+05:30",
            "--skip-log-bin",
        ],
    ) as server:
        yield server
