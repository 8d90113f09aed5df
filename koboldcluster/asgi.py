"""ASGI entry point, what `./run.sh` serves (granian, `koboldcluster.asgi:application`).

Ordinary views stay synchronous Django. Django's own ASGI handler would give every request a
thread of its own for them, created for the request and dropped after it: measured here, that
costs 5-8 ms of CPU per request (a new thread, and on it a new database connection with its
PRAGMAs), three to five times the request itself. So every request's synchronous part runs
on the process's one shared sync thread instead, as `manage.py runserver` and a threaded WSGI
server would run it on a pooled thread: its database connection is opened once and kept
(CONN_MAX_AGE). The waiting requests (long-poll pops, the front-end APIs' generations) hold
no thread at all while they wait: only their short synchronous steps take turns there. Within
one web process requests then run one at a time, which the GIL mostly did anyway; run more
processes (`WEB_WORKERS`) for more cores. `WAITING_PATHS` names the waiting endpoints, for
the record and the tests: their requests take Django's async path, the others one step onto
the sync thread for the whole request.
"""

from __future__ import annotations

import os
import re
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import get_resolver, set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")
# Tells settings.py to give each web process a database connection pool (PostgreSQL).
os.environ["KOBOLDCLUSTER_SERVING"] = "asgi"

# The waiting endpoints (`//` as the ApiMiddleware reads it, a single `/`).
WAITING_PATHS = frozenset(
    {
        "/generate/pop",
        "/api/v2/generate/text/pop",
        # The front-end APIs wait for their generation (generations/waiting.py).
        "/api/v1/generate",
        "/api/latest/generate",
        "/v1/completions",
        "/v1/chat/completions",
        # Streams to clients (generations/sse.py).
        "/api/extra/generate/stream",
    }
)
_SLASHES = re.compile(r"//+")


# The waiting endpoints are API views: no sessions, CSRF, messages or pages. Only the
# middleware they need, each able to run async, so that a pop makes no extra step onto the
# sync thread for Django's session, CSRF or security middleware (two each, every request).
WAITING_MIDDLEWARE = [
    "koboldcluster.metrics.LatencyMiddleware",
    "koboldcluster.middleware.ApiMiddleware",
    "koboldcluster.clients.ClientAddressMiddleware",
    "koboldcluster.outage.DatabaseOutageMiddleware",
]


def _handler_with(middleware: list[str]) -> BaseHandler:
    """An async request handler with this middleware instead of settings.MIDDLEWARE."""
    handler, everything = BaseHandler(), settings.MIDDLEWARE
    settings.MIDDLEWARE = [m for m in everything if m in middleware]  # read once, at start
    try:
        handler.load_middleware(is_async=True)
    finally:
        settings.MIDDLEWARE = everything
    return handler


class ClusterASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # The same middleware and views, run the synchronous way: one step onto the sync
        # thread per request, where the async chain takes two per middleware.
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)
        self.waiting_handler = _handler_with(WAITING_MIDDLEWARE)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django's refusal of the rest
            return
        # Without ThreadSensitiveContext: no thread per request (see the module docstring).
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if _SLASHES.sub("/", scope.get("path", "")) in WAITING_PATHS:
            await super().handle(scope, receive, send)  # async views, disconnects watched
            return
        try:
            body = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        response = await sync_to_async(self._respond)(scope, body)
        await self.send_response(response, send)
        if response.streaming:  # a file: closed once sent (request_finished goes with it)
            await sync_to_async(response.close)()

    def _respond(self, scope: dict[str, Any], body: Any) -> HttpResponseBase:
        """The whole of an ordinary request in one step on the sync thread: request_started,
        middleware and view, and (an answer already in memory) request_finished."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body)
        if request is not None:
            response = self.sync_handler.get_response(request)
        if not response.streaming:
            response.close()
        return response

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await self.waiting_handler.get_response_async(request)  # the waiting paths


get_asgi_application()  # django.setup(), as Django's own entry point does
application = ClusterASGIHandler()
# Every view, now: Django imports the URLconf (and with it every view, DRF, the schema
# machinery) in a process's first request, which took 0.3-1 s of CPU on a loaded machine. Each
# web worker would make its first client wait for that (a `/readyz` warms only the worker
# that answers it); imported here, a worker takes no request before it is ready.
get_resolver().url_patterns  # noqa: B018
