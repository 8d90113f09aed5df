"""Front-end requests fitted to the servers online, and refused at once when nothing could
serve them (generations/fitting.py), through the KoboldAI and OpenAI faces.

A server here is a thread that pops and submits over the API (`serve_one`), advertising what
a home GPU allows: max_length 512 and a context of 4096. The front-ends' defaults ask for
more: KoboldAI Lite 6144 / 768, SillyTavern's KoboldAI Classic 8192 / 350.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.test import RequestFactory

from accounts.identity import anonymous_user
from generations.fitting import Fit, fit
from generations.intake import GenerationRequest, prompt_create
from generations.matching import ServerProfile
from generations.models import Prompt
from generations.tests.test_frontend_api import openai_error, serve_one
from koboldcluster import clients

LITE = {"max_context_length": 6144, "max_length": 768}


def profile(max_length: int, max_context_length: int) -> ServerProfile:
    return ServerProfile(
        id=None, owner_id=1, trusted=False, models=("m",), max_length=max_length,
        max_context_length=max_context_length,
    )  # fmt: skip


def test_a_request_one_server_can_serve_as_asked_is_not_changed():
    servers = [profile(512, 4096), profile(1024, 8192)]
    assert fit(max_length=768, max_context_length=6144, servers=servers) == Fit(
        768, 6144, 768, 6144
    )


def test_too_large_a_request_gets_the_server_with_the_most_context_then_length():
    servers = [profile(1024, 2048), profile(256, 4096), profile(512, 4096)]
    fitted = fit(max_length=768, max_context_length=6144, servers=servers)
    assert fitted == Fit(512, 4096, 768, 6144)
    assert fitted.lowered
    assert fitted.header() == "max_context_length=4096 (asked 6144), max_length=512 (asked 768)"


def test_nothing_to_fit_to_is_none():
    assert fit(max_length=80, max_context_length=1024, servers=[]) is None


@pytest.mark.django_db(transaction=True)
def test_lites_defaults_on_the_kobold_api_are_served_by_a_smaller_server(api, pop):
    pop(model="koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M", max_length=512, max_content_length=4096)
    seen: list[dict[str, Any]] = []
    server = serve_one(" the end", seen)
    body = {"prompt": "Once upon a time", **LITE, "genkey": "KCPP4321"}
    response = api.post("/api/v1/generate", body, format="json")
    server.join(10)

    assert response.status_code == 200, response.json()
    assert response.json() == {"results": [{"text": " the end"}]}
    assert response["X-KoboldCluster-Limits"] == (
        "max_context_length=4096 (asked 6144), max_length=512 (asked 768)"
    )
    [payload] = seen
    assert (payload["max_context_length"], payload["max_length"]) == (4096, 512)


@pytest.mark.django_db(transaction=True)
def test_an_openai_chat_asking_too_much_is_fitted_and_its_job_gets_the_whole_context(api, pop):
    pop(model="koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M", max_length=512, max_content_length=4096)
    seen: list[dict[str, Any]] = []
    server = serve_one("word " * 600, seen)  # all 512 tokens: the cut ended it
    body = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 768}
    response = api.post("/v1/chat/completions", body, format="json")
    server.join(10)

    assert response.status_code == 200, response.json()
    assert response["X-KoboldCluster-Limits"] == "max_length=512 (asked 768)"
    assert response.json()["choices"][0]["finish_reason"] == "length"
    [payload] = seen
    # The cluster only estimated the prompt's size to choose the server; the backend is told
    # its own context, so a dense prompt is never cut to the estimate.
    assert (payload["max_context_length"], payload["max_length"]) == (4096, 512)
    assert Prompt.objects.get().whole_context


@pytest.mark.django_db(transaction=True)
def test_usage_counts_the_prompt_as_the_backend_counted_it(api, pop):
    pop(model="koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M", max_length=512, max_content_length=4096)
    seen: list[dict[str, Any]] = []
    counts = {"prompt_tokens": 3071, "prompt_trimmed": 2043, "token_count": 5}
    server = serve_one(" and so", seen, counts)
    body = {"prompt": "x" * 20_000, "max_tokens": 5}  # ~5,000 tokens: cut to fit 4096
    response = api.post("/v1/completions", body, format="json")
    server.join(10)
    assert response.status_code == 200, response.json()
    usage = response.json()["usage"]
    assert usage == {"prompt_tokens": 3071, "completion_tokens": 5, "total_tokens": 3076}
    assert response.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.django_db
def test_the_original_api_keeps_its_strict_lengths(api, pop, submit_prompt):
    pop(max_length=512, max_content_length=4096)
    prompt_id = submit_prompt(params={"max_length": 768, "max_context_length": 6144})
    prompt = Prompt.objects.get(pk=prompt_id)
    assert (prompt.max_length, prompt.max_context_length) == (768, 6144)


@pytest.mark.django_db
def test_with_no_server_online_the_kobold_api_answers_503_after_the_grace(api, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "FRONTEND_GRACE_SECONDS": 0.5}
    started = time.monotonic()
    response = api.post("/api/v1/generate", {"prompt": "Hi", **LITE}, format="json")
    assert 0.5 <= time.monotonic() - started < 5
    assert response.status_code == 503
    assert response["Retry-After"] == "10"
    body = response.json()
    assert body["rc"] == "NoServerAvailable" and body["detail"]["msg"] == body["message"]
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_with_no_server_online_the_openai_api_answers_503_in_its_shape(api):
    response = api.post("/v1/completions", {"prompt": "Hi"}, format="json")
    assert response.status_code == 503 and response["Retry-After"] == "10"
    assert openai_error(response)["type"] == "server_error"


@pytest.mark.django_db(transaction=True)
def test_a_server_that_connects_within_the_grace_serves_the_request(api, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "FRONTEND_GRACE_SECONDS": 10}
    seen: list[dict[str, Any]] = []
    late = threading.Timer(1.0, serve_one, args=(" hello", seen))
    late.start()
    try:
        response = api.post("/api/v1/generate", {"prompt": "Hi", **LITE}, format="json")
    finally:
        late.join()
    assert response.status_code == 200, response.json()
    assert response.json() == {"results": [{"text": " hello"}]}


def anonymous_prompt(address: str, genkey: str) -> Prompt:
    """A prompt sent with `genkey` by a caller without credentials from `address`."""
    token = clients.remember(RequestFactory().get("/", REMOTE_ADDR=address))
    try:
        request = GenerationRequest("Once", 1, 16, 1024, genkey=genkey)
        return prompt_create(user=anonymous_user(), request=request)
    finally:
        clients.forget(token)


def check(api: Any, address: str, genkey: str) -> str:
    answer = api.post(
        "/api/extra/generate/check", {"genkey": genkey}, format="json", REMOTE_ADDR=address
    )
    return answer.json()["results"][0]["text"]


@pytest.mark.django_db
def test_two_anonymous_callers_with_the_same_genkey_never_see_each_others_text(api, pop):
    first, second = (
        anonymous_prompt("10.0.0.1", "KCPP1234"),
        anonymous_prompt("10.0.0.2", "KCPP1234"),
    )
    texts = {first.id: " first's story", second.id: " second's story"}
    for _ in texts:
        job = pop().json()
        prompt_id = Prompt.objects.get(jobs__id=job["id"]).id
        submit = {"id": job["id"], "password": "s3rver-pass", "generation": texts[prompt_id]}
        assert api.post("/generate/submit", submit, format="json").status_code == 200

    assert check(api, "10.0.0.1", "KCPP1234") == " first's story"
    assert check(api, "10.0.0.2", "KCPP1234") == " second's story"
    assert check(api, "10.0.0.3", "KCPP1234") == ""  # a third caller guessing the key


@pytest.mark.django_db
def test_an_anonymous_caller_aborts_only_its_own_generation(api):
    first, second = (
        anonymous_prompt("10.0.0.1", "KCPP1234"),
        anonymous_prompt("10.0.0.2", "KCPP1234"),
    )
    abort = lambda address: api.post(  # noqa: E731
        "/api/extra/abort", {"genkey": "KCPP1234"}, format="json", REMOTE_ADDR=address
    ).json()
    assert abort("10.0.0.3") == {"success": False}
    assert abort("10.0.0.2") == {"success": True}
    states = dict(Prompt.objects.values_list("id", "state"))
    assert states == {first.id: Prompt.State.LIVE, second.id: Prompt.State.CANCELLED}


@pytest.mark.django_db
def test_check_and_abort_are_rate_limited_per_address(api, rate_limits):
    rate_limits(status_ip="2/min")
    answers = [
        api.post("/api/extra/generate/check", {"genkey": f"KCPP{i}"}, format="json").status_code
        for i in range(3)
    ]
    assert answers == [200, 200, 429]
    assert api.post("/api/extra/abort", {"genkey": "KCPP1"}, format="json").status_code == 429
