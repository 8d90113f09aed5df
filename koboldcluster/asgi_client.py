"""Test clients that send every request through the entry production serves (issue 24).

Django's and DRF's test clients hand a request straight to Django's handler, which the web
server never calls: the cluster's ASGI application (`koboldcluster.asgi`) answers the hottest API
requests on its direct lane, holds long-poll pops itself and runs the waiting endpoints on a
chain of their own. `Client` and `APIClient` here keep the interface of Django's and DRF's
(`get`/`post`/... with `format="json"` and `HTTP_*` extras, `credentials`, `force_login`,
cookies, `json()`, exceptions re-raised), but send each request into that application as an
ASGI server would, and build the response from what it sends back.

The application runs in an event loop of the request's own while the calling thread waits;
its synchronous steps (asgiref's thread-sensitive `sync_to_async`) run on the calling thread
itself, as they run on the web process's one sync thread in production. So a request sees the
test's database connection, and inside a `db` test the rows the test wrote in its unfinished
transaction. As Django's test clients do, the clients do not let the request close that
connection (`close_old_connections`), and they give requests a CSRF cookie and token unless
asked to enforce CSRF checks (a browser's form would carry them; Django's client skips the
check instead, which an ASGI request cannot be told).

Each client makes its application when it sends its first request, as Django's test client
loads its middleware then and a web worker makes it at start: settings a test changed before
(middleware, HSTS, the lane's switch) are read as production would read them at start.
"""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.test import Client as DjangoClient
from rest_framework.test import APIClient as DrfAPIClient

# The CSRF secret a client that does not enforce CSRF checks sends (cookie and header alike).
_CSRF_SECRET = "asgitestclientcsrfsecret00000000"  # 32 characters, as Django's secrets


class ASGIClientHandler:
    """Stands in for Django's ClientHandler: a WSGI environ (what the request factories
    build) in, an HttpResponse out, by way of the cluster's ASGI application."""

    def __init__(self, enforce_csrf_checks: bool = False) -> None:
        self.enforce_csrf_checks = enforce_csrf_checks
        self.application: Any = None

    def __call__(self, environ: dict[str, Any]) -> HttpResponseBase:
        if self.application is None:
            from koboldcluster.asgi import ClusterASGIHandler

            self.application = ClusterASGIHandler()
        scope = asgi_scope(environ, csrf=not self.enforce_csrf_checks)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        # As Django's test clients: the request must not close the test's connection.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            status, headers, chunks = async_to_sync(exchange)(self.application, scope, body)
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        response = http_response(status, headers, chunks, head=scope["method"] == "HEAD")
        response.wsgi_request = WSGIRequest(environ)  # type: ignore[attr-defined]
        return response


def asgi_scope(environ: dict[str, Any], csrf: bool = False) -> dict[str, Any]:
    """The ASGI HTTP scope an ASGI server would make of the request in `environ`."""
    raw_path = environ["PATH_INFO"].encode("iso-8859-1")  # a WSGI string: bytes as latin-1
    headers: list[tuple[bytes, bytes]] = []
    host = environ.get("HTTP_HOST") or _host(environ)
    headers.append((b"host", host.encode("latin-1")))
    for key, value in environ.items():
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.lower().replace("_", "-").encode(), str(value).encode("latin-1")))
        elif key.startswith("HTTP_") and key != "HTTP_HOST":
            name = key[5:].lower().replace("_", "-").encode("latin-1")
            headers.append((name, str(value).encode("latin-1")))
    if csrf:
        headers = _with_csrf_token(headers)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": environ["REQUEST_METHOD"].upper(),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": raw_path.decode("utf-8", "replace"),
        "raw_path": quote(raw_path, safe="/:@!$&'()*+,;=-._~").encode("ascii"),
        "query_string": environ.get("QUERY_STRING", "").encode("iso-8859-1"),
        "root_path": environ.get("SCRIPT_NAME", ""),
        "headers": headers,
        "client": (environ.get("REMOTE_ADDR", "127.0.0.1"), int(environ.get("REMOTE_PORT", 0))),
        "server": (environ.get("SERVER_NAME", "testserver"), int(environ.get("SERVER_PORT", 80))),
    }


def _host(environ: dict[str, Any]) -> str:
    name, port = environ.get("SERVER_NAME", "testserver"), str(environ.get("SERVER_PORT", "80"))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if port == default else f"{name}:{port}"


def _with_csrf_token(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request as a page's own form would send it: the CSRF cookie and its token."""
    cookie_name = settings.CSRF_COOKIE_NAME.encode("latin-1")
    header_name = settings.CSRF_HEADER_NAME[5:].lower().replace("_", "-").encode("latin-1")
    cookies = SimpleCookie()
    for name, value in headers:
        if name == b"cookie":
            cookies.load(value.decode("latin-1"))
    if settings.CSRF_COOKIE_NAME in cookies:
        secret = cookies[settings.CSRF_COOKIE_NAME].value
    else:
        secret = _CSRF_SECRET
        kept = [value for name, value in headers if name == b"cookie" and value]
        headers = [(name, value) for name, value in headers if name != b"cookie"]
        headers.append((b"cookie", b"; ".join([*kept, cookie_name + b"=" + secret.encode()])))
    if not any(name == header_name for name, _ in headers):
        headers.append((header_name, secret.encode("latin-1")))
    return headers


async def exchange(
    application: Any, scope: dict[str, Any], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], list[bytes]]:
    """Run one request through `application` as an ASGI server would: the body, then (once
    the response is complete) a disconnect; the response's status, headers and body parts."""
    complete = asyncio.Event()
    started: dict[str, Any] = {}
    chunks: list[bytes] = []
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                complete.set()

    await application(scope, receive, send)
    complete.set()
    if not started:
        raise AssertionError(f"{scope['method']} {scope['path']}: the application sent nothing")
    return started["status"], list(started.get("headers", [])), chunks


def http_response(
    status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes], head: bool = False
) -> HttpResponseBase:
    """The response as Django's test client would hand it over: in memory when the server
    was told its length, otherwise streaming (event streams, files)."""
    names = {name.lower() for name, _ in headers}
    content = b"" if head else b"".join(chunks)
    response: HttpResponseBase
    if b"content-length" in names:
        response = HttpResponse(content, status=status)
    else:
        response = StreamingHttpResponse(iter([content] if content else []), status=status)
    for name in list(response.headers):
        del response.headers[name]
    for name, value in headers:
        text = value.decode("latin-1")
        if name.lower() == b"set-cookie":
            response.cookies.load(text)
        else:
            response.headers[name.decode("latin-1")] = text
    return response


class Client(DjangoClient):
    """Django's test client, through the cluster's ASGI application."""

    def __init__(self, enforce_csrf_checks: bool = False, **kwargs: Any) -> None:
        super().__init__(enforce_csrf_checks, **kwargs)
        self.handler = ASGIClientHandler(enforce_csrf_checks)


class APIClient(DrfAPIClient):
    """DRF's test client (`format="json"`, `credentials`), through the cluster's ASGI
    application. `force_authenticate` has no place there: API keys are sent as headers."""

    def __init__(self, enforce_csrf_checks: bool = False, **defaults: Any) -> None:
        super().__init__(enforce_csrf_checks, **defaults)
        self.handler = ASGIClientHandler(enforce_csrf_checks)

    def force_authenticate(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("send the account's API key: HTTP_APIKEY=<key>")
