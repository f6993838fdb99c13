#!/usr/bin/env bash
# Install what VYA BackupDB and its tests need, when missing: Debian packages (as root) and a
# Python virtual environment in .venv with the project installed in editable mode.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the database servers (for the integration tests and the demo), their
# client/dump tools, compressors and sqlite3.
DEB_PACKAGES=(postgresql postgresql-client mariadb-server mariadb-client sqlite3 zstd gzip
              bzip2 xz-utils lz4 pigz python3-venv age openssh-server openssh-client prometheus-pushgateway
              mydumper nodejs npm)
# command -> package that provides it
declare -A NEED=(
  [pg_dump]=postgresql-client [psql]=postgresql-client [initdb]=postgresql
  [mariadbd]=mariadb-server [mariadb-install-db]=mariadb-server [mariadb-dump]=mariadb-client
  [mariadb]=mariadb-client [sqlite3]=sqlite3 [zstd]=zstd [lz4]=lz4 [xz]=xz-utils [bzip2]=bzip2
  [age]=age [age-keygen]=age [sshd]=openssh-server [ssh-keygen]=openssh-client
  [prometheus-pushgateway]=prometheus-pushgateway [pigz]=pigz [mydumper]=mydumper
  [myloader]=mydumper [node]=nodejs [npm]=npm
)
have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$1" ] && return 0  # sshd: not on a normal user's PATH
  compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null 2>&1
}
missing=()
for cmd in "${!NEED[@]}"; do
  have "$cmd" || missing+=("${NEED[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages: ${missing[*]}" >&2
    echo "bootstrap: install them with: sudo apt-get install ${missing[*]}" >&2
    echo "bootstrap: (the full set is: ${DEB_PACKAGES[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv || { echo "bootstrap: python3 -m venv failed; install python3-venv" >&2; exit 1; }
fi
stamp=.venv/.vya-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python dependencies into .venv"
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[dev]'; } >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2
    echo "bootstrap: installing the Python dependencies failed (see above)" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi

# Azurite (Microsoft's Azure Storage emulator, from the npm registry) for the Azure Blob tests:
# installed into .cache/azurite inside the project, never globally.
azurite_dir=.cache/azurite
if [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
  echo "bootstrap: installing Azurite (npm) into $azurite_dir"
  mkdir -p "$azurite_dir"
  if ! npm install --silent --no-audit --no-fund --prefix "$azurite_dir" azurite@3 >/dev/null 2>&1; then
    echo "bootstrap: npm install azurite failed; the Azure tests need it" >&2
    exit 1
  fi
fi
