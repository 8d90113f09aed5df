"""End to end: front-ends point at the cluster by URL alone.

The real cluster (the `cluster` fixture), the project's bridge and FakeKoboldAI (the test
double of KoboldAI) as processes; the clients are the real `openai` SDK and the calls that
KoboldAI Lite and SillyTavern make, in their order, with the bodies they send, checked
against the fields they read (from their sources: Lite's index.html, SillyTavern's
src/endpoints/backends/kobold.js and chat-completions.js).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from bridge.tests.kai_double import fake_text
from bridge.tests.processes import Process, wait_until
from koboldcluster.testing import ClusterProcess

pytestmark = [pytest.mark.e2e]

MODEL = "koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M"
PASSWORD = "s3cret-pass"
WAIT = 3  # KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS in these tests


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": str(WAIT)}


@pytest.fixture
def served(cluster: Any, kai_double: Any, bridge_process: Any) -> tuple[Any, Process]:
    """FakeKoboldAI serving MODEL through the original pop protocol, checked in."""
    kai = kai_double("--model", MODEL, "--max-context-length", "4096")
    bridge = bridge_process(
        *("--cluster-url", cluster.url, "--kai-url", kai.url, "--name", "bob-kai"),
        *("--username", "bob", "--password", PASSWORD),
    )
    wait_until(lambda: get(cluster, "/servers"), "the server to check in", watch=[bridge])
    return kai, bridge


def get(cluster: Any, path: str, **headers: str) -> Any:
    response = requests.get(f"{cluster.url}{path}", headers=headers, timeout=10)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def ledger_balanced(cluster: Any, user: str, tokens: int) -> None:
    assert get(cluster, "/usage") == {user: tokens}
    assert get(cluster, "/contributions") == {"bob": tokens}


def test_the_openai_sdk_completes_chats_and_lists_models(cluster, served):
    from accounts.keys import account_register

    kai, bridge = served
    _, key = account_register(username="carol")
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0)

    assert [model.id for model in client.models.list()] == [MODEL]

    completion = client.completions.create(
        model="Meta-Llama-3-8B-Instruct", prompt="Once upon a time", max_tokens=16
    )
    assert completion.choices[0].text == fake_text("Once upon a time", 16)
    assert completion.model == MODEL
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 16)

    messages = [
        {"role": "system", "content": "You are a kobold."},
        {"role": "user", "content": "Who are you?"},
    ]
    chat = client.chat.completions.create(model="*", messages=messages, max_tokens=16)
    received = kai.state()["last_payload"]
    assert received["prompt"] == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a kobold.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert "<|eot_id|>" in received["stop_sequence"]
    assert chat.choices[0].message.content == fake_text(received["prompt"], 16).strip()
    assert chat.choices[0].finish_reason == "length"
    ledger_balanced(cluster, "carol", 32)

    wrong = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.body["code"] == "invalid_api_key"


def test_a_model_nobody_serves_is_a_clear_error_at_once(cluster, served):
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="undefined", max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError) as failed:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert time.monotonic() - started < 1  # not the configured wait: nothing could come
    assert failed.value.status_code == 404
    assert failed.value.body["code"] == "model_not_found"
    assert "gpt-4o" in failed.value.body["message"] and MODEL in failed.value.body["message"]
    assert get(cluster, "/api/v2/status/performance")["queued_requests"] == 0


LITE_BODY = {  # Lite's flattened `params` plus `prompt` (index.html, custom KoboldAI endpoint)
    "n": 1,
    "max_context_length": 2048,
    "max_length": 16,
    "rep_pen": 1.07,
    "temperature": 0.75,
    "top_p": 0.92,
    "top_k": 100,
    "top_a": 0,
    "typical": 1,
    "tfs": 1,
    "rep_pen_range": 360,
    "rep_pen_slope": 0.7,
    "sampler_order": [6, 0, 1, 3, 4, 2, 5],
}


def test_koboldai_lite_connects_and_generates(cluster, served):
    """Lite's "KoboldAI API" connection, from the browser on its own origin, with a key."""
    from accounts.keys import account_register

    kai, _ = served
    _, key = account_register(username="dave")
    headers = {"Authorization": f"Bearer {key}", "Origin": "https://lite.koboldai.net"}
    model = get(cluster, "/api/v1/model", **headers)["result"]
    assert model and model != "ReadOnly" and MODEL in model
    assert get(cluster, "/api/v1/info/version", **headers)["result"] == "1.2.5"
    assert get(cluster, "/api/v1/config/max_context_length", **headers)["value"] == 4096
    extra = get(cluster, "/api/extra/version", **headers)
    # Lite streams (server-sent events) from KoboldCpp 1.40 on, its token polling from 1.30.
    assert extra["version"] == "1.40"

    body = {**LITE_BODY, "prompt": "The kobold looked at the dragon and"}
    response = requests.post(
        f"{cluster.url}/api/v1/generate", json=body, headers=headers, timeout=WAIT + 30
    )
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.json()["results"][0]["text"] == fake_text(body["prompt"], 16)
    assert kai.state()["last_payload"]["sampler_order"] == LITE_BODY["sampler_order"]
    ledger_balanced(cluster, "dave", 16)


def test_koboldai_lite_openai_compatible_connection(cluster, served):
    """Lite's "OpenAI Compatible API" without a key (it then sends no Authorization): the
    model list, then completions or, ticked, chat completions, and with token streaming on."""
    kai, _ = served
    origin = {"Origin": "https://lite.koboldai.net"}
    model = get(cluster, "/v1/models", **origin)["data"][0]["id"]
    payload = {"max_tokens": 16, "model": model, "temperature": 0.75, "top_p": 0.92}
    payload |= {"stop": ["\nYou:"], "presence_penalty": 0.07}
    url = f"{cluster.url}/v1"
    body = {**payload, "prompt": "You: Hi\nKobold:"}
    text = requests.post(f"{url}/completions", json=body, headers=origin, timeout=40).json()
    assert text["choices"][0]["text"] == fake_text(body["prompt"], 16)

    messages = [
        {"role": "system", "content": "You are a kobold."},
        {"role": "assistant", "content": "Greetings,", "partial": True},
    ]
    answer = requests.post(
        f"{url}/chat/completions", json={**payload, "messages": messages}, timeout=40
    ).json()
    received = kai.state()["last_payload"]["prompt"]
    assert received.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nGreetings,")
    assert answer["choices"][0]["message"]["content"] == fake_text(received, 16).strip()

    # Token streaming on: FakeKoboldAI cannot stream, so the text comes as one chunk.
    streamed = requests.post(f"{url}/completions", json={**body, "stream": True}, timeout=40)
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    pieces = [json.loads(event)["choices"][0]["text"] for event in events[:-1]]
    assert [piece for piece in pieces if piece] == [fake_text(body["prompt"], 16)]


def test_sillytavern_kobold_classic_connects_and_generates(cluster, served):
    """SillyTavern's server, no key: its status calls, then generate with its body."""
    api = f"{cluster.url}/api"
    united = requests.get(f"{api}/v1/info/version", timeout=10).json()["result"]
    kcpp = requests.get(f"{api}/extra/version", timeout=10)
    model = requests.get(f"{api}/v1/model", timeout=10).json()["result"]
    assert united == "1.2.5" and model not in ("", "ReadOnly")
    # SillyTavern reads `result` as the KoboldCpp version: absent means none.
    assert kcpp.ok and "result" not in kcpp.json()

    body = {
        "prompt": "Narrator: The tavern was quiet.\nKobold:",
        "use_story": False,
        "use_memory": False,
        "use_authors_note": False,
        "use_world_info": False,
        "max_context_length": 2048,
        "max_length": 16,
        "rep_pen": 1.1,
        "rep_pen_range": 1024,
        "rep_pen_slope": 0.9,
        "temperature": 0.7,
        "tfs": 1,
        "top_a": 0,
        "top_k": 0,
        "top_p": 0.9,
        "min_p": 0,
        "typical": 1,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
        "singleline": False,
        "use_default_badwordsids": False,
        "stop_sequence": ["\nNarrator:"],
    }
    response = requests.post(f"{api}/v1/generate", json=body, timeout=WAIT + 30)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["text"] == fake_text(body["prompt"], 16)
    ledger_balanced(cluster, "Anonymous", 16)


def test_sillytavern_custom_chat_completion_without_a_key(cluster, served):
    """SillyTavern's Chat Completion "Custom (OpenAI-compatible)": `Bearer undefined`."""
    url, headers = f"{cluster.url}/v1", {"Authorization": "Bearer undefined"}
    ids = [model["id"] for model in get(cluster, "/v1/models", **headers)["data"]]
    assert ids == [MODEL]
    body = {
        "messages": [{"role": "user", "content": "Hello"}],
        "model": MODEL,
        "temperature": 1,
        "max_tokens": 16,
        "stream": False,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_p": 1,
        "top_k": 0,
        "logit_bias": {},
        "seed": -1,
        "n": 1,
    }
    response = requests.post(f"{url}/chat/completions", json=body, headers=headers, timeout=40)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_sillytavern_text_completion_koboldcpp_type(cluster, served):
    """SillyTavern's Text Completion with type KoboldCpp: /v1/models, then /v1/completions
    with its whole textgen body (most of it for other backends), and its abort on leaving."""
    kai, _ = served
    models = get(cluster, "/v1/models")["data"]
    model = models[0]["id"]  # SillyTavern shows the first id as the model
    stops = ["\nUser:"]
    body = {
        "prompt": "User: Hello\nKobold:",
        "model": model,
        "max_new_tokens": 16,
        "max_tokens": 16,
        "temperature": 0.7,
        "top_p": 0.9,
        "typical_p": 1,
        "typical": 1,
        "sampler_seed": -1,
        "min_p": 0,
        "repetition_penalty": 1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "top_k": 0,
        "skew": 0,
        "min_tokens": 0,
        "add_bos_token": True,
        "smoothing_factor": 0,
        "smoothing_curve": 1,
        "dry_allowed_length": 2,
        "dry_multiplier": 0,
        "dry_base": 1.75,
        "dry_sequence_breakers": ["\n", ":"],
        "dry_penalty_last_n": 0,
        "max_tokens_second": 0,
        "stopping_strings": stops,
        "stop": stops,
        "truncation_length": 2048,
        "ban_eos_token": False,
        "skip_special_tokens": True,
        "top_a": 0,
        "tfs": 1,
        "mirostat_mode": 0,
        "mirostat_tau": 5,
        "mirostat_eta": 0.1,
        "custom_token_bans": "",
        "banned_strings": [],
        "api_type": "koboldcpp",
        "api_server": cluster.url,
        "legacy_api": False,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
        "xtc_threshold": 0.1,
        "xtc_probability": 0,
        "rep_pen": 1,
        "rep_pen_range": 0,
        "seed": -1,
        "guidance_scale": 1,
        "negative_prompt": "",
        "grammar_string": "",
        "grammar": "",
        "rep_pen_slope": 1,
        "stream": False,
    }
    response = requests.post(f"{cluster.url}/v1/completions", json=body, timeout=WAIT + 30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == fake_text(body["prompt"], 16)
    received = kai.state()["last_payload"]
    assert (received["max_context_length"], received["stop_sequence"]) == (2048, stops)
    abort = requests.post(f"{cluster.url}/api/extra/abort", timeout=10)  # no body, no key
    assert abort.json() == {"success": False}


def test_kobold_generate_served_through_the_horde_pop_protocol(cluster, kai_double, bridge_process):
    from accounts.keys import account_register

    _, key = account_register(username="bob")
    kai = kai_double()
    bridge = bridge_process(
        *("--cluster-url", cluster.url, "--kai-url", kai.url, "--name", "bob-horde"),
        *("--protocol", "horde", "--apikey", key),
    )
    wait_until(lambda: get(cluster, "/servers"), "the server to check in", watch=[bridge])
    body = {"prompt": "Through the horde", "n": 2, "max_length": 16}
    response = requests.post(f"{cluster.url}/api/v1/generate", json=body, timeout=WAIT + 30)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"text": fake_text("Through the horde", 16)}] * 2
    assert kai.state()["generated"] == 2
    ledger_balanced(cluster, "Anonymous", 32)


class AsgiClusterProcess(ClusterProcess):
    """The cluster under uvicorn (ASGI), where Django cancels a view whose client left."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.args = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "django.core.asgi:get_asgi_application",
            *("--host", "127.0.0.1", "--port", str(self.port)),
            "--no-access-log",
        ]
        self.env = {**self.env, "DJANGO_SETTINGS_MODULE": "koboldcluster.settings"}


@pytest.fixture
def asgi_cluster(transactional_db: None) -> Iterator[AsgiClusterProcess]:
    process = AsgiClusterProcess({"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "120"})
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_a_caller_that_disconnects_cancels_its_prompt(asgi_cluster, bob):
    from generations.models import Prompt
    from servers.models import Server

    Server.objects.create(name="bob-idle", owner=bob, models=["m"], max_context_length=2048)
    body = json.dumps({"prompt": "Nobody serves this", "max_length": 16}).encode()
    request = (
        b"POST /api/v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", asgi_cluster.port), timeout=10) as caller:
        caller.sendall(request)
        wait_until(
            lambda: Prompt.objects.filter(state=Prompt.State.LIVE, waiting=1).exists(),
            "the prompt to be queued",
        )
    # The caller is gone long before the 120 s wait: the prompt must be cancelled now.
    cancelled = wait_until(
        lambda: Prompt.objects.filter(state=Prompt.State.CANCELLED).first(),
        "the prompt to be cancelled",
        timeout=30,
    )
    assert cancelled.waiting == 0
    assert not Prompt.objects.queued().exists()
    wait_until(
        lambda: "cancelled: the caller went away" in asgi_cluster.output(),
        "the view to log why it cancelled",
        timeout=10,
    )
