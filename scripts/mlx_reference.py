#!/usr/bin/env python3
"""Reference figures from Python mlx_lm for kenning's MLX model tests: for a model directory and a
prompt, prints JSON with the prompt's token ids, the last position's logits (top 20, and all of
them), and the greedy continuation. Run with the mlx venv's python (scripts/setup installs it).

Usage: mlx_reference.py MODEL_DIR PROMPT [MAX_TOKENS [ADAPTER_DIR]]
  ADAPTER_DIR: a LoRA adapter (adapters.safetensors + adapter_config.json) loaded by mlx_lm.
"""

import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache


def main() -> int:
    model_dir, prompt = sys.argv[1], sys.argv[2]
    max_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    adapter = sys.argv[4] if len(sys.argv) > 4 else None
    model, tokenizer = load(model_dir, adapter_path=adapter)
    ids = tokenizer.encode(prompt)
    cache = make_prompt_cache(model)
    logits = model(mx.array([ids]), cache=cache)[0, -1].astype(mx.float32)
    first = logits.tolist()
    greedy = []
    for _ in range(max_tokens):
        nxt = int(mx.argmax(logits).item())
        greedy.append(nxt)
        if nxt == tokenizer.eos_token_id:
            break
        logits = model(mx.array([[nxt]]), cache=cache)[0, -1].astype(mx.float32)
    top = sorted(range(len(first)), key=lambda i: -first[i])[:20]
    json.dump({"ids": ids, "top": [[i, first[i]] for i in top], "logits": first, "greedy": greedy}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
