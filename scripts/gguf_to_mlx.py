#!/usr/bin/env python3
"""Turns a Llama- or Qwen2-architecture GGUF (the bundled SmolLM2-135M and Qwen2.5-Coder-0.5B) into
a model directory that mlx_lm loads (`mlx_lm.server --model DIR`): config.json, model.safetensors,
tokenizer.json, tokenizer_config.json. Runs with Python MLX.

Llama with Q4_0/Q4_1/Q8_0 weights: `mx.load` reads the GGUF natively and the weights stay quantized
as MLX reads them (affine, group 32). llama.cpp stores Llama's q/k projections permuted for
interleaved rotary embeddings, so the config sets `rope_traditional = true` instead of permuting
them back. Qwen2 (K-quants, which MLX does not read): llama.cpp's own `gguf` package reads and
dequantizes every tensor, written as float16; Qwen2 is never permuted. The tokenizer (GPT-2
byte-level BPE, with the pre-tokenizer the GGUF names) is rebuilt from the vocabulary and merges.

Usage: gguf_to_mlx.py MODEL.gguf OUT_DIR
"""

import json
import os
import sys

import mlx.core as mx

NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def scalar(meta, key, default=None):
    value = meta.get(key, default)
    if hasattr(value, "item"):
        return value.item()
    return value


def hf_name(name: str) -> str:
    stem, _, suffix = name.rpartition(".")
    if stem == "token_embd":
        return f"model.embed_tokens.{suffix}"
    if stem == "output_norm":
        return f"model.norm.{suffix}"
    if stem == "output":
        return f"lm_head.{suffix}"
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in NAMES:
        return f"model.layers.{parts[1]}.{NAMES[parts[2]]}.{suffix}"
    raise SystemExit(f"unexpected tensor {name}")


# The pre-tokenizer regex per `tokenizer.ggml.pre` (Hugging Face's tokenizer.json of each model).
QWEN2_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def read_with_gguf_py(source):
    """Every tensor dequantized to float16 under its GGUF name, and the metadata as Python values."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(source)
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    # As mx.load gives it: the token types as an array.
    meta["tokenizer.ggml.token_type"] = np.array(meta["tokenizer.ggml.token_type"])
    weights = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type)
        # GGUF lists dimensions fastest first; numpy's shape is the reverse.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        weights[t.name] = mx.array(np.asarray(values, dtype=np.float32).reshape(shape)).astype(mx.float16)
    return weights, meta


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, out = sys.argv[1], sys.argv[2]
    try:
        weights, meta = mx.load(source, return_metadata=True)
    except Exception:  # K-quants: MLX's GGUF reader does not take them
        weights, meta = None, None
    if weights is None or meta.get("general.architecture") == "qwen2":
        weights, meta = read_with_gguf_py(source)
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise SystemExit(f"{source}: architecture {arch!r}, only llama and qwen2 are supported")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{source}: tokenizer {meta.get('tokenizer.ggml.model')!r}, only gpt2 (byte-level BPE) is supported")

    converted = {hf_name(k): v for k, v in weights.items()}
    quantized = "model.layers.0.self_attn.q_proj.scales" in converted
    hidden = scalar(meta, f"{arch}.embedding_length")
    if quantized:
        # q_proj reads `hidden` values per row: packed into uint32 words, one scale per group.
        w = converted["model.layers.0.self_attn.q_proj.weight"]
        s = converted["model.layers.0.self_attn.q_proj.scales"]
        bits = w.shape[-1] * 32 // hidden
        group_size = hidden // s.shape[-1]
    os.makedirs(out, exist_ok=True)
    mx.save_safetensors(os.path.join(out, "model.safetensors"), converted, metadata={"format": "mlx"})

    heads = scalar(meta, f"{arch}.attention.head_count")
    config = {
        "model_type": arch,
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": scalar(meta, f"{arch}.feed_forward_length"),
        "num_hidden_layers": scalar(meta, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": scalar(meta, f"{arch}.attention.head_count_kv", heads),
        "head_dim": scalar(meta, f"{arch}.rope.dimension_count", hidden // heads),
        "rms_norm_eps": scalar(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": scalar(meta, f"{arch}.rope.freq_base", 10000.0),
        # llama.cpp permutes Llama's q/k for interleaved rotary embeddings, never Qwen2's.
        "rope_traditional": arch == "llama",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "max_position_embeddings": scalar(meta, f"{arch}.context_length", 4096),
        "tie_word_embeddings": "lm_head.weight" not in converted,
        "bos_token_id": scalar(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": scalar(meta, "tokenizer.ggml.eos_token_id"),
    }
    if quantized:
        config["quantization"] = {"group_size": group_size, "bits": bits}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"].tolist()
    merges = meta["tokenizer.ggml.merges"]
    # Token type 3 = control (special) tokens, 4 = user-defined ones (Qwen's <tool_call>).
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": kind == 3}
        for i, (t, kind) in enumerate(zip(tokens, types))
        if kind in (3, 4)
    ]
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre == "qwen2":
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        }
        normalizer = {"type": "NFC"}
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    else:  # SmolLM2's ("smollm"): digits split, then GPT-2's byte-level regex
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        }
        normalizer = None
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    eos = tokens[config["eos_token_id"]]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[config["bos_token_id"]] if config["bos_token_id"] is not None else None,
        "eos_token": eos,
        "add_bos_token": bool(scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = meta["tokenizer.chat_template"]
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
    print(f"{source} -> {out} ({len(converted)} tensors, quantization {config.get('quantization')})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
