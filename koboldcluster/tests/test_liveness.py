"""`/healthz` is answered on the event loop (koboldcluster/liveness.py): the answer Django's
chain gives, given while the process's sync thread is busy, where `/readyz` waits its turn."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.db import connections

from koboldcluster.asgi import application
from koboldcluster.tests.test_asgi_handler import through_djangos_handler, through_the_cluster_app

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_probe_is_answered_as_djangos_chain_answers_it():
    ours = through_the_cluster_app("GET", "/healthz", None)
    django = through_djangos_handler("GET", "/healthz", None)

    assert (ours.status_code, ours.json()) == (200, {"status": "ok"})
    assert ours.content == django.content
    assert dict(ours.headers) == {k.lower(): v for k, v in django.headers.items()}


def test_a_disallowed_host_is_refused_as_django_refuses_it():
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get("/healthz", headers={"Host": "not allowed.example"})

    assert asyncio.run(main()).status_code == 400


def test_the_probe_is_answered_while_the_sync_thread_is_busy():
    release = threading.Event()
    busy = SyncToAsync.single_thread_executor.submit(release.wait, 30)  # the one sync thread

    async def main() -> tuple[httpx.Response, bool, httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                probe = await asyncio.wait_for(c.get("/healthz"), 5)
                ready = asyncio.ensure_future(c.get("/readyz"))
                await asyncio.sleep(0.5)
                ready_waited = not ready.done()
                release.set()
                return probe, ready_waited, await asyncio.wait_for(ready, 30)
        finally:
            release.set()
            await sync_to_async(connections.close_all)()

    try:
        probe, ready_waited, ready = asyncio.run(main())
    finally:
        release.set()
        busy.result(timeout=30)

    assert (probe.status_code, probe.json()) == (200, {"status": "ok"})
    assert ready_waited  # `/readyz` checks the database: on the sync thread, after its turn
    assert ready.status_code in (200, 503)
