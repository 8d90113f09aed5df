"""End to end: what a front-end sees while it waits, through the real server (uvicorn).

- A stream waiting for its first token sends SSE keep-alive comments (a proxy with an idle
  time-out would otherwise cut it), and its time-out error gives its place in the queue.
- KoboldCpp's check and abort find a generation by its genkey from any web process, without
  Redis: two web workers, each request on a new connection.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests

from accounts.keys import account_register
from generations.models import Prompt

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {
        "WEB_WORKERS": "2",
        "KOBOLDCLUSTER_STREAM_KEEPALIVE_SECONDS": "0.5",
        "KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "3",
    }


def pop(cluster: Any, key: str, **body: Any) -> dict[str, Any]:
    body = {"name": "idle-1", "model": "tiny", "max_length": 64, **body}
    answer = requests.post(f"{cluster.url}/generate/pop", json=body, headers={"apikey": key})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_queued_stream_sends_keepalives_then_an_error_with_its_place(cluster):
    _, key = account_register(username="volunteer")
    assert pop(cluster, key)["id"] is None  # online, but asks for no more work
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 8, "stream": True}
    started, lines = time.monotonic(), []
    with requests.post(f"{cluster.url}/v1/completions", json=body, stream=True, timeout=30) as r:
        assert r.status_code == 200
        # Where it stands when the stream starts: first in the queue.
        assert r.headers["X-KoboldCluster-Queue-Position"] == "1"
        assert int(r.headers["X-KoboldCluster-Wait-Seconds"]) >= 0
        for line in r.iter_lines(decode_unicode=True):
            lines.append((round(time.monotonic() - started, 1), line))
    comments = [at for at, line in lines if line.startswith(":")]
    assert len(comments) >= 4 and comments[0] < 1.5, lines  # every 0.5 s while queued
    data = [line[6:] for _, line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert error["code"] == "Timeout" and "number 1 in the queue" in error["message"], error


def test_check_and_abort_find_the_genkey_from_every_web_worker(cluster):
    _, key = account_register(username="volunteer")
    pop(cluster, key)  # a server online
    url, answers = cluster.url, {}

    def generate(genkey: str) -> None:
        body = {"prompt": "Once", "max_length": 16, "genkey": genkey}
        answers[genkey] = requests.post(f"{url}/api/v1/generate", json=body, timeout=30)

    waiting = [threading.Thread(target=generate, args=(k,)) for k in ("KCPP1111", "KCPP2222")]
    for thread in waiting:
        thread.start()
    job = _pop_until_job(cluster, key)
    served = Prompt.objects.get(jobs__id=job["id"]).genkey
    other = ({"KCPP1111", "KCPP2222"} - {served}).pop()
    progress = {"id": job["id"], "text": " so far"}
    answer = requests.post(f"{url}/generate/progress", json=progress, headers={"apikey": key})
    assert answer.json() == {"ok": True}

    # Each on a new connection: the two web workers answer about half each.
    assert {_check(url, served) for _ in range(10)} == {" so far"}
    assert _abort(url, other) is True
    assert _abort(url, "KCPP3333") is False
    submit = {"id": job["id"], "generation": " so far, the end"}
    assert requests.post(f"{url}/generate/submit", json=submit, headers={"apikey": key}).ok
    assert {_check(url, served) for _ in range(10)} == {" so far, the end"}
    for thread in waiting:
        thread.join(30)
    assert answers[served].json() == {"results": [{"text": " so far, the end"}]}
    assert answers[other].json() == {"results": [{"text": ""}]}  # aborted


def _pop_until_job(cluster: Any, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = pop(cluster, key, wait=1)
        if job["id"]:
            return job
    raise AssertionError("no job to pop")


def _check(url: str, genkey: str) -> str:
    answer = requests.post(f"{url}/api/extra/generate/check", json={"genkey": genkey})
    return answer.json()["results"][0]["text"]


def _abort(url: str, genkey: str) -> bool:
    return requests.post(f"{url}/api/extra/abort", json={"genkey": genkey}).json()["success"]
