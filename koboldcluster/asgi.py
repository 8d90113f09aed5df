"""The one entry: every request comes in here (`koboldcluster.asgi:application`), whether
uvicorn serves it (`./run.sh`, koboldcluster/serve.py), `manage.py runserver` does
(koboldcluster/management/commands/runserver.py), or a test's client
(koboldcluster/asgi_client.py). What it does with a request follows from the route table
(koboldcluster/routes.py): the liveness probe on the event loop (koboldcluster/liveness.py),
the direct lane first for the routes it takes (on SQLite on the event loop's own thread,
koboldcluster/lane_on_loop.py), the long-poll pops held after their view (`_held`), the
waiting endpoints on an async chain (`WAITING_PATHS`), every other request in one step on the
sync thread.

Ordinary views stay synchronous Django. Django's own ASGI handler would give every request a
thread of its own for them, created for the request and dropped after it: measured here, that
costs 5-8 ms of CPU per request (a new thread, and on it a new database connection with its
PRAGMAs), three to five times the request itself. So every request's synchronous part runs on
the process's one shared sync thread instead, as a threaded WSGI server would run it on a
pooled thread: its database connection is opened once and kept (CONN_MAX_AGE). The waiting
requests (long-poll pops, the front-end APIs' generations) hold no thread at all while they
wait: only their short synchronous steps take turns there. Within one web process requests then
run one at a time, which the GIL mostly did anyway; run more processes (`WEB_WORKERS`) for more
cores. `WAITING_PATHS` names the waiting endpoints, for the record and the tests: their
requests take Django's async path, the others one step onto the sync thread for the whole
request. The long-poll pops (`koboldcluster.holding`) are ordinary requests, with one twist:
when the view asks to hold the answer, the handler waits for a wake-up on the event loop after
that step, watching for the client to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted, RequestDataTooBig
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import get_resolver, set_script_prefix

from koboldcluster import holding, lane_on_loop, liveness, metrics, routes, shutdown, wakeups
from koboldcluster.middleware import INLINE_MIDDLEWARE

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")
if not settings.configured:  # a web process (not a test or a command driving the app)
    # Tells settings.py this is a web process (its database connection); processes it
    # starts would inherit it, so never set once settings are read.
    os.environ["KOBOLDCLUSTER_SERVING"] = "asgi"
    # uvicorn imports the application in the worker's running loop, its signal handlers set:
    # the drain on SIGTERM goes in front of them (koboldcluster/shutdown.py).
    with contextlib.suppress(RuntimeError):  # no running loop: not served by uvicorn
        shutdown.chain_signal_handlers(asyncio.get_running_loop())

# The waiting endpoints (`//` as the ApiMiddleware reads it, a single `/`), async views: the
# front-end APIs wait for their generation (generations/waiting.py), streams to clients
# (generations/api/sse.py). Declared in the route table (koboldcluster/routes.py).
WAITING_PATHS = routes.waiting_paths()
_SLASHES = re.compile(r"//+")


# The waiting endpoints are API views: no sessions, CSRF, messages or pages. Only the
# middleware they need, each able to run async, so that a waiting front-end request makes no
# extra step onto the sync thread for Django's session or CSRF middleware; Django's security,
# common and frame middleware run inline (koboldcluster.middleware.INLINE_MIDDLEWARE).
WAITING_MIDDLEWARE = [
    *INLINE_MIDDLEWARE,  # Django's security, common and frame middleware, run inline
    "koboldcluster.metrics.LatencyMiddleware",
    "koboldcluster.middleware.ApiMiddleware",
    "koboldcluster.clients.ClientAddressMiddleware",
    "koboldcluster.outage.DatabaseOutageMiddleware",
]


def _handler_with(
    keep: Callable[[str], bool], *, is_async: bool, stand_ins: dict[str, str] | None = None
) -> BaseHandler:
    """A request handler with the middleware of settings.MIDDLEWARE that `keep` keeps, each
    replaced by its stand-in if it has one."""
    handler, everything = BaseHandler(), settings.MIDDLEWARE
    stand_ins = stand_ins or {}
    settings.MIDDLEWARE = [stand_ins.get(m, m) for m in everything if keep(m)]  # read at start
    try:
        handler.load_middleware(is_async=is_async)
    finally:
        settings.MIDDLEWARE = everything
    return handler


# The API's paths (authenticated by the `apikey` header alone) skip the middleware of the
# pages for people: sessions, CSRF, logins, messages and static files. Each reads nothing
# unless asked, and changes no API answer, but together they cost a tenth of a status poll.
API_PREFIXES = routes.API_PREFIXES
PAGE_MIDDLEWARE = frozenset(
    {
        "koboldcluster.middleware.StaticFilesMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    }
)


class OversizedBody(io.BytesIO):
    """What is kept of a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE: nothing. Reading it
    raises RequestDataTooBig, which every API view answers with its 413 (Django's own check
    is in `request.body`, which neither DRF nor the direct lane reads)."""

    def read(self, *args: Any) -> bytes:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")

    readline = read


def _body_length(scope: dict[str, Any]) -> int | None:
    """The body's length when the request's head settles it: its Content-Length, or in HTTP/1
    none at all without Content-Length and Transfer-Encoding (RFC 9112, 6.3). None when only
    reading to its end tells (a chunked body, HTTP/2, a scope without a version)."""
    declared = None
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            declared = value
    if declared is not None:
        return int(declared) if declared.isdigit() else None
    return 0 if scope.get("http_version") in ("1.0", "1.1") else None


def _past_the_body(receive: Any) -> Any:
    """`receive`, skipping what is left of the body: an empty last message that a server may
    send after the body itself (granian did), which `read_body` leaves unread once it has the
    declared length."""

    async def receive_after_body() -> dict[str, Any]:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message

    return receive_after_body


class ClusterASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # The same middleware and views, run the synchronous way: one step onto the sync
        # thread per request, where the async chain takes two per middleware. Held responses
        # are held here, after that step (`_held`), never on the sync thread.
        self.sync_handler = _handler_with(lambda m: True, is_async=False)
        is_api = lambda m: m not in PAGE_MIDDLEWARE  # noqa: E731
        self.api_handler = _handler_with(is_api, is_async=False)
        # The hottest API requests skip Django's request stack (koboldcluster.direct, which
        # needs the apps loaded: imported here).
        from koboldcluster import direct

        self.lane = (
            direct if direct.is_enabled([m for m in settings.MIDDLEWARE if is_api(m)]) else None
        )
        self.lane_on_loop = lane_on_loop.applies()  # SQLite: no hand-off to the sync thread
        self.waiting_handler = _handler_with(
            WAITING_MIDDLEWARE.__contains__, is_async=True, stand_ins=INLINE_MIDDLEWARE
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django's refusal of the rest
            return
        # Without ThreadSensitiveContext: no thread per request (see the module docstring).
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = _SLASHES.sub("/", scope.get("path", ""))
        if path in WAITING_PATHS:
            await super().handle(scope, receive, send)  # async views, disconnects watched
            return
        try:
            body = await self.read_body(receive, scope)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        if liveness.takes(scope, path):  # on the event loop: never behind the sync thread
            await self.send_response(liveness.respond(self, scope, body, self.sync_handler), send)
            return
        if self.lane and not scope.get("root_path") and await self._direct(scope, path, body, send):
            return
        handler = self.api_handler if path.startswith(API_PREFIXES) else self.sync_handler
        if path in holding.HELD_PATHS:
            response = await self._held(scope, body, receive, route=path[1:])
        else:
            response = await sync_to_async(self._respond)(scope, body, handler)
        await self.send_response(response, send)
        if response.streaming:  # a file: closed once sent (request_finished goes with it)
            await sync_to_async(response.close)()

    async def read_body(self, receive: Any, scope: dict[str, Any] | None = None) -> Any:
        """The body, as Django's handler reads it (spooled to disk past
        FILE_UPLOAD_MAX_MEMORY_SIZE), but no more than DATA_UPLOAD_MAX_MEMORY_SIZE of it: a
        larger one is not kept (an OversizedBody), and one declared larger is not read.

        Read no further than the head says it goes: a server may follow a body with an empty
        last message, and a request without a body (a GET) still has one to receive; under
        granian each was one more round trip between its threads and the event loop, about a
        tenth of a millisecond of CPU per request (docs/benchmarks.md, "Through HTTP")."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        length = _body_length(scope) if scope is not None else None
        if limit is not None and (length or 0) > limit:
            return OversizedBody()
        if length == 0:
            return io.BytesIO()
        if length is not None and length <= settings.FILE_UPLOAD_MAX_MEMORY_SIZE:
            body: Any = io.BytesIO()  # as the spooled file would keep it, for less
        else:
            body = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)  # noqa: SIM115 - closed by the caller
        size, more = 0, True
        while more and size != length:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is None or size <= limit:
                body.write(chunk)
            more = message.get("more_body", False)
        if limit is not None and size > limit:
            body.close()
            return OversizedBody()
        body.seek(0)
        return body

    async def _direct(self, scope: dict[str, Any], path: str, body: Any, send: Any) -> bool:
        """Answer a request of the direct lane, if it is one the lane takes (an oversized
        body goes Django's way, where the view answers 413 in its own shape)."""
        found = self.lane.find(scope["method"], path)
        if found is None or not settings.KOBOLDCLUSTER["DIRECT_LANE"]:
            return False
        if isinstance(body, OversizedBody):
            return False
        content = body.read()
        body.seek(0)
        if self.lane_on_loop and not _under_async_to_sync():
            answer = lane_on_loop.run(self.lane.answer, *found, scope, content)
        else:
            answer = await _on_sync_thread(self.lane.answer, *found, scope, content)
        if answer is None:
            return False
        await self.lane.send(answer, send)
        return True

    async def _held(
        self, scope: dict[str, Any], body: Any, receive: Any, route: str
    ) -> HttpResponseBase:
        """A request whose view may ask to hold its answer: listening for wake-ups from before
        the view runs, held after it on the event loop. A client that left meanwhile is sent
        the answer as it stands all the same: nobody reads it, but the server then logs the
        request as answered rather than as a 500 (what a server logs for "no response")."""
        started = time.perf_counter()
        async with wakeups.listening(wakeups.QUEUE) as listener:
            response = await sync_to_async(self._respond)(scope, body, self.api_handler)
            if not holding.is_held(response):
                return response
            held = holding.finish(response, listener)
            disconnect = self.listen_for_disconnect(_past_the_body(receive))
            if not await _unless_client_leaves(held, disconnect):
                return response
        metrics.observe_latency(route, started)
        return response

    def _respond(self, scope: dict[str, Any], body: Any, handler: BaseHandler) -> HttpResponseBase:
        """The whole of an ordinary request in one step on the sync thread: request_started,
        `handler`'s middleware and view, and (an answer already in memory) request_finished."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body)
        if request is not None:
            response = handler.get_response(request)
        if not response.streaming:
            response.close()
        return response

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await self.waiting_handler.get_response_async(request)  # the waiting paths


async def _on_sync_thread(function: Callable[..., Any], *args: Any) -> Any:
    """`sync_to_async(function)(*args)` as this handler calls it (thread-sensitive, no
    ThreadSensitiveContext: asgiref's one sync thread, so the same database connection), in
    a copy of the context, without asgiref's bookkeeping for nested calls and for context
    changes to carry back, which the direct lane makes neither of: a tenth of a millisecond
    per request less through HTTP (README "Benchmark", "Through HTTP"). Under an
    `async_to_sync` (the tests' client, koboldcluster/asgi_client.py) it is sync_to_async
    itself, which runs the function on the calling thread, with its database connection."""
    if _under_async_to_sync():
        return await sync_to_async(function)(*args)
    loop = asyncio.get_running_loop()
    run = contextvars.copy_context().run
    return await loop.run_in_executor(SyncToAsync.single_thread_executor, run, function, *args)


def _under_async_to_sync() -> bool:
    """Whether this loop runs under an `async_to_sync` (the tests' client): synchronous work
    then belongs on the thread that called it, which holds the test's database connection."""
    loop = asyncio.get_running_loop()
    return bool(getattr(AsyncToSync.executors, "current", None)) or (
        loop in AsyncToSync.loop_thread_executors
    )


async def _unless_client_leaves(work: Awaitable[None], disconnect: Awaitable[None]) -> bool:
    """Run `work` unless `disconnect` (Django's `listen_for_disconnect`) ends first: then
    cancel it and return False."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnect)
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watch):
            pending.cancel()
        results = await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        return False
    if isinstance(results[0], BaseException):
        raise results[0]
    return True


get_asgi_application()  # django.setup(), as Django's own entry point does
application = ClusterASGIHandler()
# Every view, now: Django imports the URLconf (and with it every view, DRF, the schema
# machinery) in a process's first request, which took 0.3-1 s of CPU on a loaded machine. Each
# web worker would make its first client wait for that (a `/readyz` warms only the worker
# that answers it); imported here, a worker takes no request before it is ready.
get_resolver().url_patterns  # noqa: B018
