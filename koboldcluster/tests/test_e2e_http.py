"""The original API over real HTTP against a real server process."""

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
