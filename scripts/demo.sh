#!/usr/bin/env bash
# Quick start: install what is missing, then run the complete demo cycle in ./demo
# (demo SQLite database + any PostgreSQL/MariaDB reachable locally without a password:
# backup → list → restore into a new target → compare). Extra arguments go to `vya-backupdb demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/vya-backupdb demo "$@"
