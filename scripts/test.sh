#!/usr/bin/env bash
# The whole test suite: installs what is missing (scripts/bootstrap.sh), then runs lint, types
# and pytest with coverage. Integration tests start their own PostgreSQL and MariaDB servers on
# free loopback ports in temporary directories. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
set +e
pytest --cov --cov-report=term "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
if [ "$rc" != 0 ]; then
  exit "$rc"
fi
# The coverage floor is checked here, from the data file, so the verdict never depends on a
# plugin's exit-status handling. Only for the whole suite (no pytest arguments given).
if [ "$#" = 0 ]; then
  coverage report --fail-under=85 >/dev/null || {
    echo "test.sh: line+branch coverage is below 85% (coverage report shows where)" >&2
    exit 1
  }
fi
