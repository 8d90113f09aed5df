"""`/healthz` answered on the event loop, never queued behind the process's database work.

Every ordinary request of a web process runs on its one sync thread, one after the other
(koboldcluster/asgi.py), and each of its statements waits a round trip to PostgreSQL there.
With PostgreSQL a network hop away (2 ms a round trip in the benchmark across hosts), a busy
process's requests queue for seconds; a liveness probe that queued with them made the balancer
(deploy/haproxy/haproxy.cfg, which checks `/healthz` every 2 s) take a busy but alive node out,
and answer 503 for it. Liveness says only that the process answers, so it is answered where
the process answers first: on its event loop, by the same middleware and view (so the same
answer and headers), which touch no database (were one ever to, Django refuses it on the loop
with SynchronousOnlyOperation, and the tests fail). `/readyz` still takes the sync thread: it
checks the database, and waiting its turn there is part of what it measures.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http.response import HttpResponseBase

from koboldcluster import routes

# The route table's rows marked `on_loop`: `/healthz`.
PROBE_PATHS = routes.loop_paths()


def takes(scope: dict[str, Any], path: str) -> bool:
    """A liveness probe: GET on `/healthz` (any other method, e.g. a CORS preflight, goes
    Django's usual way; so does a request under a script prefix)."""
    return scope["method"] == "GET" and path in PROBE_PATHS and not scope.get("root_path")


def respond(
    entry: ASGIHandler, scope: dict[str, Any], body: Any, chain: BaseHandler
) -> HttpResponseBase:
    """The probe's answer by `chain` (the middleware and view it would run on the sync
    thread), here on the calling thread. No request_started/finished signals: their receiver
    recycles database connections, of which this thread has none."""
    request, response = entry.create_request(scope, body)
    if request is not None:
        response = chain.get_response(request)
    return response
