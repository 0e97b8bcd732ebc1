"""Prompt reuse across requests: the keys and values of recent sequences, bounded in bytes.

An editor sends nearly the same prompt at every keystroke, a notebook re-sends the same
DataFrame schema, and API clients share a preamble. The decoding engine (engine.py) asks
`match` for the stored sequence that shares the longest token prefix with a new prompt,
copies that many positions of its keys and values into the new row, and prefills only
the tokens after them.

A sequence is the ids the model read (healed and fitted to the context, as the engine's
rows hold them), so a match is exact: the key and value at position i depend on ids
0..i only. A healed prompt ends one token early and its next token re-spells the cut
end; that token is part of what the row generated, so it is stored as read, never as the
text the user typed. Entries are stored when a row leaves the engine (finished or
cancelled): its prompt and the generated tokens whose keys it holds, so a user who types
along a suggestion reuses the suggestion too. A stored sequence that extends an entry
replaces it; one that an entry already covers only refreshes it.

Eviction is least recently used (a match or a store refreshes an entry), and the bound
counts the bytes of the stored keys and values. It does not page or share blocks between
live rows (vLLM's paged attention), and two prompts prefilled in the same batch do not
reuse each other. One cache serves one model: entries are checked for shape and dtype,
not for the weights that made them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(eq=False)
class Entry:
    ids: np.ndarray  # (n,) int64: the tokens whose keys and values are stored
    k: torch.Tensor  # (n_layer, n_kv_head, n, head_dim)
    v: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PrefixCache:
    """Keys and values of recent token sequences, at most `max_bytes` of them."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, ids: Sequence[int]) -> tuple[int, Entry | None]:
        """The stored entry sharing the longest prefix with `ids`, and that prefix's length
        (0 and None when nothing shares a first token)."""
        want = np.asarray(ids, dtype=np.int64)
        best, found = 0, None
        for key, e in self._entries.items():  # a few dozen entries: numpy compares each at once
            n = min(len(want), len(e.ids))
            if n <= best:
                continue
            differ = np.flatnonzero(want[:n] != e.ids[:n])
            same = int(differ[0]) if differ.size else n
            if same > best:
                best, found = same, key
        if found is None:
            return 0, None
        self._entries.move_to_end(found)
        return best, self._entries[found]

    def store(self, ids: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep a copy of `k`, `v` (n_layer, n_kv_head, >= len(ids), head_dim): the keys and
        values of `ids`, in its first len(ids) positions."""
        n = len(ids)
        seq = np.asarray(ids, dtype=np.int64)
        size = 2 * k[:, :, :n].numel() * k.element_size()
        if n == 0 or size > self.max_bytes:
            return
        for key, e in list(self._entries.items()):
            if len(e.ids) >= n and np.array_equal(e.ids[:n], seq):  # already covered: refresh
                self._entries.move_to_end(key)
                return
            if np.array_equal(seq[: len(e.ids)], e.ids):  # this one extends it: replace it
                self._drop(key)
        while self._entries and self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        entry = Entry(seq, k[:, :, :n].clone(), v[:, :, :n].clone())
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.bytes += entry.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: int) -> None:
        self.bytes -= self._entries.pop(key).nbytes
