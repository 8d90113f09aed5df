"""What every API response needs before any view runs: CORS, and paths that never redirect."""

from __future__ import annotations

import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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


def is_api_path(path: str) -> bool:
    return not path.startswith(_NOT_API)


class ApiMiddleware:
    """CORS on every API response, preflights answered here, and `//` read as `/`.

    A bridge configured with `cluster_url=http://host:5001/` asks for `//api/v2/…`; merging
    the slashes serves it instead of a 404, without a redirect (which would turn a POST into
    a GET for many clients).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "//" in request.path_info:
            request.path_info = _SLASHES.sub("/", request.path_info)
            request.path = _SLASHES.sub("/", request.path)
        if not is_api_path(request.path_info):
            return self.get_response(request)
        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META:
            response = HttpResponse(status=200)
            response["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        else:
            response = self.get_response(request)
        for name, value in CORS_HEADERS.items():
            response[name] = value
        return response
