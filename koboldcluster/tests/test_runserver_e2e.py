"""`manage.py runserver` serves the cluster's ASGI application (issue 24: one entry), not
Django's WSGI handler: a real runserver process on the test database, asked as a client."""

from __future__ import annotations

import sys

import pytest
import requests

from koboldcluster.testing import ClusterProcess, started

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class RunserverProcess(ClusterProcess):
    """`manage.py runserver --noreload` on a free port, with the cluster's test environment."""

    def __init__(self) -> None:
        super().__init__()
        self.args = [
            sys.executable,
            "manage.py",
            "runserver",
            "--noreload",
            f"127.0.0.1:{self.port}",
        ]


def test_runserver_holds_a_waiting_pop_on_the_asgi_entry(register):
    _, key = register("carol")
    pop = {"name": "carol-1", "models": ["m"], "max_length": 80, "wait": 1}
    with started(RunserverProcess()) as (server,):
        held = requests.post(
            f"{server.url}/api/v2/generate/text/pop", json=pop, headers={"apikey": key}, timeout=30
        )
        heartbeat = requests.get(f"{server.url}/api/v2/status/heartbeat", timeout=30)

    assert held.status_code == 200 and held.json()["id"] is None
    assert heartbeat.headers["server"] == "uvicorn"  # the ASGI server, not Django's WSGIServer
    assert heartbeat.headers["Access-Control-Allow-Origin"] == "*"
