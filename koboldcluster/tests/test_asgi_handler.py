"""The cluster's ASGI handler answers API requests exactly as Django's full middleware chain
does, although it runs them without the middleware of the pages (koboldcluster/asgi.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import Client

from koboldcluster.asgi import API_PREFIXES, ClusterASGIHandler, application

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = [
    ("GET", "/api/v2/status/heartbeat", None),
    ("GET", "/generate/prompt/not-a-prompt", None),
    ("POST", "/generate/prompt", {"prompt": 5}),
    ("POST", "/generate/pop", {"name": "x", "model": "m"}),
    ("GET", "/api/v1/model", None),
    ("GET", "/v1/models", None),
    ("OPTIONS", "/api/v2/generate/text/async", None),
]


def through_the_cluster_app(method: str, path: str, body: Any) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                headers = {"Access-Control-Request-Method": "POST"} if method == "OPTIONS" else {}
                return await c.request(method, path, json=body, headers=headers)
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(main())


def through_djangos_handler(method: str, path: str, body: Any) -> Any:
    extra = {"HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"} if method == "OPTIONS" else {}
    return Client().generic(
        method, path, data=b"" if body is None else httpx.Request("POST", "/", json=body).read(),
        content_type="application/json", **extra,
    )  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
def test_an_api_answer_is_the_same_through_the_lean_chain(method, path, body):
    ours = through_the_cluster_app(method, path, body)
    django = through_djangos_handler(method, path, body)

    assert path.startswith(API_PREFIXES)
    assert ours.status_code == django.status_code
    assert ours.content == django.content
    assert dict(ours.headers) == {k.lower(): v for k, v in django.headers.items()}


def test_pages_keep_their_sessions_and_csrf():
    login = through_the_cluster_app("GET", "/admin/login/", None)

    assert login.status_code == 200
    assert "csrfmiddlewaretoken" in login.text
    assert "csrftoken" in login.headers["set-cookie"]


def test_the_lean_chain_leaves_out_the_page_middleware_alone():
    handler = ClusterASGIHandler()
    names = lambda h: [type(m).__name__ for m in _chain(h)]  # noqa: E731

    left_out = set(names(handler.sync_handler)) - set(names(handler.api_handler))

    assert left_out == {
        "StaticFilesMiddleware",
        "SessionMiddleware",
        "CsrfViewMiddleware",
        "AuthenticationMiddleware",
        "MessageMiddleware",
    }


def _chain(handler: Any) -> list[Any]:
    """The middleware instances of a loaded handler, outermost first."""
    found, current = [], handler._middleware_chain
    while hasattr(current, "get_response") or hasattr(current, "__wrapped__"):
        current = getattr(current, "__wrapped__", current)
        if not hasattr(current, "get_response"):
            break
        found.append(current)
        current = current.get_response
    return found


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "*/*", ""])
def test_the_api_answers_json_whatever_the_client_accepts(api, accept):
    response = api.get("/api/v2/status/heartbeat", HTTP_ACCEPT=accept)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"message": "OK", "version": response.json()["version"]}
