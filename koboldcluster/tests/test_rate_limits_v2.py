"""The AI Horde v2 endpoints are limited through the same throttles (research §1.5)."""

from __future__ import annotations

import uuid

import pytest

from accounts.identity import anonymous_user

pytestmark = pytest.mark.django_db


def limited(response) -> bool:
    return response.status_code == 429 and response.json()["rc"] == "TooManyRequests"


def test_v2_async_and_the_original_submit_share_one_limit(api, rate_limits):
    rate_limits(submit_ip="2/min")

    first = api.post("/generate/prompt", {"prompt": "Hi"}, format="json")
    second = api.post("/api/v2/generate/text/async", {"prompt": "Hi"}, format="json")
    third = api.post("/api/v2/generate/text/async", {"prompt": "Hi"}, format="json")

    assert (first.status_code, second.status_code) == (200, 202)
    assert limited(third) and int(third["Retry-After"]) >= 1


def test_v2_status_polls_are_limited(api, rate_limits):
    rate_limits(status_ip="1/min")
    url = f"/api/v2/generate/text/status/{uuid.uuid4()}"

    assert api.get(url).status_code == 404
    assert limited(api.delete(url))


def test_v2_pops_and_submits_share_the_worker_limit(api, register, rate_limits):
    _, key = register("dave")
    rate_limits(worker_ip="1/min")
    body = {"name": "dave-1", "models": ["m"]}

    pop = api.post("/api/v2/generate/text/pop", body, format="json", HTTP_APIKEY=key)
    assert pop.status_code == 200
    submit = {"id": str(uuid.uuid4()), "generation": "x"}
    assert limited(api.post("/api/v2/generate/text/submit", submit, format="json", HTTP_APIKEY=key))


@pytest.mark.parametrize(
    "path",
    [
        "/api/v2/workers",
        "/api/v2/users",
        "/api/v2/status/models?type=text",
        "/api/v2/status/performance",
        "/api/v2/users/0",
    ],
)
def test_v2_reads_are_limited_per_address(api, rate_limits, path):
    anonymous_user()  # user 0, made by a migration, is gone if a transactional test ran before
    rate_limits(read_ip="1/min")

    assert api.get(path).status_code == 200
    assert limited(api.get(path))
    assert api.get(path, REMOTE_ADDR="10.0.0.9").status_code == 200


def test_kudos_transfers_are_limited_per_account(api, register, rate_limits):
    _, key = register("carol")
    register("dave")
    rate_limits(transfer_account="1/hour")
    body = {"username": "dave", "amount": 1}

    first = api.post("/api/v2/kudos/transfer", body, format="json", HTTP_APIKEY=key)
    second = api.post(
        "/api/v2/kudos/transfer", body, format="json", HTTP_APIKEY=key, REMOTE_ADDR="10.0.0.9"
    )

    assert first.json()["rc"] == "KudosTransferNotEnough"  # counted, then refused for balance
    assert limited(second)
