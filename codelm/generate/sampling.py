"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalties,
as a `SamplingConfig` (config.py, where the defaults and their reasons are) says.

Everything works on a batch of rows (B, V) at once; one seeded generator makes a batch
reproducible. This module does not stop generation (see stopping.py) nor run the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from codelm.generate.config import SamplingConfig


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive and multiply negative logits of tokens marked in `seen` (B, V) by
    `penalty`, so a seen token always becomes less likely whatever its sign."""
    if penalty == 1.0:
        return logits
    logits = logits.float()
    lowered = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, lowered, logits)


DRY_LONGEST = 32  # matches longer than this cost as much as this: the power stays finite


def dry_penalties(tokens: Sequence[int], cfg: SamplingConfig) -> dict[int, float]:
    """What DRY takes off each next token's logit, given the completion's tokens so far.

    For every earlier position j where tokens[j] equals the last token, n is the length of
    the run ending at j that equals the run ending at the last token; the token that followed
    j would extend that repeat to n + 1. Each such token keeps its longest n. O(len * n).
    """
    if cfg.dry_multiplier == 0 or len(tokens) < cfg.dry_allowed_length:
        return {}
    last, end = tokens[-1], len(tokens) - 1
    longest: dict[int, int] = {}
    for j in range(end - 1, -1, -1):
        if tokens[j] != last:
            continue
        n = 1
        while n <= j and n < DRY_LONGEST and tokens[j - n] == tokens[end - n]:
            n += 1
        follower = tokens[j + 1]
        longest[follower] = max(longest.get(follower, 0), n)
    return {
        t: cfg.dry_multiplier * cfg.dry_base ** (n - cfg.dry_allowed_length)
        for t, n in longest.items()
        if n >= cfg.dry_allowed_length
    }


def apply_dry(logits: torch.Tensor, histories: Sequence[Sequence[int]], cfg: SamplingConfig) -> torch.Tensor:
    """Logits (R, V) with each row's DRY penalties (from its history of generated tokens) taken off."""
    costs = [dry_penalties(h, cfg) for h in histories]
    if not any(costs):  # the usual step: no repeat under way, no copy of the logits
        return logits
    logits = logits.float().clone()
    for r, row in enumerate(costs):
        for t, cost in row.items():
            logits[r, t] -= cost
    return logits


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Scale by temperature and mask tokens outside top-k / top-p with -inf. logits: (B, V)."""
    logits = logits.float() / max(cfg.temperature, 1e-8)
    if cfg.top_k > 0 and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        logits = logits.masked_fill(logits < nucleus_floor(logits, cfg.top_p), float("-inf"))
    return logits


NUCLEUS_CANDIDATES = 512  # top-p's first look: 512 beat 128, 256 and 1024 in the measure below


def nucleus_floor(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, 1): each row's smallest logit inside its nucleus, the fewest most likely tokens
    whose probability reaches `p` (the token that crosses `p` is in).

    The nucleus is first looked for among the NUCLEUS_CANDIDATES most likely tokens (`topk`),
    with probabilities normalised over the whole vocabulary; only a row whose candidates hold
    less than `p` of the mass is sorted whole. Tokens tied with the floor are all kept,
    whichever order a sort would give them. Measured on 200 samples of one codelm_basic
    problem in one batch (the 5-minute demo model, a 4k vocabulary, temperature 0.8, top-p
    0.95, 2 cores): the nucleus took 2.1 s where a full sort of every row took 5.5 s, and the
    whole call 11.0 s instead of 15.6. A row wider than the candidates (a flat distribution)
    pays the top-k and the sort: on random logits, up to 1.5x the sort alone."""
    k = min(NUCLEUS_CANDIDATES, logits.size(-1))
    top = torch.topk(logits, k, dim=-1).values  # (B, k), descending
    probs = (top - torch.logsumexp(logits, -1, keepdim=True)).exp()
    inside = (probs.cumsum(-1) - probs < p).sum(-1, keepdim=True)  # up to the crossing token
    floor = top.gather(-1, inside - 1)
    short = probs.sum(-1) < p  # the candidates hold less than p: the nucleus is wider
    if short.any():
        rows = torch.sort(logits[short], descending=True, dim=-1).values
        whole = rows.softmax(-1)
        inside = (whole.cumsum(-1) - whole < p).sum(-1, keepdim=True)
        floor[short] = rows.gather(-1, inside - 1)
    return floor


def sample(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V)."""
    if cfg.temperature == 0:  # max's indices: 10 us against argmax's 25 over 16k logits (measured)
        return logits.max(-1).indices
    probs = filter_logits(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
