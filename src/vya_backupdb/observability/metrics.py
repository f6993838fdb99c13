"""Prometheus metrics, computed from the catalog so they are right between runs.

:class:`CatalogCollector` is a custom collector: on every scrape it reads the metadata sidecars
(the source of truth: last success, size, duration, count, bytes, verification) and the run
logs under ``{hostname}/_runs/`` (success and failure totals, failures labelled by error type,
restores). Parsed files are cached by name, size and mtime, so a scrape reads only what is new.

Three ways out, all fed by the same collector: ``metrics serve`` (an HTTP ``/metrics``), a push
to a Pushgateway after each run, and a node_exporter textfile written atomically. docs/metrics.md
lists every series; docs/grafana-dashboard.json charts them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vya_backupdb.catalog import layout
from vya_backupdb.catalog.catalog import read_text
from vya_backupdb.catalog.records import BackupRecord
from vya_backupdb.errors import VyaError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from vya_backupdb.catalog.catalog import Catalog
    from vya_backupdb.config.models import Settings
    from vya_backupdb.jobs.backup import RunResult

log = logging.getLogger("vya_backupdb.observability.metrics")

DB_LABELS = ["instance", "database"]


@dataclass(frozen=True)
class RunEntry:
    operation: str
    instance: str
    database: str
    status: str
    error_type: str | None
    duration_seconds: float
    finished: float  # unix time


class CatalogCollector(Collector):
    """Yield the ``vya_*`` metric families from the catalog on each ``collect()``."""

    def __init__(self, catalog: Catalog, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.catalog = catalog
        self.clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, tuple[int, datetime, BackupRecord | None]] = {}
        self._runs: dict[str, list[RunEntry]] = {}

    # -- reading, cached ---------------------------------------------------------------------
    def _host_prefix(self) -> str:
        return f"{layout.safe_component(self.catalog.hostname)}/"

    def _load_records(self) -> tuple[list[BackupRecord], int]:
        storage = self.catalog.storage
        seen: set[str] = set()
        damaged = 0
        for info in storage.list(self._host_prefix()):
            if not info.name.endswith(layout.METADATA_SUFFIX):
                continue
            seen.add(info.name)
            cached = self._records.get(info.name)
            if cached is None or cached[0] != info.size or cached[1] != info.modified:
                try:
                    record: BackupRecord | None = self.catalog.load(info.name)
                except VyaError:
                    record = None
                self._records[info.name] = (info.size, info.modified, record)
        for gone in set(self._records) - seen:
            del self._records[gone]
        records = []
        for _size, _mtime, cached_record in self._records.values():
            if cached_record is None:
                damaged += 1
            else:
                records.append(cached_record)
        return records, damaged

    def _load_runs(self) -> list[RunEntry]:
        storage = self.catalog.storage
        prefix = f"{self._host_prefix()}_runs/"
        seen: set[str] = set()
        for info in storage.list(prefix):
            if not info.name.endswith(".json"):
                continue
            seen.add(info.name)
            if info.name not in self._runs:  # run logs are written once, never changed
                self._runs[info.name] = parse_run_log(storage_text(self.catalog, info.name))
        for gone in set(self._runs) - seen:
            del self._runs[gone]
        return [entry for entries in self._runs.values() for entry in entries]

    # -- the metric families -----------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                records, damaged = self._load_records()
                runs = self._load_runs()
                up = 1.0
            except VyaError as exc:
                log.warning("metrics: cannot read the catalog: %s", exc.message)
                records, damaged, runs, up = [], 0, [], 0.0
        yield GaugeMetricFamily(
            "vya_catalog_up", "1 when the catalog could be read for this scrape", value=up
        )
        yield from _record_families(records, damaged)
        yield from _run_families(runs)


def read_run_entries(catalog: Catalog) -> list[RunEntry]:
    """Return every result of every run log of this host (uncached; for one-shot readers)."""
    prefix = f"{layout.safe_component(catalog.hostname)}/_runs/"
    entries: list[RunEntry] = []
    for info in catalog.storage.list(prefix):
        if info.name.endswith(".json"):
            entries.extend(parse_run_log(storage_text(catalog, info.name)))
    return entries


def storage_text(catalog: Catalog, name: str) -> str:
    """Return a small object's text, or "" when it cannot be read."""
    try:
        return read_text(catalog.storage, name)
    except VyaError:
        return ""


def parse_run_log(text: str) -> list[RunEntry]:
    """Return the results of one run log (empty when it is not one)."""
    try:
        payload: Any = json.loads(text)
        operation = str(payload.get("operation", "backup"))
        finished = payload.get("finished_at") or payload.get("started_at")
        stamp = datetime.fromisoformat(finished).timestamp() if finished else 0.0
        return [
            RunEntry(
                operation=str(r.get("operation", operation)),
                instance=str(r["instance"]),
                database=str(r["database"]),
                status=str(r["status"]),
                error_type=r.get("error_type"),
                duration_seconds=float(r.get("duration_seconds") or 0.0),
                finished=stamp,
            )
            for r in payload.get("results", [])
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def _record_families(records: list[BackupRecord], damaged: int) -> Iterable[Metric]:
    labels = [*DB_LABELS, "dbms"]
    last_ts = GaugeMetricFamily(
        "vya_backup_last_success_timestamp_seconds",
        "Unix time the newest successful backup finished",
        labels=labels,
    )
    size = GaugeMetricFamily(
        "vya_backup_size_bytes", "Stored size of the newest successful backup", labels=labels
    )
    duration = GaugeMetricFamily(
        "vya_backup_duration_seconds", "Duration of the newest successful backup", labels=labels
    )
    count = GaugeMetricFamily(
        "vya_backups_count", "Successful backups kept in storage", labels=labels
    )
    total = GaugeMetricFamily(
        "vya_backups_total_bytes", "Bytes of all backups kept in storage", labels=labels
    )
    verify_ts = GaugeMetricFamily(
        "vya_verify_last_timestamp_seconds",
        "Unix time of the newest verification of any backup",
        labels=DB_LABELS,
    )
    verify_ok = GaugeMetricFamily(
        "vya_verify_last_success",
        "1 when the newest verification passed, 0 when it failed",
        labels=[*DB_LABELS, "level"],
    )
    verify_duration = GaugeMetricFamily(
        "vya_verify_duration_seconds",
        "Test-restore duration of the newest verification",
        labels=DB_LABELS,
    )
    groups: dict[tuple[str, str, str], list[BackupRecord]] = {}
    for record in records:
        info = record.backup_info
        groups.setdefault((info.instance, info.database, info.instance_type), []).append(record)
    for key, group in sorted(groups.items()):
        ok = sorted((r for r in group if r.ok), key=lambda r: r.backup_info.finished_at)
        db_key = [key[0], key[1]]
        count.add_metric(list(key), len(ok))
        total.add_metric(list(key), sum(r.file_info.size for r in group))
        if ok:
            newest = ok[-1]
            last_ts.add_metric(list(key), newest.backup_info.finished_at.timestamp())
            size.add_metric(list(key), newest.file_info.size)
            duration.add_metric(list(key), newest.backup_info.duration_seconds)
        verified = [r.verification for r in group if r.verification is not None]
        if verified:
            latest = max(verified, key=lambda v: v.verified_at)
            verify_ts.add_metric(db_key, latest.verified_at.timestamp())
            verify_ok.add_metric([*db_key, latest.level], 1.0 if latest.outcome == "ok" else 0.0)
            if latest.restore_seconds is not None:
                verify_duration.add_metric(db_key, latest.restore_seconds)
    yield from (last_ts, size, duration, count, total, verify_ts, verify_ok, verify_duration)
    yield GaugeMetricFamily(
        "vya_backups_damaged_metadata",
        "Metadata files in storage that cannot be read",
        value=damaged,
    )


def _run_families(runs: list[RunEntry]) -> Iterable[Metric]:
    success = CounterMetricFamily(
        "vya_backup_success_total", "Successful backups (from the run logs)", labels=DB_LABELS
    )
    failure = CounterMetricFamily(
        "vya_backup_failure_total",
        "Failed backups by error type (from the run logs)",
        labels=[*DB_LABELS, "error_type"],
    )
    last_run = GaugeMetricFamily(
        "vya_backup_last_run_success",
        "1 when the newest backup attempt succeeded, 0 when it failed",
        labels=DB_LABELS,
    )
    restore_duration = GaugeMetricFamily(
        "vya_restore_duration_seconds", "Duration of the newest restore", labels=DB_LABELS
    )
    restore_ok = GaugeMetricFamily(
        "vya_restore_last_success",
        "1 when the newest restore succeeded, 0 when it failed",
        labels=DB_LABELS,
    )
    restore_ts = GaugeMetricFamily(
        "vya_restore_last_timestamp_seconds", "Unix time of the newest restore", labels=DB_LABELS
    )
    ok_counts: dict[tuple[str, str], int] = {}
    fail_counts: dict[tuple[str, str, str], int] = {}
    newest_backup: dict[tuple[str, str], RunEntry] = {}
    newest_restore: dict[tuple[str, str], RunEntry] = {}
    for entry in runs:
        key = (entry.instance, entry.database)
        if entry.status not in ("success", "failed"):
            continue  # dry-run plans
        if entry.operation == "restore":
            if key not in newest_restore or entry.finished >= newest_restore[key].finished:
                newest_restore[key] = entry
            continue
        if entry.operation != "backup":
            continue
        if entry.status == "success":
            ok_counts[key] = ok_counts.get(key, 0) + 1
        else:
            fkey = (*key, entry.error_type or "unknown")
            fail_counts[fkey] = fail_counts.get(fkey, 0) + 1
        if key not in newest_backup or entry.finished >= newest_backup[key].finished:
            newest_backup[key] = entry
    for key, n in sorted(ok_counts.items()):
        success.add_metric(list(key), n)
    for fkey, n in sorted(fail_counts.items()):
        failure.add_metric(list(fkey), n)
    for key, entry in sorted(newest_backup.items()):
        last_run.add_metric(list(key), 1.0 if entry.status == "success" else 0.0)
    for key, entry in sorted(newest_restore.items()):
        restore_duration.add_metric(list(key), entry.duration_seconds)
        restore_ok.add_metric(list(key), 1.0 if entry.status == "success" else 0.0)
        restore_ts.add_metric(list(key), entry.finished)
    yield from (success, failure, last_run, restore_duration, restore_ok, restore_ts)


class _RunCollector(Collector):
    """The few series about the run just finished (pushed along with the catalog's)."""

    def __init__(self, run: RunResult):
        self.run = run

    def collect(self) -> Iterator[Metric]:
        finished = self.run.finished_at or self.run.started_at
        yield GaugeMetricFamily(
            "vya_last_run_timestamp_seconds",
            "Unix time the last scheduled/pushed run finished",
            value=finished.timestamp(),
        )
        yield GaugeMetricFamily(
            "vya_last_run_success",
            "1 when no database failed in the last run",
            value=1.0 if self.run.ok and not self.run.interrupted else 0.0,
        )
        yield GaugeMetricFamily(
            "vya_last_run_duration_seconds",
            "Wall time of the last run",
            value=(finished - self.run.started_at).total_seconds(),
        )


def catalog_registry(catalog: Catalog, run: RunResult | None = None) -> CollectorRegistry:
    """Return a registry holding the catalog collector (and the run's series, when given)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector(catalog))
    if run is not None:
        registry.register(_RunCollector(run))
    return registry


def push_to_gateway(
    url: str, job: str, registry: CollectorRegistry, hostname: str, timeout: float = 15.0
) -> None:
    """Replace this host's group on the Pushgateway with ``registry``; raise VyaError when the
    gateway cannot be reached or refuses the push."""
    from prometheus_client import exposition

    try:
        exposition.push_to_gateway(
            url, job=job, registry=registry, grouping_key={"hostname": hostname}, timeout=timeout
        )
    except OSError as exc:  # urllib's URLError/HTTPError are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise VyaError(
            f"cannot push metrics to the Pushgateway {url}: {reason}",
            hint="Check metrics.pushgateway_url and that the gateway runs (curl URL/metrics).",
        ) from None


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """Write ``registry`` in the text format to ``path`` atomically (temp file + rename in the
    same directory, so node_exporter never reads half a file); raise VyaError on failure."""
    from prometheus_client import exposition

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        exposition.write_to_textfile(str(path), registry)
    except OSError as exc:
        raise VyaError(
            f"cannot write the metrics textfile {path}: {exc.strerror or exc}",
            hint="Check metrics.textfile_path: its directory must be writable by this user.",
        ) from None


def export_after_run(settings: Settings, catalog: Catalog, run: RunResult | None) -> list[str]:
    """Push to the Pushgateway and write the textfile when configured; return the problems
    (each also logged as a warning). Never raises: metrics must not fail a backup."""
    cfg = settings.metrics
    if not cfg.pushgateway_url and cfg.textfile_path is None:
        return []
    problems: list[str] = []
    registry = catalog_registry(catalog, run)
    if cfg.pushgateway_url:
        try:
            push_to_gateway(cfg.pushgateway_url, cfg.pushgateway_job, registry, settings.hostname)
        except VyaError as exc:
            problems.append(exc.message)
    if cfg.textfile_path is not None:
        try:
            write_textfile(cfg.textfile_path, registry)
        except VyaError as exc:
            problems.append(exc.message)
    for problem in problems:
        log.warning("metrics: %s", problem, extra={"operation": "metrics", "status": "failed"})
    return problems


def serve(
    catalog: Catalog,
    port: int,
    address: str = "0.0.0.0",  # noqa: S104 - scrape target
) -> tuple[WSGIServer, threading.Thread]:
    """Start an HTTP ``/metrics`` endpoint in a daemon thread; return (server, thread).

    Raise VyaError when the port cannot be bound. Stop it with ``server.shutdown()``.
    """
    from prometheus_client import start_http_server

    registry = catalog_registry(catalog)
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise VyaError(
            f"cannot listen on {address}:{port}: {exc.strerror or exc}",
            hint="Choose another port with --port, or stop what uses it (ss -ltnp).",
        ) from None
    return server, thread
