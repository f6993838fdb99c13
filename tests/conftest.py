"""Shared test configuration.

Real servers come from the harness plugins (tests/harness/): each starts a throwaway server in a
temporary directory on a free loopback port, once per session, and stops it afterwards.
In CI (CI=true) a skipped integration test fails the run: a green CI must mean the integration
tests really ran.
"""

from __future__ import annotations

import os

import pytest

# Shared test helpers that assert: rewritten like test modules, so failures show values.
pytest.register_assert_rewrite("cli_helpers", "remote_helpers", "pg_compare", "mysql_compare")

pytest_plugins = ["harness.postgres", "harness.mariadb"]

_skipped_integration: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("integration") is not None:
        _skipped_integration.append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") == "true" and _skipped_integration:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if os.environ.get("CI") == "true" and _skipped_integration:
        terminalreporter.write_line(
            f"CI: {len(_skipped_integration)} integration test(s) were skipped; failing the run:",
            red=True,
        )
        for nodeid in _skipped_integration:
            terminalreporter.write_line(f"  {nodeid}")
