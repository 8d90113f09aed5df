"""One entry (issue 24): every request the suite sends takes the road production's takes.

The `api` and `client` fixtures (koboldcluster/asgi_client.py) send their requests into the
cluster's ASGI application, as the web server (uvicorn) does; `manage.py runserver` serves
that application too. So a behaviour test's request is answered by the direct lane, held, or
waited on exactly where a production request would be.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import get_commands

from accounts.models import User
from koboldcluster import asgi, direct

ROOT = Path(__file__).resolve().parents[2]
# Tests that compare the entry with Django's own handler, which they call on purpose.
ORACLES = {"koboldcluster/tests/test_asgi_handler.py"}


@pytest.fixture
def roads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which road each request took: the lane, the entry's holding or Django's chain."""
    taken: list[str] = []
    answer, held = direct.answer, asgi.ClusterASGIHandler._held

    def lane(*args: Any) -> Any:
        result = answer(*args)
        taken.append("lane" if result is not None else "left by the lane")
        return result

    async def holding(self: Any, *args: Any, **kwargs: Any) -> Any:
        taken.append("held")
        return await held(self, *args, **kwargs)

    monkeypatch.setattr(direct, "answer", lane)
    monkeypatch.setattr(asgi.ClusterASGIHandler, "_held", holding)
    return taken


def test_a_behaviour_tests_requests_take_the_lane_as_in_production(
    api, roads, bob, submit_prompt, pop, submit_generation
):
    prompt_id = submit_prompt()
    job = pop().json()
    assert submit_generation(job["id"]).status_code == 200
    assert api.get(f"/generate/prompt/{prompt_id}").json()["finished"] == 1
    assert api.get(f"/api/v2/generate/text/status/{prompt_id}").status_code == 200

    assert roads == ["lane"] * 5


def test_a_pop_that_asks_to_wait_is_held_by_the_entry(api, roads, bob, pop):
    assert pop(wait=0.1).json()["id"] is None

    assert roads == ["left by the lane", "held"]


def test_what_the_lane_does_not_know_takes_djangos_chain(api, roads, register):
    _, key = register("carol")

    assert api.get("/api/v2/find_user", HTTP_APIKEY=key).status_code == 200
    assert (
        api.post("/generate/prompt", b"[1, 2]", content_type="application/json").status_code == 400
    )

    assert roads == ["left by the lane"]  # a JSON body that is not an object: Django's 400


def test_a_request_sees_the_rows_of_the_tests_open_transaction(api, db):
    user = User.objects.create(username="dora", kind=User.Kind.UNCLAIMED)

    response = api.get(f"/api/v2/users/{user.pk}")

    assert response.status_code == 200
    assert response.json()["id"] == user.pk


_DJANGOS_CLIENTS = re.compile(
    r"from (rest_framework\.test|django\.test) import [^\n]*\b(APIClient|Client|AsyncClient)\b"
)


def test_no_test_sends_requests_past_the_entry():
    found = [
        path.relative_to(ROOT).as_posix()
        for path in [*ROOT.glob("*/tests/**/*.py"), ROOT / "conftest.py"]
        if _DJANGOS_CLIENTS.search(path.read_text())
    ]

    assert set(found) <= ORACLES, "use koboldcluster.asgi_client's clients (or the api fixture)"


def test_runserver_serves_the_asgi_application():
    assert get_commands()["runserver"] == "koboldcluster"
