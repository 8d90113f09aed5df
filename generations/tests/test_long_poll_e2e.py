"""Long-poll across real processes: a prompt posted to one app process wakes a pop waiting on
another (two nodes on one database), without Redis (Unix datagrams between the processes of
one machine) and with Redis (pub/sub, as several machines would)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from django.db import connection

from conftest import SERVER_PASSWORD
from koboldcluster.testing import ClusterProcess, redis_env, started

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DISPATCH_BOUND = 2.0  # generous: measured a few milliseconds (manage.py benchmark_dispatch)


@pytest.fixture(params=["datagrams", "redis"])
def two_nodes(request: Any):
    env = redis_env() if request.param == "redis" else {}
    with started(ClusterProcess(env), ClusterProcess(env)) as nodes:
        yield nodes


def test_a_prompt_posted_to_one_node_wakes_a_pop_waiting_on_the_other(two_nodes):
    node_a, node_b = two_nodes
    # The first pop with a new name creates the account (the process hashes the password).
    server = {
        "username": "bob",
        "password": SERVER_PASSWORD,
        "name": "bob-1",
        "model": "tiny-llm",
        "wait": 20,
    }
    answer: dict[str, Any] = {}

    def waiting_pop() -> None:
        response = requests.post(f"{node_b.url}/generate/pop", json=server, timeout=30)
        answer["at"], answer["body"] = time.monotonic(), response.json()

    popper = threading.Thread(target=waiting_pop)
    popper.start()
    time.sleep(1.0)  # node B has found nothing and waits
    assert popper.is_alive(), (answer, node_b.output())
    created = requests.post(
        f"{node_a.url}/generate/prompt",
        json={"prompt": "Hello", "params": {"n": 1, "max_length": 16}, "username": "eve"},
        timeout=10,
    )
    posted = time.monotonic()
    popper.join(timeout=30)

    assert created.status_code == 200, created.text
    assert answer["body"]["id"] is not None, answer
    assert answer["at"] - posted < DISPATCH_BOUND, node_b.output()


def test_waiting_pops_hold_no_database_connection():
    """30 pops wait on a web process: it keeps one connection for all of them (and maybe one
    for a re-check of the queue), and the rest still works."""
    if connection.vendor != "postgresql":
        pytest.skip("counts the web process's connections on PostgreSQL")
    node = ClusterProcess()
    answers: list[dict] = []

    def waiting_pop(index: int) -> None:
        body = {"username": "bob", "password": SERVER_PASSWORD, "name": f"bob-{index}"}
        response = requests.post(
            f"{node.url}/generate/pop", json={**body, "model": "m", "wait": 8}, timeout=30
        )
        answers.append(response.json())

    try:
        node.start()
        waiting_pop(0)  # creates bob's account (no wait: nothing there, answers after 8 s)
        poppers = [threading.Thread(target=waiting_pop, args=(i,)) for i in range(1, 31)]
        for popper in poppers:
            popper.start()
        time.sleep(2)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                [connection.settings_dict["NAME"]],
            )
            (server_connections,) = cursor.fetchone()
        started = time.monotonic()
        created = requests.post(
            f"{node.url}/generate/prompt",
            json={"prompt": "Hello", "params": {"n": 1, "max_length": 16}, "username": "eve"},
            timeout=30,
        )
        took = time.monotonic() - started
        for popper in poppers:
            popper.join(timeout=30)
    finally:
        node.stop()
    assert server_connections <= 2
    assert created.status_code == 200 and took < 5
    assert sum(1 for answer in answers if answer.get("id")) == 1, answers
