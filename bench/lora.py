"""LoRA against full fine-tuning: training tokens/s and peak memory of the same model and batch.

    .venv/bin/python bench/lora.py [--preset qwen0.5b|smoke] [--batch 1] [--seq 256] [--reps 3]
        [--rank 16] [--targets qkv,proj,mlp] [--dtype auto|bf16|fp32]

`qwen0.5b` is Qwen2.5-Coder-0.5B's shape (vocab 151936, width 896, 24 layers, 14 heads over
2 key/value heads, MLP 4864, q/k/v biases, tied head), with random weights: speed and
memory do not depend on the values. `smoke` is a small shape that runs in seconds.

Each mode runs in a subprocess of its own, so that its peak resident memory (VmHWM) is
its alone: building the model, then `--reps` timed steps (forward, backward, optimizer)
after one untimed. Full fine-tuning steps every weight with AdamW (gradients and two
moments per weight); LoRA steps rank-`--rank` adapters with AdamW over the frozen base,
held in bf16 when the step computes in bf16 (train/lora.py), as `codelm train --lora` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, summary, timed  # noqa: E402

from codelm.memory import keep_freed_memory  # noqa: E402
from codelm.model import ModelConfig, Transformer  # noqa: E402
from codelm.model.lora import add_adapters  # noqa: E402
from codelm.train.config import TrainConfig  # noqa: E402
from codelm.train.loop import autocast_dtype, make_optimizer, train_step  # noqa: E402
from codelm.train.lora import freeze_base  # noqa: E402

SHAPES = {
    "qwen0.5b": dict(vocab_size=151936, n_embd=896, n_layer=24, n_head=14, n_kv_head=2,
                     mlp_hidden_size=4864, qkv_bias=True, rope_layout="half", rope_theta=1e6),
    "smoke": dict(vocab_size=4096, n_embd=128, n_layer=2, n_head=4, n_kv_head=2, mlp_hidden_size=256,
                  qkv_bias=True),
}  # fmt: skip


def _peak_mib(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def child(a: argparse.Namespace) -> dict:
    """One mode's steps in this process: tokens/s of each, resident memory, trained numbers."""
    keep_freed_memory()  # as `codelm train` does
    amp = autocast_dtype(torch.device("cpu"), a.dtype)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SHAPES[a.preset], block_size=a.seq))
    lora = a.mode == "lora"
    adapters = dict(lora_rank=a.rank, lora_targets=a.targets) if lora else {}
    cfg = TrainConfig(lr=1e-4, optimizer="adamw", **adapters)
    if cfg.lora is not None:
        add_adapters(model, cfg.lora)
        freeze_base(model, bf16=amp == torch.bfloat16)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    built = _peak_mib("VmRSS")
    x = torch.randint(0, model.cfg.vocab_size, (a.batch, a.seq))
    batch = [(x, torch.roll(x, -1, 1))]
    secs = timed(lambda: train_step(model, opt, batch, 1.0, amp), a.reps)
    return {
        "tokens_per_s": [a.batch * a.seq / s for s in secs],
        "built_mib": built,
        "peak_mib": _peak_mib(),
        "params": model.num_params(),
        "trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dtype": "bf16" if amp else "fp32",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen0.5b", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="qkv,proj,mlp")
    # auto: bf16 where this CPU computes it natively, else fp32, as `codelm train` decides.
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # the subprocess's
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(child(a)))
        return
    results = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.splitlines()[-1])
    print(machine())
    r = results["full"]
    print(f"{a.preset}: {r['params'] / 1e6:.1f}M params, batch {a.batch}x{a.seq}, {r['dtype']}, "
          f"{a.reps} timed steps per mode (after 1 untimed), each mode in its own process")  # fmt: skip
    for mode, r in results.items():
        what = f"LoRA r={a.rank} {a.targets}" if mode == "lora" else "full fine-tuning (AdamW)"
        print(f"  {what:34s} trained {r['trained'] / 1e6:8.2f}M  tokens/s {summary(r['tokens_per_s'])}")
        print(f"  {'':34s} RSS after build {r['built_mib']:,.0f} MiB  peak (VmHWM) {r['peak_mib']:,.0f} MiB")
    full, lora = (statistics.median(results[m]["tokens_per_s"]) for m in ("full", "lora"))
    print(f"  LoRA / full: tokens/s {lora / full:.2f}x, "
          f"peak memory {results['lora']['peak_mib'] / results['full']['peak_mib']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
