"""Rate limits per address and per account: 429 with an rc and Retry-After, or off."""

import ipaddress
import uuid
from datetime import timedelta

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from accounts.identity import anonymous_user
from koboldcluster.env import env_rate

pytestmark = pytest.mark.django_db

PROMPT = {"prompt": "hi", "params": {"max_length": 16}}


def assert_limited(response) -> None:
    assert response.status_code == 429
    assert response.json()["rc"] == "TooManyRequests"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_prompt_submits_are_limited_per_address(api, rate_limits):
    rate_limits(submit_ip="2/min")

    allowed = [api.post("/generate/prompt", PROMPT, format="json") for _ in range(2)]
    refused = api.post("/generate/prompt", PROMPT, format="json")
    elsewhere = api.post("/generate/prompt", PROMPT, format="json", REMOTE_ADDR="10.0.0.2")

    assert [r.status_code for r in allowed] == [200, 200]
    assert_limited(refused)
    assert elsewhere.status_code == 200


def test_status_polls_are_limited_per_address(api, rate_limits, submit_prompt):
    prompt_id = submit_prompt()
    rate_limits(status_ip="2/min")

    for _ in range(2):
        assert api.get(f"/generate/prompt/{prompt_id}").status_code == 200
    assert_limited(api.get(f"/generate/prompt/{prompt_id}"))
    assert_limited(api.delete(f"/generate/prompt/{prompt_id}"))


def test_pops_and_generation_submits_share_the_worker_limit(pop, bob, rate_limits, api):
    rate_limits(worker_ip="2/min")

    assert pop().status_code == 200
    assert pop().status_code == 200
    assert_limited(pop())
    body = {"id": str(uuid.uuid4()), "password": "s3rver-pass", "generation": "x"}
    assert_limited(api.post("/generate/submit", body, format="json"))


def test_the_register_api_and_page_share_one_limit_per_address(api, client, rate_limits):
    rate_limits(register_ip="2/hour")

    assert api.post("/api/v2/register", {"username": "a1"}, format="json").status_code == 201
    assert client.post("/register", {"username": "a2"}).status_code == 201
    refused_api = api.post("/api/v2/register", {"username": "a3"}, format="json")
    refused_page = client.post("/register", {"username": "a4"})

    assert refused_api.status_code == 429
    assert refused_api.json()["rc"] == "TooManyRequests"
    assert 1 <= int(refused_api["Retry-After"]) <= 3600
    assert refused_page.status_code == 429
    assert 1 <= int(refused_page["Retry-After"]) <= 3600
    assert b"Too many registrations" in refused_page.content


def test_new_keys_are_limited_like_registrations_but_listing_them_is_not(
    api, register, rate_limits
):
    _, key = register("carol")
    rate_limits(register_account="1/hour")

    created = api.post("/api/v2/apikeys", {}, format="json", HTTP_APIKEY=key)
    refused = api.post("/api/v2/apikeys", {}, format="json", HTTP_APIKEY=key)
    listed = [api.get("/api/v2/apikeys", HTTP_APIKEY=key).status_code for _ in range(3)]

    assert created.status_code == 201
    assert refused.status_code == 429
    assert listed == [200, 200, 200]


def test_an_account_is_limited_across_addresses(api, register, rate_limits):
    _, key = register("carol")
    rate_limits(submit_account="2/min")

    statuses = [
        api.post(
            "/generate/prompt", PROMPT, format="json", HTTP_APIKEY=key, REMOTE_ADDR=f"10.0.0.{i}"
        )
        for i in range(3)
    ]

    assert [r.status_code for r in statuses[:2]] == [200, 200]
    assert_limited(statuses[2])


def test_all_of_an_accounts_keys_share_its_limit(api, register, rate_limits):
    _, first = register("carol")
    second = api.post("/api/v2/apikeys", {}, format="json", HTTP_APIKEY=first).json()["apikey"]
    rate_limits(submit_account="2/min", submit_ip="100/min")

    api.post("/generate/prompt", PROMPT, format="json", HTTP_APIKEY=first)
    api.post("/generate/prompt", PROMPT, format="json", HTTP_APIKEY=second)

    assert_limited(api.post("/generate/prompt", PROMPT, format="json", HTTP_APIKEY=first))


def test_the_anonymous_key_is_limited_per_address_only(api, rate_limits):
    rate_limits(submit_account="1/min", submit_ip="100/min")

    for i in range(3):
        response = api.post(
            "/generate/prompt",
            PROMPT,
            format="json",
            HTTP_APIKEY="0000000000",
            REMOTE_ADDR=f"10.0.0.{i}",
        )
        assert response.status_code == 200


def test_a_client_cannot_pick_its_address_with_x_forwarded_for(api, rate_limits):
    rate_limits(submit_ip="1/min")
    api.post("/generate/prompt", PROMPT, format="json", HTTP_X_FORWARDED_FOR="1.1.1.1")

    response = api.post("/generate/prompt", PROMPT, format="json", HTTP_X_FORWARDED_FOR="2.2.2.2")

    assert_limited(response)


def test_behind_a_proxy_the_forwarded_address_counts(api, rate_limits, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    rate_limits(submit_ip="1/min")

    first = api.post("/generate/prompt", PROMPT, format="json", HTTP_X_FORWARDED_FOR="1.1.1.1")
    other = api.post("/generate/prompt", PROMPT, format="json", HTTP_X_FORWARDED_FOR="2.2.2.2")
    again = api.post("/generate/prompt", PROMPT, format="json", HTTP_X_FORWARDED_FOR="1.1.1.1")

    assert (first.status_code, other.status_code) == (200, 200)
    assert_limited(again)


def test_the_limit_resets_with_the_next_window(api, rate_limits, time_machine):
    rate_limits(submit_ip="1/min")
    start = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    time_machine.move_to(start + timedelta(seconds=15), tick=False)
    api.post("/generate/prompt", PROMPT, format="json")

    time_machine.move_to(start + timedelta(seconds=50), tick=False)
    refused = api.post("/generate/prompt", PROMPT, format="json")
    time_machine.move_to(start + timedelta(seconds=60), tick=False)
    allowed = api.post("/generate/prompt", PROMPT, format="json")

    assert refused.status_code == 429
    assert refused["Retry-After"] == "10"
    assert allowed.status_code == 200


def test_off_means_off(api, rate_limits, settings):
    rate_limits(submit_ip="1/min", submit_account="1/min")
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "RATE_LIMITS_ENABLED": False}

    for _ in range(5):
        assert api.post("/generate/prompt", PROMPT, format="json").status_code == 200


def test_other_endpoints_are_not_limited(api, rate_limits):
    anonymous_user()  # user 0, made by a migration, is gone if a transactional test ran before
    rate_limits(
        **{
            f"{s}_{p}": "1/hour"
            for s in ("submit", "status", "worker", "register")
            for p in ("ip", "account")
        }
    )

    for _ in range(3):
        assert api.get("/servers").status_code == 200
        assert api.get("/api/v2/users/0").status_code == 200


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("90/min", (90, 60)),
        ("2/s", (2, 1)),
        ("10/hour", (10, 3600)),
        ("5/day", (5, 86400)),
        ("off", None),
        ("None", None),
    ],
)
def test_rates_are_read_from_the_environment(monkeypatch, text, rate):
    monkeypatch.setenv("KOBOLDCLUSTER_RATE_X", text)

    assert env_rate("KOBOLDCLUSTER_RATE_X", "1/s") == rate


@pytest.mark.parametrize("text", ["90", "0/min", "x/min", "5/month", "-1/s"])
def test_bad_rates_stop_the_cluster_from_starting(monkeypatch, text):
    monkeypatch.setenv("KOBOLDCLUSTER_RATE_X", text)

    with pytest.raises(ImproperlyConfigured):
        env_rate("KOBOLDCLUSTER_RATE_X", "1/s")


@pytest.mark.e2e
def test_processes_sharing_redis_share_the_count(transactional_db):
    """Two web servers with one REDIS_URL count each address once, as a cluster of machines."""
    from koboldcluster.testing import ClusterProcess, started

    env = {
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "KOBOLDCLUSTER_RATE_LIMITS": "on",
        "KOBOLDCLUSTER_RATE_SUBMIT_IP": "3/hour",
        "KOBOLDCLUSTER_NUM_PROXIES": "1",
    }
    # An address of its own (as a proxy would forward it), so that no other test run on this
    # machine adds to its count in Redis.
    headers = {"X-Forwarded-For": str(ipaddress.IPv6Address(uuid.uuid4().int))}
    with started(ClusterProcess(env), ClusterProcess(env)) as (first, second):
        statuses = [
            requests.post(
                f"{process.url}/generate/prompt", json=PROMPT, headers=headers, timeout=10
            ).status_code
            for process in (first, second, first, second)
        ]

    assert statuses == [200, 200, 200, 429]
