"""End to end with `--protocol horde`: the real cluster (gunicorn on the test database), the real
bridge process speaking the AI Horde v2 API with an API key, and FakeKoboldAI as a process.

Like test_e2e.py, each test is a client's story, but prompts arrive through both of the
cluster's APIs (the original `/generate/prompt` and the v2 `/api/v2/generate/text/async`) and
are served by a bridge that pops and submits through `/api/v2/generate/text/`: one queue, one
ledger.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
import requests

from bridge.tests.kai_double import fake_text
from bridge.tests.processes import Process, wait_until
from bridge.tests.test_e2e import get, stop, wait_done

pytestmark = [pytest.mark.e2e]

AGENT = "KoboldAI Cluster Bridge:1.0.0:unknown"


@pytest.fixture
def keys(cluster: Any) -> dict[str, str]:
    """API keys for alice (who asks for texts) and bob (who runs the server)."""
    from accounts.keys import account_register

    return {name: account_register(username=name)[1] for name in ("alice", "bob")}


def submit(cluster: Any, key: str, prompt: str, n: int = 1, **params: Any) -> str:
    """A prompt through the original API, by a user identified with their API key."""
    body = {"prompt": prompt, "params": {"n": n, "max_length": 16, **params}}
    response = requests.post(
        f"{cluster.url}/generate/prompt", json=body, headers={"apikey": key}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def submit_v2(cluster: Any, key: str, prompt: str, n: int = 1, **params: Any) -> str:
    """A prompt through the AI Horde v2 API."""
    body = {"prompt": prompt, "params": {"n": n, "max_length": 16, **params}}
    response = requests.post(
        f"{cluster.url}/api/v2/generate/text/async", json=body, headers={"apikey": key}, timeout=10
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def status_v2(cluster: Any, request_id: str) -> dict[str, Any]:
    response = requests.get(f"{cluster.url}/api/v2/generate/text/status/{request_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_done_v2(cluster: Any, request_id: str, bridge: Process, timeout: float = 60) -> dict:
    return wait_until(
        lambda: (answer := status_v2(cluster, request_id))["done"] and answer,
        f"request {request_id} to be done",
        timeout,
        watch=[bridge],
    )


def start(bridge_process: Any, cluster: Any, kai: Any, key: str, *args: str) -> Process:
    return bridge_process(
        *("--cluster-url", cluster.url + "/", "--kai-url", kai.url, "--name", "bob-kai"),
        *("--protocol", "horde", "--apikey", key),
        *args,
    )


def test_prompts_from_both_apis_are_served_and_accounted(cluster, keys, kai_double, bridge_process):
    kai = kai_double()
    bridge = start(bridge_process, cluster, kai, keys["bob"])
    original = submit(cluster, keys["alice"], "Once upon a time", n=3)
    horde = submit_v2(cluster, keys["alice"], "The kobold looked at the dragon and", n=3)

    answer = wait_done(cluster, original, bridge)
    assert answer["finished"] == 3 and answer["processing"] == answer["waiting"] == 0
    assert answer["generations"] == [fake_text("Once upon a time")] * 3
    answer = wait_done_v2(cluster, horde, bridge)
    assert (answer["finished"], answer["processing"], answer["waiting"]) == (3, 0, 0)
    assert answer["faulted"] is False
    for generation in answer["generations"]:
        assert generation["text"] == fake_text("The kobold looked at the dragon and")
        assert generation["model"] == "KoboldAI/FakeModel-1B"
        assert generation["worker_name"] == "bob-kai"
        assert generation["state"] == "ok"
    assert len(answer["generations"]) == 3

    [worker] = get(cluster, "/api/v2/workers")
    assert (worker["name"], worker["bridge_agent"]) == ("bob-kai", AGENT)
    assert worker["models"] == ["KoboldAI/FakeModel-1B"]
    assert (worker["max_length"], worker["max_context_length"]) == (512, 2048)
    [server] = get(cluster, "/servers")
    assert (server["requests_fulfilled"], server["tokens_generated"]) == (6, 96)
    # One ledger: what alice used through either API is what bob's server generated.
    assert get(cluster, "/usage") == {"alice": 96}
    assert get(cluster, "/contributions") == {"bob": 96}
    assert kai.state()["generated"] == 6
    jobs = [
        line for line in bridge.lines if re.search(r"job \w+: 16 tokens in .*, 16 kudos$", line)
    ]
    assert len(jobs) == 6
    summary = stop(bridge)
    assert "stopped: 6 jobs done, 0 given back, 0 dropped; 96 tokens at" in summary
    assert "; 96 kudos; up " in summary


def test_refused_payload_is_reported_faulted_and_requeued(
    cluster, keys, kai_double, bridge_process
):
    kai = kai_double()
    kai.control(refuse_next=1)
    bridge = start(bridge_process, cluster, kai, keys["bob"])
    request_id = submit_v2(cluster, keys["alice"], "refused once")
    answer = wait_done_v2(cluster, request_id, bridge)
    assert [generation["text"] for generation in answer["generations"]] == [
        fake_text("refused once")
    ]
    # The faulted submit put the job back at once (not after its ttl) for the next pop.
    assert answer["restarted"] == 1
    bridge.wait_for("given back to the cluster (KoboldAI refused it)")
    assert kai.state()["generated"] == 1
    assert get(cluster, "/usage") == {"alice": 16}
    assert get(cluster, "/contributions") == {"bob": 16}
    assert "stopped: 1 jobs done, 1 given back, 0 dropped" in stop(bridge)


def test_cluster_restart_mid_run_loses_nothing(cluster, keys, kai_double, bridge_process):
    kai = kai_double("--delay", "1.0")
    bridge = start(bridge_process, cluster, kai, keys["bob"])
    request_id = submit_v2(cluster, keys["alice"], "through a restart", n=3)
    wait_until(lambda: kai.state()["active"] == 1, "a generation in progress", watch=[bridge])
    # A crash while the job is generated, so that its submit fails and must be retried; then
    # the cluster comes back on the same port and database.
    cluster.stop(signal.SIGKILL)
    bridge.wait_for("submit failed, retrying in")
    cluster.start()
    answer = wait_done_v2(cluster, request_id, bridge)
    texts = [generation["text"] for generation in answer["generations"]]
    assert texts == [fake_text("through a restart")] * 3
    # Every job was generated exactly once: a submit that failed was retried, not regenerated.
    assert kai.state()["generated"] == 3
    assert get(cluster, "/usage") == {"alice": 48}
    assert get(cluster, "/contributions") == {"bob": 48}
    assert "stopped: 3 jobs done, 0 given back, 0 dropped" in stop(bridge)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("0000000000", "the cluster does not let the anonymous user run servers"),
        ("not-a-key-of-anyone-22", "the cluster rejected the credentials: "),
    ],
)
def test_a_key_that_cannot_run_servers_is_one_clear_line(
    cluster, kai_double, bridge_process, key, expected
):
    kai = kai_double()
    bridge = start(bridge_process, cluster, kai, key)
    assert bridge.wait(timeout=30) == 1
    errors = [line for line in bridge.lines if " ERROR " in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0] == bridge.lines[-1]
    assert expected in errors[0]
    assert get(cluster, "/servers") == []


def test_throughput_with_two_threads(cluster, keys, kai_double, bridge_process):
    """Not a benchmark: records what a v2 run through the double looks like (see the summary)."""
    kai = kai_double("--delay", "0.2", "--tokens", "64")
    bridge = start(bridge_process, cluster, kai, keys["bob"], "--threads", "2")
    request_id = submit_v2(cluster, keys["alice"], "many", n=20, max_length=64)
    answer = wait_done_v2(cluster, request_id, bridge, timeout=90)
    assert [generation["text"] for generation in answer["generations"]] == [
        fake_text("many", 64)
    ] * 20
    summary = stop(bridge)
    assert "stopped: 20 jobs done, 0 given back, 0 dropped; 1280 tokens at" in summary
    print(summary)
