"""What every AI Horde v2 path must do (research §1, §5): CORS, JSON errors, no redirects,
the status endpoints, and the OpenAPI documentation at /api/ served without a CDN."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from koboldcluster import __version__
from koboldcluster.middleware import CORS_HEADERS
from koboldcluster.tests import horde_shapes as shapes

pytestmark = pytest.mark.django_db


def test_a_preflight_on_a_v2_path_is_answered(client):
    response = client.options(
        "/api/v2/generate/text/async",
        HTTP_ORIGIN="https://lite.koboldai.net",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="apikey, content-type, client-agent",
    )

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"apikey", "content-type", "client-agent", "x-fields"} <= allowed


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v2/status/heartbeat"),
        ("get", "/api/v2/generate/text/status/not-a-uuid"),
        ("post", "/api/v2/generate/text/pop"),
        ("get", "/api/v2/no/such/path"),
        ("get", "/generate/prompt/not-a-uuid"),
    ],
)
def test_every_api_answer_carries_cors_headers(client, method, path):
    response = getattr(client, method)(path, HTTP_ORIGIN="https://lite.koboldai.net")

    for name, value in CORS_HEADERS.items():
        assert response[name] == value


def test_the_admin_has_no_cors_headers(client):
    assert "Access-Control-Allow-Origin" not in client.get("/admin/login/")


def test_posts_need_no_csrf_token(api, register):
    from koboldcluster.asgi_client import APIClient

    browser = APIClient(enforce_csrf_checks=True)
    _, key = register("carol")

    response = browser.post(
        "/api/v2/generate/text/async", {"prompt": "Hi"}, format="json", HTTP_APIKEY=key
    )

    assert response.status_code == 202


def test_an_unknown_v2_path_is_a_json_404_with_rc(client):
    response = client.get("/api/v2/generate/text/nothing")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    shapes.check(response.json(), shapes.ERROR)
    assert response.json()["rc"] == "NotFound"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v2/generate/text/async"),
        ("put", "/api/v2/generate/text/pop"),
        ("post", "/api/v2/workers"),
        ("delete", "/api/v2/status/heartbeat"),
    ],
)
def test_a_wrong_method_on_a_v2_path_is_a_json_405_with_rc(client, method, path):
    response = getattr(client, method)(path)

    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response.json()["rc"] == "MethodNotAllowed"


@pytest.mark.parametrize(
    "path", ["/api/v2/generate/text/async/", "/api/v2/workers/", "/api/v2/status/heartbeat/"]
)
def test_a_trailing_slash_is_a_404_never_a_redirect(client, path):
    assert client.post(path, {}).status_code == 404
    assert client.get(path).status_code in (404, 405)


def test_heartbeat_modes_and_news(client):
    heartbeat = client.get("/api/v2/status/heartbeat").json()

    shapes.check(heartbeat, shapes.HEARTBEAT)
    assert heartbeat == {"message": "OK", "version": __version__}
    shapes.check(client.get("/api/v2/status/modes").json(), shapes.MODES)
    assert client.get("/api/v2/status/news").json() == []


def test_the_heartbeat_is_never_rate_limited(client, rate_limits):
    rate_limits(read_ip="1/min")

    assert [client.get("/api/v2/status/heartbeat").status_code for _ in range(3)] == [200] * 3
    assert client.get("/api/v2/status/modes").status_code == 200
    assert client.get("/api/v2/status/modes").status_code == 429


def test_the_schema_describes_both_apis(client):
    response = client.get("/api/schema?format=json")

    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in (
        "/generate/prompt",
        "/generate/pop",
        "/generate/submit",
        "/servers",
        "/api/v2/generate/text/async",
        "/api/v2/generate/text/status/{prompt_id}",
        "/api/v2/generate/text/pop",
        "/api/v2/generate/text/submit",
        "/api/v2/workers",
        "/api/v2/workers/{server_id}",
        "/api/v2/users",
        "/api/v2/users/{user_id}",
        "/api/v2/find_user",
        "/api/v2/kudos/transfer",
        "/api/v2/status/heartbeat",
        "/api/v2/status/models",
        "/api/v2/status/performance",
    ):
        assert path in paths, path
    assert "tokens" in schema["info"]["description"]
    submit = paths["/api/v2/generate/text/submit"]["post"]
    assert "tokens" in submit["description"]
    body = paths["/api/v2/generate/text/async"]["post"]["requestBody"]
    component = next(iter(body["content"].values()))["schema"]["$ref"].split("/")[-1]
    assert "params" in schema["components"]["schemas"][component]["properties"]


def test_the_docs_do_not_promise_that_lite_and_sillytavern_can_be_pointed_here(client):
    description = client.get("/api/schema?format=json").json()["info"]["description"]

    assert "work unchanged" not in description
    assert "`@zeldafan0225/ai_horde` (`api_route: <this address>/api/v2`)" in description
    assert "KoboldAI Lite and SillyTavern have the AI Horde's address written into" in description


def test_the_schema_generates_without_warnings(tmp_path):
    call_command("spectacular", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))

    assert "/api/v2/generate/text/pop" in (tmp_path / "schema.yaml").read_text()


def test_swagger_ui_loads_its_assets_from_the_cluster(client):
    page = client.get("/api/")

    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    assert "cdn" not in html.lower()
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts
    for asset in scripts:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content if served.streaming else [served.content])


def test_the_docs_and_the_v2_api_do_not_collide(client):
    assert client.get("/api/").status_code == 200
    assert client.get("/api/v2/status/heartbeat").json()["message"] == "OK"
    assert client.get("/api/v2").status_code == 404
