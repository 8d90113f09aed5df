"""What every API response needs before any view runs: CORS, and paths that never redirect."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware

from koboldcluster import routes

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
_NOT_API = routes.PAGE_PREFIXES
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


class _Inline(SyncAndAsyncMiddleware):
    """One of Django's header-and-check middleware (`wrapped`), run inline in either chain:
    its process_request and process_response read no database and never wait, so an async
    chain need not take the step onto the sync thread Django's adapter would make for it."""

    wrapped: type

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        self.inner = self.wrapped(lambda request: None)  # only its process_* are called

    def _before(self, request: HttpRequest) -> HttpResponseBase | None:
        process = getattr(self.inner, "process_request", None)
        return process(request) if process is not None else None

    def _after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        process = getattr(self.inner, "process_response", None)
        return process(request, response) if process is not None else response

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        response = self._before(request)
        return self._after(request, response or self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = self._before(request)
        return self._after(request, response or await self.get_response(request))


class InlineSecurityMiddleware(_Inline):
    wrapped = SecurityMiddleware


class InlineCommonMiddleware(_Inline):
    wrapped = CommonMiddleware


class InlineXFrameOptionsMiddleware(_Inline):
    wrapped = XFrameOptionsMiddleware


# Django's middleware of settings.MIDDLEWARE -> its inline stand-in (koboldcluster.asgi's
# waiting paths: ALLOWED_HOSTS, HTTPS redirects, HSTS, `nosniff` there too).
INLINE_MIDDLEWARE = {
    f"{cls.wrapped.__module__}.{cls.wrapped.__name__}": f"{__name__}.{cls.__name__}"
    for cls in (InlineSecurityMiddleware, InlineCommonMiddleware, InlineXFrameOptionsMiddleware)
}
