"""Decoding speed at batch 1, side by side in one run: codelm's generation loop against
HF transformers' `generate` with its KV cache, on the same random weights; plus the
memory-bandwidth bound (weight bytes read per token / the best copy bandwidth measured in
this run, one reading after each repetition).

    .venv/bin/python bench/generate.py [--presets tiny,small,base] [--vocab 16384]
        [--prompt 512] [--new 128] [--reps 3] [--weights fp32,bf16,int8] [--qk-norm]

Our weights are mapped into a LlamaForCausalLM (the same RoPE, RMSNorm and SwiGLU
architecture) and the logits are checked to match in fp32 before any timing. `--qk-norm`
gives every preset Qwen3's QK-norm (and RoPE's half layout), against transformers'
Qwen3ForCausalLM, and times codelm's int8 once more with the fused block step off.
transformers runs in bf16 (its faster CPU format); codelm runs in each `--weights`
format of codelm.generate.quantize. Greedy, 128 new tokens after a 512-token
prompt, so every preset's context is raised to 1024 (tiny and small have less).
Time to first token covers the prefill and the first sample. Decode tokens/s is
1 / the median interval between new tokens: on a shared machine a preempted
step is an outlier, and a median over steps ignores it where a mean over the
run would not. Engines alternate within each repetition so that noise from
other processes hits all of them; the table gives medians over repetitions.
CODELM_CPU=avx2 times the AVX2 kernels on an AVX-512 CPU; CODELM_NATIVE=0, aten's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, llama_config, machine, summary  # noqa: E402

from codelm.generate.config import SamplingConfig  # noqa: E402
from codelm.generate.generator import generate_ids  # noqa: E402
from codelm.generate.quantize import prepare_model  # noqa: E402
from codelm.interop.hf import export_kind, hf_config, to_hf  # noqa: E402
from codelm.model import ModelConfig, Transformer, native  # noqa: E402


def to_qwen3(model: Transformer):
    """A Qwen3ForCausalLM computing the same function as `model` (QK-norm), as export maps it."""
    import transformers

    ids = dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"))
    d = hf_config(model.cfg, export_kind(model.cfg), torch.float32, ids)
    keep = {k: v for k, v in d.items() if k not in ("architectures", "model_type", "dtype")}
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**keep, attn_implementation="sdpa"))
    state = {k: v.detach().clone() for k, v in to_hf(model.cfg, model.state_dict()).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied
    return hf.eval()


def to_llama(model: Transformer):
    """A LlamaForCausalLM computing the same function as `model` (RoPE, RMSNorm, SwiGLU): the
    weights as `codelm export --format hf` maps them (q/k rows moved to Llama's RoPE layout)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(llama_config(model.cfg))
    state = {k: v.detach().clone() for k, v in to_hf(model.cfg, model.state_dict()).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return hf.eval()


def check_same_function(ours: Transformer, hf) -> float:
    x = torch.randint(0, ours.cfg.vocab_size, (1, 64))
    with torch.no_grad():
        diff = (ours(x) - hf(input_ids=x).logits).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"weight mapping is wrong: logits differ by {diff:.2e}")
    return diff


def rates(t0: float, stamps: list[float]) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s) from the time of each new token."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[0] - t0, 1 / statistics.median(gaps)


def time_ours(model: Transformer, prompt: list[int], new: int) -> tuple[float, float]:
    """Time to first token and decode tokens/s of codelm's loop, greedy."""
    # Plain greedy, no repetition penalty: the same work as the peer's greedy `generate`.
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, repetition_penalty=1.0, dry_multiplier=0.0)
    t0 = time.perf_counter()
    stamps = [time.perf_counter() for _ in generate_ids(model, prompt, cfg, draft=0)]  # like for like
    assert len(stamps) == new
    return rates(t0, stamps)


def time_hf(hf, prompt: list[int], new: int) -> tuple[float, float]:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:  # first call: the prompt; then one call per new token
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    x = torch.tensor([prompt])
    t0 = time.perf_counter()
    with torch.no_grad():
        hf.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, streamer=clock)
    assert len(clock.times) == new + 1
    return rates(t0, clock.times[1:])


def weight_bytes(model: Transformer, bytes_per_weight: float) -> float:
    """Bytes of weights one decode step reads: every matrix once (the tied head included);
    the embedding lookup reads one row, negligible."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return n * bytes_per_weight


def bench_preset(name: str, a: argparse.Namespace) -> None:
    torch.manual_seed(0)
    qk = dict(qk_norm=True, rope_layout="half") if a.qk_norm else {}
    cfg = ModelConfig.from_preset(name, vocab_size=a.vocab, block_size=max(1024, a.prompt + a.new), **qk)
    ours = Transformer(cfg).eval()
    if a.qk_norm:
        with torch.no_grad():  # norms at 1 would hide a missing one from the logits check
            for n, p in ours.named_parameters():
                if n.endswith(("q_norm.weight", "k_norm.weight")):
                    p.normal_(1.0, 0.2)
    hf = to_qwen3(ours) if a.qk_norm else to_llama(ours)
    diff = check_same_function(ours, hf)
    hf = hf.to(torch.bfloat16)
    prompt = torch.randint(0, a.vocab, (a.prompt,)).tolist()
    models = {f"codelm {w}": prepare_model(ours, w) for w in a.weights}
    runs = {k: (lambda m=m: time_ours(m, prompt, a.new)) for k, m in models.items()}
    if a.qk_norm and "int8" in a.weights:  # the same int8 model through the blocks in Python
        unfused = prepare_model(ours, "int8")
        unfused.fast_step = None
        runs["codelm int8 unfused"] = lambda: time_ours(unfused, prompt, a.new)
    runs["transformers bf16"] = lambda: time_hf(hf, prompt, a.new)
    for fn in runs.values():  # warm up: first calls build kernels and caches
        fn()
    ttft: dict[str, list[float]] = {k: [] for k in runs}
    tps: dict[str, list[float]] = {k: [] for k in runs}
    readings = []  # copy bandwidth after each repetition: it drifts on a shared machine
    for _ in range(a.reps):
        for k, fn in runs.items():
            t, s = fn()
            ttft[k].append(t * 1e3)
            tps[k].append(s)
        readings.append(copy_bandwidth() * 1e9)
    # The bound takes the best reading: what the memory can do, not what it did at its worst
    # moment. Lower readings would flatter every engine's share of the bound.
    bandwidth = max(readings)
    bf16_bound = bandwidth / weight_bytes(ours, 2)
    print(f"\n{name}: {ours.num_params() / 1e6:.1f}M params ({cfg.n_layer}L/{cfg.n_embd}), vocab {a.vocab}, "
          f"logits match transformers to {diff:.1e}; copy bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"(best of {len(readings)}, lowest {min(readings) / 1e9:.1f}): "
          f"bf16 weights bound {bf16_bound:.0f} tok/s")  # fmt: skip
    hf_med = statistics.median(tps["transformers bf16"])
    print(f"  {'engine':20s} {'TTFT ms (median)':>16s} {'decode tok/s (median, min, max)':>34s} "
          f"{'x transformers':>15s} {'of bf16 bound':>14s} {'of own bound':>13s}")  # fmt: skip
    for k in runs:
        med = statistics.median(tps[k])
        own = {"fp32": 4, "bf16": 2, "int8": 1}.get(k.split()[1] if k.startswith("codelm") else "", 2)
        own_bound = bandwidth / weight_bytes(ours, own)
        ratios = f"{med / hf_med:14.2f}x {100 * med / bf16_bound:13.0f}% {100 * med / own_bound:12.0f}%"
        print(f"  {k:20s} {statistics.median(ttft[k]):16.0f} {summary(tps[k]):>34s} {ratios}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small,base")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--weights", default="fp32,bf16,int8", help="codelm formats to time")
    ap.add_argument("--qk-norm", action="store_true", help="Qwen3's QK-norm on every preset")
    a = ap.parse_args()
    print(machine())
    a.weights = a.weights.split(",")
    print(f"{torch.get_num_threads()} threads; bandwidth: a 1 GiB copy, bytes read + written")
    kernels = f"yes, {native.isa()}" if native.available() else f"no, aten's instead ({native.reason()})"
    print(f"codelm's native kernels (int8 GEMV, one-token attention): {kernels}")
    for name in a.presets.split(","):
        bench_preset(name, a)


if __name__ == "__main__":
    main()
