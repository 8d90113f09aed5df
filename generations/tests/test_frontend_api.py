"""The KoboldAI and OpenAI APIs in-process: their shapes, keys, refusals and time-outs.

The end-to-end stories (real cluster, bridge and KoboldAI double, the real `openai` SDK)
are in test_frontend_e2e.py; here a server is a thread that pops and submits over the API.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from accounts.models import LedgerEntry
from generations import status
from generations.frontend import give_up
from generations.intake import GenerationRequest, prompt_create
from generations.models import Prompt
from koboldcluster.asgi_client import APIClient
from servers.models import Server

SERVER_PASSWORD = "s3rver-pass"


@pytest.fixture
def short_wait(settings: Any) -> None:
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "FRONTEND_WAIT_SECONDS": 0.5}


def openai_error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.django_db
def test_a_wrong_key_is_401_in_openai_shape(api):
    response = api.get("/v1/models", HTTP_AUTHORIZATION="Bearer not-a-key")
    assert response.status_code == 401
    error = openai_error(response)
    assert error["code"] == "invalid_api_key" and "unknown" in error["message"]


@pytest.mark.django_db
def test_a_wrong_key_on_the_kobold_api_is_401_with_detail(api):
    response = api.get("/api/v1/model", HTTP_AUTHORIZATION="Bearer not-a-key")
    assert response.status_code == 401
    body = response.json()
    assert body["rc"] == "InvalidAPIKey"
    assert body["detail"]["msg"] == body["message"]  # what SillyTavern shows


@pytest.mark.django_db
@pytest.mark.parametrize("header", [{}, {"HTTP_AUTHORIZATION": "Bearer undefined"}])
def test_no_key_and_sillytaverns_bearer_undefined_are_anonymous(api, header, pop, short_wait):
    pop()  # a server online, busy elsewhere
    response = api.post(
        "/v1/completions", {"prompt": "Hi", "max_tokens": 8}, format="json", **header
    )
    assert response.status_code == 504, response.json()
    assert Prompt.objects.get().user.is_anonymous_user


@pytest.mark.django_db
def test_a_key_as_bearer_or_apikey_is_that_user(api, register, pop, short_wait):
    pop()
    user, key = register("carol")
    api.post("/api/v1/generate", {"prompt": "a"}, format="json", HTTP_AUTHORIZATION=f"Bearer {key}")
    api.post("/api/v1/generate", {"prompt": "b"}, format="json", HTTP_APIKEY=key)
    assert list(Prompt.objects.values_list("user_id", flat=True)) == [user.pk, user.pk]


def test_a_preflight_allows_the_authorization_header(client):
    response = client.options(
        "/v1/chat/completions",
        HTTP_ORIGIN="https://lite.koboldai.net",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type",
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "apikey"} <= allowed


@pytest.mark.django_db
def test_the_kobold_info_endpoints_describe_the_active_servers(api, pop):
    pop(name="small", model="koboldcpp/Llama-3-8B", max_length=256, max_content_length=4096)
    pop(name="big", model="aphrodite/Mistral-7B", max_length=512, max_content_length=8192)
    model = api.get("/api/v1/model").json()["result"]
    assert model == "koboldcluster/aphrodite/Mistral-7B, koboldcpp/Llama-3-8B"
    assert api.get("/api/v1/config/max_length").json() == {"value": 512}
    assert api.get("/api/latest/config/max_context_length").json() == {"value": 8192}
    assert api.get("/api/v1/info/version").json() == {"result": "1.2.5"}


@pytest.mark.django_db
def test_with_no_server_the_model_is_still_a_name(api):
    # Lite refuses an empty name and takes "ReadOnly" for "no model loaded".
    assert api.get("/api/v1/model").json() == {"result": "koboldcluster/no servers online"}
    assert api.get("/api/v1/config/max_context_length").json() == {"value": 0}


def test_extra_version_claims_the_koboldcpp_version_that_makes_lite_stream(client):
    """Lite streams through /api/extra/generate/stream from KoboldCpp 1.40 on (its
    is_using_kcpp_with_sse) and unlocks more at later versions; SillyTavern compares `result`
    as a version ("KoboldCpp" sorts after every number), so there is none."""
    body = client.get("/api/extra/version").json()
    assert body["version"] == "1.40" and "result" not in body
    assert body["name"] == "KoboldAI Cluster" and body["streaming"] is True


def test_tokencount_is_an_estimate(client):
    response = client.post(
        "/api/extra/tokencount", {"prompt": "Hello, my name is Niko."}, "application/json"
    )
    assert response.json() == {"value": 6, "ids": [], "estimate": True}


@pytest.mark.django_db
def test_abort_cancels_the_generation_sent_with_that_genkey(api, register):
    user, key = register("carol")
    prompt = prompt_create(
        user=user, request=GenerationRequest("x", 1, 16, 1024, genkey="KCPP1234")
    )
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    other = api.post("/api/extra/abort", {"genkey": "KCPP1234"}, format="json")
    assert other.json() == {"success": False}  # the anonymous caller's KCPP1234: none
    assert api.post("/api/extra/abort", {}, format="json", **bearer).json() == {"success": False}
    answer = api.post("/api/extra/abort", {"genkey": "KCPP1234"}, format="json", **bearer)
    assert answer.json() == {"success": True}
    prompt.refresh_from_db()
    assert (prompt.state, prompt.waiting) == (Prompt.State.CANCELLED, 0)


@pytest.mark.django_db
def test_a_request_whose_servers_went_away_is_cancelled_with_a_clear_error(alice, pop):
    pop()
    prompt = prompt_create(user=alice, request=GenerationRequest("Once", 1, 32, 1024))
    Server.objects.update(last_check_in=timezone.now() - timedelta(hours=1))  # gone
    status.active_servers(fresh=True)

    error = give_up(prompt.id, 0.5)

    assert (error.status_code, error.rc) == (504, "NoServerAvailable")
    assert "cancelled" in error.message
    assert Prompt.objects.get().state == Prompt.State.CANCELLED
    assert not Prompt.objects.queued().exists()


@pytest.mark.django_db
def test_a_request_an_idle_server_could_serve_times_out_as_queued_too_long(api, pop, short_wait):
    pop()  # an active server that could serve it, but asks for no more work
    response = api.post("/api/v1/generate", {"prompt": "Once", "max_length": 16}, format="json")
    assert response.status_code == 504
    assert response.json()["rc"] == "Timeout" and "queue" in response.json()["message"]
    # Its place and the wait the servers' measured speeds predicted (never measured: the
    # estimate falls back to a token a second).
    assert response["X-KoboldCluster-Queue-Position"] == "1"
    assert response["X-KoboldCluster-Wait-Seconds"] == "16"
    assert not Prompt.objects.queued().exists()


@pytest.mark.django_db
def test_a_model_nobody_serves_is_refused_at_once_in_openai_shape(api, pop, settings):
    # A wait long enough that a request which waited could not pass for one that did not,
    # even on a loaded machine whose first request of a process takes a second.
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "FRONTEND_WAIT_SECONDS": 30}
    pop(model="koboldcpp/Llama-3-8B")
    started = time.monotonic()
    response = api.post(
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
        format="json",
    )
    assert time.monotonic() - started < 10
    assert response.status_code == 404
    error = openai_error(response)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "gpt-4o" in error["message"] and "koboldcpp/Llama-3-8B" in error["message"]
    assert not Prompt.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("echo", True),
        ("logprobs", True),
        ("tools", [{"type": "function"}]),
        ("n", "x"),
        ("n", {"stream": True, "n": 2}),  # streams carry one choice
    ],
)
def test_fields_that_would_change_the_meaning_are_refused(api, field, value):
    body = {"messages": [{"role": "user", "content": "Hi"}], field: value}
    if isinstance(value, dict):
        body = {"messages": body["messages"], **value}
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400
    assert openai_error(response)["param"] == field
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_harmless_unknown_fields_are_ignored_and_empty_ones_accepted(api, pop, short_wait):
    pop()
    body = {
        "prompt": "Hi",
        "stream": False,
        "logprobs": None,
        "logit_bias": {},
        "presence_penalty": 0.5,
        "seed": 7,
        "user": "me",
        "top_k": 40,
    }
    assert api.post("/v1/completions", body, format="json").status_code == 504
    assert Prompt.objects.get().params["top_k"] == 40


@pytest.mark.django_db
def test_a_chat_longer_than_the_prompt_cap_is_refused(api, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "MAX_PROMPT_CHARS": 100}
    body = {"messages": [{"role": "user", "content": "x" * 90}]}  # with ChatML: > 100
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400
    error = openai_error(response)
    assert error["param"] == "messages" and "100 characters" in error["message"]
    assert not Prompt.objects.exists()


def test_an_unknown_v1_path_is_404_in_openai_shape(client):
    response = client.get("/v1/embeddings")
    assert response.status_code == 404
    assert openai_error(response)["code"] == "unknown_url"


def serve_one(
    text: str, seen: list[dict[str, Any]], submitted: dict[str, Any] | None = None, **server: Any
) -> threading.Thread:
    """A server in a thread: pops until it gets a job, then submits `text` for it (and the
    fields of `submitted`)."""

    def work() -> None:
        api = APIClient()
        body = {
            "username": "bob",
            "password": SERVER_PASSWORD,
            "name": "bob-1",
            "model": "koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M",
            "max_length": 512,
            "max_content_length": 4096,
            **server,
        }
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                job = api.post("/generate/pop", body, format="json").json()
                if job.get("id"):
                    seen.append(job["payload"])
                    submit = {"id": job["id"], "password": SERVER_PASSWORD, "generation": text}
                    submit.update(submitted or {})
                    api.post("/generate/submit", submit, format="json")
                    return
                time.sleep(0.05)
        finally:
            # The thread's own connection: left open, it keeps PostgreSQL from dropping the
            # test database at the end of the session.
            connections.close_all()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_a_chat_is_templated_served_cut_at_the_turn_end_and_paid(api, bob, pop):
    pop(model="koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M", max_length=512)
    seen: list[dict[str, Any]] = []
    server = serve_one(" Niko.<|eot_id|><|start_header_id|>user", seen)
    response = api.post(
        "/v1/chat/completions",
        {
            "model": "Meta-Llama-3-8B-Instruct",
            "messages": [{"role": "user", "content": "Name a kobold."}],
            "max_tokens": 20,
        },
        format="json",
    )
    server.join(10)
    assert response.status_code == 200, response.json()
    assert response["X-Chat-Template"] == "llama3" and "X-KoboldCluster-Warning" not in response
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M"
    assert body["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "message": {"role": "assistant", "content": "Niko."},
            "finish_reason": "stop",
        }
    ]
    [payload] = seen
    assert payload["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|eot_id|>" in payload["stop_sequence"] and payload["max_length"] == 20
    charged = LedgerEntry.objects.get(kind=LedgerEntry.Kind.USAGE).tokens
    assert body["usage"]["completion_tokens"] == charged == 10
    assert body["usage"]["prompt_tokens"] == -(-len(payload["prompt"]) // 4)


def test_the_openapi_docs_list_the_front_end_apis(client):
    paths = client.get("/api/schema?format=json").json()["paths"]
    for path in (
        "/api/v1/generate",
        "/api/v1/model",
        "/api/v1/config/max_length",
        "/api/v1/config/max_context_length",
        "/api/v1/info/version",
        "/api/extra/version",
        "/api/extra/abort",
        "/api/extra/tokencount",
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
    ):
        assert path in paths, path
