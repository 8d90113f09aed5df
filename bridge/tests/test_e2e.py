"""End to end: the real cluster (gunicorn on the test database), the real bridge process and
FakeKoboldAI (the test double of KoboldAI) as a process, talking over HTTP.

Each test is a client's story: it submits prompts, the bridge serves them, the client polls
until done and checks the texts (deterministic from the double) and the accounting.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
import requests

from bridge.tests.kai_double import fake_text
from bridge.tests.processes import Process, wait_until

pytestmark = [pytest.mark.e2e]

PASSWORD = "s3cret-pass"


@pytest.fixture
def cluster_env() -> dict[str, str]:
    # alice has no credentials: her requests may ask for 10 generations unless raised here.
    return {"KOBOLDCLUSTER_MAX_N_ANONYMOUS": "20"}


def submit(cluster: Any, prompt: str, n: int = 1, username: str = "alice", **params: Any) -> str:
    body = {"prompt": prompt, "params": {"n": n, "max_length": 16, **params}, "username": username}
    response = requests.post(f"{cluster.url}/generate/prompt", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def status(cluster: Any, prompt_id: str) -> dict[str, Any]:
    response = requests.get(f"{cluster.url}/generate/prompt/{prompt_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(cluster: Any, prompt_id: str, bridge: Process, timeout: float = 60) -> dict:
    return wait_until(
        lambda: (answer := status(cluster, prompt_id))["done"] and answer,
        f"prompt {prompt_id} to be done",
        timeout,
        watch=[bridge],
    )


def get(cluster: Any, path: str) -> Any:
    return requests.get(f"{cluster.url}{path}", timeout=10).json()


def start(bridge_process: Any, cluster: Any, kai: Any, *args: str, **env: str) -> Process:
    return bridge_process(
        *("--cluster-url", cluster.url, "--kai-url", kai.url, "--name", "bob-kai"),
        *("--username", "bob", "--password", PASSWORD),
        *args,
        **env,
    )


def stop(bridge: Process) -> str:
    """Ctrl-C the bridge; it must exit 0 with its summary as the last line."""
    bridge.interrupt()
    assert bridge.wait(timeout=30) == 0, bridge.output
    assert " stopped: " in bridge.lines[-1], bridge.output
    return bridge.lines[-1]


def test_prompts_with_n3_are_served_and_accounted(cluster, kai_double, bridge_process):
    kai = kai_double()
    bridge = start(bridge_process, cluster, kai)
    prompts = ["Once upon a time", "The kobold looked at the dragon and"]
    ids = [submit(cluster, prompt, n=3) for prompt in prompts]

    for prompt, prompt_id in zip(prompts, ids, strict=True):
        answer = wait_done(cluster, prompt_id, bridge)
        assert answer["finished"] == 3 and answer["processing"] == answer["waiting"] == 0
        assert answer["generations"] == [fake_text(prompt, 16)] * 3

    [server] = get(cluster, "/servers")
    assert server["name"] == "bob-kai"
    assert server["model"] == "KoboldAI/FakeModel-1B"
    assert (server["max_length"], server["max_content_length"]) == (512, 2048)
    assert (server["requests_fulfilled"], server["tokens_generated"]) == (6, 96)
    assert get(cluster, "/usage") == {"alice": 96}
    assert get(cluster, "/contributions") == {"bob": 96}
    assert kai.state()["generated"] == 6
    assert len([line for line in bridge.lines if re.search(r"job \w+: 16 tokens in", line)]) == 6
    assert "stopped: 6 jobs done, 0 given back, 0 dropped; 96 tokens at" in stop(bridge)


def test_busy_kobold_then_recovers(cluster, kai_double, bridge_process):
    kai = kai_double()
    bridge = start(bridge_process, cluster, kai)
    kai.control(busy_next=3)
    prompt_id = submit(cluster, "busy prompt", n=2)
    assert wait_done(cluster, prompt_id, bridge)["generations"] == [fake_text("busy prompt")] * 2
    state = kai.state()
    assert (state["generate_calls"], state["generated"]) == (5, 2)
    assert status(cluster, prompt_id)["restarted"] == 0
    assert "stopped: 2 jobs done, 0 given back" in stop(bridge)


def test_refused_payload_goes_back_to_the_queue(cluster, kai_double, bridge_process):
    kai = kai_double()
    bridge = start(bridge_process, cluster, kai)
    kai.control(refuse_next=1)
    prompt_id = submit(cluster, "refused once")
    answer = wait_done(cluster, prompt_id, bridge)
    assert answer["generations"] == [fake_text("refused once")]
    assert answer["restarted"] == 1
    bridge.wait_for("given back to the cluster (KoboldAI refused it)")
    assert "stopped: 1 jobs done, 1 given back" in stop(bridge)


def test_kobold_dies_mid_job_and_comes_back(cluster, kai_double, bridge_process):
    kai = kai_double("--delay", "1.0")
    bridge = start(bridge_process, cluster, kai)
    prompt_id = submit(cluster, "interrupted prompt", n=2)
    wait_until(lambda: kai.state()["active"] == 1, "a generation in progress", watch=[bridge])
    kai.kill()
    bridge.wait_for("cannot reach KoboldAI")
    kai.start()
    answer = wait_done(cluster, prompt_id, bridge)
    assert answer["generations"] == [fake_text("interrupted prompt")] * 2
    assert get(cluster, "/usage") == {"alice": 32}
    stop(bridge)


def test_cluster_restart_mid_run_loses_nothing(cluster, kai_double, bridge_process):
    kai = kai_double("--delay", "1.0")
    bridge = start(bridge_process, cluster, kai)
    prompt_id = submit(cluster, "through a restart", n=3)
    wait_until(lambda: kai.state()["active"] == 1, "a generation in progress", watch=[bridge])
    # A crash while the job is generated, so that its submit fails and must be retried; then
    # the cluster comes back on the same port and database.
    cluster.stop(signal.SIGKILL)
    bridge.wait_for("submit failed, retrying in")
    cluster.start()
    answer = wait_done(cluster, prompt_id, bridge)
    assert answer["generations"] == [fake_text("through a restart")] * 3
    # Every job was generated exactly once: a submit that failed was retried, not regenerated.
    assert kai.state()["generated"] == 3
    assert get(cluster, "/usage") == {"alice": 48}
    assert get(cluster, "/contributions") == {"bob": 48}
    assert "stopped: 3 jobs done, 0 given back, 0 dropped" in stop(bridge)


def test_ctrl_c_during_a_job_submits_it_and_exits_0(cluster, kai_double, bridge_process):
    kai = kai_double("--delay", "1.0")
    bridge = start(bridge_process, cluster, kai)
    prompt_id = submit(cluster, "last job", n=2)
    wait_until(lambda: kai.state()["active"] == 1, "a generation in progress", watch=[bridge])
    assert "stopped: 1 jobs done, 0 given back, 0 dropped" in stop(bridge)
    answer = status(cluster, prompt_id)
    assert answer["generations"] == [fake_text("last job")]
    assert (answer["finished"], answer["processing"], answer["waiting"]) == (1, 0, 1)


def test_ctrl_c_while_kobold_is_busy_gives_the_job_back(cluster, kai_double, bridge_process):
    kai = kai_double()
    kai.control(busy_next=10_000)
    bridge = start(bridge_process, cluster, kai)
    prompt_id = submit(cluster, "never generated")
    wait_until(lambda: kai.state()["generate_calls"] >= 2, "busy retries", watch=[bridge])
    bridge.popen.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout=30) == 0, bridge.output
    assert "stopped: 0 jobs done, 1 given back, 0 dropped" in bridge.lines[-1]
    answer = status(cluster, prompt_id)
    assert (answer["processing"], answer["waiting"], answer["restarted"]) == (0, 1, 1)


def test_wrong_password_is_one_clear_line(cluster, kai_double, bridge_process):
    kai = kai_double()
    owner = start(bridge_process, cluster, kai)
    owner.wait_for("ready; Ctrl-C to stop")
    wait_until(lambda: get(cluster, "/servers"), "the account to exist", watch=[owner])
    stop(owner)
    intruder = bridge_process(
        *("--cluster-url", cluster.url, "--kai-url", kai.url, "--name", "bob-kai"),
        *("--username", "bob", "--password", "not-the-password"),
    )
    assert intruder.wait(timeout=30) == 1
    errors = [line for line in intruder.lines if " ERROR " in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0] == intruder.lines[-1]
    assert "the cluster rejected the credentials: " in errors[0]


def test_throughput_with_two_threads(cluster, kai_double, bridge_process):
    """Not a benchmark: records what a run through the double looks like (see the summary)."""
    kai = kai_double("--delay", "0.2", "--tokens", "64")
    bridge = start(bridge_process, cluster, kai, "--threads", "2")
    prompt_id = submit(cluster, "many", n=20, max_length=64)
    answer = wait_done(cluster, prompt_id, bridge, timeout=90)
    assert answer["generations"] == [fake_text("many", 64)] * 20
    summary = stop(bridge)
    assert "stopped: 20 jobs done, 0 given back, 0 dropped; 1280 tokens at" in summary
    print(summary)


def test_original_protocol_with_an_api_key_alone(cluster, kai_double, bridge_process):
    from accounts.keys import account_register

    _, key = account_register(username="bob")
    kai = kai_double()
    bridge = bridge_process(
        *("--cluster-url", cluster.url, "--kai-url", kai.url, "--name", "bob-kai"),
        *("--apikey", key),
    )
    prompt_id = submit(cluster, "served with a key", n=2)
    answer = wait_done(cluster, prompt_id, bridge)
    assert answer["generations"] == [fake_text("served with a key")] * 2
    assert get(cluster, "/usage") == {"alice": 32}
    assert get(cluster, "/contributions") == {"bob": 32}
    assert "stopped: 2 jobs done, 0 given back, 0 dropped; 32 tokens at" in stop(bridge)
