"""``config validate | show | init``: check, display (secrets masked) and create the config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from vya_backupdb.cli.context import get_app, handle_errors
from vya_backupdb.config.loader import LoadedConfig
from vya_backupdb.errors import CredentialError, ToolMissing, UsageError
from vya_backupdb.secrets.redaction import MASK, redact

Status = Literal["ok", "warn", "fail"]
Category = Literal["config", "credentials", "connection", "tools"]
ICONS: dict[Status, str] = {"ok": "✅", "warn": "⚠️ ", "fail": "❌"}

#: Tools each instance type needs for a backup (first found wins), with the Debian package.
DUMP_TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "postgresql": (("pg_dump",), "postgresql-client"),
    "mysql": (("mariadb-dump", "mysqldump"), "mariadb-client"),
    "mariadb": (("mariadb-dump", "mysqldump"), "mariadb-client"),
}


@dataclass(frozen=True)
class Check:
    """One named result of ``config validate``; ``details`` are extra lines (troubleshooting)."""

    status: Status
    category: Category
    label: str
    message: str
    details: list[str] = field(default_factory=list)


def _writable_dir_check(label: str, path: Path, what: str) -> Check:
    if path.exists():
        if not path.is_dir():
            return Check("fail", "config", label, f"{path} exists but is not a directory")
        if os.access(path, os.W_OK | os.X_OK):
            return Check("ok", "config", label, f"{path} is writable")
        return Check(
            "fail", "config", label, f"{path} is not writable by this user (uid {os.getuid()})"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Check("warn", "config", label, f"{path} does not exist yet; {what}")
    return Check(
        "fail", "config", label, f"{path} does not exist and {parent} is not writable to create it"
    )


def collect_checks(
    loaded: LoadedConfig, *, connect: bool, environ: Mapping[str, str] = os.environ
) -> list[Check]:
    """Return the checks of ``config validate``: paths, secrets, credentials, tools and, with
    ``connect``, a live login to every instance. Never raises for a failed check."""
    from vya_backupdb.engines.connection import check_connection
    from vya_backupdb.engines.process import find_tool
    from vya_backupdb.secrets.sources import resolve_password_with_source
    from vya_backupdb.secrets.store import (
        ENV_MASTER_KEY,
        CredentialStore,
        load_master_key,
        master_key_path,
        secrets_directory,
    )

    settings = loaded.settings
    where = str(loaded.path) + (f" (environment {loaded.env!r})" if loaded.env else "")
    checks = [
        Check("ok", "config", "schema", f"{where}: valid, {len(settings.instances)} instance(s)")
    ]
    checks.append(
        _writable_dir_check(
            "storage", settings.storage.base_path, "it will be created by the first backup"
        )
    )

    secrets_dir = secrets_directory(settings, loaded.directory)
    store: CredentialStore | None = None
    try:
        key = load_master_key(settings, environ)
        if environ.get(ENV_MASTER_KEY):
            checks.append(Check("ok", "credentials", "master key", f"from ${ENV_MASTER_KEY}"))
        elif key is not None:
            checks.append(Check("ok", "credentials", "master key", f"{master_key_path(settings)}"))
        else:
            checks.append(
                Check(
                    "ok",
                    "credentials",
                    "master key",
                    f"{master_key_path(settings)} will be created by the first "
                    "'credentials set' or 'credentials encrypt'",
                )
            )
        store = CredentialStore(secrets_dir, key)
    except CredentialError as exc:
        checks.append(Check("fail", "credentials", "master key", exc.message, [exc.hint]))

    if store is not None and store.path.exists():
        try:
            names = store.names()
            problems = store.mode_problems()
            if problems:
                checks.append(
                    Check(
                        "warn",
                        "credentials",
                        "secrets",
                        "; ".join(problems),
                        [f"fix: chmod 700 {store.directory} && chmod 600 {store.path}"],
                    )
                )
            else:
                checks.append(
                    Check(
                        "ok",
                        "credentials",
                        "secrets",
                        f"{store.path}: {len(names)} credential(s), modes 0700/0600",
                    )
                )
        except CredentialError as exc:
            checks.append(Check("fail", "credentials", "secrets", exc.message, [exc.hint]))
    else:
        checks.append(
            Check(
                "ok",
                "credentials",
                "secrets",
                f"{secrets_dir} has no credential store yet (created by 'credentials set')",
            )
        )

    for inst in settings.instances:
        label = inst.id
        password: str | None = None
        credential_ok = True
        if inst.is_server:
            try:
                resolved = resolve_password_with_source(settings, inst, loaded.directory, environ)
                password = resolved.value
                if resolved.value is None:
                    checks.append(
                        Check(
                            "warn",
                            "credentials",
                            label,
                            f"no password ({resolved.source} is not set); fine for "
                            "peer/trust authentication",
                            [f"store one with: vya-backupdb credentials set {inst.id}"],
                        )
                    )
                else:
                    checks.append(
                        Check("ok", "credentials", label, f"password from {resolved.source}")
                    )
            except CredentialError as exc:
                credential_ok = False
                checks.append(Check("fail", "credentials", label, exc.message, [exc.hint]))
            tools, package = DUMP_TOOLS[inst.type]
            try:
                tool = find_tool(tools, package)
                checks.append(Check("ok", "tools", label, f"{tools[0]} found at {tool}"))
            except ToolMissing as exc:
                checks.append(Check("warn", "tools", label, exc.message, [exc.hint]))
        if not connect:
            continue
        if not credential_ok:
            checks.append(
                Check("fail", "connection", label, "not tested: its credential is unavailable")
            )
            continue
        report = check_connection(inst, password)
        if report.ok:
            latency = f", {report.latency_ms:.1f} ms" if report.latency_ms is not None else ""
            checks.append(Check("ok", "connection", label, f"{report.message}{latency}"))
        else:
            checks.append(
                Check(
                    "fail",
                    "connection",
                    label,
                    f"{report.problem}: {report.message}",
                    report.troubleshooting(),
                )
            )
    return checks


def exit_code_for(checks: list[Check]) -> int:
    """Return 0 when nothing failed, else 2 (config), 3 (credentials) or 4 (connection)."""
    failed = {c.category for c in checks if c.status == "fail"}
    if "config" in failed:
        return 2
    if "credentials" in failed:
        return 3
    if "connection" in failed:
        return 4
    return 0


def mask_secrets(value: Any) -> Any:
    """Return a copy of a dumped settings tree with every password (and command) masked."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("password", "password_command") and item is not None:
                out[key] = MASK
            else:
                out[key] = mask_secrets(item)
        return out
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def register(app: typer.Typer) -> None:
    """Register the ``config`` commands on ``app``."""
    config_app = typer.Typer(help="Check, show and create the configuration.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("validate")
    @handle_errors
    def validate(
        ctx: typer.Context,
        connect: Annotated[
            bool, typer.Option("--connect", help="Also log in to every database instance")
        ] = False,
    ) -> None:
        """Check the schema, paths, credentials (and with --connect, every server).

        Exit 0 when all checks pass, 2 for configuration problems, 3 for credentials,
        4 when a connection fails.
        """
        state = get_app(ctx)
        checks = collect_checks(state.loaded(), connect=connect)
        out = state.out
        for check in checks:
            out.print(f"{ICONS[check.status]} {check.label}: {redact(check.message)}", markup=False)
            for line in check.details:
                out.print(f"    {redact(line)}", markup=False)
        counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
        out.print(
            f"Summary: {len(checks)} checks: {counts['ok']} ok, {counts['warn']} warning(s), "
            f"{counts['fail']} failed",
            markup=False,
        )
        code = exit_code_for(checks)
        if code:
            raise typer.Exit(code)

    @config_app.command("show")
    @handle_errors
    def show(ctx: typer.Context) -> None:
        """Print the effective configuration (overlay and overrides applied, secrets masked)."""
        state = get_app(ctx)
        loaded = state.loaded()
        tree = mask_secrets(loaded.settings.model_dump(mode="json"))
        header = f"# file: {loaded.path}\n"
        if loaded.env:
            header += f"# environment: {loaded.env}\n"
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, default_flow_style=False)
        # Masking is structural (mask_secrets): running YAML through redact() could break it.
        typer.echo(header + text, nl=False)

    @config_app.command("init")
    @handle_errors
    def init(
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Where to write the example config")
        ] = Path("config.yaml"),
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False,
    ) -> None:
        """Write a commented example configuration generated from the settings schema."""
        from vya_backupdb.config.sample import sample_config

        if output.exists() and not force:
            raise UsageError(
                f"{output} already exists; not overwriting it",
                hint="Pass --force to replace it, or choose another path with --output.",
            )
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(sample_config(), encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot write {output}: {exc.strerror}",
                hint="Choose a writable path with --output.",
            ) from None
        typer.echo(f"wrote {output}")
        typer.echo(f"next: edit it, then run: vya-backupdb --config {output} config validate")
