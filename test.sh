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

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== migrations"
DATABASE_URL= .venv/bin/python manage.py makemigrations --check --dry-run

# One test database per checkout, so that two checkouts can test at the same time.
db="koboldcluster_$(pwd | sha256sum | cut -c1-8)"
echo "== tests on SQLite"
DATABASE_URL= .venv/bin/pytest "$@"
echo "== tests on PostgreSQL"
DATABASE_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/$db}" .venv/bin/pytest "$@"
