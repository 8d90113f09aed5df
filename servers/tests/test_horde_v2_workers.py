"""The AI Horde v2 workers and models endpoints (research §2.5, §2.7)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generations.models import Job
from koboldcluster.tests import horde_shapes as shapes
from servers.models import Server

pytestmark = pytest.mark.django_db

POP = "/api/v2/generate/text/pop"


@pytest.fixture
def dave(register):
    return register("dave")


@pytest.fixture
def popped(api, dave):
    """Dave's server `dave-1` checked in through a v2 pop."""

    def pop(name: str = "dave-1", **body):
        body = {"name": name, "models": ["tiny-llm"], "max_length": 200, **body}
        return api.post(POP, body, format="json", HTTP_APIKEY=dave[1])

    pop()
    return pop


def test_workers_lists_active_servers_like_servers_does(api, popped, bob):
    Server.objects.create(
        name="stale", owner=bob, last_check_in=timezone.now() - timedelta(hours=1)
    )

    body = api.get("/api/v2/workers").json()
    original = api.get("/servers").json()

    shapes.check(body, [shapes.WORKER])
    assert [w["name"] for w in body] == [s["name"] for s in original] == ["dave-1"]
    worker = body[0]
    assert worker["id"] == original[0]["id"]
    assert (worker["type"], worker["online"], worker["maintenance_mode"]) == ("text", True, False)
    assert worker["team"] == {"name": None, "id": None}
    assert (worker["max_length"], worker["max_context_length"]) == (200, 2048)
    assert worker["performance"] == "No requests fulfilled yet"
    assert "owner" not in worker and "info" not in worker
    assert (worker["paused"], worker["paused_reason"]) == (False, "")


def test_workers_filters_by_name_and_type(api, popped):
    popped("dave-2")

    by_name = api.get("/api/v2/workers?name=DAVE-2").json()
    text = api.get("/api/v2/workers?type=text").json()
    every = api.get("/api/v2/workers?type=").json()
    images = api.get("/api/v2/workers?type=image").json()

    assert [w["name"] for w in by_name] == ["dave-2"]
    assert len(text) == len(every) == 2
    assert images == []


def test_workers_ignores_an_unknown_key(api, popped):
    response = api.get("/api/v2/workers", HTTP_APIKEY="z" * 22)

    assert response.status_code == 200 and len(response.json()) == 1


def test_a_worker_by_id_and_by_name(api, popped, dave, submit_prompt):
    submit_prompt()
    job_id = popped().json()["id"]
    Job.objects.filter(id=job_id).update(started=timezone.now() - timedelta(seconds=2))
    api.post(
        "/api/v2/generate/text/submit",
        {"id": job_id, "generation": "x" * 40},
        format="json",
        HTTP_APIKEY=dave[1],
    )
    server = Server.objects.get(name="dave-1")

    by_id = api.get(f"/api/v2/workers/{server.id}").json()
    by_name = api.get("/api/v2/workers/name/dave-1").json()

    shapes.check(by_id, shapes.WORKER)
    assert by_id == by_name
    assert (by_id["requests_fulfilled"], by_id["kudos_rewards"]) == (1, 10.0)
    assert by_id["kudos_details"] == {"generated": 10.0, "uptime": 0}
    assert by_id["performance"].endswith(" tokens per second")


def test_the_owner_and_moderators_see_the_owner_and_pause(api, popped, dave, register):
    server = Server.objects.get(name="dave-1")
    _, moderator = register("mod", moderator=True)
    _, other = register("other")

    own = api.get(f"/api/v2/workers/{server.id}", HTTP_APIKEY=dave[1]).json()
    modded = api.get(f"/api/v2/workers/{server.id}", HTTP_APIKEY=moderator).json()
    stranger = api.get(f"/api/v2/workers/{server.id}", HTTP_APIKEY=other).json()

    assert (own["owner"], own["paused"]) == (f"dave#{dave[0].pk}", False)
    assert modded["owner"] == own["owner"]
    assert "owner" not in stranger


@pytest.mark.parametrize(
    "server_id",
    ["00000000-0000-4000-8000-000000000000", "not-a-uuid"],
    ids=["unknown", "malformed"],
)
def test_an_unknown_worker_is_404(api, server_id):
    response = api.get(f"/api/v2/workers/{server_id}")

    assert (response.status_code, response.json()["rc"]) == (404, "WorkerNotFound")


def test_uptime_grows_while_the_server_checks_in(api, popped, time_machine):
    # From the check-in the fixture's pop wrote on the real clock, on a stopped fake clock:
    # a clock that starts later, or ticks, would add however long the machine took.
    start = Server.objects.get(name="dave-1").last_check_in
    for seconds in (40, 80, 120):
        time_machine.move_to(start + timedelta(seconds=seconds), tick=False)
        popped()
    time_machine.move_to(start + timedelta(hours=2), tick=False)
    popped()  # back after being stale: that gap is not uptime

    server = Server.objects.get(name="dave-1")
    assert server.uptime == 120  # three gaps of 40 s


def test_the_owner_puts_a_server_in_maintenance_with_a_message(api, popped, dave, submit_prompt):
    server = Server.objects.get(name="dave-1")
    body = {"maintenance": True, "maintenance_msg": "new GPU", "info": "A 3090"}

    response = api.put(f"/api/v2/workers/{server.id}", body, format="json", HTTP_APIKEY=dave[1])
    submit_prompt()
    pop = popped()

    assert response.status_code == 200
    shapes.check(response.json(), shapes.WORKER_MODIFIED)
    assert response.json() == {"maintenance": True, "info": "A 3090"}
    server.refresh_from_db()
    assert (server.maintenance, server.maintenance_msg, server.info) == (True, "new GPU", "A 3090")
    assert pop.json() == {"message": "new GPU", "rc": "WorkerMaintenance"}
    assert api.get(f"/api/v2/workers/{server.id}").json()["info"] == "A 3090"


def test_renaming_a_server(api, popped, dave):
    popped("dave-2")
    server = Server.objects.get(name="dave-1")
    url = f"/api/v2/workers/{server.id}"

    renamed = api.put(url, {"name": "dave-one"}, format="json", HTTP_APIKEY=dave[1])
    taken = api.put(url, {"name": "dave-2"}, format="json", HTTP_APIKEY=dave[1])

    assert renamed.json() == {"name": "dave-one"}
    assert (taken.status_code, taken.json()["rc"]) == (400, "WorkerNameAlreadyExists")
    assert Server.objects.get(pk=server.pk).name == "dave-one"


@pytest.mark.parametrize(
    ("who", "body", "status", "rc"),
    [
        ("other", {"maintenance": True}, 403, "NotOwner"),
        ("owner", {"paused": True}, 403, "NotModerator"),
        ("anonymous", {"maintenance": True}, 403, "AnonForbidden"),
        ("owner", {}, 400, "NoWorkerModSelected"),
        ("owner", {"team": "some-team"}, 404, "TeamNotFound"),
        ("owner", {"name": "abc"}, 400, "ValidationError"),
        ("unknown", {"maintenance": True}, 401, "InvalidAPIKey"),
        ("nobody", {"maintenance": True}, 401, "InvalidAPIKey"),
    ],
)
def test_changing_a_server_is_refused(api, popped, dave, register, who, body, status, rc):
    server = Server.objects.get(name="dave-1")
    keys = {
        "owner": dave[1],
        "other": register("other")[1],
        "anonymous": "0000000000",
        "unknown": "u" * 22,
    }
    headers = {"HTTP_APIKEY": keys[who]} if who in keys else {}

    response = api.put(f"/api/v2/workers/{server.id}", body, format="json", **headers)

    assert (response.status_code, response.json()["rc"]) == (status, rc)
    server.refresh_from_db()
    assert (server.maintenance, server.paused) == (False, False)


def test_a_moderator_pauses_a_server(api, popped, register):
    server = Server.objects.get(name="dave-1")
    _, moderator = register("mod", moderator=True)

    response = api.put(
        f"/api/v2/workers/{server.id}", {"paused": True}, format="json", HTTP_APIKEY=moderator
    )

    assert response.json() == {"paused": True}
    assert Server.objects.get(pk=server.pk).paused is True


def test_the_owner_deletes_a_server(api, popped, dave, register):
    server = Server.objects.get(name="dave-1")
    url = f"/api/v2/workers/{server.id}"

    refused = api.delete(url, HTTP_APIKEY=register("other")[1])
    deleted = api.delete(url, HTTP_APIKEY=dave[1])

    assert (refused.status_code, refused.json()["rc"]) == (403, "NotOwner")
    shapes.check(deleted.json(), shapes.WORKER_DELETED)
    assert deleted.json() == {"deleted_id": str(server.id), "deleted_name": "dave-1"}
    assert not Server.objects.exists()


def test_status_models_counts_threads_queue_and_speed(api, popped, submit_prompt):
    popped("dave-2", threads=3)
    Server.objects.filter(name="dave-2").update(speed=10.0)
    submit_prompt(models=["tiny-llm"], params={"n": 2, "max_length": 200})
    submit_prompt(params={"max_length": 50})  # any model: counted for none

    body = api.get("/api/v2/status/models?type=text").json()

    shapes.check(body, [shapes.MODEL])
    assert body == [
        {
            "name": "tiny-llm",
            "count": 4,
            "performance": 10.0,
            "queued": 400.0,
            "jobs": 2.0,
            "eta": 10,  # 400 tokens at 4 threads × 10 tokens/s
            "type": "text",
        }
    ]


def test_status_models_defaults_to_images_and_filters(api, popped):
    assert api.get("/api/v2/status/models").json() == []
    assert api.get("/api/v2/status/models?type=text&min_count=2").json() == []
    assert len(api.get("/api/v2/status/models?type=text&max_count=2").json()) == 1
    assert api.get("/api/v2/status/models?type=text&model_state=known").json() == []
    bad = api.get("/api/v2/status/models?type=sound")
    assert (bad.status_code, bad.json()["rc"]) == (400, "ValidationError")


def test_status_models_of_one_model(api, popped):
    popped("dave-2", models=["koboldcpp/Llama-3-8B"])

    body = api.get("/api/v2/status/models/koboldcpp/Llama-3-8B").json()

    assert [m["name"] for m in body] == ["koboldcpp/Llama-3-8B"]
    assert api.get("/api/v2/status/models/nothing").json() == []
