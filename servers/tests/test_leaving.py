"""A stopping bridge says so (`"leaving": true` on either pop): its server is inactive at once."""

from __future__ import annotations

import pytest

from generations.models import Job
from servers.models import Server

pytestmark = pytest.mark.django_db

V2_POP = "/api/v2/generate/text/pop"


def test_a_leaving_server_gets_no_job_and_is_inactive_at_once(api, pop, submit_prompt):
    assert pop().json()["id"] is None
    assert [s["name"] for s in api.get("/servers").json()] == ["bob-1"]
    submit_prompt(params={"n": 1, "max_length": 16}, username="alice")

    answer = pop(leaving=True)

    assert answer.status_code == 200
    assert answer.json() == {"id": None, "skipped": {}}
    assert not Job.objects.exists()  # the waiting prompt was not handed to it
    assert api.get("/servers").json() == []
    assert not Server.objects.get(name="bob-1").is_active()
    # Back: its next pop checks it in as after any absence, and it gets the job.
    assert pop().json()["id"] is not None
    assert [s["name"] for s in api.get("/servers").json()] == ["bob-1"]


def test_a_leaving_horde_worker_is_inactive_at_once(api, register):
    _, key = register("dave")
    body = {"name": "dave-1", "models": ["m"]}
    api.post(V2_POP, body, format="json", HTTP_APIKEY=key)
    assert [w["name"] for w in api.get("/api/v2/workers").json()] == ["dave-1"]

    answer = api.post(V2_POP, {**body, "leaving": True, "wait": 5}, format="json", HTTP_APIKEY=key)

    assert answer.status_code == 200 and answer.json()["id"] is None
    assert api.get("/api/v2/workers").json() == []


def test_leaving_must_be_a_boolean(pop):
    response = pop(leaving="yes")
    assert response.status_code == 400
    assert "leaving" in response.json()["errors"]
