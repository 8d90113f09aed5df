#!/usr/bin/env bash
# Set up and run the cluster: the web server (ASGI, port 5001; scripts/web.sh) and the django-q2 scheduler together.
# Ctrl-C stops both. Settings come from the environment (README: "Configuration").
set -euo pipefail
cd "$(dirname "$0")"
. scripts/common.sh

ensure_venv requirements.txt
export PORT="${PORT:-5001}"
# /metrics adds up the metrics of every web worker process through files here; a new start
# begins from zero (README: "Watch the cluster").
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$PWD/var/prometheus}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db
.venv/bin/python manage.py migrate --noinput
if [ -f generations/management/commands/ensure_schedules.py ]; then
    .venv/bin/python manage.py ensure_schedules
fi

scripts/web.sh &
web=$!
.venv/bin/python manage.py qcluster &
scheduler=$!

stop() {
    kill -TERM "$web" "$scheduler" 2>/dev/null || true
    wait "$web" "$scheduler" 2>/dev/null || true
}
# Ctrl-C reaches both children from the terminal already; a second signal would only make the
# scheduler's shutdown trip over itself. SIGTERM (systemd, docker) reaches only us: pass it on.
trap 'wait "$web" "$scheduler" 2>/dev/null || true; exit 0' INT
trap 'stop; exit 0' TERM
echo "KoboldAI Cluster on http://127.0.0.1:$PORT (Ctrl-C stops it)"
# Whichever stops first takes the other down with it.
wait -n "$web" "$scheduler" || true
stop
exit 1
