"""Request bodies on the way in: the size limit and deep JSON, on the direct lane and off it.

DATA_UPLOAD_MAX_MEMORY_SIZE is Django's body limit, but Django checks it only in
`request.body`, which neither DRF nor the direct lane reads: the handler applies it while it
reads the body (koboldcluster/asgi.py), and every API view answers 413 in its own shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.conf import settings

from generations.models import Prompt
from koboldcluster.asgi import OversizedBody, application
from koboldcluster.tests.test_direct import _through_the_app

pytestmark = pytest.mark.django_db(transaction=True)

ONE_MB = 1024 * 1024


def over_the_limit() -> bytes:
    filler = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)
    return ('{"prompt": "' + filler + '", "username": "alice"}').encode()


@pytest.mark.parametrize("path", ["/generate/prompt", "/api/v2/generate/text/async"])
def test_an_oversized_body_on_the_lane_is_413_json(path):
    response = _through_the_app("POST", path, over_the_limit(), {"apikey": "0000000000"})
    assert response.status_code == 413, response.content
    assert response.json()["rc"] == "PayloadTooLarge"
    assert not Prompt.objects.exists()


def test_an_oversized_body_on_a_waiting_path_is_413_in_openai_shape():
    response = _through_the_app("POST", "/v1/completions", over_the_limit(), {})
    assert response.status_code == 413, response.content
    assert "error" in response.json()
    assert not Prompt.objects.exists()


@pytest.mark.parametrize("path", ["/generate/prompt", "/generate/pop", "/v1/completions"])
def test_json_nested_thousands_deep_is_400_not_500(path):
    body = b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = _through_the_app("POST", path, body, {"content-type": "application/json"})
    assert response.status_code == 400, response.content


def _receive_of(chunks: list[bytes]) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    received: list[Any] = []

    async def receive() -> dict[str, Any]:
        received.append(messages[len(received)])
        return received[-1]

    return receive, received


def test_a_body_declared_too_long_is_not_read_at_all():
    receive, received = _receive_of([b"x" * ONE_MB] * 3)
    declared = str(3 * ONE_MB).encode()
    scope = {"headers": [(b"content-length", declared)]}
    body = asyncio.run(application.read_body(receive, scope))
    assert isinstance(body, OversizedBody) and received == []


def test_an_undeclared_body_is_not_kept_past_the_limit():
    chunks = [b"x" * ONE_MB] * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // ONE_MB + 2)
    receive, received = _receive_of(chunks)
    body = asyncio.run(application.read_body(receive, {"headers": []}))
    assert isinstance(body, OversizedBody) and len(received) == len(chunks) + 1


def test_a_body_within_the_limit_is_read_as_sent():
    receive, _ = _receive_of([b'{"a":', b" 1}"])
    body = asyncio.run(application.read_body(receive, {"headers": []}))
    assert body.read() == b'{"a": 1}'


def test_a_declared_body_is_read_without_the_empty_last_message_after_it():
    """A server may send a body's bytes, then an empty last message (granian did, each receive
    a round trip between its threads and the event loop): the handler stops at the declared
    length."""
    receive, received = _receive_of([b'{"a":', b" 1}"])
    scope = {"http_version": "1.1", "headers": [(b"content-length", b"8")]}
    body = asyncio.run(application.read_body(receive, scope))
    assert body.read() == b'{"a": 1}' and len(received) == 2


@pytest.mark.parametrize(
    ("scope", "receives"),
    [
        ({"http_version": "1.1", "headers": []}, 0),  # HTTP/1: no length, no chunks, no body
        ({"http_version": "1.1", "headers": [(b"transfer-encoding", b"chunked")]}, 3),
        ({"http_version": "2", "headers": []}, 3),  # HTTP/2 may send a body without a length
    ],
)
def test_a_body_without_a_declared_length_is_read_to_its_end_if_there_may_be_one(scope, receives):
    receive, received = _receive_of([b"ab", b"c"])
    body = asyncio.run(application.read_body(receive, scope))
    assert len(received) == receives and body.read() == (b"abc" if receives else b"")
