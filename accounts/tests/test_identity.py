"""Who may use a name: unclaimed names, accounts with credentials, the password cache."""

import pytest
from django.db import connection

from accounts.models import User
from accounts.services import password_matches

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


def test_a_verified_password_is_cached_as_a_keyed_digest(bob, django_assert_num_queries):
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

    assert calls == ["s3rver-pass", "wrong", "wrong"]


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
