"""Long-poll pops (issue 10, the bridge's side), against the cluster double taught to hold
pops: the `wait` field, the read timeout that outlasts it, the fall-back to polling when a
cluster refuses or ignores it, and a bridge process's waiting requests."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.cluster import (
    Capabilities,
    HordeProtocol,
    Job,
    NoWork,
    OriginalClusterProtocol,
)
from bridge.tests.cluster_double import V2_POP, ScriptedCluster
from bridge.tests.kai_double import FakeKoboldAI, fake_text
from bridge.tests.processes import Process, start_bridge, wait_until

CAPS = Capabilities("KoboldAI/OPT-13B-Erebus", 80, 1024)
JOB_ID = "5b7f0c2e-8d37-4a57-9a0e-3c8f3f1d2a11"


@pytest.fixture
def cluster() -> Iterator[ScriptedCluster]:
    server = ScriptedCluster().start()
    yield server
    server.stop()


def original(url: str, **kwargs: Any) -> OriginalClusterProtocol:
    return OriginalClusterProtocol(
        url, name="bob-1", username="bob", password="pw", bridge_agent="a:1:x", **kwargs
    )


def horde(url: str, **kwargs: Any) -> HordeProtocol:
    return HordeProtocol(url, name="bob-1", apikey="key", bridge_agent="a:1:x", **kwargs)


PROTOCOLS = {"original": (original, "/generate/pop"), "horde": (horde, V2_POP)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_held_pop_sends_wait_and_outlasts_the_usual_read_timeout(cluster, protocol):
    make, path = PROTOCOLS[protocol]
    cluster.hold_pops = True
    client = make(cluster.url, pop_wait=1.0, timeout=0.3)
    started = time.monotonic()
    answer = client.pop(CAPS)
    elapsed = time.monotonic() - started
    assert answer == NoWork()
    assert elapsed >= 1.0  # held the whole wait, beyond the 0.3 s read timeout
    assert [(p, body["wait"]) for p, _, body in cluster.requests] == [(path, 1.0)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_held_pop_answers_as_soon_as_a_job_arrives(cluster, protocol):
    make, _ = PROTOCOLS[protocol]
    cluster.hold_pops = True
    client = make(cluster.url, pop_wait=20.0)
    threading.Timer(0.3, cluster.add_job, args=(JOB_ID, "hello")).start()
    started = time.monotonic()
    answer = client.pop(CAPS)
    assert isinstance(answer, Job) and answer.id == JOB_ID
    assert time.monotonic() - started < 10  # generous: the wait was 20 s


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refused_wait_falls_back_to_plain_pops_for_good(cluster, protocol, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    make, path = PROTOCOLS[protocol]
    cluster.refuse_wait = True
    cluster.add_job(JOB_ID, "hello")
    client = make(cluster.url, pop_wait=20.0)
    answer = client.pop(CAPS)
    assert isinstance(answer, Job) and answer.id == JOB_ID
    assert isinstance(client.pop(CAPS), NoWork)
    assert ["wait" in body for _, _, body in cluster.requests] == [True, False, False]
    assert client.pop_wait == 0
    refused = [message for message in caplog.messages if "refused" in message]
    assert refused == [
        f'the cluster at {cluster.url} does not hold pops (it refused "wait"); polling every '
        "interval instead"
    ]


def test_pop_wait_0_sends_no_wait(cluster):
    original(cluster.url).pop(CAPS)
    assert "wait" not in cluster.requests[0][2]


# --- a bridge process -------------------------------------------------------------------

FAST = {"BRIDGE_INTERVAL": "0.05", "BRIDGE_BACKOFF_BASE": "0.05", "BRIDGE_BACKOFF_MAX": "0.2"}


@pytest.fixture
def kai() -> Iterator[FakeKoboldAI]:
    with FakeKoboldAI() as double:
        yield double


@pytest.fixture
def bridges(tmp_path) -> Iterator[Any]:
    started: list[Process] = []

    def run(cluster: ScriptedCluster, kai: FakeKoboldAI, *args: str) -> Process:
        flags = ["--kai-url", kai.url, "--cluster-url", cluster.url, "--name", "bob-1"]
        process = start_bridge(tmp_path, *flags, "--apikey", "key", *args, **FAST)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


def pops(cluster: ScriptedCluster) -> int:
    with cluster.lock:
        return sum(1 for path, _, _ in cluster.requests if path == "/generate/pop")


def test_an_idle_bridge_holds_one_waiting_pop_per_thread(cluster, kai, bridges):
    cluster.hold_pops = True
    bridge = bridges(cluster, kai, "--threads", "3", "--pop-wait", "2")
    wait_until(lambda: cluster.held_now == 3, "three held pops", watch=[bridge])
    time.sleep(3)
    # Long-polling: about one pop per thread every 2 s (polling every 0.05 s would be ~180).
    assert cluster.max_held == 3
    assert pops(cluster) <= 3 * 4
    cluster.add_job(JOB_ID, "Once upon a time")
    wait_until(lambda: JOB_ID in cluster.submitted, "the job to be served", 10, watch=[bridge])
    assert cluster.submitted[JOB_ID]["generation"] == fake_text("Once upon a time")
    bridge.interrupt()
    assert bridge.wait(timeout=15) == 0, bridge.output
    assert "stopped: 1 jobs done, 0 given back, 0 dropped" in bridge.lines[-1]


def test_ctrl_c_does_not_wait_for_held_pops_to_run_out(cluster, kai, bridges):
    cluster.hold_pops = True
    bridge = bridges(cluster, kai, "--threads", "2", "--pop-wait", "30")
    wait_until(lambda: cluster.held_now == 2, "two held pops", watch=[bridge])
    started = time.monotonic()
    bridge.interrupt()
    assert bridge.wait(timeout=40) == 0, bridge.output
    assert time.monotonic() - started < 10  # generous; the held pops had 30 s left
    assert "stopped: 0 jobs done, 0 given back, 0 dropped" in bridge.lines[-1]


def test_a_bridge_polls_a_cluster_that_refuses_wait(cluster, kai, bridges):
    cluster.refuse_wait = True
    bridge = bridges(cluster, kai, "--pop-wait", "20")
    bridge.wait_for('does not hold pops (it refused "wait")')
    cluster.add_job(JOB_ID, "Once upon a time")
    wait_until(lambda: JOB_ID in cluster.submitted, "the job to be served", 10, watch=[bridge])
    count = pops(cluster)
    time.sleep(0.5)
    assert pops(cluster) > count + 3  # polling every 0.05 s again
    with cluster.lock:
        assert sum("wait" in body for _, _, body in cluster.requests) == 1
    bridge.interrupt()
    assert bridge.wait(timeout=15) == 0, bridge.output


def test_a_bridge_polls_at_its_interval_when_wait_is_ignored(cluster, kai, bridges):
    bridge = bridges(cluster, kai, "--pop-wait", "20", "--interval", "0.5")
    bridge.wait_for("ready; Ctrl-C to stop")
    wait_until(lambda: pops(cluster) >= 1, "a first pop", watch=[bridge])
    time.sleep(2)
    # Answered at once, so the bridge sleeps its interval: about 4 pops in 2 s, not hundreds.
    assert 2 <= pops(cluster) <= 8
    bridge.interrupt()
    assert bridge.wait(timeout=15) == 0, bridge.output
