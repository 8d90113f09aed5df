"""End to end with real backends: a client, the cluster (a real server process), the project's
bridge (a process) and llama.cpp's llama-server or KoboldCpp serving a tiny random LLaMA
(bridge/tests/real_backends.py). Its text is gibberish; its tokens, counts, stops, streams
and context limits are the backend's own, which is what these tests check and no double can.

llama.cpp runs in ./test.sh; KoboldCpp is marked `external` (it is on no package registry):
`KOBOLDCPP_DIR=... pytest -m external` (./test_external.sh).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from bridge.tests.processes import Process, wait_until
from bridge.tests.real_backends import BACKENDS, CONTEXT, MODEL_NAME, RealBackend
from bridge.tests.test_e2e import PASSWORD, get, stop, wait_done

pytestmark = [pytest.mark.e2e]

KINDS = ["llamacpp", pytest.param("koboldcpp", marks=pytest.mark.external)]
LENGTH = 24
# Greedy sampling, so that the cluster's job and the backend's own request give one text.
GREEDY = {"top_k": 1, "rep_pen": 1.0}


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "60"}


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RealBackend]:
    server = BACKENDS[request.param](tmp_path)
    try:
        yield server
    finally:
        server.stop()


def serve(cluster: Any, bridge_process: Any, backend: RealBackend, *args: str) -> Process:
    bridge = bridge_process(
        *("--cluster-url", cluster.url, "--backend-url", backend.url, "--name", "bob-real"),
        *args,
    )
    wait_until(lambda: get(cluster, "/servers"), "the server to check in", watch=[bridge])
    return bridge


def original(bridge_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("--username", "bob", "--password", PASSWORD, *bridge_args)


def jobs() -> list[Any]:
    """The cluster's finished jobs, oldest first (read from its database by the test)."""
    from generations.models import Job

    return list(Job.objects.filter(state="done").order_by("finished"))


def counted_by_backend(backend: RealBackend, before: int, bridge: Process) -> int:
    """The backend's own count of the tokens of its generation after the first `before`."""
    wait_until(lambda: backend.generations() > before, "the backend's count", watch=[bridge])
    return backend.last_generated()


def first_difference(streamed: str, stored: str) -> str:
    """Where a streamed text and the stored one part, with the characters around it as
    repr shows them (a random model writes control characters and split scripts)."""
    at = next((i for i, (a, b) in enumerate(zip(streamed, stored, strict=False)) if a != b), None)
    if at is None:
        at = min(len(streamed), len(stored))
    around = slice(max(at - 20, 0), at + 20)
    return (
        f"{len(streamed)} characters streamed, {len(stored)} stored, parting at {at}: "
        f"streamed {streamed[around]!r}, stored {stored[around]!r}"
    )


def openai_client(cluster: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="0000000000", max_retries=0)


def kobold_stream(cluster: Any, body: dict[str, Any]) -> list[str]:
    pieces = []
    with requests.post(
        f"{cluster.url}/api/extra/generate/stream", json=body, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():  # bytes: server-sent events are UTF-8
            if line.startswith(b"data:"):
                pieces.append(json.loads(line[5:])["token"])
    return pieces


def submit(cluster: Any, prompt: str, **params: Any) -> str:
    body = {"prompt": prompt, "params": {"n": 1, "max_length": LENGTH, **params}}
    response = requests.post(f"{cluster.url}/generate/prompt", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["id"]


FACES = (
    "original",
    "kobold",
    "kobold-stream",
    "completions",
    "completions-stream",
    "chat",
    "chat-stream",
)


def ask(face: str, cluster: Any, bridge: Process) -> tuple[str | None, int | None]:
    """One request through `face`: the text the client got (None if it only polls the
    stored one) and the completion tokens it was told."""
    prompt = f"A story told through the {face} face:"
    if face == "original":
        answer = wait_done(cluster, submit(cluster, prompt, **GREEDY), bridge)
        return answer["generations"][0], None
    if face == "kobold":
        body = {"prompt": prompt, "max_length": LENGTH, **GREEDY}
        answer = requests.post(f"{cluster.url}/api/v1/generate", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["results"][0]["text"], None
    if face == "kobold-stream":
        body = {"prompt": prompt, "max_length": LENGTH, **GREEDY}
        return "".join(kobold_stream(cluster, body)), None
    client, stream = openai_client(cluster), face.endswith("-stream")
    options = {"stream_options": {"include_usage": True}} if stream else {}
    if face.startswith("completions"):
        made = client.completions.create(
            model="*", prompt=prompt, max_tokens=LENGTH, stream=stream, **options
        )
        if not stream:
            return made.choices[0].text, made.usage.completion_tokens
        chunks = list(made)
        text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    else:
        messages = [{"role": "user", "content": prompt}]
        made = client.chat.completions.create(
            model="*", messages=messages, max_tokens=LENGTH, stream=stream, **options
        )
        if not stream:
            return made.choices[0].message.content, made.usage.completion_tokens
        chunks = list(made)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [chunk.usage for chunk in chunks if chunk.usage]
    return text, usage[-1].completion_tokens if usage else None


@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_every_face_is_served_and_paid_by_the_backends_own_count(cluster, bridge_process, backend):
    bridge = serve(cluster, bridge_process, backend, *original())

    paid = 0
    for served, face in enumerate(FACES, 1):
        before = backend.generations()
        text, told = ask(face, cluster, bridge)
        generated = counted_by_backend(backend, before, bridge)
        job = jobs()[-1]
        assert len(jobs()) == served
        assert job.model == MODEL_NAME
        assert job.tokens == generated, face  # paid what the backend generated
        assert told in (None, generated), face
        stored = job.text.strip() if face.startswith("chat") else job.text
        assert text is None or text == stored, face  # streamed pieces add up to it too
        assert job.prompt_tokens, face
        if not face.startswith("chat"):  # see the next test
            assert job.prompt_trimmed == 0, face
        paid += generated

    assert sum(get(cluster, "/usage").values()) == paid
    assert get(cluster, "/contributions") == {"bob": paid}
    assert f"stopped: {len(FACES)} jobs done, 0 given back, 0 dropped; {paid} tokens" in stop(
        bridge
    )
    # The start-up line names the real server and its version (llama.cpp: b<build>-pypi).
    assert f"found {backend.label} {backend.version}" in bridge.output


@pytest.mark.parametrize("backend", ["llamacpp"], indirect=True)
def test_a_chat_reaches_the_backend_whole(cluster, bridge_process, backend):
    bridge = serve(cluster, bridge_process, backend, *original())
    ask("chat", cluster, bridge)
    [job] = jobs()
    stop(bridge)
    assert job.prompt_trimmed == 0


@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_the_horde_protocol_serves_the_v2_face_and_a_stopped_bridge_leaves(
    cluster, bridge_process, backend
):
    from accounts.keys import account_register

    _, bridge_key = account_register(username="bob")
    alice, client_key = account_register(username="alice")
    bridge = serve(cluster, bridge_process, backend, "--protocol", "horde", "--apikey", bridge_key)
    headers = {"apikey": client_key}
    body = {"prompt": "A story for the horde:", "params": {"max_length": LENGTH, **GREEDY}}
    before = backend.generations()
    asked = requests.post(
        f"{cluster.url}/api/v2/generate/text/async", json=body, headers=headers, timeout=10
    )
    assert asked.status_code == 202, asked.text
    url = f"{cluster.url}/api/v2/generate/text/status/{asked.json()['id']}"
    done = wait_until(
        lambda: (answer := requests.get(url, timeout=10).json())["done"] and answer,
        "the v2 request",
        watch=[bridge],
    )
    generated = counted_by_backend(backend, before, bridge)
    [job] = jobs()
    assert done["generations"][0]["text"] == job.text
    assert job.tokens == generated
    assert alice.ledger_entries.get(kind="usage").tokens == generated

    stop(bridge)
    assert get(cluster, "/servers") == []  # gone at once, not 5 minutes later


@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_stop_sequences_end_the_text_where_the_backend_stopped(cluster, bridge_process, backend):
    prompt = "The kobold said:"
    free, _ = backend.greedy(prompt, 40)
    words = free.split()
    stop_word = words[len(words) // 2]
    at = free.index(stop_word)
    bridge = serve(cluster, bridge_process, backend, *original())

    answer = wait_done(
        cluster, submit(cluster, prompt, max_length=40, stop_sequence=[stop_word], **GREEDY), bridge
    )
    # KoboldAI's rule, whatever the backend does with the stop string: up to and with it.
    assert answer["generations"] == [free[: at + len(stop_word)]]
    completion = openai_client(cluster).completions.create(
        model="*", prompt=prompt, max_tokens=40, stop=[stop_word], extra_body=GREEDY
    )
    # OpenAI's rule: without it.
    assert completion.choices[0].text == free[:at]
    assert completion.choices[0].finish_reason == "stop"
    stop(bridge)


@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_a_prompt_longer_than_the_backends_context_is_cut_to_fit(cluster, bridge_process, backend):
    prompt = " ".join(f"word{i}" for i in range(3000)) + " The end:"
    full = backend.count(prompt)
    assert full > CONTEXT
    bridge = serve(cluster, bridge_process, backend, *original())

    answer = wait_done(cluster, submit(cluster, prompt, max_context_length=CONTEXT), bridge)
    [job] = jobs()
    assert answer["faulted"] is False and answer["generations"] == [job.text]
    assert job.prompt_tokens <= CONTEXT - LENGTH
    # What was cut and what was sent make the whole prompt (give or take the token where
    # the cut fell, and the beginning-of-sequence token).
    assert abs(job.prompt_trimmed + job.prompt_tokens - full) <= 2
    stop(bridge)


@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_front_end_requests_larger_than_the_server_are_fitted_and_cut(
    cluster, bridge_process, backend
):
    """Lite's default context (6144) on the KoboldAI face, and an OpenAI prompt longer than
    any context: both are served by the one server, their prompts cut from the front."""
    prompt = " ".join(f"word{i}" for i in range(3000)) + " The end:"
    bridge = serve(cluster, bridge_process, backend, *original())
    body = {"prompt": prompt, "max_length": LENGTH, "max_context_length": 6144, **GREEDY}
    answer = requests.post(f"{cluster.url}/api/v1/generate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-KoboldCluster-Limits"] == (
        f"max_context_length={CONTEXT} (asked 6144), max_length={LENGTH}"
    )
    completion = openai_client(cluster).completions.create(
        model="*", prompt=prompt, max_tokens=LENGTH, temperature=0
    )
    first, second = jobs()
    assert first.prompt_trimmed > 0 and second.prompt_trimmed > 0
    assert first.prompt_tokens <= CONTEXT - LENGTH and second.prompt_tokens <= CONTEXT - LENGTH
    assert completion.usage.prompt_tokens == second.prompt_tokens
    stop(bridge)


@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_an_abort_stops_the_backend_and_the_text_so_far_is_delivered(
    cluster, bridge_process, backend
):
    # The longest generation the context allows (KoboldCpp's own default is 400 tokens): the
    # abort has seconds to arrive.
    bridge = serve(cluster, bridge_process, backend, *original(("--max-length", "2048")))
    [server] = get(cluster, "/servers")
    longest = server["max_length"]
    assert longest == CONTEXT // 2
    cancelled = backend.cancelled()
    body = {"prompt": "A very long story:", "max_length": longest, "genkey": "KCPP1234"}
    body["max_context_length"] = CONTEXT
    pieces = []
    with requests.post(
        f"{cluster.url}/api/extra/generate/stream", json=body, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():
            if line.startswith(b"data:"):
                pieces.append(json.loads(line[5:])["token"])
                if len(pieces) == 1:  # it is generating: abort, as KoboldAI Lite does
                    abort = {"genkey": "KCPP1234"}
                    requests.post(f"{cluster.url}/api/extra/abort", json=abort, timeout=10)

    [job] = wait_until(jobs, "the text so far", watch=[bridge, backend.process])
    assert 0 < job.tokens < longest
    streamed = "".join(pieces)
    assert streamed == job.text, first_difference(streamed, job.text)
    # The backend itself stopped: llama.cpp cancels the task whose reader left; KoboldCpp
    # is told to abort its generation.
    wait_until(lambda: backend.cancelled() > cancelled, "the backend to stop", watch=[bridge])
    assert "the cluster no longer wants it; stopped" in bridge.output
    stop(bridge)
