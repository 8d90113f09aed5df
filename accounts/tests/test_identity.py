"""Who may use a name: unclaimed names, accounts with credentials, the password cache."""

import pytest
from django.db import connection

from accounts.identity import password_matches
from accounts.models import LedgerEntry, User
from generations.models import Job, Prompt
from servers.models import Server

pytestmark = pytest.mark.django_db


def test_a_username_with_credentials_cannot_be_used_without_them(api, bob):
    for body in ({}, {"password": "guess"}):
        response = api.post(
            "/generate/prompt", {"prompt": "x", "username": "bob", **body}, format="json"
        )

        assert response.status_code == 401
    assert (
        "password"
        in api.post("/generate/prompt", {"prompt": "x", "username": "bob"}, format="json").json()[
            "message"
        ]
    )


def test_the_owner_may_use_their_name_with_the_password(api, bob):
    response = api.post(
        "/generate/prompt",
        {"prompt": "x", "username": "bob", "password": "s3rver-pass"},
        format="json",
    )

    assert response.status_code == 200


def test_a_verified_password_and_a_refused_one_are_each_hashed_once(bob):
    calls = []
    real_check = User.check_password

    def counting_check(self, raw):
        calls.append(raw)
        return real_check(self, raw)

    User.check_password = counting_check
    try:
        assert password_matches(bob, "s3rver-pass")
        assert password_matches(bob, "s3rver-pass")
        assert not password_matches(bob, "wrong")
        assert not password_matches(bob, "wrong")
    finally:
        User.check_password = real_check

    assert calls == ["s3rver-pass", "wrong"]


def test_the_password_cache_never_holds_the_password(bob):
    from django.core.cache import cache

    password_matches(bob, "s3rver-pass")

    stored = repr(cache._cache) if hasattr(cache, "_cache") else ""
    assert "s3rver-pass" not in stored


def test_no_plaintext_password_anywhere_after_server_registration(pop):
    pop(username="frank", password="franks-plaintext-secret", name="frank-1")

    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            assert "franks-plaintext-secret" not in repr(cursor.fetchall()), table


# --- Impersonation with API keys ---------------------------------------------------------------


def test_a_registered_name_cannot_submit_without_its_key(api, register):
    register("carol")

    for body in ({}, {"password": "guess"}):
        response = api.post(
            "/generate/prompt", {"prompt": "x", "username": "carol", **body}, format="json"
        )

        assert response.status_code == 401
        assert "'apikey' header" in response.json()["message"]
    assert not Prompt.objects.exists()


def test_a_registered_name_cannot_pop_without_its_key(pop, register):
    register("carol")

    for password in (None, "guess"):
        response = pop(username="carol", password=password, name="carol-1")

        assert response.status_code == 401
        assert "'apikey' header" in response.json()["message"]
    assert not Server.objects.exists()


def test_which_credential_is_missing_is_named(api, pop, bob):
    prompt = api.post("/generate/prompt", {"prompt": "x", "username": "bob"}, format="json")
    server = pop(password=None)

    for response in (prompt, server):
        assert response.status_code == 401
        assert response.json()["rc"] == "CredentialsRequired"
        assert "password" in response.json()["message"]
        assert "apikey" in response.json()["message"]


def test_a_server_pops_and_submits_with_a_key_alone(api, register, submit_prompt):
    carol, key = register("carol")
    prompt_id = submit_prompt()

    job = api.post(
        "/generate/pop", {"name": "carol-1", "model": "m"}, format="json", HTTP_APIKEY=key
    ).json()
    reward = api.post(
        "/generate/submit", {"id": job["id"], "generation": "abcd"}, format="json", HTTP_APIKEY=key
    )

    assert str(Job.objects.get(id=job["id"]).prompt_id) == prompt_id
    assert Server.objects.get(name="carol-1").owner == carol
    assert reward.json() == {"reward": 1}
    assert LedgerEntry.objects.get(kind="contribution").user == carol


def test_the_anonymous_key_cannot_run_a_server(api):
    response = api.post(
        "/generate/pop", {"name": "anon-1", "model": "m"}, format="json", HTTP_APIKEY="0000000000"
    )

    assert response.status_code == 403
    assert response.json()["rc"] == "AnonForbiddenWorker"


def test_a_server_name_owned_by_one_account_cannot_be_used_by_another(api, register):
    _, carols_key = register("carol")
    _, daves_key = register("dave")
    api.post(
        "/generate/pop", {"name": "shared", "model": "m"}, format="json", HTTP_APIKEY=carols_key
    )

    response = api.post(
        "/generate/pop", {"name": "shared", "model": "m"}, format="json", HTTP_APIKEY=daves_key
    )

    assert response.status_code == 403
    assert response.json()["rc"] == "WrongCredentials"
    assert Server.objects.get(name="shared").owner.username == "carol"


def test_nobody_submits_for_another_accounts_server(api, register, submit_prompt):
    _, carols_key = register("carol")
    _, daves_key = register("dave")
    submit_prompt()
    job = api.post(
        "/generate/pop", {"name": "carol-1", "model": "m"}, format="json", HTTP_APIKEY=carols_key
    ).json()

    by_key = api.post(
        "/generate/submit",
        {"id": job["id"], "generation": "x"},
        format="json",
        HTTP_APIKEY=daves_key,
    )
    by_nothing = api.post("/generate/submit", {"id": job["id"], "generation": "x"}, format="json")

    assert (by_key.status_code, by_key.json()["rc"]) == (403, "WrongCredentials")
    assert by_nothing.status_code == 401
    assert Job.objects.get(id=job["id"]).state == Job.State.PROCESSING
    assert not LedgerEntry.objects.exists()
