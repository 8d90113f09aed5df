"""At most `concurrency` waiting slots per user: 429 TooManyPrompts beyond it."""

import threading

import pytest
from django.db import connection, transaction

from accounts.identity import lock_account
from generations.models import Prompt
from generations.tests.test_concurrency import run_together
from koboldcluster.asgi_client import APIClient


def submit(api, n: int, **headers):
    body = {"prompt": "hi", "params": {"n": n, "max_length": 16}}
    return api.post("/generate/prompt", body, format="json", **headers)


@pytest.mark.django_db
def test_a_user_may_have_30_waiting_slots(api, register):
    _, key = register("carol")

    accepted = [submit(api, 10, HTTP_APIKEY=key).status_code for _ in range(3)]
    refused = submit(api, 1, HTTP_APIKEY=key)

    assert accepted == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["rc"] == "TooManyPrompts"
    assert refused["Retry-After"] == "10"
    assert "30" in refused.json()["message"]
    assert Prompt.objects.count() == 3


@pytest.mark.django_db
def test_slots_taken_by_servers_free_room(api, register, pop, bob):
    _, key = register("carol")
    submit(api, 30, HTTP_APIKEY=key)

    assert submit(api, 1, HTTP_APIKEY=key).status_code == 429
    pop()

    assert submit(api, 1, HTTP_APIKEY=key).status_code == 200


@pytest.mark.django_db
def test_cancelled_and_expired_prompts_free_room(api, register, time_machine):
    _, key = register("carol")
    time_machine.move_to("2030-01-01 00:00:00+00:00", tick=False)
    first = submit(api, 30, HTTP_APIKEY=key).json()["id"]
    api.delete(f"/generate/prompt/{first}")
    submit(api, 30, HTTP_APIKEY=key)

    time_machine.move_to("2030-01-01 00:10:01+00:00", tick=False)

    assert submit(api, 30, HTTP_APIKEY=key).status_code == 200


@pytest.mark.django_db
def test_trusted_users_and_a_users_own_setting_allow_more(api, register, settings):
    _, trusted = register("carol", trusted=True)
    _, custom = register("dave", concurrency=3)

    assert submit(api, 100, HTTP_APIKEY=trusted).status_code == 200
    assert submit(api, 1, HTTP_APIKEY=trusted).status_code == 429
    assert submit(api, 3, HTTP_APIKEY=custom).status_code == 200
    assert submit(api, 1, HTTP_APIKEY=custom).status_code == 429


@pytest.mark.django_db
def test_the_anonymous_pool_is_shared_and_larger(api, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "CONCURRENCY_ANONYMOUS": 40}

    # Several clients (each is also limited on its own: generations/limits.py).
    first = [submit(api, 10, REMOTE_ADDR=f"10.0.0.{i}") for i in (1, 2, 3)]
    second = submit(api, 10, HTTP_APIKEY="0000000000", REMOTE_ADDR="10.0.0.4")
    third = submit(api, 1, REMOTE_ADDR="10.0.0.5")

    assert [r.status_code for r in [*first, second]] == [200] * 4
    assert third.status_code == 429
    assert "register" in third.json()["message"]


@pytest.mark.django_db
def test_each_unclaimed_name_has_its_own_limit(api):
    for address, name in (("10.0.0.1", "erin"), ("10.0.0.2", "frank")):
        body = {"prompt": "hi", "params": {"n": 10, "max_length": 16}, "username": name}
        for _ in range(3):
            response = api.post("/generate/prompt", body, format="json", REMOTE_ADDR=address)
            assert response.status_code == 200

    body = {"prompt": "hi", "params": {"n": 1, "max_length": 16}, "username": "erin"}
    response = api.post("/generate/prompt", body, format="json", REMOTE_ADDR="10.0.0.3")
    assert response.status_code == 429


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_of_one_user_never_exceed_the_limit(register):
    carol, key = register("carol", concurrency=5)

    def one(index: int) -> int:
        return submit(APIClient(), 1, HTTP_APIKEY=key).status_code

    statuses = run_together(16, one)

    assert sorted(statuses) == [200] * 5 + [429] * 11
    assert Prompt.objects.filter(user=carol).count() == 5


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has one writer at a time")
@pytest.mark.django_db(transaction=True)
def test_a_create_waits_for_the_account_and_counts_what_committed_meanwhile(register):
    """PostgreSQL sends the account's lock and the INSERT in one round trip: the INSERT must
    still wait for a writer holding the account, and then see what it committed."""
    carol, key = register("carol", concurrency=1)
    assert submit(APIClient(), 1, HTTP_APIKEY=key).status_code == 200
    taken = Prompt.objects.get(user=carol)
    Prompt.objects.filter(id=taken.id).update(waiting=0)  # a server took it: room for one
    locked, go, answers = threading.Event(), threading.Event(), []

    def writer() -> None:
        # Another request of carol's holds her account and gives the slot back.
        try:
            with transaction.atomic():
                lock_account(carol)
                Prompt.objects.filter(id=taken.id).update(waiting=1)
                locked.set()
                go.wait(10)
        finally:
            connection.close()

    def create() -> None:
        try:
            answers.append(submit(APIClient(), 1, HTTP_APIKEY=key).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=create)]
    threads[0].start()
    assert locked.wait(10)
    threads[1].start()
    threads[1].join(0.5)
    waited = threads[1].is_alive()
    go.set()
    for thread in threads:
        thread.join(10)

    assert waited  # held by the lock until the writer committed
    assert answers == [429]  # and then it counted the slot given back
