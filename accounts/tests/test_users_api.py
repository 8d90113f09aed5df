"""GET /api/v2/users/<id> and /api/v2/find_user: the AI Horde's user object."""

import uuid

import pytest

from accounts.models import LedgerEntry, User
from servers.models import Server

pytestmark = pytest.mark.django_db


def pay(requester: User, owner: User, tokens: int) -> None:
    job_id = uuid.uuid4()
    LedgerEntry.objects.create(
        user=requester, kind="usage", tokens=tokens, kudos=-tokens, job_id=job_id
    )
    LedgerEntry.objects.create(
        user=owner, kind="contribution", tokens=tokens, kudos=tokens, job_id=job_id
    )


def test_a_users_public_details(api, register, alice):
    carol, key = register("carol")
    Server.objects.create(name="carol-1", owner=carol)
    pay(alice, carol, 120)
    pay(carol, carol, 20)

    body = api.get(f"/api/v2/users/{carol.pk}").json()

    assert body["username"] == f"carol#{carol.pk}"
    assert body["id"] == carol.pk
    assert body["kudos"] == 120
    assert body["kudos_details"]["accumulated"] == 120
    assert body["records"]["usage"]["tokens"] == 20
    assert body["records"]["contribution"]["tokens"] == 140
    assert body["records"]["fulfillment"]["text"] == 2
    assert body["records"]["request"]["text"] == 1
    assert body["usage"]["requests"] == 1 and body["contributions"]["fulfillments"] == 2
    assert body["concurrency"] == 30
    assert body["worker_count"] == 1
    assert (body["trusted"], body["moderator"], body["flagged"]) == (False, False, False)
    assert body["pseudonymous"] is True
    assert isinstance(body["account_age"], int)
    assert "worker_ids" not in body and "active_generations" not in body


def test_counts_are_json_integers(api, register):
    carol, key = register("carol")

    body = api.get("/api/v2/find_user", HTTP_APIKEY=key).json()

    for value in (
        body["id"],
        body["kudos"],
        body["concurrency"],
        body["worker_count"],
        body["account_age"],
        body["records"]["usage"]["tokens"],
        body["records"]["contribution"]["tokens"],
    ):
        assert type(value) is int


def test_the_users_own_key_shows_private_details(api, register, submit_prompt):
    carol, key = register("carol", trusted=True)
    server = Server.objects.create(name="carol-1", owner=carol)
    prompt_id = submit_prompt(apikey=key)
    _, daves_key = register("dave")

    own = api.get(f"/api/v2/users/{carol.pk}", HTTP_APIKEY=key).json()
    found = api.get("/api/v2/find_user", HTTP_APIKEY=key).json()
    other = api.get(f"/api/v2/users/{carol.pk}", HTTP_APIKEY=daves_key).json()

    assert own == found
    assert own["worker_ids"] == [str(server.id)]
    assert own["active_generations"]["text"] == [prompt_id]
    assert own["trusted"] is True and own["concurrency"] == 100
    assert "worker_ids" not in other and "active_generations" not in other


def test_a_moderator_sees_private_details(api, register):
    carol, _ = register("carol")
    _, moderators_key = register("mod", moderator=True)

    body = api.get(f"/api/v2/users/{carol.pk}", HTTP_APIKEY=moderators_key).json()

    assert body["worker_ids"] == []


def test_the_anonymous_key_finds_the_anonymous_user_without_private_details(api, submit_prompt):
    submit_prompt()

    body = api.get("/api/v2/find_user", HTTP_APIKEY="0000000000").json()

    assert (body["username"], body["id"]) == ("Anonymous#0", 0)
    assert body["concurrency"] == 500
    assert body["pseudonymous"] is False
    assert "active_generations" not in body  # everyone's anonymous request ids


@pytest.mark.parametrize("user_id", ["999", "abc", "-1", "1.0", "1" * 30])
def test_unknown_users_are_404(api, user_id):
    response = api.get(f"/api/v2/users/{user_id}")

    assert response.status_code == 404
    assert response.json()["rc"] == "UserNotFound"


def test_find_user_without_a_key_is_401_and_with_an_unknown_key_404(api):
    missing = api.get("/api/v2/find_user")
    unknown = api.get("/api/v2/find_user", HTTP_APIKEY="y" * 22)

    assert (missing.status_code, missing.json()["rc"]) == (401, "InvalidAPIKey")
    assert (unknown.status_code, unknown.json()["rc"]) == (404, "UserNotFound")


def test_users_with_an_unknown_key_is_401(api, register):
    carol, _ = register("carol")

    response = api.get(f"/api/v2/users/{carol.pk}", HTTP_APIKEY="y" * 22)

    assert (response.status_code, response.json()["rc"]) == (401, "InvalidAPIKey")
