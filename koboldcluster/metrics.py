"""The cluster's in-process Prometheus metrics, for every app to import (bottom layer).

What happens inside a request (latencies, waiters, open streams) is measured where it happens,
here. Several web worker processes each count their own: with PROMETHEUS_MULTIPROC_DIR set
(`./run.sh` sets it and empties it at start), prometheus-client keeps the values in files there
and `/metrics` adds up every process's, so any worker answers for all of them on its machine.
Figures that live in the database (queue, servers, rollup counters) are read from it by
`stats.metrics` at scrape time instead: they are exact across processes and machines.

Other apps set the gauges, never with prompt text in a label:

    from koboldcluster import metrics
    metrics.LONG_POLL_WAITERS.inc()  # a pop starts waiting; .dec() when it stops (finally:)
    with metrics.STREAMS_OPEN.track_inprogress(): ...  # a stream to a client is open
"""

from __future__ import annotations

import glob
import os
import re
import time

from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Gauge, Histogram, multiprocess

from koboldcluster import routes
from koboldcluster.middleware import SyncAndAsyncMiddleware

# In multiprocess mode every metric opens its file there as it is made: a folder named but not
# made yet (a first `manage.py migrate` under ./run.sh's settings) is made, not a crash.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# Seconds; a pop that long-polls may wait up to 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Named after the AI Horde's own (`horde.pop.duration`, `horde.submit.duration`).
POP_SECONDS = Histogram(
    "horde_pop_duration_seconds",
    "End-to-end duration of a job pop request (long-poll waiting included).",
    ["api"],
    buckets=LATENCY_BUCKETS,
)
SUBMIT_SECONDS = Histogram(
    "horde_submit_duration_seconds",
    "End-to-end duration of a generation submit request.",
    ["api"],
    buckets=LATENCY_BUCKETS,
)
LONG_POLL_WAITERS = Gauge(
    "koboldcluster_long_poll_waiters",
    "Pops waiting for a job right now.",
    multiprocess_mode="livesum",
)
STREAMS_OPEN = Gauge(
    "koboldcluster_streams_open",
    "Streams to clients (server-sent events) open right now.",
    multiprocess_mode="livesum",
)

# Which requests the latency histograms time, by URL route: (histogram, api label), from the
# route table (koboldcluster.routes: an endpoint's `metric` and its face).
_HISTOGRAMS = {routes.POP: POP_SECONDS, routes.SUBMIT: SUBMIT_SECONDS}
_TIMED = {route: (_HISTOGRAMS[metric], api) for route, (metric, api) in routes.timed().items()}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """Every process's in-process metrics (or this process's alone, without the directory)."""
    path = multiprocess_dir()
    if path is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    _forget_dead_processes(path)
    merged = CollectorRegistry(auto_describe=True)
    multiprocess.MultiProcessCollector(merged, path)
    return merged


_PID = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def _forget_dead_processes(path: str) -> None:
    """Drop the live gauges of worker processes that have exited (restarted workers)."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _PID.search(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def observe_latency(route: str, started: float) -> None:
    """Time a request to `route` (a URL route, e.g. `generate/pop`) begun at `started`."""
    timed = _TIMED.get(route)
    if timed is not None:
        histogram, api = timed
        histogram.labels(api=api).observe(time.perf_counter() - started)


def _observe(request: HttpRequest, response: HttpResponse, started: float) -> None:
    match = getattr(request, "resolver_match", None)
    # A response still to be held (koboldcluster.holding) is timed by whoever holds it.
    if match is not None and getattr(response, "hold", None) is None:
        observe_latency(match.route, started)


class LatencyMiddleware(SyncAndAsyncMiddleware):
    """Time the pop and submit requests, for sync and async views alike (no thread is added)."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _observe(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        _observe(request, response, started)
        return response
