"""A preallocated key/value cache of rows, each with its own length, for incremental decoding.

Growing a cache with `torch.cat` costs more than the matmuls at batch 1 (55% of
transformers' decode step in a torch profile of its `generate`, 2 CPU cores), so
the cache is allocated once at its full length and written in place.

Each row is one sequence: its keys and values sit at slots 0 .. lens[b]-1, the
slot of a token being its position. So rows of different lengths share one cache
without padding in front, and a row's next token goes to slot lens[b]. The model
(`Transformer.forward`) asks `plan` where new tokens go (a `Where`: positions, shared
or per row, and what each token may see), writes through `update`, and calls
`advance`; it never needs to know how rows are managed. Row lengths live on the
host (numpy), so a decode step reads them without a device round trip.
Callers that hold rows of their own (the decoding engine, `codelm.generate`)
take a view of some rows (`rows`), copy a row into others (one prefill serving n
samples of a prompt), move a row (keeping the active rows 0..n-1 contiguous) and
set a row's length (after a right-padded prefill).

It does not page or share blocks between rows: memory is rows x layers x
kv heads x max_len x head_dim x 2 (keys and values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(slots=True)  # made once per forward: not frozen, whose __init__ costs 2x
class Where:
    """Where a forward's T new tokens sit, and which cached keys each of them sees."""

    pos: torch.Tensor  # (T,) positions shared by every row, or (B, T) per row
    first: int | None  # pos[0] when shared, None per row
    span: int  # the furthest position + 1: the keys any of them may see
    fresh: bool  # nothing before them (shared positions from 0): plain causal attention
    mask: torch.Tensor | None  # (T, span) or (B, 1, T, span) bool, True = visible; None: all
    lens: torch.Tensor | None  # (B,) keys visible to a single new token per row; None: all

    @classmethod
    def of(cls, pos: torch.Tensor) -> Where:
        """The positions' plan, computed once per forward: its ints are read on the host
        once, not in every layer (a decode step of `base` spent 0.4 ms doing that)."""
        T = pos.size(-1)
        if pos.dim() == 1:
            return cls.shared(pos, int(pos[0]))
        span = int(pos.max()) + 1
        if T == 1:
            return cls(pos, None, span, False, None, pos[:, 0] + 1)
        keys = torch.arange(span, device=pos.device)
        return cls(pos, None, span, False, (keys <= pos[:, :, None])[:, None], None)  # j seen from p >= j

    @classmethod
    def shared(cls, pos: torch.Tensor, past: int) -> Where:
        """Positions past .. past+T-1 (pos, (T,)) for every row."""
        T = pos.size(0)
        if past == 0 or T == 1:  # causal from 0, or one token that sees every key
            return cls(pos, past, past + T, past == 0, None, None)
        mask = torch.ones(T, past + T, dtype=torch.bool, device=pos.device).tril(past)
        return cls(pos, past, past + T, False, mask, None)


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
        # Tokens stored per row, on the host: a step reads them without a device round trip,
        # and numpy's small-array ops cost a fraction of torch's (a `tiny` decode step is ~1 ms).
        self.lens = np.zeros(rows, dtype=np.int64)
        self.max_len = max_len
        self.steps = torch.arange(max_len, device=device)  # positions, sliced instead of made

    @property
    def device(self) -> torch.device:
        return self.k.device

    def rows(self, first: int, count: int) -> KVCache:
        """A view of rows first .. first+count-1: writes through it land in this cache."""
        out = object.__new__(KVCache)
        out.k, out.v = self.k[:, first : first + count], self.v[:, first : first + count]
        out.lens, out.max_len, out.steps = self.lens[first : first + count], self.max_len, self.steps
        return out

    def plan(self, T: int) -> Where:
        """Where T new tokens go after what each row holds: shared positions when every row
        holds the same length (the plain path), else per row."""
        lens = self.lens.tolist()  # a few ints: cheaper in Python than numpy's reductions
        lo, hi = min(lens), max(lens)
        if hi + T > self.max_len:
            raise ValueError(f"KV cache full: {hi + T} > {self.max_len} positions")
        if lo == hi:
            return Where.shared(self.steps[lo : lo + T], lo)
        return Where.of(torch.from_numpy(self.lens).to(self.device)[:, None] + self.steps[:T])  # (B, T)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, where: Where
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) at `where.pos` ((T,) or (B, T)); return each row's keys and
        values up to the furthest position written, (B, H, span, D), in the cache's dtype."""
        pos, span = where.pos, where.span
        if where.first is not None:  # every row at the same positions: a slice, no gather
            self.k[layer, :, :, where.first : span] = k
            self.v[layer, :, :, where.first : span] = v
        else:
            rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
            self.k[layer][rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)  # (B, T, H, D) slots
            self.v[layer][rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[layer, :, :, :span], self.v[layer, :, :, :span]

    def advance(self, where: Where) -> None:
        """After a forward: each row holds up to its last position written."""
        if where.first is not None:
            self.lens[:] = where.span
        else:
            self.lens[:] = where.pos[:, -1].cpu().numpy() + 1

    def set_lengths(self, lens: Sequence[int]) -> None:
        """Each row holds its first lens[b] positions (the rest is free to overwrite)."""
        self.lens[:] = lens

    def copy_row(self, src: int, dst: int) -> None:
        """Row dst becomes a copy of row src (its keys, values and length)."""
        n = int(self.lens[src])  # a numpy scalar would not slice a tensor
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lens[dst] = n

    def set_length(self, row: int, n: int) -> None:
        """Row `row` holds its first n positions (the rest is free to overwrite)."""
        self.lens[row] = n
