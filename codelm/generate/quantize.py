"""Weights for generation: the same model with its linear layers stored in bf16 or int8.

Decoding one token at batch 1 reads every weight once, so it is bound by memory
bandwidth (bench/generate.py prints that bound): fewer bytes per weight give more tokens per second.
- "int8": weight-only, symmetric, one scale per output channel. Few rows (decoding) go
  through codelm's int8 kernel (model/kernels.cpp, fp32 activations) where it builds,
  else aten's (bf16 activations); many rows (the prompt's prefill) dequantize and take one
  GEMM, in the dtype the precision policy picks once, at load (`codelm.hardware`): bf16
  where the CPU computes it natively, fp32 elsewhere. On an AVX2 CPU a bf16 GEMM was several
  times slower: `small`'s time to first token after 512 tokens was 634 ms through bf16
  against 132 ms for the fp32 model (AMD EPYC, 2 cores). The native kernel stores the weights in its
  tile order and streams them 1.6x faster than aten's: with the native attention over a
  bf16 cache (below), `base` decodes 244 tokens/s instead of 148 (bench/generate.py).
- "bf16": weights in bf16. Few rows (decoding) go through codelm's bf16 kernel where it
  builds (fp32 activations and sums: x times the bf16 weights widened exactly), else aten's
  bf16 matmul (activations cast to bf16). For one row aten's reads 13 GB/s of weights where
  codelm's reads 26-28 (`base`'s layers, 2 threads, AVX-512 + AMX). A prompt's many rows
  take aten's bf16 GEMM where bf16 is native, else the weights converted to fp32.
- "auto": int8 on CPU for models with at least AUTO_MIN_PARAMS weights in linear layers
  (smaller ones fit in cache, where fp32 is exact and about as fast), bf16 on CUDA.
Decoding one token per row (or a few to verify speculation's drafts) then runs each
transformer block in one call of codelm's
decode_block kernel (`FusedStep`, as `Transformer.fast_step`) wherever those kernels read
every linear layer: native int8 and bf16 layers, and fp32 ones ("fp32" keeps the model
itself, its step added). Through Python a block's ~40 small torch ops cost more than its
weights: `small` decodes 1,109 int8 tokens/s instead of 525, `base` 207 instead of 105
(bench/generate.py; AVX-512, 2 cores).
Only `nn.Linear` layers change, and the KV cache, which becomes bf16 on CPU where
codelm's attention kernel reads it (torch's bf16 attention at batch 1 runs several times
slower than fp32 on these CPUs, measured). Norms, embeddings, RoPE and the attention
arithmetic stay fp32, and so do the biases of swapped layers (Qwen2's q/k/v; a few numbers
per layer, added after the matmul, so they cost nothing to keep exact). The swapped layers
are for inference only: they have no gradients.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm import hardware
from codelm.errors import CodelmError
from codelm.model import Transformer, native
from codelm.model.kv_cache import KVCache, Where

WEIGHTS = ("auto", "fp32", "bf16", "int8")
KERNEL_MAX_ROWS = 16  # above this aten's int8 GEMV kernel loses to dequantize + GEMM (measured)
NATIVE_MAX_ROWS = 32  # codelm's kernel: 755 against 1,145 us at 32 rows, 1,499 / 1,353 at 64 (4096 x 768)
# codelm's bf16 kernel computes in fp32, so many rows make it compute-bound: against aten's bf16
# GEMM (AMX) over `base`'s layers it takes 13.0 / 15.5 ms at 8 rows, 17.1 / 15.1 at 12. Where
# bf16 is not native (AVX2) aten's loses at every row count up to 16 (42 / 51 ms in fp32).
BF16_NATIVE_MAX_ROWS = 8
AUTO_MIN_PARAMS = 1_000_000


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().float().clone()


def _keep_bias(module: nn.Module, linear: nn.Linear) -> None:
    """A bias buffer where `linear` has one; else a plain None attribute, which a forward
    reads without nn.Module's __getattr__ (0.5 us a call, 25 calls a token for `small`)."""
    if linear.bias is None:
        module.bias = None
    else:
        module.register_buffer("bias", _bias(linear))


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


def bf16_gemm(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows (M, K) @ weight (N, K).T in bf16 on CPU, M padded to one of a few sizes.

    aten hands a CPU bf16 GEMM to oneDNN, which builds a primitive for every (M, N, K)
    and keeps up to 1,024 of them, each with its JIT code. A server sees a new M with
    almost every prompt: building them cost ~3 ms a shape (five GEMMs 768 wide with a 16k
    head: 29 ms against 15 at M=300-340, AMX), and under load the server's heap kept
    growing (int8 weights: 743 -> 820 MiB in use over 140 s; flat since, 433 -> 434).
    Padding M with zero rows to 8 sizes per power of two (at most 12.5%
    more rows beyond 128) bounds the shapes a model ever builds, and a prompt almost
    always finds its primitives built. The rows are independent, so the zero rows change
    nothing in the first M (bit for bit on an AMX CPU for M = 1-79 and seven larger M)."""
    m = rows.size(0)
    if gemm_rows(m) == m or rows.device.type != "cpu":
        return F.linear(rows, weight)
    return F.linear(F.pad(rows, (0, 0, 0, gemm_rows(m) - m)), weight)[:m]


def gemm_rows(m: int) -> int:
    """The rows bf16_gemm computes for m: m rounded up to a multiple of 16, or of 1/8 of
    the power of two at or below m."""
    return m + (-m % max(16, 1 << max(m.bit_length() - 4, 0)))


class BF16Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("w", linear.weight.detach().to(torch.bfloat16).contiguous())
        _keep_bias(self, linear)
        self.prompt_dtype = hardware.compute_dtype(linear.weight.device)  # chosen once, at load
        self.native = _native_fits(self.w, rows=1, columns=native.BF16_COLUMNS)
        # Rows up to which codelm's kernel beats aten's matmul (measured: see BF16_NATIVE_MAX_ROWS).
        self.native_rows = BF16_NATIVE_MAX_ROWS if self.prompt_dtype == torch.bfloat16 else KERNEL_MAX_ROWS

    @property
    def weight(self) -> torch.Tensor:  # for code that reads `model.head.weight.device` and such
        return self.w.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and x.numel() <= self.native_rows * x.size(-1):
            rows = x.reshape(-1, x.size(-1)).float().contiguous()
            y = torch.ops.codelm.bf16_linear(rows, self.w, self.bias)  # the bias added in the kernel
            return y.to(x.dtype).view(*x.shape[:-1], -1)
        if self.prompt_dtype == torch.float32 and x.numel() > KERNEL_MAX_ROWS * x.size(-1):
            return _add_bias(F.linear(x.float(), self.w.float()).to(x.dtype), self.bias)  # a prompt
        rows = x.reshape(-1, x.size(-1)).to(torch.bfloat16)
        y = bf16_gemm(rows, self.w).view(*x.shape[:-1], -1)
        return _add_bias(y.to(x.dtype), self.bias)


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        # aten's kernel takes bf16 scales: round them first, then quantize against the
        # rounded scale, so that q * scale is what the weights become whichever kernel runs.
        scale = (w.abs().amax(1).clamp(min=1e-12) / 127).to(torch.bfloat16)
        q = (w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.native = _native_fits(w)
        self.register_buffer("q", native.pack_int8(q) if self.native else q.contiguous())
        self.register_buffer("scale", scale.float() if self.native else scale)
        self.kernel = not self.native and _kernel_works(self.q, self.scale)
        _keep_bias(self, linear)
        self.prompt_dtype = hardware.compute_dtype(w.device)  # the prompt pass's GEMM, chosen once

    def dequantized(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        q = native.unpack_int8(self.q) if self.native else self.q
        return q.to(dtype).mul_(self.scale.to(dtype)[:, None])  # in place: 25% less time than `*`

    @property
    def weight(self) -> torch.Tensor:  # for code that reads `model.head.weight.device` and such
        return self.dequantized(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.size(-1))
        if self.native and rows.size(0) <= NATIVE_MAX_ROWS:
            y = torch.ops.codelm.int8_linear(rows.float().contiguous(), self.q, self.scale)
        elif self.kernel and rows.size(0) <= KERNEL_MAX_ROWS:
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.q, self.scale)
        else:  # a prompt's rows: one GEMM in the policy's dtype
            gemm = bf16_gemm if self.prompt_dtype == torch.bfloat16 else F.linear
            y = gemm(rows.to(self.prompt_dtype), self.dequantized(self.prompt_dtype))
        return _add_bias(y.to(x.dtype).view(*x.shape[:-1], -1), self.bias)


def _native_fits(w: torch.Tensor, rows: int = native.TILE, columns: int = 16) -> bool:
    """Whether codelm's kernel is here and takes this (N, K) weight: N a multiple of `rows`
    (the int8 kernel's tile; the bf16 kernel takes any N), K of the `columns` in a step."""
    N, K = w.shape
    return w.device.type == "cpu" and N % rows == 0 and K % columns == 0 and native.available()


def _kernel_works(q: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether aten's int8 kernel exists here and computes this layer right. It returns
    garbage (or crashes) for input widths that are not a multiple of 16, so those and
    any other surprise fall back to dequantizing."""
    if q.device.type != "cpu" or not hasattr(torch, "_weight_int8pack_mm") or q.size(1) % 32:
        return False
    x = torch.randn(2, q.size(1), generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    try:
        got = torch._weight_int8pack_mm(x, q, scale).float()
    except RuntimeError:
        return False
    want = x.float() @ (q.float() * scale.float()[:, None]).t()
    return bool((got - want).abs().max() <= 0.02 * want.abs().max() + 1e-3)


def resolve_weights(weights: str, model: nn.Module) -> str:
    """The format `weights` means for `model` ("auto" resolved)."""
    if weights not in WEIGHTS:
        raise CodelmError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights != "auto":
        return weights
    device = next(model.parameters()).device
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if device.type == "cuda":
        return "bf16" if hardware.bf16_native(device) else "fp32"
    if device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm") and linear >= AUTO_MIN_PARAMS:
        return "int8"
    return "fp32"


def prepare_model(model: nn.Module, weights: str = "auto") -> nn.Module:
    """`model` for generation with its linear layers in `weights` format (a copy unless fp32),
    decoding through codelm's fused step where its kernels take every block (`fused_step`)."""
    kind = resolve_weights(weights, model)
    if kind == "fp32":
        model.fast_step = fused_step(model)
        return model
    out = copy.deepcopy(model).float()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, _swap(child, kind))
    if out.norm_f.weight.device.type == "cpu" and native.available():
        # The cache is the other half of what a step reads (42 MB against 98 MB of int8
        # weights for `base` at 576 positions): codelm's attention reads bf16 in 54 us per
        # layer against 95 for fp32. Only with that kernel: torch's read bf16 slower.
        out.kv_dtype = torch.bfloat16
    out.fast_step = fused_step(out)
    return out.eval().requires_grad_(False)


class FusedStep:
    """A decode step's blocks (T new tokens per row, at `where.pos`: (T,) shared or (B, T))
    through codelm's decode_block kernel (model/native.py), one call a block:
    `Transformer.fast_step`."""

    def __init__(self, model: Transformer, blocks: list[list[torch.Tensor | None]]):
        cfg = model.cfg
        self.blocks = blocks  # each block's tensors, as decode_block reads them
        self.cos, self.sin = (model.rope_cos, model.rope_sin) if cfg.pos == "rope" else (None, None)
        self.n_head, self.eps = cfg.n_head, model.blocks[0].norm1.eps
        self.layernorm, self.gelu = cfg.norm == "layernorm", cfg.mlp == "gelu"
        self.half_rope = cfg.rope_layout == "half"

    def __call__(self, x: torch.Tensor, cache: KVCache, where: Where) -> torch.Tensor:
        for layer, params in enumerate(self.blocks):
            x = torch.ops.codelm.decode_block(
                x, params, cache.k, cache.v, layer, where.pos, self.cos, self.sin, self.n_head,
                self.layernorm, self.eps, self.gelu, self.half_rope,
            )  # fmt: skip
        return x


def _fused_linear(m: nn.Module) -> list[torch.Tensor | None] | None:
    """A linear layer's weight, scale and bias as decode_block reads them, or None where it
    cannot: a format without codelm's kernel, fp32 weights whose width is not a multiple of 32."""
    if isinstance(m, Int8Linear):
        return [m.q, m.scale, m.bias] if m.native else None
    if isinstance(m, BF16Linear):
        return [m.w, None, m.bias] if m.native else None
    if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.in_features % 32 == 0:
        return [m.weight, None, m.bias]
    return None


def fused_step(model: Transformer) -> FusedStep | None:
    """The fused decode step of `model` where codelm's kernels take every block (on CPU, every
    linear layer in a format they read, head widths a multiple of 16), else None."""
    cfg = model.cfg
    p = model.norm_f.weight
    fits = cfg.head_dim % 16 == 0 and cfg.n_embd % 16 == 0 and cfg.mlp_hidden % 16 == 0
    if not fits or p.device.type != "cpu" or p.dtype != torch.float32 or not native.available():
        return None
    blocks = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        layers = [_fused_linear(m) for m in (attn.qkv, attn.proj, mlp.up, mlp.down)]
        if any(layer is None for layer in layers):
            return None
        norms = [[n.weight, getattr(n, "bias", None)] for n in (block.norm1, block.norm2)]
        qk = [attn.q_norm.weight, attn.k_norm.weight] if cfg.qk_norm else [None, None]  # Qwen3's
        blocks.append(norms[0] + layers[0] + layers[1] + norms[1] + layers[2] + layers[3] + qk)
    return FusedStep(model, blocks)


def _swap(linear: nn.Linear, kind: str) -> nn.Module:
    return Int8Linear(linear) if kind == "int8" else BF16Linear(linear)


def describe(model: nn.Module) -> str:
    """One line on how `model` generates here: its weights, the kernels a decoded token
    goes through, the prompt pass's GEMM and the KV cache (for --verbose and the server)."""
    linears = [m for m in model.modules() if isinstance(m, Int8Linear | BF16Linear)]
    device = model.norm_f.weight.device
    kv = str(model.kv_dtype or model.norm_f.weight.dtype).removeprefix("torch.")
    if not linears:
        return f"weights fp32 on {device}; prompt pass fp32; KV cache {kv}"
    kind = "int8" if isinstance(linears[0], Int8Linear) else "bf16"
    decode = f"codelm's {native.isa()} kernels" if any(m.native for m in linears) else "aten's kernels"
    prompt = str(linears[0].prompt_dtype).removeprefix("torch.")
    why = "native here" if prompt == "bfloat16" else "bf16 is not native here"
    return (
        f"weights {kind} on {device}: decode through {decode}; "
        f"prompt pass {prompt} GEMM ({why}); KV cache {kv}"
    )
