"""The `apikey` header, and managing keys: create, list, revoke."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.keys import apikey_authenticate, apikeys_revoke
from accounts.models import ApiKey, User
from generations.models import Prompt

pytestmark = pytest.mark.django_db


def test_a_prompt_sent_with_a_key_is_billed_to_its_account(api, register):
    carol, key = register("carol")

    api.post("/generate/prompt", {"prompt": "hi"}, format="json", HTTP_APIKEY=key)

    assert Prompt.objects.get().user == carol


def test_the_key_wins_over_a_username_in_the_body(api, register, alice):
    carol, key = register("carol")

    body = {"prompt": "hi", "username": "alice"}
    api.post("/generate/prompt", body, format="json", HTTP_APIKEY=key)

    assert Prompt.objects.get().user == carol


def test_the_anonymous_key_is_the_anonymous_user(api):
    response = api.post(
        "/generate/prompt", {"prompt": "hi"}, format="json", HTTP_APIKEY="0000000000"
    )

    assert response.status_code == 200
    assert Prompt.objects.get().user_id == User.ANONYMOUS_ID


def test_no_header_and_an_empty_header_mean_no_key(api):
    api.post("/generate/prompt", {"prompt": "hi"}, format="json")
    api.post("/generate/prompt", {"prompt": "hi"}, format="json", HTTP_APIKEY="")

    assert list(Prompt.objects.values_list("user_id", flat=True)) == [User.ANONYMOUS_ID] * 2


@pytest.mark.parametrize("key", ["x" * 22, "0000000001", "not a key at all"])
def test_an_unknown_key_is_refused(api, register, key):
    register("carol")

    response = api.post("/generate/prompt", {"prompt": "hi"}, format="json", HTTP_APIKEY=key)

    assert response.status_code == 401
    assert response.json()["rc"] == "InvalidAPIKey"
    assert "apikey" in response.json()["message"]
    assert not Prompt.objects.exists()


def test_a_revoked_key_is_refused_at_once(api, register):
    carol, key = register("carol")
    api.post("/api/v2/apikeys", {}, format="json", HTTP_APIKEY=key)  # a second key to keep
    api_key = ApiKey.objects.get(digest=ApiKey.digest_of(key))

    revoked = api.delete(f"/api/v2/apikeys/{api_key.pk}", HTTP_APIKEY=key)
    response = api.post("/generate/prompt", {"prompt": "hi"}, format="json", HTTP_APIKEY=key)

    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    assert response.status_code == 401
    assert response.json()["rc"] == "InvalidAPIKey"
    assert not Prompt.objects.exists()


def test_a_deactivated_users_key_is_refused(api, register):
    carol, key = register("carol", is_active=False)

    response = api.get("/api/v2/find_user", HTTP_APIKEY=key)

    assert response.status_code == 404


def test_last_used_is_written_at_most_once_a_minute(register, time_machine):
    carol, key = register("carol")
    start = timezone.now()
    time_machine.move_to(start, tick=False)
    apikey_authenticate(key=key)
    time_machine.move_to(start + timedelta(seconds=59), tick=False)
    apikey_authenticate(key=key)
    first = ApiKey.objects.get().last_used

    time_machine.move_to(start + timedelta(seconds=61), tick=False)
    apikey_authenticate(key=key)

    assert first == start
    assert ApiKey.objects.get().last_used == start + timedelta(seconds=61)


def test_authenticating_with_a_fresh_key_costs_one_query(register, django_assert_num_queries):
    carol, key = register("carol")
    apikey_authenticate(key=key)

    with django_assert_num_queries(1):
        assert apikey_authenticate(key=key)[0] == carol


def test_create_list_and_revoke_keys(api, register):
    carol, key = register("carol")

    created = api.post("/api/v2/apikeys", {"name": "my server"}, format="json", HTTP_APIKEY=key)
    listed = api.get("/api/v2/apikeys", HTTP_APIKEY=key)

    assert created.status_code == 201
    new = created.json()
    assert new["name"] == "my server" and len(new["apikey"]) == 22
    assert [k["name"] for k in listed.json()] == ["registration", "my server"]
    assert all(set(k) == {"id", "name", "created", "last_used", "revoked"} for k in listed.json())
    assert api.get("/api/v2/find_user", HTTP_APIKEY=new["apikey"]).json()["id"] == carol.pk

    first_id = listed.json()[0]["id"]
    assert api.delete(f"/api/v2/apikeys/{first_id}", HTTP_APIKEY=new["apikey"]).status_code == 200
    assert [k["name"] for k in api.get("/api/v2/apikeys", HTTP_APIKEY=new["apikey"]).json()] == [
        "my server"
    ]


def test_the_last_key_of_an_account_without_password_is_kept(api, register):
    carol, key = register("carol")
    api_key = ApiKey.objects.get(user=carol)

    response = api.delete(f"/api/v2/apikeys/{api_key.pk}", HTTP_APIKEY=key)

    assert response.status_code == 400
    assert response.json()["rc"] == "LastApiKey"
    assert api.get("/api/v2/find_user", HTTP_APIKEY=key).status_code == 200


def test_nobody_revokes_someone_elses_key(api, register):
    carol, carols_key = register("carol")
    dave, daves_key = register("dave")
    api.post("/api/v2/apikeys", {}, format="json", HTTP_APIKEY=carols_key)
    carols_first = ApiKey.objects.filter(user=carol).first()

    response = api.delete(f"/api/v2/apikeys/{carols_first.pk}", HTTP_APIKEY=daves_key)

    assert response.status_code == 404
    assert response.json()["rc"] == "ApiKeyNotFound"
    assert ApiKey.objects.get(pk=carols_first.pk).revoked_at is None


@pytest.mark.parametrize(
    ("headers", "status", "rc"),
    [({}, 401, "InvalidAPIKey"), ({"HTTP_APIKEY": "0000000000"}, 403, "AnonForbidden")],
)
def test_key_management_needs_an_account(api, headers, status, rc):
    for response in (
        api.get("/api/v2/apikeys", **headers),
        api.post("/api/v2/apikeys", {}, format="json", **headers),
        api.delete("/api/v2/apikeys/1", **headers),
    ):
        assert (response.status_code, response.json()["rc"]) == (status, rc)


def test_a_server_account_gets_its_first_key_with_its_password(api, bob, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    wrong = api.post("/api/v2/apikeys", {"username": "bob", "password": "nope"}, format="json")
    time_machine.shift(10)  # past the lockout after a wrong password (accounts/guard.py)
    right = api.post(
        "/api/v2/apikeys", {"username": "bob", "password": "s3rver-pass"}, format="json"
    )

    assert wrong.status_code == 401
    assert right.status_code == 201
    assert api.get("/api/v2/find_user", HTTP_APIKEY=right.json()["apikey"]).json()["id"] == bob.pk


def test_the_admin_revokes_any_key(api, register):
    carol, key = register("carol")

    assert apikeys_revoke(key_ids=ApiKey.objects.values_list("pk", flat=True)) == 1

    assert api.get("/api/v2/find_user", HTTP_APIKEY=key).status_code == 404


def test_a_new_key_never_starts_with_a_dash(monkeypatch):
    """`--apikey -x…` is an option to argparse, not a value: a bridge could not take the key."""
    from accounts import keys

    drawn = iter(["-startswithadash00000a", "fine-key-with-dash-in0"])
    monkeypatch.setattr(keys.secrets, "token_urlsafe", lambda size: next(drawn))

    assert keys.new_key() == "fine-key-with-dash-in0"
