#!/usr/bin/env bash
# The cluster's web server, as run.sh and the end-to-end tests start it: uvicorn serving the
# ASGI application with WEB_WORKERS processes on HOST:PORT (koboldcluster/serve.py; README:
# "Configuration").
#
# Why uvicorn: it parses HTTP on the event loop's own thread, where the application runs, so a
# request costs no hand-off between threads; granian's took four to six thread wake-ups per
# request, about a quarter of a generation's CPU through HTTP (docs/benchmarks.md, "Through
# HTTP"). What uvicorn lacks, koboldcluster/serve.py adds: a connection that has not sent
# complete request headers within WEB_HEADER_TIMEOUT seconds is closed -- a new connection
# that says nothing, one that trickles its headers, and an idle keep-alive connection alike --
# so slow or silent clients cannot hold capacity; a request head over WEB_HEADER_LIMIT bytes
# is refused.
#
# Thousands of servers wait at once, each a long-polling request on a connection of its own:
# every web process takes up to WEB_MAX_CONCURRENCY connections at once (then answers 503),
# the kernel queues up to WEB_BACKLOG new connections (a burst of reconnecting servers), and
# the process may open as many files as the system allows it (one per connection).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# A line per request costs the web process about 0.05 ms of CPU per request (the hot ones take 1-1.5);
# behind a balancer, the balancer logs them (deploy/haproxy/haproxy.cfg).
access_log=--no-access-log
[ "${WEB_ACCESS_LOG:-off}" = on ] && access_log=--access-log
# WEB_APP: another ASGI application under the same server and settings, for the benchmark of
# what the serving layer alone costs (benchmarks/scripts/bench_serving_floor.py).
exec "${KOBOLDCLUSTER_PYTHON:-.venv/bin/python}" -m koboldcluster.serve \
    "${WEB_APP:-koboldcluster.asgi:application}" \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-5001}" --workers "${WEB_WORKERS:-2}" \
    --limit-concurrency "${WEB_MAX_CONCURRENCY:-10000}" --backlog "${WEB_BACKLOG:-4096}" \
    --header-timeout "${WEB_HEADER_TIMEOUT:-10}" --header-limit "${WEB_HEADER_LIMIT:-65536}" \
    --kill-timeout "${WEB_KILL_TIMEOUT:-10}" "$access_log" "$@"
