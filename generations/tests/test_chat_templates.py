"""The model catalogue: families, templates, and the administrators' overrides."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from generations.chat import choose_template, family, render, template_for, templates
from generations.models import ChatTemplateOverride

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a kobold."},
]


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        ("koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M", "meta-llama-3-8b-instruct"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama-3-8b-instruct"),
        ("aphrodite/Mistral-7B-Instruct-v0.3-GPTQ", "mistral-7b-instruct-v0.3"),
        ("koboldcpp/gemma-2-9b-it.Q5_K_S.gguf", "gemma-2-9b-it"),
        ("Qwen2.5-14B-Instruct-exl2-4.65bpw", "qwen2.5-14b-instruct"),
        ("KoboldAI/LLaMA2-13B-Tiefighter", "llama2-13b-tiefighter"),
        ("tiny-llm", "tiny-llm"),
    ],
)
def test_a_served_name_reduces_to_its_family(served, expected):
    assert family(served) == expected


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "template"),
    [
        ("koboldcpp/Meta-Llama-3.1-8B-Instruct-Q4_K_M", "llama3"),
        ("NousResearch/Hermes-3-Llama-3.1-8B", "chatml"),
        ("Qwen/Qwen2.5-7B-Instruct", "chatml"),
        ("aphrodite/Mixtral-8x7B-Instruct-v0.1", "mistral"),
        ("koboldcpp/gemma-2-9b-it-Q6_K", "gemma"),
        ("KoboldAI/LLaMA2-13B-Tiefighter", "alpaca"),
    ],
)
def test_the_catalogue_knows_the_common_families(model, template):
    assert template_for(model).key == template


@pytest.mark.django_db
def test_an_unknown_model_gets_chatml_and_a_warning():
    choice = choose_template("KoboldAI/FakeModel-1B", [])
    assert choice.template.key == "chatml"
    assert "FakeModel-1B" in choice.warning and "ChatML" in choice.warning


@pytest.mark.django_db
def test_any_model_uses_the_template_its_servers_agree_on():
    agreed = choose_template("", ["koboldcpp/Llama-3-8B-Q4_K_M", "Meta-Llama-3-70B-Instruct"])
    assert (agreed.template.key, agreed.warning) == ("llama3", "")
    mixed = choose_template("", ["koboldcpp/Llama-3-8B", "gemma-2-9b-it"])
    assert mixed.template.key == "chatml" and "Name a model" in mixed.warning


@pytest.mark.django_db
def test_an_override_is_tried_before_the_catalogue():
    assert template_for("koboldcpp/Cydonia-22B-v1-Q4_K_M") is None
    ChatTemplateOverride.objects.create(pattern="cydonia", template="mistral")
    ChatTemplateOverride.objects.create(pattern="llama-?3", template="alpaca", position=1)
    assert template_for("koboldcpp/Cydonia-22B-v1-Q4_K_M").key == "mistral"
    assert template_for("Meta-Llama-3-8B").key == "alpaca"


def test_an_override_must_compile_and_name_a_known_template():
    with pytest.raises(ValidationError) as raised:
        ChatTemplateOverride(pattern="llama(", template="vicuna").clean()
    assert set(raised.value.message_dict) == {"pattern", "template"}


def test_chatml_marks_every_turn_and_opens_the_answer():
    assert render(CHAT, templates()["chatml"]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi?<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nName a kobold.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3_uses_its_headers():
    prompt = render(CHAT, templates()["llama3"])
    assert prompt.startswith("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_templates_without_a_system_turn_put_it_before_the_first_user_message():
    assert render(CHAT, templates()["mistral"]) == (
        "[INST] Be brief.\n\nHi? [/INST]Hello.</s>[INST] Name a kobold. [/INST]"
    )
    gemma = render(CHAT[:2], templates()["gemma"])
    assert gemma == ("<start_of_turn>user\nBe brief.\n\nHi?<end_of_turn>\n<start_of_turn>model\n")


def test_alpaca_uses_instruction_and_response():
    assert render(CHAT[:2], templates()["alpaca"]) == (
        "Be brief.\n\n### Instruction:\nHi?\n\n### Response:\n"
    )


def test_a_last_assistant_message_marked_partial_is_continued():
    messages = [*CHAT[:2], {"role": "assistant", "content": "Hello, I am"}]
    assert render(messages, templates()["chatml"], continue_last=True).endswith(
        "<|im_start|>assistant\nHello, I am"
    )
    assert render(messages, templates()["mistral"], continue_last=True).endswith(
        "[INST] Be brief.\n\nHi? [/INST]Hello, I am"
    )
