"""The direct lane (koboldcluster/direct.py) answers exactly as Django's request stack does.

Each request is sent twice into the ASGI application `./run.sh` serves: once as it comes
(the lane answers it, or leaves it to Django), once with the lane turned off. Status, headers
and body must be the same, but for the ids of what each created. Every case also says whether
the lane must answer it itself, so that a lane that quietly left everything to Django fails.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connections
from django.utils import timezone

from conftest import SERVER_PASSWORD
from generations.models import Job, Prompt
from koboldcluster import direct
from koboldcluster.asgi import application
from servers.models import Server

pytestmark = pytest.mark.django_db(transaction=True)

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def lane(monkeypatch):
    """Which requests the direct lane answered itself (True) or left to Django (False)."""
    answered: list[bool] = []
    real = direct.answer

    def spy(*args: Any) -> Any:
        result = real(*args)
        answered.append(result is not None)
        return result

    monkeypatch.setattr(direct, "answer", spy)
    return answered


@pytest.fixture
def both(settings, lane):
    """Send a request through the app as it comes, then with the lane off (`then`: another
    body the second time, where the first changed what the same body would find); compare
    the answers and return the first."""

    def send(
        method: str, path: str, body: Any = None, *, direct: bool, then: Any = None, **headers: str
    ) -> Any:
        del lane[:]
        ours = _through_the_app(method, path, body, headers)
        # Left to Django: by the lane (False), or before it (a method or path it does not know).
        expected = [[True]] if direct else [[False], []]
        assert lane in expected, f"the lane {'left' if direct else 'took'} {method} {path}"
        answered = list(lane)
        lane_on = settings.KOBOLDCLUSTER
        settings.KOBOLDCLUSTER = {**lane_on, "DIRECT_LANE": False}
        try:
            djangos = _through_the_app(method, path, body if then is None else then, headers)
        finally:
            settings.KOBOLDCLUSTER = lane_on
        assert lane == answered  # the second request never reached the lane
        assert (ours.status_code, _UUID.sub(b"<id>", ours.content)) == (
            djangos.status_code,
            _UUID.sub(b"<id>", djangos.content),
        )
        assert _headers(ours) == _headers(djangos)
        return ours

    return send


def _through_the_app(method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        raw = isinstance(body, bytes) or body is None
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                return await c.request(
                    method,
                    path,
                    json=None if raw else body,
                    content=body if raw else None,
                    headers=headers,
                )
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(main())


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    """In order; a rate limit's Retry-After may tick by a second between the two."""
    return [
        (name, "<seconds>" if name == "retry-after" else value)
        for name, value in response.headers.items()
    ]


def server(**fields: Any) -> dict[str, Any]:
    return {
        "username": "bob",
        "password": SERVER_PASSWORD,
        "name": "bob-1",
        "model": "tiny-llm",
        "max_length": 80,
        "max_content_length": 2048,
        **fields,
    }


ASK = {"prompt": "Once upon a time", "params": {"n": 2, "max_length": 16}}


def test_create_and_its_refusals(both, bob, register):
    _, key = register("carol")

    assert both("POST", "/generate/prompt", {**ASK, "username": "alice"}, direct=True).json()
    assert both("POST", "/generate/prompt", ASK, direct=True, apikey=key).status_code == 200
    # An unknown key, invalid input, a name that needs its password, a wrong password,
    # parameters out of range: refused by the lane as by DRF.
    unknown = both("POST", "/generate/prompt", ASK, direct=True, apikey="nope")
    assert (unknown.status_code, unknown.headers["www-authenticate"]) == (401, "apikey")
    assert both("POST", "/generate/prompt", {"prompt": 5}, direct=True).status_code == 400
    assert both("POST", "/generate/prompt", {**ASK, "username": "bob"}, direct=True).json()
    wrong = {**ASK, "username": "bob", "password": "wrong"}
    assert both("POST", "/generate/prompt", wrong, direct=True).status_code in (401, 403)
    huge = {**ASK, "params": {"max_length": 10**9}}
    assert both("POST", "/generate/prompt", huge, direct=True).status_code == 400


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"prompt":', {}),  # not JSON: DRF's parser words the error
        (b"[1, 2]", {}),
        (b"", {}),
        (b'{"prompt": NaN}', {}),
        ('{"prompt": "x"}'.encode("utf-16"), {}),
        (b'\xef\xbb\xbf{"prompt": "x"}', {}),  # a UTF-8 byte order mark
        (b'{"prompt": "x"}', {"content-type": "application/json; charset=latin-1"}),
    ],
)
def test_bodies_that_are_not_plainly_a_json_object_are_left_to_django(both, body, headers):
    assert both("POST", "/generate/prompt", body, direct=False, **headers).status_code in (
        200,
        400,
    )


def test_pop_submit_and_status(both, bob, submit_prompt, time_machine):
    prompt_id = submit_prompt(params={"n": 4, "max_length": 16})

    popped = both("POST", "/generate/pop", server(), direct=True).json()
    assert popped["payload"]["prompt"] == "Once upon a time"
    both("POST", "http://testserver//generate/pop", server(), direct=True)  # a bridge's `//`
    first, second, *_ = Job.objects.filter(prompt_id=prompt_id).order_by("started", "id")
    done = {"password": SERVER_PASSWORD, "generation": " and then"}
    reward = both(
        "POST",
        "/generate/submit",
        {**done, "id": str(first.id)},
        then={**done, "id": str(second.id)},
        direct=True,
    )
    assert reward.json() == {"reward": 3}
    # Submitted again: 400 DuplicateGen both ways; an unknown job; a malformed id.
    assert both("POST", "/generate/submit", {**done, "id": str(first.id)}, direct=True)
    assert both("POST", "/generate/submit", {**done, "id": str(uuid.uuid4())}, direct=True)
    assert both("POST", "/generate/submit", {**done, "id": "nope"}, direct=True)

    status = both("GET", f"/generate/prompt/{prompt_id}", direct=True).json()
    assert (status["finished"], status["processing"]) == (2, 2)
    assert both("GET", f"/generate/prompt/{prompt_id}", direct=True, apikey="bad").json()
    assert both("GET", f"/generate/prompt/{uuid.uuid4()}", direct=True).status_code == 404
    assert both("GET", "/generate/prompt/not-an-id", direct=True).status_code == 404

    # The AI Horde's wait_time counts down with the clock: one instant for both ways.
    time_machine.move_to(timezone.now(), tick=False)
    v2 = f"/api/v2/generate/text/status/{prompt_id}"
    assert both("GET", v2, direct=True).json()["generations"]
    assert both("GET", v2, direct=True, apikey="bad").json()["finished"] == 2
    unknown = f"/api/v2/generate/text/status/{uuid.uuid4()}"
    assert both("GET", unknown, direct=True).json()["rc"] == "RequestNotFound"
    assert both("GET", "/api/v2/generate/text/status/x", direct=True).status_code == 404
    # Other methods and paths are Django's: a cancel, an id with a slash.
    assert both("DELETE", v2, direct=False).json()["waiting"] == 0
    assert both("GET", f"{v2}/more", direct=False).status_code == 404


def test_pop_refusals_and_idle_answers(both, bob):
    assert both("POST", "/generate/pop", server(), direct=True).json()["id"] is None
    assert both("POST", "/generate/pop", server(password="wrong"), direct=True).status_code
    assert both("POST", "/generate/pop", server(model=None), direct=True).status_code == 400
    Server.objects.filter(name="bob-1").update(maintenance=True)
    assert both("POST", "/generate/pop", server(), direct=True).status_code == 403
    # A pop that may wait is held the Django way (koboldcluster.holding).
    assert both("POST", "/generate/pop", server(wait=0.1), direct=False).status_code == 403


def test_rate_limits_count_once_and_refuse_the_same(both, bob, rate_limits):
    rate_limits(submit_ip="2/min")

    assert both("POST", "/generate/prompt", {**ASK, "username": "alice"}, direct=True)
    # Two requests so far (one each way); the third and the fourth are one too many.
    limited = both("POST", "/generate/prompt", {**ASK, "username": "alice"}, direct=True)
    assert limited.status_code == 429
    assert Prompt.objects.count() == 2


def test_hosts_outside_allowed_hosts_are_left_to_django(both, settings):
    settings.ALLOWED_HOSTS = ["cluster.example"]

    assert both("GET", f"/generate/prompt/{uuid.uuid4()}", direct=False).status_code == 400


def test_a_database_outage_and_a_crash_answer_the_same(both, bob, monkeypatch):
    from generations.api.original import views

    def outage(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("the database went away")

    monkeypatch.setattr(views, "prompt_status", outage)
    down = both("GET", f"/generate/prompt/{uuid.uuid4()}", direct=True)
    assert (down.status_code, down.json()["rc"]) == (503, "DatabaseUnavailable")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "prompt_status", crash)
    assert both("GET", f"/generate/prompt/{uuid.uuid4()}", direct=True).status_code == 500


def test_the_ai_horde_endpoints(both, register):
    _, key = register("carol")
    _, worker_key = register("dave")
    ask = {"prompt": "Once upon a time", "params": {"n": 3, "max_length": 16}}
    async_ = "/api/v2/generate/text/async"

    # No server could serve it yet: the same warning both ways; then a dry run (200).
    accepted = both("POST", async_, ask, direct=True, apikey=key)
    assert (accepted.status_code, accepted.json()["warnings"][0]["code"]) == (
        202,
        "NoAvailableWorker",
    )
    assert both("POST", async_, {**ask, "dry_run": True}, direct=True).status_code == 200
    assert both("POST", async_, {"prompt": ""}, direct=True, apikey=key).status_code == 400
    assert both("POST", async_, ask, direct=True, apikey="nope").status_code == 401
    agent = {"client-agent": "tester:1:me"}
    assert both("POST", async_, ask, direct=True, apikey=key, **agent).status_code == 202

    pop = "/api/v2/generate/text/pop"
    worker = {"name": "dave-1", "models": ["tiny-llm"], "max_length": 80}
    # Without a key: DRF's 401 for a view that needs one (HasApiKey).
    assert both("POST", pop, worker, direct=True).status_code == 401
    popped = both("POST", pop, worker, direct=True, apikey=worker_key).json()
    assert popped["payload"]["prompt"] == "Once upon a time"
    assert both("POST", pop, {**worker, "wait": 1}, direct=False, apikey=worker_key)

    submit = "/api/v2/generate/text/submit"
    first, second, *_ = Job.objects.order_by("started", "id")
    done = {"generation": " and then"}
    paid = both(
        "POST",
        submit,
        {**done, "id": str(first.id)},
        then={**done, "id": str(second.id)},
        direct=True,
        apikey=worker_key,
    )
    assert paid.json() == {"reward": 3.0}
    assert both("POST", submit, {**done, "id": str(first.id)}, direct=True, apikey=worker_key)
    assert both("POST", submit, {**done, "id": str(first.id)}, direct=True).status_code == 401
    theirs = both("POST", submit, {**done, "id": str(first.id)}, direct=True, apikey=key)
    assert theirs.status_code == 403


def test_settings_the_lane_cannot_honour_turn_it_off_and_say_so(settings, caplog):
    from koboldcluster.asgi import ClusterASGIHandler

    assert ClusterASGIHandler().lane is direct
    settings.SECURE_HSTS_SECONDS = 3600  # a header that depends on the request: Django's way

    with caplog.at_level("WARNING", logger="koboldcluster.direct"):
        assert ClusterASGIHandler().lane is None
    assert "SECURE_HSTS_SECONDS is set" in caplog.text


def test_a_create_with_an_idempotency_key(both, register):
    _, key = register("carol")
    headers = {"apikey": key, "idempotency-key": "retry-1"}

    first = both("POST", "/generate/prompt", ASK, direct=True, **headers).json()["id"]
    again = both("POST", "/generate/prompt", ASK, direct=True, **headers).json()["id"]

    assert again == first and Prompt.objects.count() == 1
    reused = both("POST", "/generate/prompt", {**ASK, "prompt": "Other"}, direct=True, **headers)
    assert reused.json()["rc"] == "IdempotencyKeyReused"
    bad = both("POST", "/generate/prompt", ASK, direct=True, **{"idempotency-key": "x" * 256})
    assert bad.status_code == 400


def test_progress_and_heartbeats_on_both_protocols(both, bob, register, submit_prompt):
    submit_prompt(params={"n": 4, "max_length": 16})
    both("POST", "/generate/pop", server(), direct=True)  # twice: a job each way
    job = str(Job.objects.first().id)
    original = {"id": job, "password": SERVER_PASSWORD}

    assert both("POST", "/generate/progress", {**original, "text": "Once"}, direct=True).json()
    assert both("POST", "/generate/progress", original, direct=True).json() == {"ok": True}
    wrong = {**original, "password": "wrong"}
    assert both("POST", "/generate/progress", wrong, direct=True).status_code in (401, 403)
    unknown = {**original, "id": str(uuid.uuid4())}
    assert both("POST", "/generate/progress", unknown, direct=True).json()["rc"] == "InvalidJobID"

    _, worker_key = register("dave")
    v2 = "/api/v2/generate/text/progress"
    both(
        "POST",
        "/api/v2/generate/text/pop",
        {"name": "d", "models": ["tiny-llm"]},
        direct=True,
        apikey=worker_key,
    )
    theirs = str(Job.objects.filter(server__name="d").first().id)
    assert both("POST", v2, {"id": theirs}, direct=True, apikey=worker_key).json()["ok"]
    assert both("POST", v2, {"id": theirs}, direct=True).status_code == 401
    assert both("POST", v2, {"id": job}, direct=True, apikey=worker_key).status_code == 403
