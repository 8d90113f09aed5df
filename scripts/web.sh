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
# Thousands of servers wait at once, each a long-polling request on a connection of its own:
# every web process takes up to WEB_MAX_CONCURRENCY requests at once (granian's back-pressure;
# its default, the backlog divided by the workers, left 2,000 waiting pops queued unanswered),
# the kernel queues up to WEB_BACKLOG new connections (a burst of reconnecting servers), and
# the process may open as many files as the system allows it (one per connection).
#
# --loop uvloop: the direct lane runs on the event loop (koboldcluster/lane_on_loop.py), which
# wakes several times a request; uvloop's wake-ups cost a generation through HTTP about 0.25 ms
# less CPU than asyncio's loop (docs/benchmarks.md, "Through HTTP"). The drain on SIGTERM
# (koboldcluster/shutdown.py) notes granian's signal handlers on either loop.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# A line per request costs the web process about 0.05 ms of CPU per request (the hot ones take 1-1.5);
# behind a balancer, the balancer logs them (deploy/haproxy/haproxy.cfg).
access_log=--no-access-log
[ "${WEB_ACCESS_LOG:-off}" = on ] && access_log=--access-log
# WEB_APP: another ASGI application under the same server and settings, for the benchmark of
# what the serving layer alone costs (benchmarks/scripts/bench_serving_floor.py).
exec "${KOBOLDCLUSTER_PYTHON:-.venv/bin/python}" -m granian "${WEB_APP:-koboldcluster.asgi:application}" \
    --interface asginl --loop uvloop \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-5001}" \
    --workers "${WEB_WORKERS:-2}" \
    --backpressure "${WEB_MAX_CONCURRENCY:-10000}" --backlog "${WEB_BACKLOG:-4096}" \
    --http 1 --http1-header-read-timeout "$(( ${WEB_HEADER_TIMEOUT:-10} * 1000 ))" \
    --respawn-failed-workers --workers-kill-timeout "${WEB_KILL_TIMEOUT:-10}" \
    --no-ws "$access_log" "$@"
