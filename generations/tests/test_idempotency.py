"""The Idempotency-Key header on creates (issue 25): a retry from the same caller with the
same key gets the first prompt back, as long as it lives; nothing is queued twice."""

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from generations import intake
from generations.models import Prompt

pytestmark = pytest.mark.django_db

V2 = "/api/v2/generate/text/async"
START = datetime.fromisoformat("2030-01-01 00:00:00+00:00")


def create(api, key="retry-1", prompt="Once upon a time", address="10.0.0.1", **headers):
    body = {"prompt": prompt, "params": {"n": 1, "max_length": 16}}
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return api.post("/generate/prompt", body, format="json", REMOTE_ADDR=address, **headers)


def create_v2(api, apikey, key="retry-1", prompt="Hi"):
    body = {"prompt": prompt, "params": {"max_length": 16}}
    return api.post(V2, body, format="json", HTTP_APIKEY=apikey, HTTP_IDEMPOTENCY_KEY=key)


def test_a_retry_with_the_same_key_gets_the_first_prompt(api, alice):
    first = create(api).json()["id"]

    with CaptureQueriesContext(connection) as queries:
        again = create(api)

    assert again.status_code == 200 and again.json()["id"] == first
    assert Prompt.objects.count() == 1
    assert not any(q["sql"].startswith("INSERT") for q in queries.captured_queries)


def test_without_a_key_or_with_another_key_each_create_queues(api, alice):
    ids = {create(api, key=None).json()["id"] for _ in range(2)}
    ids.add(create(api, key="retry-2").json()["id"])

    assert len(ids) == Prompt.objects.count() == 3


def test_v2_answers_the_first_id_again_to_the_same_account_only(api, register):
    _, carol = register("carol")
    _, dave = register("dave")
    first = create_v2(api, carol)
    again = create_v2(api, carol)
    daves = create_v2(api, dave)

    assert first.status_code == again.status_code == daves.status_code == 202
    assert again.json()["id"] == first.json()["id"] != daves.json()["id"]
    assert Prompt.objects.count() == 2


def test_callers_without_credentials_are_told_apart_by_their_address(api):
    first = create(api, address="10.0.0.1").json()["id"]

    assert create(api, address="10.0.0.1").json()["id"] == first
    assert create(api, address="192.0.2.7").json()["id"] != first  # another client
    assert Prompt.objects.count() == 2


def test_a_key_sent_again_with_another_prompt_is_refused(api, alice):
    create(api)

    response = create(api, prompt="Something else")

    assert (response.status_code, response.json()["rc"]) == (400, "IdempotencyKeyReused")
    assert Prompt.objects.count() == 1


def test_a_cancelled_first_prompt_releases_its_key(api, alice):
    first = create(api).json()["id"]
    api.delete(f"/generate/prompt/{first}")

    again = create(api).json()["id"]

    assert again != first
    assert Prompt.objects.get(id=first).idempotency_key == ""


def test_an_expired_first_prompt_releases_its_key(api, alice, time_machine):
    time_machine.move_to(START, tick=False)
    first = create(api).json()["id"]
    time_machine.move_to(START + timedelta(seconds=601), tick=False)

    assert create(api).json()["id"] != first


@pytest.mark.parametrize("key", ["x" * 256, "clé", "a\tb"])
def test_a_key_that_is_not_short_printable_ascii_is_400(api, alice, key):
    response = create(api, key=key)

    assert (response.status_code, response.json()["rc"]) == (400, "ValidationError")
    assert Prompt.objects.count() == 0


def test_two_retries_at_once_cannot_both_queue(api, alice, monkeypatch):
    """The second INSERT of a key fails on the unique constraint and answers the first
    prompt (here the check before the INSERT is made to miss it, as a retry in flight at
    the same moment does)."""
    first = create(api).json()["id"]
    real_first_prompt = intake.first_prompt
    looked = []

    def missed_once(prompt, now):
        looked.append(prompt.idempotency_key)
        return None if len(looked) == 1 else real_first_prompt(prompt, now)

    monkeypatch.setattr(intake, "first_prompt", missed_once)

    again = create(api)

    assert again.status_code == 200 and again.json()["id"] == first
    assert looked == ["retry-1", "retry-1"]
    assert Prompt.objects.count() == 1
