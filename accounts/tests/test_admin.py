"""The admin: trust, concurrency, key revocation, maintenance and pause."""

import pytest

from accounts.models import ApiKey, User
from servers.models import Server

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url", ["/admin/accounts/user/", "/admin/accounts/apikey/", "/admin/servers/server/"]
)
def test_admin_lists_load(admin_client, register, url):
    register("carol")

    assert admin_client.get(url).status_code == 200


def test_the_user_page_shows_keys_without_secrets(admin_client, register):
    carol, key = register("carol")

    page = admin_client.get(f"/admin/accounts/user/{carol.pk}/change/")

    assert page.status_code == 200
    assert b"registration" in page.content
    assert key.encode() not in page.content
    assert ApiKey.objects.get().digest.encode() not in page.content


def test_mark_trusted_and_revoke_keys(admin_client, register, api):
    carol, key = register("carol")

    for action in ("mark_trusted", "revoke_keys"):
        admin_client.post(
            "/admin/accounts/user/", {"action": action, "_selected_action": [carol.pk]}
        )

    assert User.objects.get(pk=carol.pk).trusted
    assert api.get("/api/v2/find_user", HTTP_APIKEY=key).status_code == 404


def test_revoke_selected_keys(admin_client, register):
    carol, _ = register("carol")
    api_key = ApiKey.objects.get()

    admin_client.post(
        "/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [api_key.pk]}
    )

    assert ApiKey.objects.get().revoked


def test_pause_and_maintenance_actions(admin_client, bob):
    server = Server.objects.create(name="bob-1", owner=bob)

    for action in ("pause", "start_maintenance"):
        admin_client.post(
            "/admin/servers/server/", {"action": action, "_selected_action": [server.pk]}
        )

    server.refresh_from_db()
    assert (server.paused, server.maintenance) == (True, True)
