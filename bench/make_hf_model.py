"""Write a random Hugging Face model folder, to try `codelm import` without a download.

    .venv/bin/python bench/make_hf_model.py OUT [--family qwen2|llama|starcoder2]
        [--layers 4] [--width 256] [--heads 4] [--kv-heads 2] [--tokenizer TOKENIZER.json]

The folder is what `save_pretrained` writes (config.json, model.safetensors) plus a
tokenizer.json: the one given, or a codelm tokenizer of 4,096 tokens trained on 200
modules of the standard library (its `<|endoftext|>` and `<|fim_prefix|>`... are
Qwen2.5-Coder's spellings). The weights are transformers' random initialisation, so the
model knows nothing until it is fine-tuned. transformers is a test dependency of codelm.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

import torch
import transformers

CLASSES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "starcoder2": "Starcoder2ForCausalLM"}


def tokenizer_json(out: Path, given: str | None) -> tuple[int, int]:
    """Write OUT/tokenizer.json; returns its vocabulary size and end-of-text id."""
    from codelm.tokenizer import CodeTokenizer, train_tokenizer

    if given:
        tok = CodeTokenizer.load(given)
    else:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
        tok = train_tokenizer((f.read_text(errors="replace") for f in files), 4096)
    tok.save(out / "tokenizer.json")
    return tok.vocab_size, tok.eot_id


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--family", default="qwen2", choices=list(CLASSES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--tokenizer", help="a tokenizer.json to use instead of training one")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab, eot = tokenizer_json(out, a.tokenizer)
    cls = CLASSES[a.family]
    config = getattr(transformers, cls.replace("ForCausalLM", "Config"))(
        vocab_size=vocab, hidden_size=a.width, intermediate_size=a.width * 8 // 3 // 64 * 64,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None, eos_token_id=eot,
    )  # fmt: skip
    torch.manual_seed(0)
    getattr(transformers, cls)(config).save_pretrained(out, safe_serialization=True)
    print(f"wrote a random {cls} ({a.layers}L/{a.width}, vocab {vocab}) to {out}")


if __name__ == "__main__":
    main()
