"""A preallocated key/value cache for incremental decoding.

Growing the cache with `torch.cat` costs more than the matmuls at batch 1
(55% of transformers' decode step on these CPUs, MEASURED.md), so the cache is
allocated once at its full length and written in place.

Rows of different prompt lengths share one cache by left padding: `start[b]`
is the number of padding slots in front of row b. The model then masks those
slots and counts row b's positions from `start[b]`. With `start` None (every
row starts at slot 0) the model takes its plain, unmasked path.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        start: torch.Tensor | None = None,
    ):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # number of positions already stored
        self.start = start  # (batch,) left-padding slots per row, or None for no padding

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) at the next T positions; return all keys/values so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} positions")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def repeat_rows(self, n: int) -> KVCache:
        """A new cache with each row repeated n times in place (row b -> rows b*n .. b*n+n-1):
        one prefill of a prompt serves n samples of it."""
        out = object.__new__(KVCache)
        out.k = self.k.repeat_interleave(n, dim=1)
        out.v = self.v.repeat_interleave(n, dim=1)
        out.max_len, out.pos = self.max_len, self.pos
        out.start = None if self.start is None else self.start.repeat_interleave(n)
        return out
