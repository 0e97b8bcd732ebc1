"""Helpers shared by the bench scripts: where they ran, timing with repetitions, matmul
peak, bandwidth."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> str:
    """One line naming the CPU, the vector ISA and bf16 support as codelm's precision policy
    sees them (CODELM_CPU fakes them), torch's own kernel ISA, and the threads."""
    from codelm import hardware

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    aten = torch.backends.cpu.get_cpu_capability()
    return (
        f"CPU: {name}; codelm: {hardware.cpu().describe()}; aten: {aten}; {torch.get_num_threads()} threads"
    )


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `reps` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):,.1f}  min {min(values):,.1f}  max {max(values):,.1f}"


def matmul_peak(
    dtype: torch.dtype, n: int = 2048, reps: int = 5, device: str | torch.device = "cpu"
) -> float:
    """GFLOP/s of an n³ matmul in `dtype` (the best of `reps`: the peak this device gives now)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    if torch.device(device).type == "cuda":  # kernels are queued: wait for each one
        secs = timed(lambda: (a @ b, torch.cuda.synchronize(device)), reps)
    else:
        secs = timed(lambda: a @ b, reps)
    return 2 * n**3 / min(secs) / 1e9


def copy_bandwidth(gib: float = 1.0, reps: int = 3) -> float:
    """GB/s of a large tensor copy, counting bytes read plus bytes written."""
    # Written first: untouched pages all map the kernel's one zero page, which stays in cache
    # and made this figure read 70-100 GB/s instead of about 65 on these machines.
    src = torch.ones(int(gib * 2**30), dtype=torch.uint8)
    dst = torch.zeros_like(src)
    secs = timed(lambda: dst.copy_(src), reps)
    return 2 * src.numel() / min(secs) / 1e9


def llama_config(cfg):
    """transformers' LlamaConfig for the same shape as a codelm ModelConfig (RoPE, RMSNorm, SwiGLU)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=1e-6,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS, KiB), read from /proc (Linux; no psutil)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
