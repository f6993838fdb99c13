"""SQLAlchemy Core connections to PostgreSQL and MySQL/MariaDB, with a diagnosing check.

The password goes to the driver as a connect argument, never into the URL, so no rendering
of the URL or the engine can show it. :func:`check_connection` tests the TCP port first, then
logs in, and classifies a failure (unreachable, authentication, missing database, pg_hba or
grants) into a troubleshooting block that names the next command to run.
"""

from __future__ import annotations

import glob
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.config.selection import select_databases
from vya_backupdb.engines.process import mask
from vya_backupdb.errors import ConnectionFailed, UsageError

CONNECT_TIMEOUT_SECONDS = 5

Problem = str  # "unreachable" | "authentication" | "database-missing" | "access" | "error"


@dataclass(frozen=True)
class ConnectionReport:
    """The outcome of :func:`check_connection`; contains no password."""

    instance_id: str
    ok: bool
    product: str | None = None
    server_version: str | None = None
    latency_ms: float | None = None
    problem: Problem | None = None
    message: str = ""
    #: Lines of what was checked, each starting with ✅, ⚠️ or ❌.
    checks: list[str] = field(default_factory=list)
    next_command: str | None = None

    def troubleshooting(self) -> list[str]:
        """Return the troubleshooting block (empty when the check succeeded)."""
        if self.ok:
            return []
        lines = ["Troubleshooting:", *(f"  {c}" for c in self.checks)]
        if self.next_command:
            lines.append(f"  next: {self.next_command}")
        return lines


def _is_postgres(instance: InstanceConfig) -> bool:
    return instance.type == "postgresql"


def _require_server(instance: InstanceConfig) -> None:
    if not instance.is_server:
        raise UsageError(
            f"instance {instance.id!r} is of type {instance.type}: it has no server to connect to"
        )


def make_url(instance: InstanceConfig, database: str | None = None) -> URL:
    """Return the SQLAlchemy URL of ``instance`` (never holding a password)."""
    _require_server(instance)
    query: dict[str, str] = {}
    host: str | None = instance.effective_host
    port = instance.effective_port
    if instance.socket is not None:
        if _is_postgres(instance):
            # libpq takes a socket *directory* as host.
            query["host"] = str(instance.socket)
        else:
            query["unix_socket"] = str(instance.socket)
        host, port = None, None
    if _is_postgres(instance):
        return URL.create(
            "postgresql+psycopg",
            username=instance.user,
            host=host,
            port=port,
            database=database or instance.database or "postgres",
            query=query,
        )
    return URL.create(
        "mysql+pymysql",
        username=instance.user,
        host=host,
        port=port,
        database=database or instance.database,
        query=query,
    )


def make_engine(
    instance: InstanceConfig,
    password: str | None,
    *,
    database: str | None = None,
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
) -> sa.Engine:
    """Return an engine for ``instance`` (PostgreSQL or MySQL/MariaDB) connecting as its user.

    Raise UsageError for instance types without a server (sqlite, files).
    """
    url = make_url(instance, database)
    connect_args: dict[str, Any] = {"connect_timeout": connect_timeout}
    if password is not None:
        connect_args["password"] = password
    if _is_postgres(instance):
        connect_args["application_name"] = "vya-backupdb"
    else:
        connect_args["charset"] = "utf8mb4"
    # NullPool: the CLI and jobs open few, short-lived connections; no idle pool to leak.
    return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)


def _client_command(instance: InstanceConfig) -> str:
    host = instance.effective_host
    port = instance.effective_port
    user = instance.user or ("postgres" if _is_postgres(instance) else "root")
    if _is_postgres(instance):
        return f"psql -h {host} -p {port} -U {user} -d {instance.database or 'postgres'} -W"
    return f"mariadb -h {host} -P {port} -u {user} -p"


def _ping_command(instance: InstanceConfig) -> str:
    host, port = instance.effective_host, instance.effective_port
    if _is_postgres(instance):
        return f"pg_isready -h {host} -p {port}"
    return f"mariadb-admin -h {host} -P {port} ping"


def _tcp_check(instance: InstanceConfig, timeout: float) -> tuple[bool, str]:
    host, port = instance.effective_host, instance.effective_port
    started = time.monotonic()
    try:
        with socket.create_connection((host, port or 0), timeout=timeout):
            elapsed = (time.monotonic() - started) * 1000
    except socket.gaierror as exc:
        return False, f"❌ host {host!r} does not resolve: {exc.strerror}"
    except TimeoutError:
        return False, f"❌ TCP {host}:{port}: no answer within {timeout:.0f}s (firewall?)"
    except OSError as exc:
        return False, f"❌ TCP {host}:{port}: {exc.strerror or exc}"
    return True, f"✅ TCP {host}:{port} is reachable ({elapsed:.1f} ms)"


def _driver_error(exc: BaseException) -> tuple[str, str | None, int | None]:
    """Return (message, sqlstate, mysql error code) of a driver error wrapped by SQLAlchemy."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None)
    code: int | None = None
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        code = args[0]
        message = str(args[1]) if len(args) > 1 else str(orig)
    else:
        message = str(orig)
    message = " ".join(message.split())
    return message, sqlstate, code


def _classify(
    instance: InstanceConfig, message: str, sqlstate: str | None, code: int | None
) -> tuple[Problem, list[str], str]:
    """Return (problem, explanation lines, next command) for a failed login."""
    lower = message.lower()
    user = instance.user or ("postgres" if _is_postgres(instance) else "root")
    db = instance.database or ("postgres" if _is_postgres(instance) else None)
    if _is_postgres(instance):
        if (
            sqlstate == "28P01"
            or "password authentication failed" in lower
            or ("role" in lower and "does not exist" in lower)
        ):
            return (
                "authentication",
                [
                    f"❌ authentication as {user!r} failed: wrong password or unknown role",
                    "   check the credential source (config validate shows it) and that the "
                    "role exists",
                ],
                f"vya-backupdb credentials set {instance.id}   (then: {_client_command(instance)})",
            )
        if "pg_hba.conf" in lower or sqlstate == "28000":
            return (
                "access",
                [
                    "❌ the server refuses this client: no pg_hba.conf entry for this "
                    "host/user/database",
                    "   add a line such as 'host all <user> <client-ip>/32 scram-sha-256' to "
                    "pg_hba.conf, then reload",
                ],
                "sudo -u postgres psql -c 'SELECT pg_reload_conf()'",
            )
        if sqlstate == "3D000" or ("database" in lower and "does not exist" in lower):
            return (
                "database-missing",
                [f"❌ database {db!r} does not exist on the server"],
                f"set 'database:' of instance {instance.id} to an existing database "
                f"(list them with: {_client_command(instance)} -l)",
            )
        if "no password supplied" in lower or "fe_sendauth" in lower:
            return (
                "authentication",
                ["❌ the server asks for a password and none is configured"],
                f"vya-backupdb credentials set {instance.id}",
            )
    else:
        if code == 1045:
            return (
                "authentication",
                [
                    f"❌ authentication as {user!r} failed: wrong password, unknown user, or "
                    "the user is not allowed from this host",
                    "   check the credential source and SELECT user, host FROM mysql.user",
                ],
                f"vya-backupdb credentials set {instance.id}   (then: {_client_command(instance)})",
            )
        if code in (1044, 1130, 1227):
            return (
                "access",
                [
                    f"❌ the server denies access: {message}",
                    f"   grant what is needed, e.g. GRANT SELECT, SHOW VIEW, LOCK TABLES, EVENT, "
                    f"TRIGGER ON *.* TO '{user}'@'<client-host>'",
                ],
                f'{_client_command(instance)} -e "SHOW GRANTS"',
            )
        if code == 1049:
            return (
                "database-missing",
                [f"❌ database {db!r} does not exist on the server"],
                f"remove or fix 'database:' of instance {instance.id}",
            )
        if code in (2002, 2003, 2005, 2013):
            return (
                "unreachable",
                [f"❌ the server does not answer: {message}"],
                _ping_command(instance),
            )
    if "timeout" in lower or "timed out" in lower:
        return (
            "unreachable",
            [f"❌ the server did not answer in time: {message}"],
            _ping_command(instance),
        )
    return ("error", [f"❌ connection failed: {message}"], _client_command(instance))


def _server_version(conn: sa.Connection, instance: InstanceConfig) -> tuple[str, str]:
    if _is_postgres(instance):
        version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        return "PostgreSQL", str(version).split(" ")[0]
    version = str(conn.execute(sa.text("SELECT VERSION()")).scalar_one())
    product = "MariaDB" if "mariadb" in version.lower() else "MySQL"
    return product, version.split("-")[0]


def check_connection(
    instance: InstanceConfig,
    password: str | None,
    *,
    timeout: int = CONNECT_TIMEOUT_SECONDS,
) -> ConnectionReport:
    """Return a report of connecting to ``instance``: version and latency, or the problem.

    Never raises for a connection problem; the password appears nowhere in the report.
    """
    if instance.type == "sqlite":
        return _check_sqlite(instance)
    if instance.type == "files":
        return ConnectionReport(
            instance.id, ok=True, product="files", message="no server to connect to"
        )
    secrets = [password] if password else []
    checks: list[str] = []
    if instance.socket is None:
        reachable, line = _tcp_check(instance, timeout)
        checks.append(line)
        if not reachable:
            checks.append(
                "   is the server running and listening on this address? "
                "(listen_addresses / bind-address, firewall)"
            )
            return ConnectionReport(
                instance.id,
                ok=False,
                problem="unreachable",
                message=line.removeprefix("❌ "),
                checks=checks,
                next_command=_ping_command(instance),
            )
    else:
        checks.append(f"ℹ️ using the Unix socket {instance.socket}")
    engine = make_engine(instance, password, connect_timeout=timeout)
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            latency = (time.monotonic() - started) * 1000
            product, version = _server_version(conn, instance)
    except sa.exc.SQLAlchemyError as exc:
        message, sqlstate, code = _driver_error(exc)
        message = mask(message, secrets)
        problem, lines, next_command = _classify(instance, message, sqlstate, code)
        checks.extend(mask(line, secrets) for line in lines)
        return ConnectionReport(
            instance.id,
            ok=False,
            problem=problem,
            message=message,
            checks=checks,
            next_command=next_command,
        )
    finally:
        engine.dispose()
    checks.append(f"✅ logged in as {instance.user or '(default user)'}: {product} {version}")
    return ConnectionReport(
        instance.id,
        ok=True,
        product=product,
        server_version=version,
        latency_ms=round(latency, 1),
        message=f"{product} {version}",
        checks=checks,
    )


def sqlite_files(instance: InstanceConfig) -> list[str]:
    """Return the existing files matched by the ``paths`` globs of a sqlite instance, sorted."""
    found: set[str] = set()
    for pattern in instance.paths:
        found.update(
            p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)
        )
    return sorted(found)


def _check_sqlite(instance: InstanceConfig) -> ConnectionReport:
    files = sqlite_files(instance)
    version = sqlite3.sqlite_version
    if not files:
        line = f"❌ no file matches {', '.join(instance.paths)}"
        return ConnectionReport(
            instance.id,
            ok=False,
            product="SQLite",
            server_version=version,
            problem="database-missing",
            message=line.removeprefix("❌ "),
            checks=[line],
            next_command=f"ls -l {' '.join(instance.paths)}",
        )
    unreadable = [f for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        line = f"❌ cannot read {', '.join(unreadable)}"
        return ConnectionReport(
            instance.id,
            ok=False,
            product="SQLite",
            server_version=version,
            problem="access",
            message=line.removeprefix("❌ "),
            checks=[line],
            next_command=f"ls -l {' '.join(unreadable)}",
        )
    return ConnectionReport(
        instance.id,
        ok=True,
        product="SQLite",
        server_version=version,
        latency_ms=0.0,
        message=f"SQLite {version}, {len(files)} file(s)",
        checks=[f"✅ {len(files)} database file(s) found"],
    )


def _all_databases(conn: sa.Connection, instance: InstanceConfig) -> list[tuple[str, int | None]]:
    if _is_postgres(instance):
        rows = conn.execute(
            sa.text(
                "SELECT datname, CASE WHEN has_database_privilege(datname, 'CONNECT') "
                "THEN pg_database_size(datname) END FROM pg_database ORDER BY datname"
            )
        ).all()
        return [(str(name), None if size is None else int(size)) for name, size in rows]
    names = (
        conn.execute(
            sa.text("SELECT schema_name FROM information_schema.schemata ORDER BY schema_name")
        )
        .scalars()
        .all()
    )
    sizes: dict[str, Any] = {
        str(schema): total
        for schema, total in conn.execute(
            sa.text(
                "SELECT table_schema, SUM(data_length + index_length) "
                "FROM information_schema.tables GROUP BY table_schema"
            )
        ).all()
    }
    return [(str(n), int(sizes[n]) if sizes.get(n) is not None else 0) for n in names]


def list_databases_with_sizes(
    instance: InstanceConfig, password: str | None
) -> list[tuple[str, int | None]]:
    """Return the selected databases of ``instance`` with their sizes in bytes.

    Selection: :func:`~vya_backupdb.config.selection.select_databases` (system databases
    excluded unless configured). For sqlite, the matched files and their sizes.
    Raise ConnectionFailed when the server cannot be queried.
    """
    if instance.type == "sqlite":
        return [(f, os.path.getsize(f)) for f in sqlite_files(instance)]
    if instance.type == "files":
        return []
    engine = make_engine(instance, password)
    try:
        with engine.connect() as conn:
            rows = _all_databases(conn, instance)
    except sa.exc.SQLAlchemyError as exc:
        message, _, _ = _driver_error(exc)
        raise ConnectionFailed(
            f"instance {instance.id!r}: cannot list databases: "
            f"{mask(message, [password] if password else [])}"
        ) from None
    finally:
        engine.dispose()
    sizes = dict(rows)
    return [(name, sizes[name]) for name in select_databases(sizes, instance)]
