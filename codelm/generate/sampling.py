"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.

The defaults suit code: a low temperature (0.2) keeps completions on the likely
path, and top-p 0.95 cuts the long tail of junk tokens. Everything works on a
batch of rows (B, V) at once; one seeded generator makes a batch reproducible.
This module does not stop generation (see stopping.py) nor run the model.
"""

from __future__ import annotations

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


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive and multiply negative logits of tokens marked in `seen` (B, V) by
    `penalty`, so a seen token always becomes less likely whatever its sign."""
    if penalty == 1.0:
        return logits
    logits = logits.float()
    lowered = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, lowered, logits)


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
