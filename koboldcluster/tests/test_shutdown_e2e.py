"""End to end: a web server told to stop (SIGTERM, as systemd and run.sh's Ctrl-C do) answers
every request it holds before it goes (koboldcluster/shutdown.py).

The cluster is the real one (uvicorn, as run.sh starts it). Servers hold long-poll pops, and
clients hold OpenAI and KoboldCpp streams for a model whose only server is idle; then the
whole process group gets SIGTERM. Every pop must get its ordinary empty answer, every stream
a proper end (an error event, and `[DONE]` for OpenAI), and nothing a 5xx.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from accounts.keys import account_register
from koboldcluster.testing import wait_until

pytestmark = [pytest.mark.e2e]

HELD_POPS = 50
STREAMS = 5
ACCOUNTS = 10  # five servers each
WAITERS, OPEN_STREAMS = "koboldcluster_long_poll_waiters", "koboldcluster_streams_open"


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"WEB_KILL_TIMEOUT": "8"}


def gauge(cluster: Any, name: str) -> float:
    text = requests.get(f"{cluster.url}/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def held_pop(cluster: Any, key: str, name: str) -> requests.Response:
    # A small context: the streams' prompts (2048) are not for these servers.
    body = {"name": name, "model": "held-model", "max_length": 64, "wait": 25}
    body["max_context_length"] = 256
    return requests.post(
        f"{cluster.url}/generate/pop", json=body, headers={"apikey": key}, timeout=60
    )


def open_stream(cluster: Any, kind: str) -> tuple[int, str]:
    """A stream for the idle server's model, read to its end: status and everything sent."""
    if kind == "openai":
        url, body = f"{cluster.url}/v1/completions", {"model": "idle-model", "prompt": "Hi"}
        body.update(stream=True, max_tokens=8)
    else:
        url, body = f"{cluster.url}/api/extra/generate/stream", {"prompt": "Hi", "max_length": 8}
        body["max_context_length"] = 2048
    with requests.post(url, json=body, stream=True, timeout=60) as response:
        return response.status_code, response.content.decode()


def test_sigterm_answers_held_pops_and_ends_streams_without_a_5xx(cluster):
    keys = [account_register(username=f"volunteer-{i}")[1] for i in range(ACCOUNTS)]
    idle = {"name": "idle-1", "model": "idle-model", "max_length": 64, "max_context_length": 2048}
    assert (
        requests.post(
            f"{cluster.url}/generate/pop", json=idle, headers={"apikey": keys[0]}, timeout=10
        ).json()["id"]
        is None
    )
    pool = ThreadPoolExecutor(HELD_POPS + STREAMS)
    try:
        pops = [
            pool.submit(held_pop, cluster, keys[i % ACCOUNTS], f"held-{i}")
            for i in range(HELD_POPS)
        ]
        streams = [
            pool.submit(open_stream, cluster, "openai" if i % 2 else "kobold")
            for i in range(STREAMS)
        ]
        seen: list[tuple[float, float]] = []

        def all_waiting() -> bool:
            seen.append((gauge(cluster, WAITERS), gauge(cluster, OPEN_STREAMS)))
            return seen[-1] == (HELD_POPS, STREAMS)

        try:
            wait_until(all_waiting, timeout=60, what="every pop held and every stream open")
        except AssertionError as error:
            done = [pop.result().json() for pop in pops if pop.done()][:3]
            raise AssertionError(f"{error}: (held, streams) {seen[-1]}; answered {done}") from None
        started = time.monotonic()
        stopper = threading.Thread(target=cluster.stop, args=(signal.SIGTERM, 30))
        stopper.start()
        answers = [pop.result(timeout=30) for pop in pops]
        ended = [stream.result(timeout=30) for stream in streams]
        stopper.join(30)
        took = time.monotonic() - started
    finally:
        cluster.stop()  # whatever happened, so that no request waits for it
        pool.shutdown(cancel_futures=True)
    output = cluster.output()

    assert [answer.status_code for answer in answers] == [200] * HELD_POPS
    assert all(answer.json()["id"] is None for answer in answers), [a.json() for a in answers][:3]
    for status, text in ended:
        assert status == 200, text
        events = [json.loads(line[6:]) for line in text.splitlines() if line[6:7] == "{"]
        assert events, text
        if "[DONE]" in text:  # OpenAI's stream: an error object, then the end marker
            assert text.rstrip().endswith("data: [DONE]")
            assert events[-1]["error"]["code"] == "ServerStopping"
        else:  # KoboldCpp's: a last token event that says why it ended
            assert events[-1]["finish_reason"] == "error"
            assert "stopping" in events[-1]["error"]
    assert took < 8, f"the drain took {took:.1f} s"
    assert not re.search(r'" 5\d\d ', output), output[-3000:]


def test_a_held_pop_whose_client_left_is_not_logged_as_a_500(cluster):
    import socket

    _, key = account_register(username="volunteer")
    body = json.dumps({"name": "gone-1", "model": "m", "wait": 20}).encode()
    request = (
        b"POST /generate/pop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"apikey: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as server:
        server.sendall(request)
        wait_until(lambda: gauge(cluster, WAITERS) == 1, what="the pop to be held")
    wait_until(lambda: gauge(cluster, WAITERS) == 0, what="the held pop to end")
    time.sleep(0.5)
    cluster.stop()
    assert not re.search(r'" 5\d\d ', cluster.output()), cluster.output()[-3000:]
