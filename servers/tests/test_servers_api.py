"""GET /servers, /servers/<id>, /models."""

import uuid

import pytest

from servers.models import Server

pytestmark = pytest.mark.django_db

SERVER_KEYS = {
    "name",
    "id",
    "model",
    "max_length",
    "max_content_length",
    "tokens_generated",
    "requests_fulfilled",
    "latest_performance",
}


def test_servers_lists_active_servers(api, pop):
    pop(name="one", model="tiny-llm", max_length=80, max_content_length=1632)

    listed = api.get("/servers").json()

    assert len(listed) == 1
    assert set(listed[0]) == SERVER_KEYS
    assert listed[0] == {
        "name": "one",
        "id": str(Server.objects.get().id),
        "model": "tiny-llm",
        "max_length": 80,
        "max_content_length": 1632,
        "tokens_generated": 0,
        "requests_fulfilled": 0,
        "latest_performance": "No requests fulfilled yet",
    }


def test_stale_servers_are_hidden_from_the_list_but_not_from_their_page(api, pop, time_machine):
    time_machine.move_to("2030-01-01 00:00:00+00:00", tick=False)
    pop(name="old")
    time_machine.move_to("2030-01-01 00:04:00+00:00", tick=False)
    pop(name="recent")
    time_machine.move_to("2030-01-01 00:05:01+00:00", tick=False)

    assert [s["name"] for s in api.get("/servers").json()] == ["recent"]
    old = Server.objects.get(name="old")
    assert api.get(f"/servers/{old.id}").json()["name"] == "old"


def test_unknown_server_is_404(api):
    for server_id in (uuid.uuid4(), "nope"):
        response = api.get(f"/servers/{server_id}")

        assert response.status_code == 404
        assert response.json()["rc"] == "ServerNotFound"


def test_latest_performance_is_seconds_per_token(bob):
    server = Server.objects.create(name="s", owner=bob, speed=1 / 0.74, requests_fulfilled=3)

    assert server.latest_performance() == "0.74 seconds per token"
    server.speed = 320.0
    assert server.latest_performance() == "0.0031 seconds per token"


def test_models_counts_active_servers_per_model(api, pop):
    pop(name="a", model="tiny-llm")
    pop(name="b", model="tiny-llm")
    pop(name="c", model="big-llm")

    assert api.get("/models").json() == {"big-llm": 1, "tiny-llm": 2}
