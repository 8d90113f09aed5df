"""End to end: tokens stream from the backend through the bridge and the cluster to clients.

Real processes: the cluster (uvicorn) and the project's bridge; the backend is the KoboldCpp
double (a token of 4 characters every 50 ms) or FakeKoboldAI, which cannot stream. The
clients are the real `openai` SDK and plain HTTP reading KoboldCpp's server-sent events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from django.db import connection

from bridge.tests.backend_doubles import FakeKoboldCpp
from bridge.tests.kai_double import fake_text
from bridge.tests.processes import wait_until

pytestmark = [pytest.mark.e2e]

MODEL = "koboldcpp/FakeModel-7B-Q4_K_M"
PASSWORD = "s3cret-pass"
TOKENS = 40  # 40 tokens, 50 ms apart: two seconds of generation


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "60"}


def serve(cluster: Any, bridge_process: Any, url: str) -> Any:
    bridge = bridge_process(
        *("--cluster-url", cluster.url, "--backend-url", url, "--name", "bob-gpu"),
        *("--username", "bob", "--password", PASSWORD),
    )
    wait_until(lambda: servers(cluster), "the server to check in", watch=[bridge])
    return bridge


def servers(cluster: Any) -> list[Any]:
    return requests.get(f"{cluster.url}/servers", timeout=10).json()


@pytest.fixture
def kcpp(cluster: Any, bridge_process: Any) -> Iterator[FakeKoboldCpp]:
    with FakeKoboldCpp(model=MODEL, tokens=TOKENS) as backend:
        serve(cluster, bridge_process, backend.url)
        yield backend


def stored_generations(cluster: Any) -> list[str]:
    """Every generation the cluster stored (read from its database by the test)."""
    from generations.models import Job

    return list(Job.objects.filter(state="done").values_list("text", flat=True))


def test_the_openai_sdk_streams_a_completion_long_before_it_ends(cluster, kcpp):
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="0000000000", max_retries=0)
    prompt = "A streamed story"
    started = time.monotonic()
    stream = client.completions.create(
        model="*",
        prompt=prompt,
        max_tokens=TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[tuple[float, str]] = []
    usage = None
    for chunk in stream:
        if chunk.choices:
            arrivals.append((time.monotonic() - started, chunk.choices[0].text))
        if chunk.usage:
            usage = chunk.usage
    ended = time.monotonic() - started

    text = "".join(piece for _, piece in arrivals)
    assert text == fake_text(prompt, TOKENS)
    assert stored_generations(cluster) == [text]
    first = next(at for at, piece in arrivals if piece)
    assert first < ended - 0.8, (first, ended)  # the generation itself takes 2 s
    assert len([piece for _, piece in arrivals if piece]) > 3
    assert usage is not None and usage.completion_tokens == TOKENS


def test_the_openai_sdk_streams_a_chat(cluster, kcpp):
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="0000000000", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=TOKENS,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    finishes = [c for c in pieces if c]

    [stored] = stored_generations(cluster)
    assert "".join(pieces) == stored.strip()
    assert len(finishes) > 3


def streams_open(cluster: Any) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{cluster.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "koboldcluster_streams_open":
                return sample.value
    raise AssertionError("no koboldcluster_streams_open in /metrics")


def kobold_stream(cluster: Any, body: dict[str, Any]) -> Iterator[tuple[float, dict]]:
    started = time.monotonic()
    with requests.post(
        f"{cluster.url}/api/extra/generate/stream", json=body, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                assert event == "message"
                yield time.monotonic() - started, json.loads(line[5:])


def test_koboldcpp_sse_streams_and_the_database_never_holds_progress(cluster, kcpp):
    prompt = "A story in the KoboldCpp way"
    full = fake_text(prompt, TOKENS)
    marker = full[40:56]  # emitted after ~0.5 s, 1.5 s before the submit
    database = Path(connection.settings_dict["NAME"])
    seen = ""
    checked_mid_generation = False
    arrivals = []
    body = {"prompt": prompt, "max_length": TOKENS, "genkey": "KCPP-stream-1"}
    for at, data in kobold_stream(cluster, body):
        arrivals.append(at)
        seen += data["token"]
        if marker in seen and not checked_mid_generation and len(seen) < len(full) - 40:
            checked_mid_generation = True
            check = requests.post(
                f"{cluster.url}/api/extra/generate/check", json={"genkey": "KCPP-stream-1"}
            ).json()
            assert marker in check["results"][0]["text"]
            assert not stored_generations(cluster)
            assert streams_open(cluster) == 1
            for path in (database, Path(f"{database}-wal")):
                if path.exists():
                    assert marker.encode() not in path.read_bytes(), path
    assert checked_mid_generation
    assert seen == full
    wait_until(lambda: streams_open(cluster) == 0, "the stream to be counted closed")
    assert stored_generations(cluster) == [full]
    assert arrivals[0] < arrivals[-1] - 0.8


def test_a_backend_that_cannot_stream_gives_one_chunk(cluster, bridge_process, kai_double):
    kai = kai_double("--model", MODEL, "--tokens", str(TOKENS))
    serve(cluster, bridge_process, kai.url)
    prompt = "No stream here"

    tokens = [data["token"] for _, data in kobold_stream(cluster, {"prompt": prompt})]

    assert [t for t in tokens if t] == [fake_text(prompt, min(TOKENS, 80))]


def test_a_client_that_disconnects_cancels_its_prompt(cluster, kcpp):
    from generations.models import Prompt

    body = {"prompt": "A story nobody reads", "max_length": TOKENS}
    with requests.post(
        f"{cluster.url}/api/extra/generate/stream", json=body, stream=True, timeout=60
    ) as response:
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                break  # the first token came; the reader goes away
    wait_until(
        lambda: Prompt.objects.filter(state=Prompt.State.CANCELLED).exists(),
        "the prompt to be cancelled",
        timeout=20,
    )


@pytest.fixture(params=["files", "redis"])
def two_nodes(request: Any, transactional_db: None) -> Iterator[tuple[Any, ...]]:
    from koboldcluster.testing import ClusterProcess, redis_env, started

    env = {"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "60"}
    if request.param == "redis":
        env |= redis_env()
    with started(ClusterProcess(env), ClusterProcess(env)) as nodes:
        yield nodes


def test_progress_posted_to_one_node_reaches_a_stream_on_the_other(two_nodes, bridge_process):
    node_a, node_b = two_nodes
    with FakeKoboldCpp(model=MODEL, tokens=TOKENS) as backend:
        serve(node_a, bridge_process, backend.url)  # the bridge posts its progress to A
        prompt = "Across the nodes"
        arrivals = list(kobold_stream(node_b, {"prompt": prompt, "max_length": TOKENS}))

    pieces = [data["token"] for _, data in arrivals if data["token"]]
    assert "".join(pieces) == fake_text(prompt, TOKENS)
    assert len(pieces) > 3  # streamed, not one chunk at the end
    assert arrivals[0][0] < arrivals[-1][0] - 0.8
