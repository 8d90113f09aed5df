#!/usr/bin/env bash
# The cluster's web server, as run.sh and the end-to-end tests start it: granian serving the
# ASGI application with WEB_WORKERS processes on HOST:PORT (README: "Configuration").
#
# Why granian: its HTTP layer (Rust, hyper) closes a connection that has not sent complete
# request headers within WEB_HEADER_TIMEOUT seconds -- a new connection that says nothing, one
# that trickles its headers, and an idle keep-alive connection alike -- so slow or silent
# clients cannot hold capacity. uvicorn (alone or under gunicorn) keeps such connections open
# for ever: it times out only keep-alive connections after a response.
#
# --loop asyncio: granian would take uvloop wherever it happens to be installed, and the drain
# on SIGTERM (koboldcluster/shutdown.py) needs asyncio's loop, whose signal handlers it can read.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${KOBOLDCLUSTER_PYTHON:-.venv/bin/python}" -m granian koboldcluster.asgi:application \
    --interface asginl --loop asyncio \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-5001}" \
    --workers "${WEB_WORKERS:-2}" \
    --http 1 --http1-header-read-timeout "$(( ${WEB_HEADER_TIMEOUT:-10} * 1000 ))" \
    --respawn-failed-workers --workers-kill-timeout "${WEB_KILL_TIMEOUT:-10}" \
    --no-ws --access-log "$@"
