"""Streaming (issue 12, the bridge's side): reading each backend's stream, posting the text so
far to the cluster at most every ~0.1 s, and what the cluster's answers to progress mean.
Backends and cluster are test doubles; the streaming doubles emit a token every 50 ms."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.cluster import HordeProtocol, Job, OriginalClusterProtocol
from bridge.detect import detect
from bridge.kobold import KoboldClient
from bridge.tests.backend_doubles import FakeKoboldCpp, FakeOpenAIServer
from bridge.tests.cluster_double import V2_PROGRESS, ScriptedCluster
from bridge.tests.kai_double import FakeKoboldAI, fake_text
from bridge.tests.processes import Process, start_bridge, wait_until

JOB = {"prompt": "Once upon a time", "n": 1, "max_length": 16, "max_context_length": 1024}
JOB_ID = "5b7f0c2e-8d37-4a57-9a0e-3c8f3f1d2a11"
ID2 = "22222222-bbbb-4bbb-8bbb-222222222222"


def streaming_double(kind: str) -> Any:
    return FakeKoboldCpp() if kind == "koboldcpp" else FakeOpenAIServer(kind)


@pytest.mark.parametrize("kind", ["koboldcpp", "llamacpp", "vllm", "ollama", "tabbyapi"])
def test_the_text_so_far_grows_token_by_token(kind):
    seen: list[tuple[float, str]] = []
    with streaming_double(kind) as server:
        backend = detect(server.url).backend
        backend.model_info()
        started = time.monotonic()
        generation = backend.generate(
            JOB, on_text=lambda text: seen.append((time.monotonic(), text)) or True
        )
        ended = time.monotonic()
    full = fake_text(JOB["prompt"], 16)
    assert generation.text == full
    assert [text for _, text in seen] == [full[: 4 * i] for i in range(1, 17)]
    # Token counts come with a stream where the server takes stream_options.include_usage;
    # KoboldCpp's from /api/extra/perf once its stream ended.
    assert generation.tokens == (16 if kind in ("vllm", "ollama", "koboldcpp") else None)
    # The first token arrives long before the end (16 tokens, 50 ms apart).
    assert seen[0][0] - started < (ended - started) / 2


def test_returning_false_stops_reading_the_stream():
    with FakeOpenAIServer("llamacpp") as server:
        backend = detect(server.url).backend
        backend.model_info()
        generation = backend.generate(JOB, on_text=lambda text: len(text) < 12)
    assert generation.text == fake_text(JOB["prompt"], 16)[:12]


def test_a_kobold_without_the_stream_endpoint_generates_as_before():
    with FakeKoboldAI() as kai:
        client = KoboldClient(kai.url, koboldcpp=True)  # as an old KoboldCpp would be
        calls: list[str] = []
        generation = client.generate(JOB, on_text=lambda text: calls.append(text) or True)
        assert generation.text == fake_text(JOB["prompt"], 16) and calls == []
        assert client.streams is False  # not asked again
        assert kai.generate_calls == 1


@pytest.fixture
def cluster() -> Iterator[ScriptedCluster]:
    server = ScriptedCluster().start()
    yield server
    server.stop()


JOB_OBJECT = Job(JOB_ID, JOB, 150)

# (status, body) -> outcome
ANSWERS = [
    ((200, {}), "ok"),
    ((404, {"message": "Processing Generation not found.", "rc": "InvalidJobID"}), "gone"),
    ((404, {"message": "Too late.", "rc": "AbortedGen"}), "gone"),
    ((404, {"message": "Not found.", "rc": "NotFound"}), "unsupported"),
    ((404, b"<html>Not Found</html>"), "unsupported"),
    ((405, {"message": "Method not allowed.", "rc": "MethodNotAllowed"}), "unsupported"),
    ((500, {"message": "oops"}), "failed"),
    ((429, {"message": "slow down"}), "failed"),
]


@pytest.mark.parametrize(("answer", "outcome"), ANSWERS)
def test_progress_answers(cluster, answer, outcome):
    for client in (
        OriginalClusterProtocol(
            cluster.url, name="b", username="bob", password="pw", bridge_agent="a:1:x"
        ),
        HordeProtocol(cluster.url, name="b", apikey="key", bridge_agent="a:1:x"),
    ):
        cluster.answers.append(answer)
        assert client.progress(JOB_OBJECT, "Once") == outcome
        assert client.takes_progress is (outcome != "unsupported")


def test_progress_bodies_and_credentials(cluster):
    cluster.accept_progress = True
    original = OriginalClusterProtocol(
        cluster.url, name="b", username="bob", password="pw", bridge_agent="a:1:x"
    )
    horde = HordeProtocol(cluster.url, name="b", apikey="key", bridge_agent="a:1:x")
    assert original.progress(JOB_OBJECT, "Once") == "ok"
    assert horde.progress(JOB_OBJECT, "Once up") == "ok"
    (path1, _, body1), (path2, headers2, body2) = cluster.requests
    assert (path1, body1) == (
        "/generate/progress",
        {"id": JOB_ID, "text": "Once", "password": "pw"},
    )
    assert (path2, body2) == (V2_PROGRESS, {"id": JOB_ID, "text": "Once up"})
    assert {k.lower(): v for k, v in headers2.items()}["apikey"] == "key"


def test_progress_to_a_cluster_that_is_down_fails_quietly():
    client = HordeProtocol("http://127.0.0.1:9", name="b", apikey="key", bridge_agent="a:1:x")
    assert client.progress(JOB_OBJECT, "x") == "failed"
    assert client.takes_progress


# --- a bridge process -------------------------------------------------------------------

FAST = {"BRIDGE_INTERVAL": "0.05", "BRIDGE_BACKOFF_BASE": "0.05", "BRIDGE_BACKOFF_MAX": "0.2"}


@pytest.fixture
def bridges(tmp_path) -> Iterator[Any]:
    started: list[Process] = []

    def run(cluster: ScriptedCluster, url: str, *args: str) -> Process:
        flags = ["--backend-url", url, "--cluster-url", cluster.url, "--name", "bob-1"]
        process = start_bridge(
            tmp_path, *flags, "--apikey", "key", "--pop-wait", "0", *args, **FAST
        )
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


def served(cluster: ScriptedCluster, *ids: str) -> bool:
    with cluster.lock:
        return all(job_id in cluster.submitted for job_id in ids)


@pytest.mark.parametrize("protocol", ["original", "horde"])
@pytest.mark.parametrize("kind", ["koboldcpp", "vllm"])
def test_a_streaming_backend_sends_the_text_so_far(cluster, bridges, kind, protocol):
    cluster.accept_progress = True
    cluster.add_job(JOB_ID, "Once upon a time")
    with streaming_double(kind) as backend:
        bridge = bridges(cluster, backend.url, "--protocol", protocol)
        wait_until(lambda: served(cluster, JOB_ID), "the job to be served", 20, watch=[bridge])
        bridge.interrupt()
        assert bridge.wait(timeout=15) == 0, bridge.output
    full = fake_text("Once upon a time", 16)
    assert cluster.submitted[JOB_ID]["generation"] == full  # the submit is unchanged
    texts = [text for job_id, text, _ in cluster.progress if job_id == JOB_ID]
    times = [at for _, _, at in cluster.progress]
    # 16 tokens 50 ms apart: about 8 posts at most every 0.1 s, each a prefix of the text.
    assert 3 <= len(texts) <= 10, texts
    assert all(full.startswith(text) and text for text in texts)
    assert texts == sorted(texts, key=len)
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.09


def test_a_cluster_without_progress_is_asked_once(cluster, bridges):
    cluster.add_job(JOB_ID, "Once upon a time")
    cluster.add_job(ID2, "It was a dark night")
    with FakeKoboldCpp() as backend:
        bridge = bridges(cluster, backend.url)
        wait_until(lambda: served(cluster, JOB_ID, ID2), "both jobs", 20, watch=[bridge])
        bridge.interrupt()
        assert bridge.wait(timeout=15) == 0, bridge.output
        assert backend.streams == 1  # then plain generate: nobody reads the progress
    with cluster.lock:
        asked = [path for path, _, _ in cluster.requests if path == "/generate/progress"]
    assert asked == ["/generate/progress"]
    assert "does not take progress (/generate/progress 404); sending results only" in bridge.output
    assert "stopped: 2 jobs done, 0 given back, 0 dropped" in bridge.lines[-1]


def test_a_job_the_cluster_no_longer_wants_is_stopped_and_its_text_so_far_delivered(
    cluster, bridges
):
    cluster.progress_gone = True
    cluster.add_job(JOB_ID, "Once upon a time")
    with FakeOpenAIServer("llamacpp") as backend:
        bridge = bridges(cluster, backend.url)
        bridge.wait_for("the cluster no longer wants it; stopped llama.cpp server", timeout=20)
        wait_until(lambda: served(cluster, JOB_ID), "the submit", 20, watch=[bridge])
        bridge.interrupt()
        assert bridge.wait(timeout=15) == 0, bridge.output
    so_far = cluster.submitted[JOB_ID]["generation"]
    assert so_far and fake_text("Once upon a time", 16).startswith(so_far)
    assert so_far != fake_text("Once upon a time", 16)  # the stream was left early


def test_a_backend_that_cannot_stream_sends_heartbeats_and_no_text(cluster, bridges):
    cluster.accept_progress = True
    cluster.add_job(JOB_ID, "Once upon a time")
    with FakeKoboldAI(delay=0.5) as kai:
        bridge = bridges(cluster, kai.url)
        wait_until(lambda: served(cluster, JOB_ID), "the job to be served", 20, watch=[bridge])
        bridge.interrupt()
        assert bridge.wait(timeout=15) == 0, bridge.output
    # The first heartbeat goes at once (bridge/heartbeat.py), the next 5 s later.
    assert [(job_id, text) for job_id, text, _ in cluster.progress] == [(JOB_ID, None)]
    assert cluster.submitted[JOB_ID]["generation"] == fake_text("Once upon a time", 16)
