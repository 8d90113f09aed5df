"""`/`, the address run.sh prints, points people (and programs) somewhere useful."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


def test_a_browser_gets_a_page_linking_to_the_docs_register_and_servers(client):
    page = client.get("/", HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")

    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    links = re.findall(r'<a href="([^"]+)"', page.content.decode())
    assert {"/api/", "/register", "/servers"} <= set(links)
    for link in links:
        assert client.get(link).status_code == 200, link


def test_curl_gets_the_page_too(client):
    page = client.get("/", HTTP_ACCEPT="*/*")

    assert page["Content-Type"].startswith("text/html")


def test_a_program_that_asks_for_json_gets_the_links_as_json(client):
    answer = client.get("/", HTTP_ACCEPT="application/json")

    assert answer.status_code == 200
    assert answer.json()["links"]["API documentation"] == "/api/"
    assert answer.json()["links"]["Register"] == "/register"


def test_other_methods_get_a_json_405(client):
    refusal = client.post("/")

    assert (refusal.status_code, refusal.json()["rc"]) == (405, "MethodNotAllowed")
