"""Making a job fit the backend, and its text end where the job said to stop.

The cluster fits `max_length` and `max_context_length` to what this server advertised, but it
cannot count the prompt in the backend's tokens. A prompt longer than the room left for it
makes llama.cpp's server refuse the request ("exceeds the available context size"), which
would fault the job on every server. So the bridge counts the prompt with the backend's own
tokenizer and, when it does not fit in `min(job's max_context_length, backend's context) -
max_length` tokens, cuts it from the front (the end of a prompt is what the text continues).
A backend without a tokenizer endpoint (KoboldAI United, Ollama, text-generation-webui) cuts
the prompt itself, with its real tokenizer, to the context it is given (KoboldAI backends get
the fitted `max_context_length`): the bridge does not guess.

Stop sequences: llama.cpp and vLLM remove the stop string from the text (OpenAI's rule),
KoboldCpp keeps it and the rest of the token it ended in. The cluster's rule is KoboldAI's:
the text up to and including the first stop sequence, nothing after it (`cut_at_stop`); the
OpenAI face removes the stop itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Counts a text's tokens as the backend would, or None when it cannot say.
Counter = Callable[[str], int | None]


@dataclass(frozen=True)
class PromptFit:
    """The prompt as sent: its tokens (the backend's count) and the tokens cut from its
    front (0 when it fitted)."""

    tokens: int
    trimmed: int


def fit_payload(
    payload: dict[str, Any], context: int | None, count: Counter
) -> tuple[dict[str, Any], PromptFit | None]:
    """`payload` with its prompt cut to fit, its max_context_length capped at the backend's
    `context`, and what was sent (None: not counted). A prompt that fits is sent unchanged."""
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        return payload, None
    limits = [whole for whole in (_whole(payload.get("max_context_length")), context) if whole]
    window = min(limits) if limits else None
    payload = {**payload, "max_context_length": window} if window else dict(payload)
    counted = count(prompt)
    if counted is None:  # no tokenizer: the backend fits the prompt itself
        return payload, None
    if window is None:
        return payload, PromptFit(counted, 0)
    # Counted as the backend counts a prompt it is sent (with its beginning-of-sequence
    # token: llama.cpp's add_special, vLLM's and TabbyAPI's defaults), so nothing more is kept.
    budget = max(window - (_whole(payload.get("max_length")) or 0), 1)
    if counted <= budget:
        return payload, PromptFit(counted, 0)
    kept, kept_tokens = _keep_end(prompt, budget, count)
    return {**payload, "prompt": kept}, PromptFit(kept_tokens, max(counted - kept_tokens, 1))


def _keep_end(text: str, budget: int, count: Counter) -> tuple[str, int]:
    """The longest end of `text` that fits in `budget` tokens, and its count: a binary
    search on where to cut, counting each candidate (a dozen calls for a long prompt, each a
    few milliseconds); tokenizers are nearly but not exactly monotonic, so the result is
    checked and cut further if needed."""
    low, high = 0, len(text)  # cutting `high` characters surely fits (nothing is left)
    while high - low > 1:
        middle = (low + high) // 2
        size = count(text[middle:])
        if size is not None and size <= budget:
            high = middle
        else:
            low = middle
    start, step = high, 1
    while start < len(text):
        size = count(text[start:])
        if size is not None and size <= budget:
            return text[start:], size
        start, step = start + step, step * 2
    return "", 0


def cut_at_stop(text: str, stops: Sequence[str] | None, stopped_on: str | None = None) -> str:
    """The text up to and including the earliest stop sequence in it, nothing after.

    `stopped_on` is the stop string a backend said it stopped on and removed (llama.cpp's
    `stopping_word`, vLLM's `stop_reason`): put back, so every backend gives the same text."""
    valid = [stop for stop in stops or () if isinstance(stop, str) and stop]
    if stopped_on and stopped_on in valid and not any(stop in text for stop in valid):
        text += stopped_on
    ends = [(text.find(stop), stop) for stop in valid if stop in text]
    if not ends:
        return text
    # The first to be complete is where the backend would have stopped.
    return text[: min(at + len(stop) for at, stop in ends)]


def _whole(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def estimate_tokens(text: str, max_length: object = None) -> int:
    """The cluster's count (DESIGN §4.6: a quarter of the characters, rounded up, at most the
    job's `max_length`), used when the cluster did not tell us its own."""
    tokens = math.ceil(len(text) / 4) if text else 0
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length > 0:
        return min(tokens, max_length)
    return tokens
