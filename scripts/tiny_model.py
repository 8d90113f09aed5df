"""Write a tiny LLaMA-architecture GGUF model with random weights, for the end-to-end tests
against real backends (llama.cpp's llama-server, KoboldCpp).

Its text is gibberish, but everything a backend does around the weights is real: the
tokenizer (LLaMA's SentencePiece vocabulary, copied from llama.cpp's vocabulary-only file
`models/ggml-vocab-llama-spm.gguf`), sampling, streaming, token counts and context limits.
Two layers of width 64 make it about 9 MB, and fast: several hundred tokens per second on
one core. The weights come from a fixed seed, so the same file comes out every time.

Usage: python scripts/tiny_model.py VOCAB_GGUF OUTPUT_GGUF
(`koboldcluster.real_backends.tiny_model` calls it and caches the result.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

# The model's shape: as small as llama.cpp accepts, while staying a LLaMA.
EMBEDDING = 64
LAYERS = 2
HEADS = 4
FEED_FORWARD = 128
# What the model says it was trained for; servers are started with a smaller --ctx-size.
TRAINED_CONTEXT = 4096
SEED = 22
NAME = "tiny-random-llama"


def copy_tokenizer(vocab: Path, writer: gguf.GGUFWriter) -> int:
    """Copy every `tokenizer.*` key of a vocabulary-only GGUF; return the vocabulary's size."""
    reader = gguf.GGUFReader(vocab)
    size = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(name, value, main, sub)
        if name == "tokenizer.ggml.tokens":
            size = len(value)
    if not size:
        raise SystemExit(f"{vocab} holds no tokenizer.ggml.tokens")
    return size


def write(vocab: Path, output: Path) -> None:
    rng = np.random.default_rng(SEED)

    def weights(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    partial = output.with_name(output.name + ".partial")
    writer = gguf.GGUFWriter(partial, "llama")
    writer.add_name(NAME)
    writer.add_context_length(TRAINED_CONTEXT)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBEDDING // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = copy_tokenizer(vocab, writer)

    # The embedding is the bulk of the file; F16 halves it (llama.cpp reads it either way).
    writer.add_tensor("token_embd.weight", weights(tokens, EMBEDDING, scale=1.0).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
    writer.add_tensor("output.weight", weights(tokens, EMBEDDING).astype(np.float16))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weights(EMBEDDING, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(EMBEDDING, FEED_FORWARD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(output)  # never a half-written model in the cache


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    write(Path(sys.argv[1]), Path(sys.argv[2]))
