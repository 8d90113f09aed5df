"""What every API response needs before any view runs: CORS, and paths that never redirect."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

# The AI Horde's CORS headers (research §1.1): KoboldAI Lite calls the API from the browser.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE, PATCH",
    "Access-Control-Allow-Headers": (
        "Accept, Authorization, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, "
        "apikey, Client-Agent, X-Fields, X-Forwarded-For, Proxied-For, Proxy-Authorization"
    ),
}
# Browsers may reuse a preflight answer this long (seconds).
PREFLIGHT_MAX_AGE = "86400"

# Pages for people, with Django's session login and CSRF protection: no CORS there.
_NOT_API = ("/admin/", "/register", "/static/")
_SLASHES = re.compile(r"//+")


class SyncAndAsyncMiddleware:
    """A middleware that runs the way of the chain it is in, sync or async: under ASGI a
    waiting view must not be run behind a sync-only middleware, which would hold a thread for
    it, and a sync request must not pay a step onto the event loop for it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)


def is_api_path(path: str) -> bool:
    return not path.startswith(_NOT_API)


class ApiMiddleware(SyncAndAsyncMiddleware):
    """CORS on every API response, preflights answered here, and `//` read as `/`.

    A bridge configured with `cluster_url=http://host:5001/` asks for `//api/v2/…`; merging
    the slashes serves it instead of a 404, without a redirect (which would turn a POST into
    a GET for many clients).
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        preflight = self._before(request)
        return self._after(request, preflight or self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        preflight = self._before(request)
        return self._after(request, preflight or await self.get_response(request))

    def _before(self, request: HttpRequest) -> HttpResponse | None:
        """Merge slashes; answer a CORS preflight here."""
        if "//" in request.path_info:
            request.path_info = _SLASHES.sub("/", request.path_info)
            request.path = _SLASHES.sub("/", request.path)
        is_preflight = request.method == "OPTIONS" and (
            "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META
        )
        if is_api_path(request.path_info) and is_preflight:
            response = HttpResponse(status=200)
            response["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
            return response
        return None

    def _after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if is_api_path(request.path_info):
            for name, value in CORS_HEADERS.items():
                response[name] = value
        return response


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise (the admin's assets), able to sit in front of async views.

    WhiteNoise's middleware is sync-only; under ASGI Django would then run every view behind
    it, waiting ones too, through a thread. Files are still served by WhiteNoise itself.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:  # DEBUG: looks on the disk
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
