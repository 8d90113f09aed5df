"""Where the direct lane runs (koboldcluster/lane_on_loop.py): on SQLite on the event loop's
own thread, with no loop marked running while it does (Django's guard against synchronous
database calls in async code stays on for everything else); on PostgreSQL on the sync
thread. Either way the loop runs on afterwards, also after the lane raised."""

from __future__ import annotations

import asyncio
import threading
import uuid

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections

from generations.models import Prompt
from koboldcluster import direct
from koboldcluster.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ASK = {"prompt": "Hello", "params": {"max_length": 20}}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio.events._get_running_loop()


def _through_the_app(requests: list[tuple[str, str, dict | None]], apikey: str = "") -> tuple:
    """Send `requests` to the application on a loop of this thread, as the web server's worker
    runs it (not under async_to_sync, as the tests' client does): the loop's thread and answers."""

    async def main() -> tuple[int, list[httpx.Response]]:
        transport = httpx.ASGITransport(app=application)
        headers = {"apikey": apikey} if apikey else {}
        answers = []
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver", headers=headers
            ) as client:
                for method, path, body in requests:
                    answers.append(await client.request(method, path, json=body))
                    assert _running_loop() is asyncio.get_running_loop()  # marked again
        finally:
            await sync_to_async(connections.close_all)()
        return threading.get_ident(), answers

    return asyncio.run(main())


@pytest.fixture
def where_the_lane_runs(monkeypatch):
    seen: list[tuple[int, asyncio.AbstractEventLoop | None]] = []
    answer = direct.answer

    def watched(*args):
        seen.append((threading.get_ident(), _running_loop()))
        return answer(*args)

    monkeypatch.setattr(direct, "answer", watched)
    return seen


def test_the_lane_runs_on_the_loop_on_sqlite_and_on_the_sync_thread_elsewhere(
    where_the_lane_runs, register
):
    _, client_key = register("lane-client")
    loop_thread, (created, status) = _through_the_app(
        [("POST", "/generate/prompt", ASK), ("GET", f"/generate/prompt/{uuid.uuid4()}", None)],
        apikey=client_key,
    )

    assert created.status_code == 200, created.text
    assert status.status_code == 404  # the lane answers an unknown prompt as its view does
    assert Prompt.objects.filter(pk=created.json()["id"]).exists()  # committed, seen elsewhere
    assert len(where_the_lane_runs) == 2
    for thread, running in where_the_lane_runs:
        if connection.vendor == "sqlite":
            assert (thread, running) == (loop_thread, None)
        else:
            assert thread != loop_thread


def test_the_loop_is_marked_running_again_after_the_lane_raised(monkeypatch):
    def broken(*args):
        raise RuntimeError("the lane broke")

    monkeypatch.setattr(direct, "answer", broken)

    async def main() -> asyncio.AbstractEventLoop | None:
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                answer = await c.get(f"/generate/prompt/{uuid.uuid4()}")
                assert answer.status_code == 500
                return _running_loop()
        finally:
            await sync_to_async(connections.close_all)()

    loop_after = asyncio.run(main())
    assert loop_after is not None
