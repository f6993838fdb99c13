"""Metrics from real SQLite backups: a real Pushgateway, `metrics serve` scraped over HTTP,
and the node_exporter textfile."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_fixtures import free_port, load, sqlite_config
from prometheus_client.parser import text_string_to_metric_families

from vya_backupdb.jobs.backup import BackupJob, BackupRequest
from vya_backupdb.jobs.scheduled import ScheduledRunner
from vya_backupdb.wiring import make_catalog

pytestmark = pytest.mark.integration

VYA = str(Path(sys.executable).parent / "vya-backupdb")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _wait_for(url: str, proc: subprocess.Popen[bytes], seconds: float = 15) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return _get(url)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return {(sample name, sorted labels): value} of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def find(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str):  # type: ignore[no-untyped-def]
    hits = [
        v
        for (n, lab), v in parsed.items()
        if n == name and all(dict(lab).get(k) == val for k, val in labels.items())
    ]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if PUSHGATEWAY is None:
        pytest.skip("prometheus-pushgateway is not installed (scripts/bootstrap.sh)")
    port = free_port()
    proc = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/-/ready", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_run_pushes_catalog_metrics_to_pushgateway_and_textfile(
    tmp_path: Path, pushgateway: str
) -> None:
    textfile = tmp_path / "textfiles" / "vya.prom"
    config = sqlite_config(
        tmp_path,
        {"metrics": {"pushgateway_url": pushgateway, "textfile_path": str(textfile)}},
        dbs=2,
    )
    (tmp_path / "data" / "broken.db").write_bytes(b"garbage " * 500)
    loaded = load(config)
    outcome = ScheduledRunner(loaded).run_instances((), label="manual")
    assert outcome.metric_problems == []
    assert outcome.run is not None and len(outcome.run.failed) == 1
    records = make_catalog(loaded.settings).records("lite")
    assert len(records) == 2

    gateway = samples(_get(pushgateway + "/metrics"))
    group = {"job": "vya_backupdb", "hostname": "testhost"}
    newest = {r.backup_info.database: r for r in records}
    for db, record in newest.items():
        labels = {**group, "instance": "lite", "database": db}
        assert find(gateway, "vya_backups_count", **labels) == 1
        assert find(gateway, "vya_backup_size_bytes", **labels) == record.file_info.size
        assert find(gateway, "vya_backup_last_success_timestamp_seconds", **labels) == (
            pytest.approx(record.backup_info.finished_at.timestamp())
        )
        assert find(gateway, "vya_backup_success_total", **labels) == 1
    assert (
        find(
            gateway,
            "vya_backup_failure_total",
            database="broken.db",
            error_type="BackupFailed",
            **group,
        )
        == 1
    )
    assert find(gateway, "vya_last_run_success", **group) == 0

    text = textfile.read_text()
    assert [p.name for p in textfile.parent.iterdir()] == ["vya.prom"]  # no temp file left
    local = samples(text)
    assert find(local, "vya_backups_total_bytes", instance="lite", database="shop0.db") == (
        newest["shop0.db"].file_info.size
    )
    assert find(local, "vya_catalog_up") == 1


def test_metrics_serve_scrape_reflects_catalog_between_runs(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    loaded = load(config)
    BackupJob(loaded).run(BackupRequest())
    port = free_port()
    proc = subprocess.Popen(
        [
            VYA,
            "--config",
            str(config),
            "metrics",
            "serve",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        first = samples(_wait_for(url, proc))
        assert find(first, "vya_backups_count", instance="lite", database="shop0.db") == 1
        # A backup made by another process after the server started: visible on next scrape.
        time.sleep(1.1)  # backup names carry the second: two in one second would collide
        BackupJob(loaded).run(BackupRequest())
        records = make_catalog(loaded.settings).records("lite")
        second = samples(_get(url))
        labels = {"instance": "lite", "database": "shop0.db", "dbms": "sqlite"}
        assert find(second, "vya_backups_count", **labels) == 2
        assert find(second, "vya_backups_total_bytes", **labels) == sum(
            r.file_info.size for r in records
        )
        assert find(second, "vya_backup_last_success_timestamp_seconds", **labels) == (
            pytest.approx(records[-1].backup_info.finished_at.timestamp())
        )
        assert find(second, "vya_backup_success_total", instance="lite", database="shop0.db") == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_push_unreachable_gateway_is_reported_not_raised(tmp_path: Path) -> None:
    config = sqlite_config(
        tmp_path, {"metrics": {"pushgateway_url": f"http://127.0.0.1:{free_port()}"}}
    )
    outcome = ScheduledRunner(load(config)).run_instances((), label="manual")
    assert outcome.run is not None and outcome.run.ok
    assert len(outcome.metric_problems) == 1
    assert "cannot push metrics" in outcome.metric_problems[0]
    assert outcome.exit_code == 0


def test_grafana_dashboard_uses_only_exported_metric_names(tmp_path: Path) -> None:
    import json
    import re

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "docs/grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bvya_[a-z_]+", target["expr"])
    }
    used |= set(re.findall(r"\bvya_[a-z_]+", json.dumps(dashboard["templating"])))
    config = sqlite_config(tmp_path)
    loaded = load(config)
    BackupJob(loaded).run(BackupRequest())
    from vya_backupdb.observability.metrics import CatalogCollector

    exported = {
        s.name.removesuffix("_total") if s.name.endswith("_total") else s.name
        for family in CatalogCollector(make_catalog(loaded.settings)).collect()
        for s in [*family.samples, type("S", (), {"name": family.name})()]
    }
    exported |= {n + "_total" for n in exported}
    assert used and used <= exported, used - exported
    docs = (root / "docs/metrics.md").read_text()
    assert all(name in docs for name in used)
