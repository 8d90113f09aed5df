"""The servers in the admin, as a superuser sees them."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from servers.models import Server

pytestmark = pytest.mark.django_db


def cells(page: bytes, server: Server) -> dict[str, str]:
    """The list's cells of `server`'s row, by column name (`field-<name>` classes)."""
    html = page.decode()
    row = next(row for row in re.findall(r"<tr>.*?</tr>", html, re.S) if server.name in row)
    found = re.findall(r'<t[dh] class="field-([a-z_]+)[^"]*">(.*?)</t[dh]>', row, re.S)
    return {name: re.sub(r"<[^>]+>", "", text).strip() for name, text in found}


def test_the_server_list_shows_models_work_faults_and_speed(admin_client, bob):
    checked_in = timezone.now().replace(microsecond=0)
    server = Server.objects.create(
        name="bob-1",
        owner=bob,
        models=["KoboldAI/OPT-13B-Erebus", "KoboldAI/Tiny-1B"],
        last_check_in=checked_in,
        tokens_generated=1234,
        requests_fulfilled=56,
        uncompleted_jobs=3,
        speed=18.456,
    )

    page = admin_client.get("/admin/servers/server/")

    assert page.status_code == 200
    row = cells(page.content, server)
    assert row["served_models"] == "KoboldAI/OPT-13B-Erebus, KoboldAI/Tiny-1B"
    assert row["tokens_generated"] == "1234"
    assert row["jobs_fulfilled"] == "56"
    assert row["faults"] == "3"
    assert row["tokens_per_second"] == "18.5 tokens/s"
    assert row["last_check_in"]  # a date, in the admin's format
    headers = re.findall(r'<th scope="col" class="[^"]*column-([a-z_]+)', page.content.decode())
    assert "model" not in headers  # once an empty column headed "Server"


def test_a_new_server_shows_no_speed_rather_than_zero(admin_client, bob):
    server = Server.objects.create(name="bob-2", owner=bob)

    row = cells(admin_client.get("/admin/servers/server/").content, server)

    assert (row["served_models"], row["tokens_per_second"]) == ("—", "—")


def test_the_server_page_shows_speed_with_its_unit(admin_client, bob):
    server = Server.objects.create(name="bob-3", owner=bob, speed=7.26, uncompleted_jobs=2)

    page = admin_client.get(f"/admin/servers/server/{server.pk}/change/")

    assert page.status_code == 200
    assert b"7.3 tokens/s" in page.content
