"""Batched decoding for the server: one preallocated KV cache of slots, rows of different lengths.

Every request being generated owns one slot (a row) of the cache and its own
position. A forward runs the model's own modules over several rows at once:
row b's tokens sit at positions `start[b] ...`, rotary angles (or learned
position embeddings) are taken per row, and each query sees only the keys of
its own row up to its own position. So a decode step batches requests whose
prompts and completions all have different lengths, with no padding, and a
request that arrives while others decode is prefilled into the next free slot
and joins them at the next step.

Active rows are kept in slots 0..n-1: when a row leaves, the last row's keys
and values move into its slot, so the attention of a step reads one contiguous
view of the cache.

It reads the weights of `codelm.model.Transformer` (embedding, blocks, final
norm, head) and must agree with `Transformer.forward` to float precision (quantized linears from
`codelm.generate.quantize` work too: they are called as modules; with its bf16 cache, to
bf16's precision);
tests/test_serve.py checks that parity. It does not chunk long prefills (a long
prompt holds the batch for one forward) and does not page the cache: memory is
slots x layers x heads x block_size x head_dim x 2 (keys and values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codelm.model import Transformer
from codelm.model.transformer import apply_rope, one_token_attention


class SlotDecoder:
    """KV cache of `slots` rows for `model`, with per-row positions."""

    def __init__(self, model: Transformer, slots: int):
        cfg = model.cfg
        p = model.norm_f.weight  # a float parameter even when the linears are quantized
        shape = (cfg.n_layer, slots, cfg.n_head, cfg.block_size, cfg.head_dim)
        self.model = model
        self.slots = slots
        dtype = model.kv_dtype or p.dtype  # bf16 where generation chose it (quantize.py)
        self.k = torch.zeros(shape, dtype=dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=dtype, device=p.device)
        self.lens: list[int] = []  # tokens stored in each active slot, slots 0..n-1

    @property
    def n(self) -> int:
        return len(self.lens)

    @property
    def device(self) -> torch.device:
        return self.k.device

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], every: list[bool] | None = None) -> list[torch.Tensor]:
        """Add one row per prompt (slots n, n+1, ...); return each prompt's logits: at its last
        position (1, vocab), or at every position (T_i, vocab) where `every[i]` is set."""
        if self.n + len(prompts) > self.slots:
            raise ValueError(f"{self.n} + {len(prompts)} rows exceed {self.slots} slots")
        if any(not p or len(p) > self.model.cfg.block_size for p in prompts):
            raise ValueError("a prompt is empty or longer than the context")
        width = max(len(p) for p in prompts)
        pad = [p + [p[-1]] * (width - len(p)) for p in prompts]  # right padding is never attended to
        idx = torch.tensor(pad, device=self.device)
        start = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        hidden = self._forward(idx, self.n, start)
        self.lens += [len(p) for p in prompts]
        every = every or [False] * len(prompts)
        return [self._logits(hidden[i, : len(p)] if all_ else hidden[i, len(p) - 1 : len(p)])
                for i, (p, all_) in enumerate(zip(prompts, every, strict=True))]  # fmt: skip

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one new token to each active row (in slot order); return logits (n, vocab)."""
        if len(tokens) != self.n:
            raise ValueError(f"{len(tokens)} tokens for {self.n} rows")
        if max(self.lens) >= self.model.cfg.block_size:
            raise ValueError("a row has filled the context")
        idx = torch.tensor(tokens, device=self.device).view(-1, 1)
        start = torch.tensor(self.lens, device=self.device)
        logits = self._logits(self._forward(idx, 0, start)[:, 0])
        self.lens = [n + 1 for n in self.lens]
        return logits

    def remove(self, slot: int) -> None:
        """Free `slot`; the last row moves into it (callers mirror this in their own list)."""
        last = self.n - 1
        if slot != last:
            length = self.lens[last]
            self.k[:, slot, :, :length] = self.k[:, last, :, :length]
            self.v[:, slot, :, :length] = self.v[:, last, :, :length]
            self.lens[slot] = length
        self.lens.pop()

    def clear(self) -> None:
        self.lens = []

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.norm_f(x))

    def _forward(self, idx: torch.Tensor, first: int, start: torch.Tensor) -> torch.Tensor:
        """The last residual stream (B, T, C) for rows first..first+B-1, tokens at positions
        start[b] + t; their keys and values are written into the cache."""
        m, cfg = self.model, self.model.cfg
        B, T = idx.shape
        H, D = cfg.n_head, cfg.head_dim
        pos = start[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        span = int(start.max()) + T  # keys any query of this forward may see
        # Key j is visible to the query at position p of the same row when j <= p.
        mask = torch.arange(span, device=idx.device) <= pos[:, :, None]  # (B, T, span)
        mask = mask[:, None]  # (B, 1, T, span), broadcast over heads
        rows = torch.arange(first, first + B, device=idx.device)[:, None]  # (B, 1)
        x = m.wte(idx)  # (B, T, C)
        cos = sin = None
        if m.wpe is not None:
            x = x + m.wpe(pos)
        else:
            cos, sin = m.rope_cos[pos][:, None], m.rope_sin[pos][:, None]  # (B, 1, T, D)
        for layer, block in enumerate(m.blocks):
            h = block.norm1(x)
            q, k, v = block.attn.qkv(h).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
            if cos is not None:
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            # Write this forward's keys/values at each row's own positions: (B, T, H, D).
            self.k[layer][rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)
            self.v[layer][rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
            keys = self.k[layer, first : first + B, :, :span]
            values = self.v[layer, first : first + B, :, :span]
            if T == 1:  # a decode step: each row sees its own first pos + 1 keys
                y = one_token_attention(q, keys, values, pos[:, 0] + 1)
            else:
                y = F.scaled_dot_product_attention(q, keys.type_as(q), values.type_as(q), attn_mask=mask)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(B, T, H * D))
            x = x + block.mlp(block.norm2(x))
        return x
