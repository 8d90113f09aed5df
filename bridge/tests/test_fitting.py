"""The prompt is cut from the front to fit the backend's context; the text ends at its stop."""

from __future__ import annotations

import pytest

from bridge.fitting import PromptFit, cut_at_stop, fit_payload


def words(text: str) -> int:
    """A tokenizer for the tests: one token per word, plus a beginning-of-sequence token."""
    return len(text.split()) + 1


PROMPT = " ".join(f"w{i}" for i in range(100))  # 101 tokens by `words`


def test_a_prompt_that_fits_is_sent_as_it_is():
    payload = {"prompt": PROMPT, "max_length": 20, "max_context_length": 200}
    sent, fit = fit_payload(payload, 4096, words)
    assert sent == payload
    assert fit == PromptFit(101, 0)


def test_a_long_prompt_keeps_its_end_within_the_smaller_context():
    payload = {"prompt": PROMPT, "max_length": 20, "max_context_length": 1000, "top_k": 3}
    sent, fit = fit_payload(payload, 80, words)  # the backend's context is the smaller
    budget = 80 - 20
    assert fit.tokens == words(sent["prompt"]) == budget
    assert PROMPT.endswith(sent["prompt"]) and sent["prompt"].endswith("w99")
    assert fit.trimmed == 101 - budget
    # KoboldAI backends get the context that was fitted to; nothing else changes.
    assert sent["max_context_length"] == 80 and sent["top_k"] == 3


def test_without_a_tokenizer_the_backend_fits_the_prompt_itself():
    payload = {"prompt": "x" * 3000, "max_length": 100, "max_context_length": 600}
    sent, fit = fit_payload(payload, 500, lambda text: None)
    assert sent == {**payload, "max_context_length": 500} and fit is None


def test_a_job_without_a_context_is_not_cut():
    sent, fit = fit_payload({"prompt": PROMPT, "max_length": 20}, None, words)
    assert sent["prompt"] == PROMPT and fit == PromptFit(101, 0)


@pytest.mark.parametrize(
    ("text", "stops", "stopped_on", "expected"),
    [
        ("Hello. You: hi", ["You:"], None, "Hello. You:"),  # KoboldCpp's extra: cut
        ("Hello. You:", ["You:"], None, "Hello. You:"),
        ("Hello. ", ["You:"], "You:", "Hello. You:"),  # llama.cpp removed it: put back
        ("Hello. ", ["You:"], None, "Hello. "),  # the end of the text, or EOS
        ("a\nb You: c", ["You:", "\n"], None, "a\n"),  # the first to be complete
        ("xabcd", ["abcd", "bc"], None, "xabc"),
        ("text", [], "You:", "text"),
        ("text", None, None, "text"),
        ("text", ["", "zz"], "", "text"),
    ],
)
def test_the_text_ends_with_the_first_stop_sequence(text, stops, stopped_on, expected):
    assert cut_at_stop(text, stops, stopped_on) == expected
