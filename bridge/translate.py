"""The cluster's KoboldAI-style job payload as an OpenAI-compatible `/v1/completions` body.

Each OpenAI-compatible server knows the standard fields (`max_tokens`, `temperature`, `top_p`,
`stop`) and its own extra samplers under its own names. `DIALECTS` says, per server, which
KoboldAI parameter becomes which field; a parameter a server has no field for is dropped
(never sent: an unknown field makes some servers refuse the whole request) and reported, so
the caller can log it once. The prompt is sent as raw text: the cluster's clients already
applied any chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Convert = Callable[[Any], Any]

# What every OpenAI-compatible server takes.
STANDARD: dict[str, str] = {
    "max_length": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop_sequence": "stop",
    "sampler_seed": "seed",  # KoboldCpp's seed; OpenAI's `seed` (the cluster's canaries)
}

# Job fields that are not sampler settings: the job's shape, handled by the bridge itself
# (one generation per job; the prompt already fits the context the server advertised).
NOT_SAMPLERS = frozenset({"prompt", "n", "max_context_length", "quiet"})

# Values with which a KoboldAI sampler does nothing: dropping such a parameter changes no
# output, so it is not worth a log line.
NEUTRAL: dict[str, Any] = {
    "top_k": 0,
    "top_a": 0.0,
    "typical": 1.0,
    "tfs": 1.0,
    "min_p": 0.0,
    "rep_pen": 1.0,
    "rep_pen_range": 0,
    "rep_pen_slope": 1.0,
    "smoothing_factor": 0.0,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "use_default_badwordsids": False,
    "singleline": False,
    "frmtadsnsp": False,
    "frmtrmblln": False,
    "frmtrmspch": False,
    "frmttriminc": False,
}


@dataclass(frozen=True)
class Dialect:
    """One server's names for the KoboldAI parameters beyond the standard ones."""

    extras: dict[str, str] = field(default_factory=dict)
    convert: dict[str, Convert] = field(default_factory=dict)  # KoboldAI param -> new value
    # Whether a stream may ask for its token counts (`stream_options.include_usage`, in the
    # last chunk); servers that do not know the field may refuse the request.
    stream_usage: bool = False


def _vllm_top_k(value: Any) -> Any:
    # KoboldAI's "off" is 0; vLLM's is -1 (older vLLM versions refuse 0).
    return -1 if value == 0 else value


DIALECTS: dict[str, Dialect] = {
    # llama.cpp server: /completion's samplers are accepted on /v1/completions too.
    "llamacpp": Dialect(
        {
            "top_k": "top_k",
            "min_p": "min_p",
            "typical": "typical_p",
            "tfs": "tfs_z",
            "rep_pen": "repeat_penalty",
            "rep_pen_range": "repeat_last_n",
            "dynatemp_range": "dynatemp_range",
            "dynatemp_exponent": "dynatemp_exponent",
        }
    ),
    # vLLM's extra sampling parameters of its OpenAI server.
    "vllm": Dialect(
        {"top_k": "top_k", "min_p": "min_p", "rep_pen": "repetition_penalty"},
        {"top_k": _vllm_top_k},
        stream_usage=True,
    ),
    # TabbyAPI (exllamav2) names.
    "tabbyapi": Dialect(
        {
            "top_k": "top_k",
            "top_a": "top_a",
            "min_p": "min_p",
            "typical": "typical",
            "tfs": "tfs",
            "rep_pen": "repetition_penalty",
            "rep_pen_range": "penalty_range",
            "smoothing_factor": "smoothing_factor",
        }
    ),
    # text-generation-webui's OpenAI extension takes its own generation parameters.
    "textgen": Dialect(
        {
            "top_k": "top_k",
            "top_a": "top_a",
            "min_p": "min_p",
            "typical": "typical_p",
            "tfs": "tfs",
            "rep_pen": "repetition_penalty",
            "rep_pen_range": "repetition_penalty_range",
            "smoothing_factor": "smoothing_factor",
        }
    ),
    # Ollama's OpenAI compatibility takes the standard fields only (plus seed and the
    # additive frequency/presence penalties, which KoboldAI's multiplicative rep_pen is not).
    "ollama": Dialect(stream_usage=True),
    # Any other OpenAI-compatible server: the standard fields only.
    "openai": Dialect(),
}


def translate(payload: dict[str, Any], dialect: Dialect) -> tuple[dict[str, Any], list[str]]:
    """The completion body's fields for `payload` (without `model`), and the names of the
    parameters dropped because this server cannot honour them (neutral values excluded)."""
    body: dict[str, Any] = {"prompt": payload.get("prompt", "")}
    dropped = []
    for name, value in payload.items():
        if name in NOT_SAMPLERS:
            continue
        target = STANDARD.get(name) or dialect.extras.get(name)
        if target is None:
            if name not in NEUTRAL or NEUTRAL[name] != value:
                dropped.append(name)
            continue
        convert = dialect.convert.get(name)
        body[target] = convert(value) if convert else value
    if not body.get("stop"):
        body.pop("stop", None)  # an empty list is refused by some servers
    return body, sorted(dropped)
