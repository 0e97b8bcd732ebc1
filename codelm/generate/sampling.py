"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalties.

The defaults suit code: a low temperature (0.2) keeps completions on the likely
path, and top-p 0.95 cuts the long tail of junk tokens. Everything works on a
batch of rows (B, V) at once; one seeded generator makes a batch reproducible.
This module does not stop generation (see stopping.py) nor run the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from codelm.errors import CodelmError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.2  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 0.95  # nucleus mass kept, in (0, 1]
    max_new_tokens: int = 256
    seed: int | None = None  # None: torch's global generator
    # (fields above keep their positions: callers pass the first four positionally)
    # > 1 lowers the logits of tokens this completion already produced (CTRL, Keskar et al.
    # 2019). Prompt tokens are never penalised, so a completion may reuse the prompt's names.
    # Measured on 40 held-out functions with the demo's 5-minute model (bench/quality.py
    # --penalties): 1.1 made 70% of single completions parse against 42% at 1.0, at equal
    # similarity to the true body (0.198 against 0.195); 1.2 parsed 65%.
    repetition_penalty: float = 1.1
    # DRY, "don't repeat yourself" (llama.cpp's --dry-*): a token that would extend a repeat of
    # an earlier run of n >= dry_allowed_length tokens of this completion loses
    # dry_multiplier * dry_base ** (n - dry_allowed_length) from its logit, so a loop is broken
    # before it forms rather than cut after; 0 turns it off. On 60 held-out functions
    # (bench/repetition.py), with the penalty above, the repetition rule cut none of the
    # completions at temperature 0, against 7% (the demo's recipe, 5 minutes on AVX2) and 40%
    # (`small`, 25 minutes); parse rates held or rose (0.52 -> 0.52, 0.45 -> 0.57); similarity to the
    # true body held on the demo's model (0.141 -> 0.144) and fell on `small` (0.222 -> 0.187).
    # llama.cpp lets repeats of 2 tokens run free; code repeats short runs (`self.`, `)\n`), 4.
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 4

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise CodelmError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CodelmError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise CodelmError(f"top-k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise CodelmError(f"repetition penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens <= 0:
            raise CodelmError(f"max new tokens must be positive, got {self.max_new_tokens}")
        if self.dry_multiplier < 0 or self.dry_base < 1 or self.dry_allowed_length < 1:
            raise CodelmError("DRY needs multiplier >= 0, base >= 1 and allowed >= 1")


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
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V)."""
    if cfg.temperature == 0:  # max's indices: 10 us against argmax's 25 over 16k logits (measured)
        return logits.max(-1).indices
    probs = filter_logits(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
