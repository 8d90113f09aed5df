"""The ASGI server (as run.sh starts it) serves every kind of view: sync Django views, the
admin and its static files, errors, and the async waiting pop."""

from __future__ import annotations

import pytest
import requests

pytestmark = [pytest.mark.e2e]


def test_sync_views_the_admin_and_static_files_are_served(cluster):
    base = cluster.url
    login = requests.get(f"{base}/admin/login/", timeout=10)
    css = requests.get(f"{base}/static/admin/css/base.css", timeout=10)
    missing = requests.get(f"{base}/static/admin/nothing.css", timeout=10)
    servers = requests.get(f"{base}/servers", timeout=10)

    assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    assert missing.status_code == 404
    assert servers.status_code == 200 and servers.json() == []


def test_a_waiting_pop_without_work_answers_when_its_time_is_up(cluster):
    server = {"username": "zed", "password": "pw", "name": "zed-1", "model": "m", "wait": 1}
    response = requests.post(f"{cluster.url}/generate/pop", json=server, timeout=30)
    assert response.status_code == 200
    assert response.json() == {
        "id": None,
        "skipped": {"model": 0, "max_content_length": 0, "max_length": 0},
    }
    assert response.elapsed.total_seconds() >= 0.9
    assert response.headers["Access-Control-Allow-Origin"] == "*"
