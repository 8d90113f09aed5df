"""Detection of each supported backend (against its test double), what the bridge reads from
each, how a job's KoboldAI parameters become each OpenAI-compatible server's fields, and the
busy checks that keep the owner's GPU theirs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.detect import NoBackend, detect
from bridge.flavours import gguf_name
from bridge.kobold import KoboldClient, KoboldUnreachable, ModelInfo
from bridge.openai_backend import OpenAIClient
from bridge.tests.backend_doubles import FakeKoboldCpp, FakeOpenAIServer
from bridge.tests.kai_double import FakeKoboldAI, fake_text
from bridge.translate import DIALECTS, translate

JOB = {"prompt": "Once upon a time", "n": 1, "max_length": 8, "max_context_length": 1024}


@pytest.fixture
def double(request: pytest.FixtureRequest) -> Iterator[Any]:
    kind = request.param
    if kind == "koboldai":
        server: Any = FakeKoboldAI()
    elif kind == "koboldcpp":
        server = FakeKoboldCpp()
    else:
        server = FakeOpenAIServer(kind)
    with server:
        yield server


# kind -> (description after "found ", client class, ModelInfo)
DETECTED = {
    "koboldai": (
        "KoboldAI at {url} (KoboldAI United or compatible, KoboldAI API 1.2.5)",
        KoboldClient,
        ModelInfo("KoboldAI_FakeModel-1B", 512, 2048),
    ),
    "koboldcpp": (
        "KoboldCpp 1.78 at {url} (KoboldAI API)",
        KoboldClient,
        ModelInfo(
            "koboldcpp/FakeModel-7B-Q4_K_M",
            400,
            8192,
            advertised="koboldcpp/FakeModel-7B-Q4_K_M",
            max_length_ceiling=8192,
        ),
    ),
    "llamacpp": (
        "llama.cpp server b4567-fake at {url} (OpenAI-compatible API)",
        OpenAIClient,
        ModelInfo(
            "/models/FakeModel-7B-Q4_K_M.gguf",
            512,
            4096,
            advertised="koboldcpp/FakeModel-7B-Q4_K_M",
            max_length_ceiling=4096,
        ),
    ),
    "ollama": (
        "Ollama 0.5.7 at {url} (OpenAI-compatible API)",
        OpenAIClient,
        ModelInfo("fakemodel:7b", 512, 4096, "fakemodel:7b", 4096),
    ),
    "vllm": (
        "vLLM 0.6.3 at {url} (OpenAI-compatible API)",
        OpenAIClient,
        ModelInfo("FakeOrg/FakeModel-7B", 512, 4096, "FakeOrg/FakeModel-7B", 4096),
    ),
    "tabbyapi": (
        "TabbyAPI at {url} (OpenAI-compatible API)",
        OpenAIClient,
        ModelInfo("FakeModel-7B-exl2", 512, 4096, "FakeModel-7B-exl2", 4096),
    ),
    "textgen": (
        "text-generation-webui at {url} (OpenAI-compatible API)",
        OpenAIClient,
        ModelInfo("FakeModel-7B-GPTQ", 512, 2048, "FakeModel-7B-GPTQ", 2048, limits_known=False),
    ),
    "openai": (
        "OpenAI-compatible server at {url} (OpenAI-compatible API)",
        OpenAIClient,
        ModelInfo("fake-model", 512, 2048, "fake-model", 2048, limits_known=False),
    ),
}


@pytest.mark.parametrize("double", list(DETECTED), indirect=True)
def test_each_backend_is_detected_with_its_model_and_limits(double):
    description, client_class, info = DETECTED[_kind(double)]
    found = detect(double.url + "/v1/")  # what people paste is cleaned up
    assert found.description == description.format(url=double.url)
    assert type(found.backend) is client_class
    assert found.backend.model_info() == info


def _kind(double: Any) -> str:
    if isinstance(double, FakeKoboldCpp):
        return "koboldcpp"
    if isinstance(double, FakeKoboldAI):
        return "koboldai"
    return double.kind


@pytest.mark.parametrize("double", list(DETECTED), indirect=True)
def test_each_backend_generates_and_counts_what_it_can(double):
    found = detect(double.url)
    found.backend.model_info()
    generation = found.backend.generate({**JOB, "temperature": 0.7})
    assert generation.text == fake_text(JOB["prompt"], 8)
    # KoboldAI United reports no token counts; newer KoboldCpp and OpenAI usage do.
    assert generation.tokens == (None if _kind(double) == "koboldai" else 8)


def test_forced_protocol_skips_the_other_family():
    with FakeOpenAIServer("llamacpp") as server:
        with pytest.raises(NoBackend) as caught:
            detect(server.url, protocol="kobold")
        assert str(caught.value) == (
            f"the server at {server.url} does not offer the KoboldAI API (GET /api/v1/model) "
            "(GET /api/extra/version: 404; GET /api/v1/model: 404); the bridge needs one of "
            "KoboldAI, KoboldCpp, llama.cpp server, Ollama, vLLM, TabbyAPI or another "
            "OpenAI-compatible server there: check --backend-url"
        )
    with FakeKoboldCpp() as kobold:
        with pytest.raises(NoBackend, match=r"does not offer an OpenAI-compatible API"):
            detect(kobold.url, protocol="openai")
        assert isinstance(detect(kobold.url, protocol="kobold").backend, KoboldClient)


def test_nothing_listening_is_unreachable():
    server = FakeOpenAIServer("vllm").start()
    url = server.url
    server.stop()
    with pytest.raises(KoboldUnreachable, match=r"connection refused"):
        detect(url)


def test_a_backend_api_key_is_sent_as_a_bearer_token():
    with FakeOpenAIServer("tabbyapi", apikey="tabby-key") as server:
        with pytest.raises(NoBackend, match=r"GET /v1/models: 401"):
            detect(server.url)
        found = detect(server.url, apikey="tabby-key")
        assert found.backend.model_info().max_context_length == 4096
        assert found.backend.generate(JOB).text == fake_text(JOB["prompt"], 8)


def test_a_password_protected_koboldcpp_takes_the_backend_api_key():
    with FakeKoboldCpp(password="kcpp-pass") as kobold:
        without = detect(kobold.url).backend
        assert without.model_info().name == "koboldcpp/protected-model"
        found = detect(kobold.url, apikey="kcpp-pass")
        assert found.backend.model_info().name == "koboldcpp/FakeModel-7B-Q4_K_M"
        assert found.backend.generate(JOB).text == fake_text(JOB["prompt"], 8)


def test_gguf_names_follow_the_ai_hordes_convention():
    assert gguf_name("/models/Llama-3-8B-Q4_K_M.gguf") == "koboldcpp/Llama-3-8B-Q4_K_M"
    assert gguf_name(r"C:\models\Mistral-7B.Q5_K_M.GGUF") == "koboldcpp/Mistral-7B.Q5_K_M"
    assert gguf_name("my-alias") is None


# (dialect, KoboldAI parameter, value, field sent or None when dropped, value sent)
TRANSLATIONS = [
    *[
        (dialect, "max_length", 80, "max_tokens", 80)
        for dialect in ("llamacpp", "ollama", "vllm", "tabbyapi", "textgen", "openai")
    ],
    *[
        (dialect, "stop_sequence", ["\n\n"], "stop", ["\n\n"])
        for dialect in ("llamacpp", "ollama", "vllm", "tabbyapi", "textgen", "openai")
    ],
    ("openai", "temperature", 0.7, "temperature", 0.7),
    ("ollama", "top_p", 0.9, "top_p", 0.9),
    ("llamacpp", "top_k", 40, "top_k", 40),
    ("llamacpp", "min_p", 0.05, "min_p", 0.05),
    ("llamacpp", "typical", 0.9, "typical_p", 0.9),
    ("llamacpp", "tfs", 0.95, "tfs_z", 0.95),
    ("llamacpp", "rep_pen", 1.1, "repeat_penalty", 1.1),
    ("llamacpp", "rep_pen_range", 320, "repeat_last_n", 320),
    ("llamacpp", "dynatemp_range", 0.5, "dynatemp_range", 0.5),
    ("llamacpp", "dynatemp_exponent", 1.5, "dynatemp_exponent", 1.5),
    ("llamacpp", "top_a", 0.2, None, None),
    ("llamacpp", "smoothing_factor", 0.3, None, None),
    ("vllm", "top_k", 40, "top_k", 40),
    ("vllm", "top_k", 0, "top_k", -1),
    ("vllm", "min_p", 0.05, "min_p", 0.05),
    ("vllm", "rep_pen", 1.1, "repetition_penalty", 1.1),
    ("vllm", "typical", 0.9, None, None),
    ("vllm", "tfs", 0.95, None, None),
    ("vllm", "rep_pen_range", 320, None, None),
    ("tabbyapi", "top_k", 40, "top_k", 40),
    ("tabbyapi", "top_a", 0.2, "top_a", 0.2),
    ("tabbyapi", "typical", 0.9, "typical", 0.9),
    ("tabbyapi", "tfs", 0.95, "tfs", 0.95),
    ("tabbyapi", "rep_pen", 1.1, "repetition_penalty", 1.1),
    ("tabbyapi", "rep_pen_range", 320, "penalty_range", 320),
    ("tabbyapi", "smoothing_factor", 0.3, "smoothing_factor", 0.3),
    ("textgen", "typical", 0.9, "typical_p", 0.9),
    ("textgen", "tfs", 0.95, "tfs", 0.95),
    ("textgen", "rep_pen", 1.1, "repetition_penalty", 1.1),
    ("textgen", "rep_pen_range", 320, "repetition_penalty_range", 320),
    ("ollama", "top_k", 40, None, None),
    ("ollama", "rep_pen", 1.1, None, None),
    ("openai", "min_p", 0.05, None, None),
    *[
        (dialect, name, value, None, None)
        for dialect in ("llamacpp", "vllm", "tabbyapi", "textgen", "ollama", "openai")
        for name, value in (
            ("rep_pen_slope", 0.7),
            ("sampler_order", [6, 0, 1, 3, 4, 2, 5]),
            ("singleline", True),
            ("use_default_badwordsids", True),
        )
    ],
]


@pytest.mark.parametrize(("dialect", "name", "value", "field", "sent"), TRANSLATIONS)
def test_translation_field_by_field(dialect, name, value, field, sent):
    body, dropped = translate({"prompt": "p", name: value}, DIALECTS[dialect])
    if field is None:
        assert body == {"prompt": "p"}
        assert dropped == [name]
    else:
        assert body == {"prompt": "p", field: sent}
        assert dropped == []


def test_job_shape_and_neutral_values_are_not_reported_as_dropped():
    payload = {**JOB, "tfs": 1.0, "top_a": 0.0, "rep_pen": 1.0, "stop_sequence": [], "quiet": 1}
    body, dropped = translate(payload, DIALECTS["openai"])
    assert body == {"prompt": JOB["prompt"], "max_tokens": 8}
    assert dropped == []


def test_each_dropped_parameter_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    with FakeOpenAIServer("ollama") as server:
        client = detect(server.url).backend
        client.model_info()
        for _ in range(3):
            client.generate({**JOB, "top_k": 40, "rep_pen": 1.1})
        client.generate({**JOB, "top_k": 40, "typical": 0.5})
        assert server.refused == []  # nothing the server does not know was sent
    dropped = [message for message in caplog.messages if "no equivalent" in message]
    assert dropped == [
        "Ollama has no equivalent for rep_pen, top_k; dropped from jobs (said once)",
        "Ollama has no equivalent for typical; dropped from jobs (said once)",
    ]


def test_the_lite_default_payload_is_accepted_by_every_openai_double():
    # What KoboldAI Lite sends through the AI Horde, as a job's payload reaches the bridge.
    lite = {
        **JOB,
        "rep_pen": 1.07,
        "rep_pen_range": 360,
        "rep_pen_slope": 0.7,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
        "temperature": 0.7,
        "tfs": 1,
        "top_a": 0,
        "top_k": 100,
        "top_p": 0.92,
        "typical": 1,
        "min_p": 0,
        "stop_sequence": ["\nYou:"],
        "singleline": False,
        "use_default_badwordsids": False,
    }
    for kind in ("llamacpp", "ollama", "vllm", "tabbyapi", "textgen", "openai"):
        with FakeOpenAIServer(kind) as server:
            client = detect(server.url).backend
            client.model_info()
            assert client.generate(lite).text == fake_text(JOB["prompt"], 8), kind
            assert server.refused == [], kind


def test_llamacpp_reports_its_slots():
    with FakeOpenAIServer("llamacpp", slots=4) as server:
        client = detect(server.url).backend
        client.model_info()
        assert client.parallel == 4


@pytest.mark.parametrize(
    ("slots", "threads", "hint"),
    [
        (4, 1, "the backend has 4 slots; --threads 4 would use them all"),
        (2, 3, "the backend has 2 slots; threads beyond that wait for a free one"),
        (2, 2, None),
        (None, 3, None),
    ],
)
def test_the_threads_hint(caplog, slots, threads, hint):
    from bridge.__main__ import _hint_threads

    caplog.set_level(logging.INFO, logger="bridge")
    _hint_threads(slots, threads)
    assert caplog.messages == ([hint] if hint else [])


def test_llamacpp_is_busy_while_no_slot_is_free():
    with FakeOpenAIServer("llamacpp", slots=2) as server:
        client = detect(server.url).backend
        assert client.busy(0) is None
        server.owner_slots = 1
        assert client.busy(0) is None  # one slot still free
        server.owner_slots = 2
        assert client.busy(0) == "no free slot in the llama.cpp server (2 of 2 busy)"


def test_llamacpp_without_the_slots_endpoint_is_never_busy(caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    with FakeOpenAIServer("llamacpp") as server:
        client = detect(server.url).backend
        server._llamacpp = lambda method, path, request: (  # type: ignore[method-assign]
            (501, {"error": {"message": "This server does not support slots endpoint."}})
            if path == "/slots"
            else FakeOpenAIServer._llamacpp(server, method, path, request)
        )
        assert client.busy(0) is None
        assert client.busy(0) is None
        assert server.slot_checks == 0
    assert sum("start it with --slots" in message for message in caplog.messages) == 1


def test_koboldcpp_is_busy_while_it_generates_for_its_owner():
    with FakeKoboldCpp() as kobold:
        client = detect(kobold.url).backend
        assert client.busy(0) is None
        kobold.owner_busy = True
        assert client.busy(0) == "KoboldCpp is generating for someone else"
        assert client.busy(1) is None  # our own job keeps it busy: not the owner's use
        kobold.owner_busy, kobold.queue = False, 2
        assert client.busy(1) == "2 requests waiting in KoboldCpp"
