"""The kinds of OpenAI-compatible servers the bridge knows (`bridge/openai_backend.py` drives
them, `bridge/detect.py` tells them apart): what each is called and whether it has a
tokenizer endpoint and trustworthy `usage` counts."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Flavour:
    """One kind of OpenAI-compatible server."""

    kind: str  # the key of bridge.translate.DIALECTS
    label: str  # for log lines: "llama.cpp server"
    trusts_usage: bool = True  # KoboldCpp's OpenAI endpoints report a fixed 100 tokens
    # POST path, body and answer key of its tokenizer endpoint, when it has one.
    tokenizer: tuple[str, str, str] | None = None


# path, the body's field for the text, the answer's field: a list of tokens or a count.
TOKENIZERS = {
    # llama.cpp: {"content"} -> {"tokens": [...]}; add_special counts the BOS it will add.
    "llamacpp": ("/tokenize", "content", "tokens"),
    # vLLM: {"model", "prompt"} -> {"count", "tokens", ...}.
    "vllm": ("/tokenize", "prompt", "count"),
    # TabbyAPI: {"text"} -> {"tokens": [...], "length"}.
    "tabbyapi": ("/v1/token/encode", "text", "length"),
}


FLAVOURS = {
    flavour.kind: flavour
    for flavour in (
        Flavour("llamacpp", "llama.cpp server", tokenizer=TOKENIZERS["llamacpp"]),
        Flavour("ollama", "Ollama"),
        Flavour("vllm", "vLLM", tokenizer=TOKENIZERS["vllm"]),
        Flavour("tabbyapi", "TabbyAPI", tokenizer=TOKENIZERS["tabbyapi"]),
        Flavour("textgen", "text-generation-webui"),
        Flavour("openai", "OpenAI-compatible server"),
        Flavour("koboldcpp", "KoboldCpp (OpenAI API)", trusts_usage=False),
    )
}


def gguf_name(model_id: str) -> str | None:
    """`koboldcpp/<file name without .gguf>` for a GGUF file path, as KoboldCpp names the
    same file and as the AI Horde's model reference names GGUF models; None otherwise."""
    if not model_id.lower().endswith(".gguf"):
        return None
    stem = re.split(r"[\\/]", model_id)[-1][: -len(".gguf")]
    return f"koboldcpp/{stem}"
