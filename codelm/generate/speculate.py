"""Speculative decoding without a second model: prompt-lookup drafts, verified in one pass.

Code repeats its own names, arguments and lines. `Lookup` drafts the next few tokens of a
row by finding the most recent earlier occurrence of its last n-gram (in the prompt or in
what it generated) and proposing the tokens that followed it (Saxena's prompt-lookup
decoding; llama.cpp's and vLLM's n-gram speculation). The engine feeds the row's last
token and the draft in one forward pass, which on a CPU bound by memory bandwidth costs
little more than one token, and `verify` keeps the longest run of drafts the model agrees
with, plus one token of its own:
- greedy: a draft is kept while it is the model's argmax, so the output is the plain
  greedy output, token for token (up to float rounding between the batched and the
  one-token forward);
- sampling: the standard rule for a draft distribution q (Leviathan et al. 2023, Chen et al.
  2023). A drafted token is a point mass q(d) = 1, so it is kept with probability p(d);
  after a rejection the token is drawn from p with d removed, renormalised, the residual
  max(0, p - q). Each kept or drawn token is distributed exactly as plain sampling would
  draw it: the output distribution is unchanged. The random stream differs, so a seeded
  run gives other (equally likely) samples than without speculation.
p is the distribution plain sampling uses at that position: the repetition penalty and DRY
applied with every token before it generated (the drafts before it included), then
temperature, top-k and top-p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from codelm.generate.config import SamplingConfig
from codelm.generate.sampling import apply_dry, filter_logits, penalize

# The most tokens drafted per row and step; each row adapts below it (`Lookup.feedback`).
# A verify pass of T tokens through the fused step costs about one step at T = 2-3 and
# grows with T after (the int8 loop turns compute-bound): `small` int8, 1 thread, 0.97 /
# 1.33 / 1.78 / 3.03 / 4.30 ms at T = 1 / 2 / 3 / 5 / 8; `base` 8.8 / 9.4 / 10.8 / 16.8 / 24.4.
DRAFT = 4
# Speculate only while this many rows decode together. A batch's forward is compute-bound
# already, and drafts multiply its tokens: tokens/s with drafts against without, 2 cores
# (`small` int8, temperature 0.2: 1.13x alone, 0.66x at 2 rows, 0.68x at 4, 0.66x at 8; the
# 5-minute `tiny` in fp32 at 0.8: 0.84x alone, 0.59x at 16 rows, 0.46x at 64).
SPECULATE_ROWS = 1


class Lookup:
    """Drafts for one growing token sequence (a row's prompt, then its tokens)."""

    def __init__(self, ids: Sequence[int], ngram: int = 3, min_ngram: int = 2, most: int = DRAFT):
        self.ngram, self.min_ngram, self.most = ngram, min_ngram, most
        self.k = min(2, most)  # this row's draft length now: grows while drafts are kept
        self.seq: list[int] = []
        # n -> n-gram -> the position after its latest occurrence that is not the sequence's end
        self._after: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_ngram, ngram + 1)}
        self.extend(ids)

    def extend(self, ids: Sequence[int]) -> None:
        for t in ids:
            end = len(self.seq)  # the n-grams ending here become "earlier" once t follows them
            for n, index in self._after.items():
                if end >= n:
                    index[tuple(self.seq[end - n : end])] = end
            self.seq.append(t)

    def feedback(self, drafted: int, kept: int) -> None:
        """Adapt the draft length to what the model keeps (as transformers' assisted
        generation does): one more after a draft kept whole, one fewer after a draft
        whose first token was rejected. It depends on the tokens only, never on timing,
        so a seeded run stays reproducible."""
        if kept == drafted:
            self.k = min(self.k + 1, self.most)
        elif kept == 0:
            self.k = max(self.k - 1, 1)

    def draft(self, k: int) -> list[int]:
        """Up to min(k, self.k) tokens that followed the latest earlier occurrence of the
        longest n-gram ending the sequence; [] when none occurred before."""
        k = min(k, self.k)
        if k <= 0:
            return []
        for n in range(self.ngram, self.min_ngram - 1, -1):
            if len(self.seq) < n:
                continue
            at = self._after[n].get(tuple(self.seq[-n:]))
            if at is not None:
                return self.seq[at : at + k]
        return []


def verify(
    logits: torch.Tensor,
    drafts: list[list[int]],
    cfg: SamplingConfig,
    gen: torch.Generator | None,
    seen: torch.Tensor | None,
    histories: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """The tokens each row emits: its kept drafts, then one token of the model's own.

    logits (R, T, V): position i of row r follows the row's last token and drafts[r][:i];
    `seen` (R, V): tokens each row generated before this pass (for the repetition penalty;
    None without one); `histories`: each row's generated tokens (for DRY, which sees the
    drafts before position i too; None: none yet). Rows draft at most T - 1 tokens each.
    """
    R, T, V = logits.shape
    width = torch.zeros(R, T - 1, dtype=torch.long, device=logits.device)  # drafts, padded
    has = torch.zeros(R, T - 1, dtype=torch.bool, device=logits.device)
    for r, d in enumerate(drafts):
        width[r, : len(d)] = torch.tensor(d, dtype=torch.long)
        has[r, : len(d)] = True
    if seen is not None and cfg.repetition_penalty != 1.0:
        # position i has also seen drafts 0..i-1: a cumulative one-hot over positions
        marks = torch.zeros(R, T, V, dtype=torch.int32, device=logits.device)
        marks[:, 1:].scatter_(2, width[..., None], has[..., None].int())
        seen_at = seen[:, None, :] | (marks.cumsum(1) > 0)
        logits = penalize(logits, seen_at, cfg.repetition_penalty)
    if cfg.dry_multiplier:
        histories = histories if histories is not None else [[] for _ in drafts]
        at = [[*h, *d[:i]] for h, d in zip(histories, drafts, strict=True) for i in range(T)]
        logits = apply_dry(logits.reshape(R * T, V), at, cfg).view(R, T, V)
    if cfg.temperature == 0:
        own = logits.argmax(-1)  # (R, T)
        agree = (own[:, :-1] == width) & has
        kept = agree.int().cumprod(1).sum(1).tolist()
        return [d[:m] + [int(own[r, m])] for r, (d, m) in enumerate(zip(drafts, kept, strict=True))]
    probs = filter_logits(logits.reshape(R * T, V), cfg).softmax(-1).view(R, T, V)
    p_draft = probs[:, :-1].gather(2, width[..., None])[..., 0]  # (R, T - 1)
    u = torch.rand(R, T - 1, generator=gen, device=logits.device)
    kept = ((u < p_draft) & has).int().cumprod(1).sum(1).tolist()
    out = []
    for r, (d, m) in enumerate(zip(drafts, kept, strict=True)):
        p = probs[r, m]
        if m < len(d):  # rejected d[m]: draw from what is left of p without it
            p = p.clone()
            p[d[m]] = 0.0
            if p.sum() <= 0:  # p was all on d[m] and u fell on its rounding: keep it after all
                p[d[m]] = 1.0
        out.append(d[:m] + [int(torch.multinomial(p, 1, generator=gen))])
    return out
