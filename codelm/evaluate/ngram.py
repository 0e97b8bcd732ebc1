"""A token n-gram baseline: predicts the most frequent next token after the last n-1 tokens.

It learns from the training split's token stream and backs off to shorter
contexts when a context was never seen. Counting is vectorised with numpy: each
(context, next) pair is packed into one uint64 and counted with `np.unique`, so
millions of tokens take seconds. It exists to show what the model adds over
corpus statistics in line completion.
"""

from __future__ import annotations

import numpy as np

BITS = 16  # bits per token id in a packed key: vocabularies up to 65,536


class NGramModel:
    def __init__(self, tokens: np.ndarray, order: int = 4):
        if order < 1 or order * BITS > 64:
            raise ValueError(f"order must be in 1..{64 // BITS}")
        tokens = np.asarray(tokens, dtype=np.uint64)
        self.order = order
        self.tables: list[dict[int, int]] = []  # tables[k]: context of k tokens -> best next
        for k in range(order):
            self.tables.append(self._count(tokens, k) if len(tokens) > k else {})

    @staticmethod
    def _count(tokens: np.ndarray, k: int) -> dict[int, int]:
        n = len(tokens) - k
        ctx = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            ctx = (ctx << np.uint64(BITS)) | tokens[j : j + n]
        nxt = tokens[k : k + n]
        pairs, counts = np.unique((ctx << np.uint64(BITS)) | nxt, return_counts=True)
        ctx_of = pairs >> np.uint64(BITS)
        # For each context the most frequent next token: sort by (context, -count), take the first.
        order = np.lexsort((-counts, ctx_of))
        ctx_sorted = ctx_of[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = ctx_sorted[1:] != ctx_sorted[:-1]
        best = order[first]
        mask = np.uint64((1 << BITS) - 1)
        return dict(zip(ctx_of[best].tolist(), (pairs[best] & mask).tolist(), strict=True))

    def predict(self, context: list[int]) -> int | None:
        """The most frequent next token after the longest seen suffix of `context`."""
        for k in range(min(self.order - 1, len(context)), -1, -1):
            key = 0
            for t in context[len(context) - k :]:
                key = (key << BITS) | int(t)
            best = self.tables[k].get(key)
            if best is not None:
                return best
        return None

    def complete_line(self, context: list[int], is_newline, max_tokens: int = 48) -> list[int]:
        """Greedy prediction until a token that holds a newline (excluded) or the limit."""
        out: list[int] = []
        ctx = list(context[-(self.order - 1) :]) if self.order > 1 else []
        for _ in range(max_tokens):
            t = self.predict(ctx)
            if t is None or is_newline(t):
                break
            out.append(t)
            ctx = (ctx + [t])[-(self.order - 1) :] if self.order > 1 else []
        return out
