#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries exist (initdb, postgres), installing
# Debian's package when they are missing and we may. Used by `make demo`
# and .ci/run; tests find the binaries on PATH, in /usr/lib/postgresql/*/bin
# or through PG_BIN.
set -euo pipefail
if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then exit 0; fi
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi
echo "PostgreSQL server binaries not found; installing them from the distribution's packages" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "cannot install PostgreSQL without root: run apt-get install -y postgresql-15 (or set PG_BIN)" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install PostgreSQL 15 server binaries and set PG_BIN to their directory" >&2
  exit 1
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql-15 \
  || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql
