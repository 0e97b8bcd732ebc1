"""Training speed, side by side in one run: codelm's Transformer against HF transformers'
LlamaForCausalLM (the same RoPE/RMSNorm/SwiGLU architecture) at the same sizes, batch and
precision; plus model FLOP utilisation against a matmul peak measured in the same run.

    .venv/bin/python bench/train.py [--preset small] [--vocab 16384] [--batch B] [--seq T] [--reps 5]
        [--dtype auto|bf16|fp32] [--optimizer muon|adamw]

Both models take a full step (forward, backward, optimizer) on the same random batch:
codelm with its default optimizer (Muon), transformers with AdamW. By
default the sequences are the preset's context (`small`: 512), as `codelm train` cuts
its windows, and the batch holds 2,048 tokens (4 x 512 for `small`); `--batch 8 --seq
256` is a common reference shape for 2-core CPU figures.
Steps alternate between the engines so that noise from other processes hits both; the
ratio is also given as the median of each repetition's own ratio. Each engine's line ends
with its optimizer step's median time (the `opt.step()` inside its step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_config, machine, matmul_peak, summary  # noqa: E402

from codelm.memory import keep_freed_memory  # noqa: E402
from codelm.model import ModelConfig, Transformer  # noqa: E402
from codelm.train.config import TrainConfig  # noqa: E402
from codelm.train.loop import autocast_dtype, make_optimizer, train_step  # noqa: E402


def hf_llama(cfg: ModelConfig):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config(cfg))


def flops_per_token(cfg: ModelConfig, n_params: int, seq: int) -> float:
    """6N for the matmuls of forward+backward, plus attention scores (PaLM appendix B)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * seq


def record_steps(opt: torch.optim.Optimizer, into: list[float]) -> None:
    """Append the wall-clock seconds of each `opt.step()` to `into`: the optimizer's share."""
    start: list[float] = []
    opt.register_step_pre_hook(lambda *_: start.append(time.perf_counter()))
    opt.register_step_post_hook(lambda *_: into.append(time.perf_counter() - start.pop()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=0, help="default: 2048 tokens / seq")
    ap.add_argument("--seq", type=int, default=0, help="default: the preset's context")
    ap.add_argument("--reps", type=int, default=5)
    # auto: bf16 where this CPU computes it natively, else fp32, as `codelm train` decides.
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="also time codelm under torch.compile")
    # codelm's default optimizer (Muon) against the peer's AdamW: what a user's step costs.
    # --optimizer adamw makes the step the same work on both sides.
    ap.add_argument("--optimizer", default=TrainConfig().optimizer, choices=["adamw", "muon"])
    a = ap.parse_args()
    amp = autocast_dtype(torch.device("cpu"), a.dtype)
    a.dtype = "bf16" if amp else "fp32"
    # As `codelm train` does. It is process-wide, so transformers' steps get it too.
    keep_freed_memory()
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(a.preset, vocab_size=a.vocab)
    a.seq = a.seq or cfg.block_size
    a.batch = a.batch or max(1, 2048 // a.seq)
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.roll(x, -1, 1)
    tcfg = TrainConfig(lr=1e-4, optimizer=a.optimizer)

    ours = Transformer(cfg)
    engines = {"codelm": (ours, make_optimizer(ours, tcfg, torch.device("cpu")))}
    if a.compile:
        compiled = Transformer(cfg)
        engines["codelm+compile"] = (
            torch.compile(compiled),
            make_optimizer(compiled, tcfg, torch.device("cpu")),
        )
    hf = hf_llama(cfg)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def hf_step():
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            logits = hf(input_ids=x).logits
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    steps = {
        name: (lambda m=m, o=o: train_step(m, o, [(x, y)], 1.0, amp)) for name, (m, o) in engines.items()
    }
    steps["transformers"] = hf_step
    opt_times: dict[str, list[float]] = {name: [] for name in steps}
    for name, opt in [*((k, o) for k, (_, o) in engines.items()), ("transformers", hf_opt)]:
        record_steps(opt, opt_times[name])
    for fn in steps.values():  # warm up (and compile)
        fn(), fn()
    for v in opt_times.values():
        v.clear()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.reps):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    peak = matmul_peak(torch.bfloat16 if amp else torch.float32)
    tokens = a.batch * a.seq
    n = ours.num_params()
    fpt = flops_per_token(cfg, n, a.seq)
    print(machine())
    print(f"preset {a.preset}, {a.optimizer}: {n / 1e6:.1f}M params, vocab {a.vocab}, "
          f"batch {a.batch}x{a.seq}, {a.dtype}; matmul peak {peak:.0f} GFLOP/s")  # fmt: skip
    tps = {k: [tokens / t for t in v] for k, v in times.items()}
    for name, v in tps.items():
        mfu = statistics.median(v) * fpt / 1e9 / peak
        opt = f"optimizer {1000 * statistics.median(opt_times[name]):.0f} ms"
        print(f"  {name:16s} tokens/s {summary(v)}   MFU {100 * mfu:.0f}% of peak   {opt}")
    hf_med = statistics.median(tps["transformers"])
    for name in engines:
        # Also the median of each repetition's own ratio: its two steps ran a second apart, so
        # a burst of load from another process weighs on both.
        paired = statistics.median(h / t for h, t in zip(times["transformers"], times[name], strict=True))
        print(
            f"  ratio {name} / transformers: {statistics.median(tps[name]) / hf_med:.2f}x "
            f"(median of the repetitions' own ratios: {paired:.2f}x)"
        )


if __name__ == "__main__":
    main()
