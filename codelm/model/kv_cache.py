"""A preallocated key/value cache of rows, each with its own length, for incremental decoding.

Growing a cache with `torch.cat` costs more than the matmuls at batch 1 (55% of
transformers' decode step in a torch profile of its `generate`, 2 CPU cores), so
the cache is allocated once at its full length and written in place.

Each row is one sequence: its keys and values sit at slots 0 .. lens[b]-1, the
slot of a token being its position. So rows of different lengths share one cache
without padding in front, and a row's next token goes to slot lens[b]. The model
(`Transformer.forward`) writes through `update` at per-row positions and asks
`positions` where new tokens go; it never needs to know how rows are managed.
Callers that hold rows of their own (the decoding engine, `codelm.generate`)
take a view of some rows (`rows`), copy a row into others (one prefill serving n
samples of a prompt), move a row (keeping the active rows 0..n-1 contiguous) and
set a row's length (after a right-padded prefill).

It does not page or share blocks between rows: memory is rows x layers x
kv heads x max_len x head_dim x 2 (keys and values).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layer: int,
        rows: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (n_layer, rows, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(rows, dtype=torch.long)  # tokens stored per row (on the CPU)
        self.max_len = max_len

    @property
    def device(self) -> torch.device:
        return self.k.device

    def rows(self, first: int, count: int) -> KVCache:
        """A view of rows first .. first+count-1: writes through it land in this cache."""
        out = object.__new__(KVCache)
        out.k, out.v = self.k[:, first : first + count], self.v[:, first : first + count]
        out.lens, out.max_len = self.lens[first : first + count], self.max_len
        return out

    def positions(self, T: int) -> torch.Tensor:
        """Positions of T new tokens after what each row holds: (T,) when every row holds
        the same length (the plain path), else (B, T)."""
        lo, hi = int(self.lens.min()), int(self.lens.max())
        if hi + T > self.max_len:
            raise ValueError(f"KV cache full: {hi + T} > {self.max_len} positions")
        steps = torch.arange(T, device=self.device)
        if lo == hi:
            return steps + lo
        return self.lens.to(self.device)[:, None] + steps  # (B, T)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) at positions `pos` ((T,) or (B, T)); return each row's keys
        and values up to the furthest position written, (B, H, span, D), in the cache's dtype."""
        span = int(pos.max()) + 1
        if pos.dim() == 1:  # every row at the same positions: a slice, no gather
            first = int(pos[0])
            self.k[layer, :, :, first:span] = k
            self.v[layer, :, :, first:span] = v
        else:
            rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
            self.k[layer][rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)  # (B, T, H, D) slots
            self.v[layer][rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[layer, :, :, :span], self.v[layer, :, :, :span]

    def advance(self, pos: torch.Tensor) -> None:
        """After a forward at `pos`: each row holds up to its last position written."""
        self.lens.copy_((pos[..., -1].cpu() + 1).expand_as(self.lens))

    def copy_row(self, src: int, dst: int) -> None:
        """Row dst becomes a copy of row src (its keys, values and length)."""
        n = int(self.lens[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lens[dst] = n

    def set_length(self, row: int, n: int) -> None:
        """Row `row` holds its first n positions (the rest is free to overwrite)."""
        self.lens[row] = n
