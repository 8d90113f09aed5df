"""Requests that used to be 500s: each is a JSON 4xx, or 503 for a lost database."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import psycopg
import pytest
import requests
from django.db import OperationalError, connection

from koboldcluster.logs import ClientErrorsOneLine

pytestmark = pytest.mark.django_db

DEEP = "[" * 1000 + "]" * 1000


def json_post_paths() -> list[str]:
    """Every API path that takes a JSON body (from the schema's operations)."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in ("post", "put", "patch") and "requestBody" in operation
    )


def test_a_huge_page_number_is_a_400(api):
    response = api.get("/api/v2/users?page=368934881474191034")

    assert response.status_code == 400
    assert response.json()["rc"] == "ValidationError"


@pytest.mark.parametrize("body", [DEEP, '{"prompt": "x", "params": ' + "{" * 1000 + "}" * 1000])
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(api, body):
    paths = json_post_paths()
    assert "/generate/prompt" in paths and len(paths) > 8

    for path in paths:
        path = path.replace("{", "").replace("}", "")  # other path parameters: any text
        response = api.post(path, data=body, content_type="application/json")
        # 401: a view that needs a key refuses a request without one before reading its body.
        assert response.status_code in (400, 401, 404, 405), (path, response.status_code)
        if response.status_code == 400 and path.startswith("/v1/"):
            assert response.json()["error"]["type"] == "invalid_request_error", path  # OpenAI's
        elif response.status_code == 400:
            assert response.json()["rc"] == "InvalidJSON", path


def test_json_a_little_deeper_than_any_api_needs_is_refused(api):
    nested = "[" * 40 + "]" * 40
    body = '{"prompt": "x", "params": {"stop_sequence": ' + nested + "}}"

    response = api.post("/generate/prompt", data=body, content_type="application/json")

    assert (response.status_code, response.json()["rc"]) == (400, "InvalidJSON")


def test_an_oversized_body_is_a_413_logged_in_one_line(api, caplog):
    secret = "do-not-log-me"
    body = '{"prompt": "' + secret + "x" * 3_000_000 + '"}'

    with caplog.at_level(logging.INFO):
        response = api.post("/generate/prompt", data=body, content_type="application/json")

    assert (response.status_code, response.json()["rc"]) == (413, "PayloadTooLarge")
    assert len(caplog.records) <= 1
    assert all(r.levelno <= logging.WARNING and not r.exc_info for r in caplog.records)
    assert secret not in caplog.text


def test_django_security_refusals_are_one_warning_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "django.security.RequestDataTooBig", logging.ERROR, __file__, 1, "too big", (), None
        )
        record.exc_info = sys.exc_info()

    assert ClientErrorsOneLine().filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert logging.Formatter().format(record) == "too big"


def test_a_database_error_mid_request_is_a_503_with_retry_after(api, monkeypatch, caplog):
    def lost(**kwargs: object) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("generations.api.original.views.prompt_create", lost)

    with caplog.at_level(logging.INFO):
        response = api.post("/generate/prompt", {"prompt": "hi"}, format="json")

    assert response.status_code == 503
    assert response.json()["rc"] == "DatabaseUnavailable"
    assert int(response["Retry-After"]) >= 1
    assert all(not r.exc_info for r in caplog.records)


@pytest.mark.e2e
def test_a_postgresql_connection_killed_mid_request_is_a_503_then_reconnects(cluster):
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL connection")
    url = cluster.url
    registered = requests.post(f"{url}/api/v2/register", json={"username": "carol"}, timeout=10)
    key, user_id = registered.json()["apikey"], registered.json()["id"]
    settings = connection.settings_dict
    dsn = (
        f"host={settings['HOST'] or '127.0.0.1'} user={settings['USER']} dbname={settings['NAME']}"
    )
    answers: list[requests.Response] = []

    def submit() -> None:
        answers.append(
            requests.post(
                f"{url}/generate/prompt", json={"prompt": "hi"}, headers={"apikey": key}, timeout=30
            )
        )

    with psycopg.connect(dsn, autocommit=False) as blocker, psycopg.connect(dsn) as admin:
        admin.autocommit = True
        # Hold carol's row: her submit waits for it inside its transaction (lock_account).
        blocker.execute("SELECT 1 FROM accounts_user WHERE id = %s FOR UPDATE", [user_id])
        thread = threading.Thread(target=submit)
        thread.start()
        waiting = None
        for _ in range(100):
            waiting = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                [settings["NAME"]],
            ).fetchone()
            if waiting:
                break
            time.sleep(0.1)
        assert waiting, "the submit never waited for the row"
        admin.execute("SELECT pg_terminate_backend(%s)", [waiting[0]])
        thread.join(timeout=30)
        blocker.rollback()

    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].json()["rc"] == "DatabaseUnavailable"
    assert int(answers[0].headers["Retry-After"]) >= 1
    again = requests.post(
        f"{url}/generate/prompt", json={"prompt": "hi"}, headers={"apikey": key}, timeout=30
    )
    assert again.status_code == 200
    assert "Traceback" not in cluster.output()


@pytest.mark.e2e
def test_a_postgresql_connection_lost_between_requests_costs_one_503(cluster):
    """Web processes keep their connection without a health check before each request."""
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL connection")
    unknown = f"{cluster.url}/generate/prompt/{uuid.uuid4()}"  # read from the database
    assert requests.get(unknown, timeout=10).status_code == 404
    with connection.cursor() as cursor:  # as a database restart would: every other session
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid()",
            [connection.settings_dict["NAME"]],
        )

    answers = [requests.get(unknown, timeout=10) for _ in range(2)]

    assert [a.status_code for a in answers] == [503, 404], answers[0].text
    assert answers[0].json()["rc"] == "DatabaseUnavailable"
    assert "Traceback" not in cluster.output()
