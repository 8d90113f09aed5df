"""Model names chosen to cost: `family`, the catalogue and the OpenAI `model` stay linear.

A model name reaches `family` and the catalogue's patterns from anyone's request. These
names cost seconds to minutes of one core with the patterns' former handling (a suffix
stripped per pass over the whole name, a `$`-anchored pattern tried from every position,
`yi-.*chat`); the bound below is a hundred times what they cost now.
"""

from __future__ import annotations

import time

import pytest

from generations.chat import MODEL_NAME_MAX, family, template_for
from generations.models import Prompt

CPU_BOUND = 0.2  # seconds of this process's CPU for one call; it takes well under 1 ms

HOSTILE_NAMES = {
    "many quantisation suffixes": "a" + "-q4" * 20_000,
    "many file types": "a" + ".gguf" * 12_000,
    "dots before bpw": "a" + ".1" * 30_000,
    "nested quant tags": "a" + "_q1" * 20_000,
    "yi without chat": "yi-" * 20_000,
}


def cpu_of(call, *args):
    before = time.process_time()
    result = call(*args)
    return result, time.process_time() - before


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_family_of_a_hostile_name_is_cheap(name):
    reduced, spent = cpu_of(family, name)
    assert reduced and spent < CPU_BOUND, spent


@pytest.mark.django_db
@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_the_template_of_a_hostile_name_is_cheap(name):
    for candidate in (name, name[:MODEL_NAME_MAX]):
        _, spent = cpu_of(template_for, candidate)
        assert spent < CPU_BOUND, spent


def test_family_still_strips_a_few_suffixes():
    assert family("koboldcpp/Qwen2.5-7B-Instruct-imat-Q4_K_M.gguf") == "qwen2.5-7b-instruct"
    assert family("x" * 300 + "-Q4_K_M.gguf") == "x" * 300


@pytest.mark.django_db
def test_yi_chat_models_keep_chatml():
    assert template_for("01-ai/Yi-1.5-34B-Chat-Q4_K_M").key == "chatml"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_an_openai_model_name_longer_than_any_stored_is_400(api, path, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "FRONTEND_WAIT_SECONDS": 0.5}
    body = {"model": "m" * (MODEL_NAME_MAX + 1), "prompt": "Hi"}
    if path.endswith("chat/completions"):
        body = {"model": body["model"], "messages": [{"role": "user", "content": "Hi"}]}
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == "model" and str(MODEL_NAME_MAX) in error["message"]
    assert not Prompt.objects.exists()
