"""End to end with every supported backend: the real cluster (gunicorn on the test database),
the real bridge process, and each backend's test double (in this process), over HTTP.

Each story submits a prompt with n=3 through the original API, asking for the model under the
name the bridge should advertise, and checks the texts, the server list and the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bridge.tests.backend_doubles import FakeKoboldCpp, FakeOpenAIServer
from bridge.tests.kai_double import fake_text
from bridge.tests.processes import Process, wait_until
from bridge.tests.test_e2e import PASSWORD, get, status, stop, wait_done

pytestmark = [pytest.mark.e2e]

# kind -> (the model name the bridge advertises, the line that says what it found)
BACKENDS = {
    "koboldcpp": ("koboldcpp/FakeModel-7B-Q4_K_M", "found KoboldCpp 1.78 at"),
    "llamacpp": ("koboldcpp/FakeModel-7B-Q4_K_M", "found llama.cpp server b4567-fake at"),
    "ollama": ("fakemodel:7b", "found Ollama 0.5.7 at"),
    "vllm": ("FakeOrg/FakeModel-7B", "found vLLM 0.6.3 at"),
    "tabbyapi": ("FakeModel-7B-exl2", "found TabbyAPI at"),
    "textgen": ("FakeModel-7B-GPTQ", "found text-generation-webui at"),
    "openai": ("fake-model", "found OpenAI-compatible server at"),
}


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    kind, options = request.param if isinstance(request.param, tuple) else (request.param, {})
    server: Any = FakeKoboldCpp(**options) if kind == "koboldcpp" else None
    server = server or FakeOpenAIServer(kind, **options)
    with server:
        yield server


def submit(cluster: Any, prompt: str, n: int, models: list[str]) -> str:
    body = {
        "prompt": prompt,
        "params": {"n": n, "max_length": 16, "temperature": 0.7, "top_k": 40, "rep_pen": 1.1},
        "username": "alice",
        "models": models,
    }
    response = requests.post(f"{cluster.url}/generate/prompt", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def start(bridge_process: Any, cluster: Any, url: str, *args: str, **env: str) -> Process:
    return bridge_process(
        *("--cluster-url", cluster.url, "--backend-url", url, "--name", "bob-gpu"),
        *("--username", "bob", "--password", PASSWORD),
        *args,
        **env,
    )


@pytest.mark.parametrize(
    "backend",
    [kind if kind != "tabbyapi" else (kind, {"apikey": "tabby-key"}) for kind in BACKENDS],
    indirect=True,
    ids=list(BACKENDS),
)
def test_an_n3_prompt_is_served_by_each_backend(cluster, bridge_process, backend):
    kind = "koboldcpp" if isinstance(backend, FakeKoboldCpp) else backend.kind
    model, found = BACKENDS[kind]
    extra = ["--backend-apikey", "tabby-key"] if kind == "tabbyapi" else []
    bridge = start(bridge_process, cluster, backend.url, *extra)
    bridge.wait_for(found)
    prompt_id = submit(cluster, f"A story for {kind}", 3, [model])

    answer = wait_done(cluster, prompt_id, bridge)
    assert answer["generations"] == [fake_text(f"A story for {kind}", 16)] * 3
    [server] = get(cluster, "/servers")
    assert server["model"] == model
    assert get(cluster, "/usage") == {"alice": 48}
    assert get(cluster, "/contributions") == {"bob": 48}
    if kind != "koboldcpp":
        assert backend.refused == []  # every translated field was one the server knows
        assert [body["max_tokens"] for body in backend.bodies] == [16] * 3
    assert "stopped: 3 jobs done, 0 given back, 0 dropped; 48 tokens at" in stop(bridge)


@pytest.mark.parametrize("backend", ["vllm"], indirect=True)
def test_reported_usage_is_what_the_ledger_holds(cluster, bridge_process, backend):
    backend.usage_tokens = 13  # plausible for 64 characters: between 8 and 16
    bridge = start(bridge_process, cluster, backend.url)
    answer = wait_done(cluster, submit(cluster, "counted", 3, []), bridge)
    assert answer["generations"] == [fake_text("counted", 16)] * 3
    assert get(cluster, "/usage") == {"alice": 39}
    assert get(cluster, "/contributions") == {"bob": 39}
    assert "stopped: 3 jobs done, 0 given back, 0 dropped; 39 tokens at" in stop(bridge)


@pytest.mark.parametrize("backend", ["llamacpp"], indirect=True)
def test_implausible_usage_gives_way_to_the_clusters_count(cluster, bridge_process, backend):
    backend.usage_tokens = 900
    bridge = start(bridge_process, cluster, backend.url)
    wait_done(cluster, submit(cluster, "miscounted", 3, []), bridge)
    assert get(cluster, "/usage") == {"alice": 48}
    assert get(cluster, "/contributions") == {"bob": 48}
    stop(bridge)


@pytest.mark.parametrize("backend", [("llamacpp", {"slots": 1})], indirect=True)
def test_a_busy_llamacpp_gets_no_job_until_a_slot_frees(cluster, bridge_process, backend):
    backend.owner_slots = 1  # the owner's own chat holds the only slot
    bridge = start(bridge_process, cluster, backend.url)
    prompt_id = submit(cluster, "polite", 1, [])
    bridge.wait_for("no new jobs while the backend is busy: no free slot in the llama.cpp server")
    checks = backend.slot_checks
    wait_until(lambda: backend.slot_checks >= checks + 3, "three more slot checks", watch=[bridge])
    assert get(cluster, "/servers") == []  # never popped: the cluster has not even seen it
    assert status(cluster, prompt_id)["waiting"] == 1 and backend.bodies == []

    backend.owner_slots = 0
    answer = wait_done(cluster, prompt_id, bridge)
    assert answer["generations"] == [fake_text("polite", 16)]
    assert "the backend is free again; taking jobs" in bridge.output
    stop(bridge)


@pytest.mark.parametrize("backend", [("vllm", {"delay": 1.0})], indirect=True)
def test_threads_run_jobs_at_once_on_a_batching_backend(cluster, bridge_process, backend):
    bridge = start(bridge_process, cluster, backend.url, "--threads", "3", "-v")
    wait_until(lambda: get(cluster, "/servers"), "the server to pop", watch=[bridge])
    started = time.monotonic()
    answer = wait_done(cluster, submit(cluster, "batched", 3, []), bridge)
    assert answer["generations"] == [fake_text("batched", 16)] * 3
    assert backend.max_active == 3, bridge.output
    print(f"3 jobs of 1 s each in {time.monotonic() - started:.1f} s")
    stop(bridge)
