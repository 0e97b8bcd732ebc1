"""The decoder-only transformer, readable top to bottom.

token ids (B, T) -> embedding -> n_layer x [pre-norm causal self-attention, pre-norm MLP]
-> final norm -> linear head (tied to the embedding by default) -> logits (B, T, vocab).

Attention is torch's `scaled_dot_product_attention`, causal by construction, so
a token never sees the tokens after it. Two cases on CPU take an equivalent faster
form: bf16 training (`causal_attention`) and one decoded token (`one_token_attention`,
codelm's kernel). With a `KVCache` the same forward decodes incrementally: pass
only the new tokens and the cache remembers the rest. Positions may differ per
row, as litgpt's `input_pos`: rows of different lengths decode together, each
query seeing the keys of its own row up to its own position (`Where`, kv_cache.py). Every
caller decodes through this one forward: `codelm.generate`'s engine, and through
it the CLI, evaluation and the server.

A decode step (one new token per row, or up to FUSED_MAX_ROWS tokens after cached ones to
verify speculation's drafts; with a cache, no gradients) runs the blocks through
`fast_step` where generation set one (generate/quantize.py): each block in one call of
codelm's kernels (native.py's decode_block), the same arithmetic in C++. In Python a block
is ~40 small torch ops whose dispatch costs more than their work at batch 1: `small` with
int8 weights took 1.86 ms a step, 0.91 through `fast_step` (kernels.cpp has the numbers).

With `n_kv_head` < `n_head` (grouped-query attention) query head h reads key/value
head h // (n_head / n_kv_head), as torch's `enable_gqa` and HF's checkpoints have it;
the cache holds only the n_kv_head heads. Imported models may have heads of their own size
(`head_size`: the attention is n_head * head_size wide, not n_embd), QK-norm (each head's
queries and keys RMSNorm'd before RoPE) and scaled RoPE frequencies (`rope_frequencies`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.model import native
from codelm.model.config import ModelConfig
from codelm.model.kv_cache import KVCache, Where

# Rows (B * T new tokens) up to which T > 1 tokens after cached ones (speculation's drafts)
# run through `fast_step`, which reads each weight once for all rows: `small` int8's blocks at
# 200 positions took 6.35 ms against 8.78 through Python at 32 rows, 9.56 / 12.0 at 48. Longer
# chunks (a prompt's continuation) keep the GEMMs, which gain more with rows.
FUSED_MAX_ROWS = 32


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps or 1e-6)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps or 1e-5, bias=cfg.bias)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (block_size, head_dim) for rotary embeddings.

    Pair i of the D/2 channel pairs is rotated by angle pos * theta^(-2i/D). Its channels
    are 2i and 2i+1 (rope_layout "interleaved") or i and i + D/2 ("half"). Both channels
    of a pair share the angle, and sin carries the rotation's sign: -sin on the pair's
    first channel, +sin on its second.
    """
    angles = torch.outer(torch.arange(cfg.block_size).float(), rope_frequencies(cfg))  # (block_size, D/2)
    cos, sin = angles.cos(), angles.sin()
    if cfg.rope_layout == "half":
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """The D/2 pairs' angular frequencies, theta^(-2i/D), scaled as `cfg.rope_scaling` says."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    if cfg.rope_scaling == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        # 0 for a wavelength past context / low_freq_factor (divided by the factor), 1 for one
        # under context / high_freq_factor (kept), linear in context / wavelength between.
        ratio = cfg.rope_original_context * inv_freq / (2 * math.pi)  # context / wavelength
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        keep = ((ratio - low) / (high - low)).clamp(0, 1)
        return (1 - keep) * inv_freq / cfg.rope_factor + keep * inv_freq
    return inv_freq


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "interleaved"
) -> torch.Tensor:
    """Rotate channel pairs of x (B, H, T, D) by position-dependent angles: tables (T, D)
    or (B, 1, T, D) from `rope_tables` for the same `layout`.

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), as x * cos + swapped(x) * signed sin:
    the same float results as slicing out the pairs, in half the time for training steps
    (3.8 -> 2.7 ms fwd+bwd per call at (8, 6, 256, 64) in bf16).
    """
    if layout == "interleaved" and x.dtype == torch.float32:
        # Each pair as one complex number times cos + i sin: one op forward and one backward
        # instead of mul, flip, mul, add (fp32 only: torch has no bf16 complex type). The same
        # bits; q and k's RoPE forward and backward in a `tiny` training step on emulated AVX2
        # took 0.7 ms a layer instead of 3.9 (the whole step 0.90x -> 0.92-0.93x transformers).
        rot = torch.complex(cos[..., 0::2], sin[..., 1::2])
        return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rot).flatten(-2)
    if layout == "half":
        half = x.size(-1) // 2
        swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)  # (x2, x1) in each pair
    else:
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x2, x1) in each pair
    return (x * cos + swapped * sin).type_as(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention of q (B, H, T, D) over k, v (B, Hkv, T, D) -> (B, H, T, D),
    Hkv dividing H (grouped-query attention where they differ).

    Training in bf16 on CPU with T <= 512, the explicit form (scores, mask, softmax,
    weighted sum) beats torch's flash kernel for CPU, whose bf16 backward is slow. Steps
    of a whole `small` model alternating in one process on 2 cores: +15% tokens/s at
    T=256, +21% at T=512, no gain at T=1024. The explicit form keeps (T, T) scores for
    backward, which grow quadratically, so longer sequences keep the flash kernel, and
    so do fp32 (where that kernel is faster), inference and CUDA.
    """
    T, G = q.shape[-2], q.size(1) // k.size(1)
    cpu_bf16_training = q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()
    if not cpu_bf16_training or T > 512:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=G > 1)
    q = q.unflatten(1, (-1, G))  # (B, Hkv, G, T, D): the G query heads that share a kv head
    k, v = k.unsqueeze(2), v.unsqueeze(2)  # (B, Hkv, 1, T, D), broadcast over those G
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)  # (T, T)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + future  # (B, Hkv, G, T, T)
    y = torch.softmax(scores, dim=-1) @ v  # softmax accumulates in float internally
    return y.flatten(1, 2)  # (B, H, T, D)


def one_token_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one new token per row, q (B, H, 1, D), over cached k, v (B, Hkv, S, D):
    all S positions, or row b's first lens[b] (B,) ones. Query head h reads kv head
    h // (H / Hkv).

    Decoding reads the whole cache once per token. On CPU codelm's kernel (native.py)
    reads it faster than torch's flash kernel for CPU: about 95 against 155-250 us per
    `base` layer at 600 positions, the cache cold as in a real step (2 cores), and 54 us
    from a bf16 cache (Transformer.kv_dtype), which torch's kernels read slower than fp32.
    """
    if (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and k.dtype in (torch.float32, torch.bfloat16)
        and q.shape[-1] % 16 == 0
        and q.size(1) % k.size(1) == 0
        and k.stride(-1) == 1
        and k.stride(-2) == q.shape[-1]
        and v.stride() == k.stride()
        and native.available()
    ):
        return torch.ops.codelm.attend_one(q, k, v, lens)
    mask = None if lens is None else (torch.arange(k.size(2), device=k.device) < lens[:, None])[:, None, None]
    gqa = k.size(1) != q.size(1)
    return F.scaled_dot_product_attention(q, k.type_as(q), v.type_as(q), attn_mask=mask, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        width = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim  # fused q, k, v heads: one matmul
        self.qkv = nn.Linear(cfg.n_embd, width, bias=cfg.qkv_bias or cfg.bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        if cfg.qk_norm:  # over each head's D channels, one weight shared by the heads
            self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps or 1e-6)
            self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps or 1e-6)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        cache: KVCache | None = None,
        where: Where | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, Hkv, D = self.cfg.n_head, self.cfg.kv_heads, self.cfg.head_dim
        heads = self.qkv(x).view(B, T, H + 2 * Hkv, D).transpose(1, 2)  # (B, H + 2 Hkv, T, D)
        q, k, v = heads.split_with_sizes((H, Hkv, Hkv), dim=1)  # q (B, H, T, D); k, v (B, Hkv, T, D)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            layout = self.cfg.rope_layout
            q, k = apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout)
        if cache is None or where is None:
            y = causal_attention(q, k, v)
        else:
            keys, values = cache.update(self.layer, k, v, where)  # (B, Hkv, span, D), cache dtype
            if where.fresh:  # nothing before: attend to the new keys as computed
                y = causal_attention(q, k, v)
            elif T == 1 and where.mask is None:  # one token per row over its cached keys
                y = one_token_attention(q, keys, values, where.lens)
            else:  # a bf16 cache (Transformer.kv_dtype) computes in float
                keys, values = keys.type_as(q), values.type_as(q)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=where.mask, enable_gqa=Hkv != H)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H * D): C, unless the heads have their own size
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        hidden = cfg.mlp_hidden
        self.up = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (B, T, hidden) or (B, T, 2*hidden) fused gate+up
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = _norm(cfg), Attention(cfg, layer)
        self.norm2, self.mlp = _norm(cfg), MLP(cfg)

    def forward(self, x, cos, sin, cache=None, where=None):
        x = x + self.attn(self.norm1(x), cos, sin, cache, where)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # dtype of the KV caches that new_cache makes; None: the parameters'. Generation sets
        # bf16 on CPU (generate/quantize.py): half the bytes to read per decoded token.
        self.kv_dtype: torch.dtype | None = None
        # The blocks of a decode step (T new tokens per row) through codelm's kernels, a call
        # a block (native.py's decode_block): (x (B, T, C), cache, where) -> x after them. Set
        # by generation (generate/quantize.py) where the kernels read every layer; None: Python.
        self.fast_step: Callable[[torch.Tensor, KVCache, Where], torch.Tensor] | None = None
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = _norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.wte.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2's scaled init: each residual branch adds variance, so shrink its output.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pos: torch.Tensor | None = None,
        hidden: list[torch.Tensor] | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T).

        With `cache`, `idx` holds only new tokens: their keys and values are written at
        positions `pos` ((T,) shared, or (B, T) per row; by default after what each row
        of the cache holds) and each token sees its row's keys up to its own position.
        Without a cache the tokens sit at 0 .. T-1 (training). With `hidden`, the
        residual stream after each block is appended to it (for the logit lens). With
        `at` (B,), only the logits at position at[b] of each row are computed, (B, 1,
        vocab): all a prompt's prefill needs.
        """
        B, T = idx.shape
        where = None
        if cache is not None:
            where = cache.plan(T) if pos is None else Where.of(pos)
            pos = where.pos
        last = where.span - 1 if where else T - 1 if pos is None else int(pos.max())
        if last >= self.cfg.block_size:
            raise ValueError(f"position {last} is past the context of {self.cfg.block_size} tokens")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device) if pos is None else pos)
        x = self.drop(x)
        # A decode step (T == 1), or a few tokens after cached ones (speculation's drafts to verify):
        # the kernels have no backward, and a fresh prompt or a long chunk takes the GEMMs below.
        step = where is not None and (T == 1 or not where.fresh and B * T <= FUSED_MAX_ROWS)
        if step and self.fast_step is not None and hidden is None and not torch.is_grad_enabled():
            x = self.fast_step(x, cache, where)
        else:
            cos, sin = self._rope_rows(pos, where, T)
            for block in self.blocks:
                x = block(x, cos, sin, cache, where)
                if hidden is not None:
                    hidden.append(x)
        if cache is not None:
            cache.advance(where)
        if at is not None:
            x = x[torch.arange(B, device=x.device), at.to(x.device)][:, None]  # (B, 1, C)
        return self.head(self.norm_f(x))  # (B, T, vocab)

    def _rope_rows(
        self, pos: torch.Tensor | None, where: Where | None, T: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """RoPE's cos and sin rows at the tokens' positions: (T, D) shared by every row, or
        (B, 1, T, D) per row (broadcast over heads); None for learned positions."""
        if self.wpe is not None:
            return None, None
        if pos is None or where is not None and where.first is not None:  # shared: a slice
            first = where.first if where else 0
            return self.rope_cos[first : first + T], self.rope_sin[first : first + T]
        if pos.dim() == 1:
            return self.rope_cos[pos], self.rope_sin[pos]
        return self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)

    def _apply(self, fn, recurse=True):
        self.fast_step = None  # moved or converted (.to, .float): the fused step holds the old tensors
        return super()._apply(fn, recurse)

    def new_cache(self, rows: int, max_len: int | None = None) -> KVCache:
        """An empty cache of `rows` sequences of up to `max_len` tokens (the context)."""
        c = self.cfg
        p = self.norm_f.weight  # a float parameter even when generation swaps the linears
        dtype = self.kv_dtype or p.dtype
        return KVCache(c.n_layer, rows, c.kv_heads, max_len or c.block_size, c.head_dim, dtype, p.device)
