"""The original API over real HTTP against a real server process."""

import http.client
import json

import pytest
import requests

pytestmark = [pytest.mark.e2e]


def test_a_prompt_round_trip_over_http(cluster):
    base = cluster.url
    prompt_id = requests.post(
        f"{base}/generate/prompt",
        json={"prompt": "Hello", "params": {"n": 1, "max_length": 16}, "username": "eve"},
        timeout=10,
    ).json()["id"]
    server = {"username": "zed", "password": "pw", "name": "zed-1", "model": "m"}

    job = requests.post(f"{base}/generate/pop", json=server, timeout=10).json()
    cluster.restart()
    reward = requests.post(
        f"{base}/generate/submit",
        json={"id": job["id"], "password": "pw", "generation": "world!!!"},
        timeout=10,
    ).json()
    status = requests.get(f"{base}/generate/prompt/{prompt_id}", timeout=10).json()

    assert reward == {"reward": 2}
    assert (status["done"], status["generations"]) == (True, ["world!!!"])
    assert requests.get(f"{base}/usage", timeout=10).json() == {"eve": 2}


def test_the_horde_api_conventions_over_http(cluster):
    """Preflight and CORS, a `//` from a bridge's trailing slash, JSON errors: through gunicorn."""
    base = cluster.url
    preflight = requests.options(
        f"{base}/api/v2/generate/text/async",
        headers={
            "Origin": "https://lite.koboldai.net",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "apikey, client-agent, content-type",
        },
        timeout=10,
    )
    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    connection.request("GET", "//api/v2/status/heartbeat")
    doubled = connection.getresponse()
    missing = requests.get(f"{base}/api/v2/nothing", timeout=10)
    wrong = requests.get(f"{base}/api/v2/generate/text/pop", timeout=10)

    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "apikey" in preflight.headers["Access-Control-Allow-Headers"]
    assert doubled.status == 200 and json.loads(doubled.read())["message"] == "OK"
    assert (missing.status_code, missing.json()["rc"]) == (404, "NotFound")
    assert (wrong.status_code, wrong.json()["rc"]) == (405, "MethodNotAllowed")
    assert missing.headers["Access-Control-Allow-Origin"] == "*"
