"""The hottest API requests, answered without Django's request stack (issue 17).

A server's pop, a generation's submit, a prompt's creation and its status poll are most of
what the cluster serves: every idle server pops about once a second, clients poll. Through
Django's handler, the API's middleware, the URL resolver and DRF's dispatch, each cost about
as much again as its service. The direct lane answers these few requests in one step (on
the sync thread, or on SQLite on the event loop's own: koboldcluster/lane_on_loop.py) with
the same parts, in the same order: the view's own authentication, permissions, throttles and
input serializer, then its `reply` (the function its DRF view calls too). Every error on
the way (a refused key, a rate limit, invalid input, what a service raises) is answered by a
real instance of the view, with DRF's exception handling, and database outages and crashes
as the middleware and Django answer them; every answer gets the headers the API's middleware
adds. What the lane does not take is left to Django before anything is counted or changed: a
body that is not JSON, a pop that asks to wait, a host not in ALLOWED_HOSTS, a method or
path it does not know. `koboldcluster/tests/test_direct.py` sends requests both ways and
compares the answers.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.log import log_response
from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from koboldcluster import clients, metrics, routes
from koboldcluster.api import validated
from koboldcluster.middleware import ApiMiddleware
from koboldcluster.outage import database_unavailable
from koboldcluster.parsers import json_depth_exceeds

logger = logging.getLogger(__name__)

# The API's middleware (settings.MIDDLEWARE without the pages' and the holding one, see
# koboldcluster.asgi), whose work the lane does itself. With any other list it stays off.
API_MIDDLEWARE = (
    "django.middleware.security.SecurityMiddleware",
    "koboldcluster.metrics.LatencyMiddleware",
    "koboldcluster.middleware.ApiMiddleware",
    "koboldcluster.clients.ClientAddressMiddleware",
    "koboldcluster.outage.DatabaseOutageMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)

Headers = list[tuple[bytes, bytes]]
_RENDERER = JSONRenderer()


@dataclass(frozen=True)
class Route:
    """A request the lane answers: `view`'s checks and serializer, then `reply`.

    A POST's `reply(data, request)` gets the validated body and the request (its `user`: the
    API key's, or None; its headers in `META`), as the view's DRF request would give them,
    and answers with `status(data)`; a GET's `reply(arg)` gets `parse(<the rest of the
    path>)`. `takes(body)`, asked before anything else, may leave a body to Django (a pop
    that asks to wait). `route` is its URL route (the latency metrics' name for it).
    """

    view: type[APIView]
    reply: Callable[..., dict[str, Any]]
    route: str
    parse: Callable[[str], Any] | None = None
    takes: Callable[[dict[str, Any]], bool] = lambda data: True
    status: Callable[[dict[str, Any]], int] = lambda data: 200
    allow: str = field(init=False)

    def __post_init__(self) -> None:
        view = self.view()
        view.setup(HttpRequest())  # as Django's as_view() does: a GET view answers HEAD too
        object.__setattr__(self, "allow", view.default_response_headers["Allow"])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Headers
    content: bytes


Routes = dict[tuple[str, str], Route]


@cache
def _routes() -> tuple[Routes, Routes]:
    """The lane's routes, exact and by prefix, from the route table's rows with a `lane`
    (koboldcluster.routes): a GET's path ends in the one segment its view takes."""
    exact: Routes = {}
    prefixed: Routes = {}
    for endpoint in routes.lane_endpoints():
        lane, view = endpoint.lane, routes.resolve(endpoint.view)
        route = Route(
            view,
            view.reply,
            endpoint.path,
            parse=routes.resolve(lane.parse) if lane.parse else None,
            takes=routes.resolve(lane.takes) if lane.takes else lambda data: True,
            status=getattr(view, lane.status) if lane.status else lambda data: 200,
        )
        (prefixed if lane.method == "GET" else exact)[(lane.method, endpoint.url)] = route
    return exact, prefixed


def find(method: str, path: str) -> tuple[Route, str | None] | None:
    """The route of a request (and the segment after a prefix), or None."""
    exact, prefixed = _routes()
    route = exact.get((method, path))
    if route is not None:
        return route, None
    prefix, _, rest = path.rpartition("/")
    route = prefixed.get((method, f"{prefix}/"))
    if route is None or not rest:
        return None
    return route, rest


def is_enabled(api_middleware: list[str]) -> bool:
    """Whether the lane may answer: the API's middleware is the one it stands in for, and no
    setting asks that middleware for more than headers (redirects, HSTS, agent bans). When
    not, the operator is told why (the API then costs more CPU, with the same answers)."""
    if tuple(api_middleware) != API_MIDDLEWARE:
        reason = "settings.MIDDLEWARE is not the one it stands in for"
    else:
        asked = (
            "SECURE_SSL_REDIRECT",
            "SECURE_HSTS_SECONDS",
            "DISALLOWED_USER_AGENTS",
            "PREPEND_WWW",
        )
        reason = next((f"{name} is set" for name in asked if getattr(settings, name)), None)
    if reason is not None:
        logger.warning("The direct lane is off (%s): every API request takes Django's way.", reason)
    return reason is None


def answer(route: Route, rest: str | None, scope: dict[str, Any], body: bytes) -> Answer | None:
    """The whole request, on the sync thread (as Django's would be); None leaves it to Django."""
    data = None
    if rest is None:
        data = _json_object(body, scope)
        if data is None or not route.takes(data):
            return None
    signals.request_started.send(sender=__name__, scope=scope)
    try:
        try:
            request = ASGIRequest(scope, io.BytesIO(body))
            request.get_host()  # CommonMiddleware's check of ALLOWED_HOSTS
        except (DisallowedHost, UnicodeDecodeError, RequestDataTooBig):
            return None  # Django's 400 or 413
        token = clients.remember(request)
        try:
            return _respond(route, rest, request, data)
        finally:
            clients.forget(token)
    finally:
        signals.request_finished.send(sender=__name__)


def _respond(
    route: Route, rest: str | None, request: HttpRequest, data: dict[str, Any] | None
) -> Answer | None:
    started = time.perf_counter()
    view = route.view()
    view.setup(request)
    request.user = None  # type: ignore[attr-defined]
    try:
        identified = _authenticate(view, request)
        if identified is not None:
            request.user = identified[0]  # type: ignore[attr-defined]
        _check(view, request, identified is not None)
        status = 200
        if rest is not None:
            body = route.reply(route.parse(rest) if route.parse else rest)
        else:
            data = validated(view.Input, data)
            body, status = route.reply(data, request), route.status(data)
        content = _RENDERER.render(body)
        result = Answer(status, _headers(route, content), content)
    except Exception as exc:  # noqa: BLE001 - answered as DRF, the middleware and Django do
        result = _from_response(_error_response(view, request, exc), request)
    metrics.observe_latency(route.route, started)
    return result


def _error_response(view: APIView, request: HttpRequest, exc: Exception) -> HttpResponseBase:
    """What DRF's dispatch answers; for what it does not handle, DatabaseOutageMiddleware or,
    last, Django's handler."""
    try:
        return _drf_answer(view, request, exc)
    except (OperationalError, InterfaceError) as unhandled:
        return database_unavailable(request, unhandled)
    except Exception as unhandled:  # noqa: BLE001 - Django's own last resort
        return response_for_exception(request, unhandled)


def _json_object(body: bytes, scope: dict[str, Any]) -> dict[str, Any] | None:
    """The body as DRF's parser would read it, when that is surely a JSON object."""
    for name, value in scope["headers"]:
        if name == b"content-type" and b"charset" in value.lower():
            return None  # DRF would decode another charset: Django's way
    try:
        # UTF-8, as DRF decodes it (json.loads would guess UTF-16 and UTF-32 from bytes).
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse)
    except (ValueError, RecursionError):  # Django's way answers both with a 400
        return None
    if not isinstance(data, dict) or json_depth_exceeds(data):
        return None
    return data


def _refuse(name: str) -> None:
    raise ValueError(name)  # NaN and Infinity: DRF's strict parser refuses them


def _authenticate(view: APIView, request: HttpRequest) -> tuple[Any, Any] | None:
    """DRF's Request._authenticate: what the first authenticator that identifies the request
    found (user, auth), or None."""
    for authenticator in view.get_authenticators():
        found = authenticator.authenticate(request)
        if found is not None:
            return found
    return None


def _check(view: APIView, request: HttpRequest, identified: bool) -> None:
    """DRF's permissions (APIView.check_permissions), then its throttles (each counted once,
    as DRF counts them)."""
    for permission in view.get_permissions():
        if not isinstance(permission, AllowAny) and not permission.has_permission(request, view):
            # APIView.permission_denied, which asks the DRF request whether anyone was identified.
            if view.get_authenticators() and not identified:
                raise NotAuthenticated()
            raise PermissionDenied(
                detail=getattr(permission, "message", None), code=getattr(permission, "code", None)
            )
    view.check_throttles(request)


def _drf_answer(view: APIView, request: HttpRequest, exc: Exception) -> HttpResponseBase:
    """The error as the view's DRF dispatch answers it (headers, rendering and all); raises
    what DRF re-raises."""
    view.headers = view.default_response_headers
    drf_request = view.initialize_request(request)
    drf_request.user, drf_request.auth = getattr(request, "user", None), None
    view.request = drf_request
    response = view.finalize_response(drf_request, view.handle_exception(exc))
    response.render()
    return response


def _from_response(response: HttpResponseBase, request: HttpRequest) -> Answer:
    """An answer from a response made the Django way (an error), with the middleware's headers."""
    if response.status_code >= 400:
        log_response(
            "%s: %s", response.reason_phrase, request.path, response=response, request=request
        )
    content = response.content
    own = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    return Answer(response.status_code, own + _middleware_headers(own, content), content)


def _headers(route: Route, content: bytes) -> Headers:
    """A JSON answer's headers: the view's, then the middleware's."""
    own = [(b"Content-Type", b"application/json"), (b"Allow", route.allow.encode("latin1"))]
    return own + _middleware_headers(own, content)


def _middleware_headers(own: Headers, content: bytes) -> Headers:
    """What the API's middleware adds to a response with headers `own`: the same headers
    for every answer, but Content-Length, and none the view already set."""
    present = {name.lower() for name, _ in own}
    return [
        (name, value if value is not None else str(len(content)).encode("ascii"))
        for name, value in _added_by_middleware()
        if name.lower() not in present
    ]


_added: list[tuple[bytes, bytes | None]] = []


def _added_by_middleware() -> list[tuple[bytes, bytes | None]]:
    """The headers the API's middleware adds, found once by letting it add them to a blank
    JSON response, in the order Django's chain calls it (Content-Length's value left open)."""
    if not _added:
        request = HttpRequest()
        request.method, request.path = "POST", routes.lane_endpoints()[0].url
        request.path_info = request.path
        response = HttpResponse(b"", content_type="application/json")
        before = set(response.headers)
        unused = lambda request: response  # noqa: E731 - no view runs behind these
        XFrameOptionsMiddleware(unused).process_response(request, response)
        CommonMiddleware(unused).process_response(request, response)
        ApiMiddleware(unused)._after(request, response)
        SecurityMiddleware(unused).process_response(request, response)
        _added.extend(
            (name.encode("ascii"), None if name == "Content-Length" else value.encode("latin1"))
            for name, value in response.items()
            if name not in before
        )
    return _added


async def send(answer: Answer, send: Callable[[dict[str, Any]], Any]) -> None:
    """Send an answer as Django's ASGI handler sends a response held in memory."""
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.content, "more_body": False})
