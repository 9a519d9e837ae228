#!/usr/bin/env python3
"""Turns a Llama-architecture GGUF (Q4_0/Q4_1/Q8_0, e.g. the bundled SmolLM2-135M) into a model
directory that mlx_lm loads (`mlx_lm.server --model DIR`): config.json, model.safetensors,
tokenizer.json, tokenizer_config.json. Runs with Python MLX (`mx.load` reads GGUF natively).

Weights stay quantized as MLX reads them (affine, group 32). llama.cpp stores the q/k projections
permuted for interleaved rotary embeddings, so the config sets `rope_traditional = true` instead of
permuting them back. The tokenizer (GPT-2 byte-level BPE) is rebuilt from the GGUF vocabulary and
merges.

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


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, out = sys.argv[1], sys.argv[2]
    weights, meta = mx.load(source, return_metadata=True)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{source}: architecture {arch!r}, only llama is supported")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{source}: tokenizer {meta.get('tokenizer.ggml.model')!r}, only gpt2 (byte-level BPE) is supported")

    converted = {hf_name(k): v for k, v in weights.items()}
    quantized = "model.layers.0.self_attn.q_proj.scales" in converted
    hidden = scalar(meta, "llama.embedding_length")
    if quantized:
        # q_proj reads `hidden` values per row: packed into uint32 words, one scale per group.
        w = converted["model.layers.0.self_attn.q_proj.weight"]
        s = converted["model.layers.0.self_attn.q_proj.scales"]
        bits = w.shape[-1] * 32 // hidden
        group_size = hidden // s.shape[-1]
    os.makedirs(out, exist_ok=True)
    mx.save_safetensors(os.path.join(out, "model.safetensors"), converted, metadata={"format": "mlx"})

    heads = scalar(meta, "llama.attention.head_count")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": scalar(meta, "llama.feed_forward_length"),
        "num_hidden_layers": scalar(meta, "llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": scalar(meta, "llama.attention.head_count_kv", heads),
        "head_dim": scalar(meta, "llama.rope.dimension_count", hidden // heads),
        "rms_norm_eps": scalar(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": scalar(meta, "llama.rope.freq_base", 10000.0),
        "rope_traditional": True,
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "max_position_embeddings": scalar(meta, "llama.context_length", 4096),
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
    # Token type 3 = control (special) tokens.
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, (t, kind) in enumerate(zip(tokens, types))
        if kind == 3
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
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
