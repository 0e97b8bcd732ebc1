"""The decoder-only transformer, readable top to bottom.

token ids (B, T) -> embedding -> n_layer x [pre-norm causal self-attention, pre-norm MLP]
-> final norm -> linear head (tied to the embedding) -> logits (B, T, vocab).

Attention is torch's `scaled_dot_product_attention`, causal by construction, so
a token never sees the tokens after it. Two cases on CPU take an equivalent faster
form: bf16 training (`causal_attention`) and one decoded token (`one_token_attention`,
codelm's kernel). With a `KVCache` the same forward decodes incrementally: pass
only the new tokens and the cache remembers the rest.
A cache with per-row `start` offsets holds left-padded prompts of different
lengths; only then is an explicit mask built (see `padded_positions`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.model import native
from codelm.model.config import ModelConfig
from codelm.model.kv_cache import KVCache


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=1e-6)
    return nn.LayerNorm(cfg.n_embd, bias=False)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (block_size, head_dim) for rotary embeddings of interleaved pairs.

    Channels 2i and 2i+1 form a pair rotated by angle pos * theta^(-2i/D). Both channels
    of a pair share the angle, and sin carries the rotation's sign: (-sin, +sin).
    """
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)  # (block_size, D/2)
    cos, sin = angles.cos(), angles.sin()
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, H, T, D) by position-dependent angles: tables (T, D).

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), as x * cos + swapped(x) * signed sin:
    the same float results as slicing out the pairs, in half the time for training steps
    (3.8 -> 2.7 ms fwd+bwd per call at (8, 6, 256, 64) in bf16).
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x2, x1) in each pair
    return (x * cos + swapped * sin).type_as(x)


def padded_positions(start: torch.Tensor, past: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, T) and attention mask (B, 1, T, past + T) for left-padded rows.

    Row b's real tokens begin at slot start[b]: its positions count from there, so a
    padded row computes exactly what it would alone, and its keys before start[b]
    are masked. A padding slot sees itself, so no mask row is empty (which gives NaN).
    """
    slots = torch.arange(past + T, device=start.device)
    q = slots[past:]  # the new tokens' slots (T,)
    pos = (q[None] - start[:, None]).clamp(min=0)  # (B, T)
    key, query, first = slots[None, None], q[None, :, None], start[:, None, None]
    keep = ((key <= query) & (key >= first)) | (key == query)  # (B, T, past + T)
    return pos, keep.unsqueeze(1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention of q, k, v (B, H, T, D) -> (B, H, T, D).

    Training in bf16 on CPU with T <= 512, the explicit form (scores, mask, softmax,
    weighted sum) beats torch's flash kernel for CPU, whose bf16 backward is slow. Steps
    of a whole `small` model alternating in one process on 2 cores: +15% tokens/s at
    T=256, +21% at T=512, no gain at T=1024. The explicit form keeps (T, T) scores for
    backward, which grow quadratically, so longer sequences keep the flash kernel, and
    so do fp32 (where that kernel is faster), inference and CUDA.
    """
    T = q.shape[-2]
    cpu_bf16_training = q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()
    if not cpu_bf16_training or T > 512:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)  # (T, T)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + future  # (B, H, T, T)
    return torch.softmax(scores, dim=-1) @ v  # softmax accumulates in float internally


def one_token_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one new token per row, q (B, H, 1, D), over cached k, v (B, H, S, D):
    all S positions, or row b's first lens[b] (B,) ones.

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
        and k.stride(-1) == 1
        and k.stride(-2) == q.shape[-1]
        and v.stride() == k.stride()
        and native.available()
    ):
        return torch.ops.codelm.attend_one(q, k, v, lens)
    mask = None if lens is None else (torch.arange(k.size(2), device=k.device) < lens[:, None])[:, None, None]
    return F.scaled_dot_product_attention(q, k.type_as(q), v.type_as(q), attn_mask=mask)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)  # fused: one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        cache: KVCache | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.cfg.n_head, self.cfg.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.pos
            stored = cache.update(self.layer, k, v)  # (B, H, past + T, D), in the cache's dtype
            if past:  # earlier positions live only in the cache
                k, v = stored
        if T == 1 and past and mask is None:  # one new token sees every cached one
            y = one_token_attention(q, k, v)
        else:
            k, v = k.type_as(q), v.type_as(q)  # a bf16 cache (Transformer.kv_dtype) computes in float
            if mask is not None:  # left-padded rows: the mask is causal too
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            elif past == 0:
                y = causal_attention(q, k, v)
            else:  # a chunk after a prefix: row i sees keys 0 .. past + i
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        hidden = cfg.mlp_hidden
        self.up = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=False)

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

    def forward(self, x, cos, sin, cache, mask=None):
        x = x + self.attn(self.norm1(x), cos, sin, cache, mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # dtype of the KV caches that new_cache makes; None: the parameters'. Generation sets
        # bf16 on CPU (generate/quantize.py): half the bytes to read per decoded token.
        self.kv_dtype: torch.dtype | None = None
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

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        hidden: list[torch.Tensor] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T).

        With `cache`, `idx` holds only new tokens, placed after the cached ones.
        With `hidden`, the residual stream after each block is appended to it
        (for the logit lens). With `last_only`, only the last position's logits
        (B, 1, vocab) are computed: all a prompt's prefill needs.
        """
        B, T = idx.shape
        past = cache.pos if cache is not None else 0
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.cfg.block_size}")
        pos = mask = None
        if cache is not None and cache.start is not None:
            pos, mask = padded_positions(cache.start, past, T)  # (B, T), (B, 1, T, past + T)
        x = self.wte(idx)  # (B, T, C)
        cos = sin = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(past, past + T, device=idx.device) if pos is None else pos)
        elif pos is None:
            cos, sin = self.rope_cos[past : past + T], self.rope_sin[past : past + T]
        else:  # per-row positions: (B, 1, T, D) broadcasts over heads
            cos, sin = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, cos, sin, cache, mask)
            if hidden is not None:
                hidden.append(x)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm_f(x))  # (B, T, vocab)

    def new_cache(self, batch: int, max_len: int | None = None, start: torch.Tensor | None = None) -> KVCache:
        """An empty cache; `start` (batch,) gives each row's left padding (see kv_cache.py)."""
        c = self.cfg
        p = self.norm_f.weight  # a float parameter even when generation swaps the linears
        return KVCache(
            c.n_layer,
            batch,
            c.n_head,
            max_len or c.block_size,
            c.head_dim,
            dtype=self.kv_dtype or p.dtype,
            device=p.device,
            start=start,
        )
