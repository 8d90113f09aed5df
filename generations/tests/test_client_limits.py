"""Callers without credentials are limited per client address, not only per name."""

from __future__ import annotations

import pytest

from accounts.models import User
from generations.models import Prompt

pytestmark = pytest.mark.django_db


def submit(api, n: int, address: str = "10.0.0.1", username: str | None = None, **headers):
    body = {"prompt": "hi", "params": {"n": n, "max_length": 16}}
    if username:
        body["username"] = username
    return api.post("/generate/prompt", body, format="json", REMOTE_ADDR=address, **headers)


def test_one_client_cannot_fill_the_anonymous_pool(api):
    mine = [submit(api, 10).status_code for _ in range(3)]
    refused = submit(api, 1)
    someone_else = submit(api, 10, address="10.0.0.2")

    assert mine == [200, 200, 200]
    assert (refused.status_code, refused.json()["rc"]) == (429, "TooManyPrompts")
    assert int(refused["Retry-After"]) >= 1
    assert someone_else.status_code == 200


def test_the_anonymous_key_counts_per_client_too(api):
    for _ in range(3):
        assert submit(api, 10, HTTP_APIKEY="0000000000").status_code == 200

    assert submit(api, 1, HTTP_APIKEY="0000000000").status_code == 429


def test_invented_usernames_share_their_clients_limit(api):
    statuses = [submit(api, 10, username=f"made-up-{i}").status_code for i in range(10)]

    assert statuses == [200] * 3 + [429] * 7
    waiting = sum(Prompt.objects.values_list("waiting", flat=True))
    assert waiting == 30


def test_an_ipv6_client_counts_per_64(api):
    for i in range(3):
        assert submit(api, 10, address=f"2001:db8:0:1::{i + 1}").status_code == 200

    assert submit(api, 1, address="2001:db8:0:1:ffff::9").status_code == 429
    assert submit(api, 1, address="2001:db8:0:2::1").status_code == 200


def test_without_an_account_n_is_capped_lower(api, register):
    _, key = register("carol")

    refused = submit(api, 11)
    unclaimed = submit(api, 11, username="dave")
    registered = submit(api, 30, HTTP_APIKEY=key)

    assert (refused.status_code, refused.json()["rc"]) == (400, "TooManyGenerations")
    assert unclaimed.status_code == 400
    assert registered.status_code == 200


def test_the_caps_are_configurable(api, settings):
    settings.KOBOLDCLUSTER = {
        **settings.KOBOLDCLUSTER,
        "MAX_N_ANONYMOUS": 50,
        "CONCURRENCY_PER_CLIENT": 60,
        "CONCURRENCY_ANONYMOUS": 100,
    }

    assert submit(api, 50).status_code == 200
    assert submit(api, 11).status_code == 429  # 61 > 60
    assert submit(api, 10).status_code == 200


def test_prompts_keep_a_digest_of_their_client_never_the_address(api, register):
    _, key = register("carol")
    submit(api, 1, address="203.0.113.77")
    submit(api, 1, address="203.0.113.77", HTTP_APIKEY=key)

    anonymous = Prompt.objects.get(user_id=User.ANONYMOUS_ID)
    registered = Prompt.objects.exclude(user_id=User.ANONYMOUS_ID).get()
    assert len(anonymous.client) == 32 and "203.0.113" not in anonymous.client
    assert registered.client == ""  # accounts are limited per account only


def test_finished_prompts_no_longer_count(api, pop):
    User.objects.create_user("bob", password="s3rver-pass")
    for _ in range(3):
        assert submit(api, 10).status_code == 200
    for _ in range(5):
        assert pop().json()["id"] is not None

    assert submit(api, 5).status_code == 200


def test_the_per_client_count_can_use_its_index(api):
    """On PostgreSQL the count reads the partial index of queued prompts by client."""
    from django.db import connection
    from django.db.models import Sum
    from django.utils import timezone

    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN on PostgreSQL")
    submit(api, 1)
    query = (
        Prompt.objects.queued(timezone.now())
        .filter(client=Prompt.objects.get().client)
        .aggregate(total=Sum("waiting"))
    )
    assert query["total"] == 1
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = (
            Prompt.objects.queued(timezone.now())
            .filter(client="x")
            .values("client")
            .annotate(total=Sum("waiting"))
            .explain()
        )
    assert "prompt_client_queue" in plan
