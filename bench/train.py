"""Training speed, side by side in one run: codelm's Transformer against HF transformers'
LlamaForCausalLM (the same RoPE/RMSNorm/SwiGLU architecture) at the same sizes, batch and
precision; plus model FLOP utilisation against a matmul peak measured in the same run.

    .venv/bin/python bench/train.py [--preset small] [--vocab 16384] [--batch B] [--seq T] [--reps 5]
        [--dtype auto|bf16|fp32] [--optimizer muon|adamw] [--compile]
        [--device cpu|cuda] [--parallel none|ddp|shard] [--nproc N] [--json OUT]

Both models take a full step (forward, backward, optimizer) on the same random batch:
codelm with its default optimizer (Muon), transformers with AdamW. By
default the sequences are the preset's context (`small`: 512), as `codelm train` cuts
its windows, and the batch holds 2,048 tokens (4 x 512 for `small`); `--batch 8 --seq
256` is a common reference shape for 2-core CPU figures.
Steps alternate between the engines so that noise from other processes hits both; the
ratio is also given as the median of each repetition's own ratio. Each engine's line ends
with its optimizer step's median time (the `opt.step()` inside its step).

`--parallel ddp|shard` runs both engines on `--nproc` processes (default: every GPU with
`--device cuda`, 2 on a CPU), relaunching itself under torchrun (nccl on CUDA, gloo on a
CPU): DistributedDataParallel, or FSDP2 with each block and then the whole model wrapped by
`fully_shard`, codelm through `codelm train --shard`'s own code (bf16 weights and fp32
gradient reductions on CUDA). `--batch` is each process's; tokens/s are the whole group's,
and MFU is against the peak of all its devices. The peer's AdamW is fused, on a CPU too, as
transformers' Trainer picks by default with torch >= 2.8 (CPU figures before 2026-12-07
timed it unfused). After the timed steps, the bench checks that every DDP replica holds the
same codelm weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_config, machine, matmul_peak, summary  # noqa: E402

from codelm.memory import keep_freed_memory  # noqa: E402
from codelm.model import ModelConfig, Transformer  # noqa: E402
from codelm.train import distributed, shard  # noqa: E402
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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=0, help="default: 2048 tokens / seq (per process)")
    ap.add_argument("--seq", type=int, default=0, help="default: the preset's context")
    ap.add_argument("--reps", type=int, default=5)
    # auto: bf16 where the device computes it natively, else fp32, as `codelm train` decides.
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="also time codelm under torch.compile")
    # codelm's default optimizer (Muon) against the peer's AdamW: what a user's step costs.
    # --optimizer adamw makes the step the same work on both sides.
    ap.add_argument("--optimizer", default=TrainConfig().optimizer, choices=["adamw", "muon"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--parallel", default="none", choices=["none", "ddp", "shard"])
    ap.add_argument("--nproc", type=int, default=0, help="processes for --parallel (default: see above)")
    ap.add_argument("--json", default=None, help="also write the results here (rank 0)")
    a = ap.parse_args()
    if a.parallel == "shard" and a.compile:
        raise SystemExit("--compile is not timed with --parallel shard (codelm train refuses the pair)")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    return a


def relaunch(a: argparse.Namespace) -> None:
    """Run this script again under torchrun on --nproc processes, and exit with its status."""
    n = a.nproc or (torch.cuda.device_count() if a.device == "cuda" else 2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    raise SystemExit(subprocess.call([*cmd, __file__, *sys.argv[1:]]))


def ddp(net: torch.nn.Module, dist: distributed.Dist, device: torch.device) -> torch.nn.Module:
    ids = [dist.local_rank] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def shard_llama(hf: torch.nn.Module, device: torch.device) -> None:
    """FSDP2 on the peer as shard.apply does it on codelm: each decoder layer, then the whole."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kw = {"mp_policy": mp} if device.type == "cuda" else {}
    for layer in hf.model.layers:
        fully_shard(layer, **kw)
    fully_shard(hf, **kw)


def engines(a, cfg: ModelConfig, amp, dist: distributed.Dist, device: torch.device, batch):
    """name -> (step function, optimizer, codelm model or None)."""
    x, y = batch
    tcfg = TrainConfig(lr=1e-4, optimizer=a.optimizer)
    out = {}
    for name in ("codelm", "codelm+compile") if a.compile else ("codelm",):
        torch.manual_seed(0)  # the same weights on every rank, as `codelm train` starts them
        model = Transformer(cfg).to(device)
        if a.parallel == "shard":
            shard.apply(model, device)  # `codelm train --shard`'s own wrapping
        opt = make_optimizer(model, tcfg, device)
        net = torch.compile(model) if name.endswith("compile") else model
        net = ddp(net, dist, device) if a.parallel == "ddp" else net
        out[name] = (lambda n=net, o=opt: train_step(n, o, [(x, y)], 1.0, amp, dist), opt, model)
    torch.manual_seed(0)
    hf = hf_llama(cfg).to(device)
    if a.parallel == "shard":
        shard_llama(hf, device)
    hf_net = ddp(hf, dist, device) if a.parallel == "ddp" else hf
    # Fused, as transformers' Trainer picks by default with torch >= 2.8 (and codelm's AdamW is).
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def hf_step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = hf_net(input_ids=x).logits
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    out["transformers"] = (hf_step, hf_opt, None)
    return out


def time_steps(steps: dict, reps: int, device: torch.device) -> tuple[dict, dict]:
    """Seconds per step and per optimizer step of each engine, after two untimed steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    opt_times: dict[str, list[float]] = {name: [] for name in steps}
    for name, (_, opt, _) in steps.items():
        record_steps(opt, opt_times[name])
    for fn, _, _ in steps.values():  # warm up (and compile)
        fn(), fn()
    for v in opt_times.values():
        v.clear()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):
        for name, (fn, _, _) in steps.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times, opt_times


def replicas_agree(model: torch.nn.Module, dist: distributed.Dist, device: torch.device) -> bool:
    """Whether every rank holds the same weights (a sum of each parameter, compared exactly)."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
    gathered = [torch.empty_like(sums) for _ in range(dist.world)]
    torch.distributed.all_gather(gathered, sums)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def main() -> None:
    a = parse_args()
    if a.parallel != "none" and "WORLD_SIZE" not in os.environ:
        relaunch(a)
    device = torch.device(a.device)
    dist = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    amp = autocast_dtype(device, a.dtype)
    a.dtype = "bf16" if amp else "fp32"
    # As `codelm train` does. It is process-wide, so transformers' steps get it too.
    keep_freed_memory()
    torch.manual_seed(dist.rank)  # each rank its own batch, as a data-parallel run
    cfg = ModelConfig.from_preset(a.preset, vocab_size=a.vocab)
    a.seq = a.seq or cfg.block_size
    a.batch = a.batch or max(1, 2048 // a.seq)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), device=device)
    steps = engines(a, cfg, amp, dist, device, (x, torch.roll(x, -1, 1)))
    times, opt_times = time_steps(steps, a.reps, device)
    agree = replicas_agree(steps["codelm"][2], dist, device) if a.parallel == "ddp" else None
    peak = matmul_peak(torch.bfloat16 if amp else torch.float32, **cuda_peak_args(device))
    if dist.main:
        report(a, cfg, steps, times, opt_times, peak, dist, agree, device)
    distributed.shutdown(dist)
    distributed.leave(0)  # under torchrun: exits here


def cuda_peak_args(device: torch.device) -> dict:
    # A GPU needs a bigger matmul than a CPU to reach its peak: 8,192³ is 1.1 TFLOP, over a
    # millisecond even at an H100's rated bf16 rate (an estimate: not yet run on one).
    return {"n": 8192, "device": device} if device.type == "cuda" else {}


def report(a, cfg, steps, times, opt_times, peak, dist, agree, device) -> None:
    tokens = a.batch * a.seq * dist.world
    with torch.device("meta"):  # counted, not built
        n = Transformer(cfg).num_params()
    fpt = flops_per_token(cfg, n, a.seq)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    print(where)
    print(f"preset {a.preset}, {a.optimizer}: {n / 1e6:.1f}M params, vocab {a.vocab}, "
          f"batch {a.batch}x{a.seq} on each of {dist.world} process(es), {a.parallel}, {a.dtype}; "
          f"matmul peak {peak:.0f} GFLOP/s a device")  # fmt: skip
    tps = {k: [tokens / t for t in v] for k, v in times.items()}
    results = {"device": where, "world": dist.world, "parallel": a.parallel, "engines": {}}
    for name, v in tps.items():
        mfu = statistics.median(v) * fpt / 1e9 / (peak * dist.world)
        opt = f"optimizer {1000 * statistics.median(opt_times[name]):.0f} ms"
        print(f"  {name:16s} tokens/s {summary(v)}   MFU {100 * mfu:.0f}% of peak   {opt}")
        results["engines"][name] = {"tokens_per_s": statistics.median(v), "mfu": mfu}
    hf_med = statistics.median(tps["transformers"])
    for name in (k for k in steps if k != "transformers"):
        # Also the median of each repetition's own ratio: its two steps ran a second apart, so
        # a burst of load from another process weighs on both.
        paired = statistics.median(h / t for h, t in zip(times["transformers"], times[name], strict=True))
        print(
            f"  ratio {name} / transformers: {statistics.median(tps[name]) / hf_med:.2f}x "
            f"(median of the repetitions' own ratios: {paired:.2f}x)"
        )
    if agree is not None:
        print(f"  DDP replicas hold the same codelm weights: {'yes' if agree else 'NO'}")
        results["replicas_agree"] = agree
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
