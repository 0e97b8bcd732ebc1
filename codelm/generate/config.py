"""How to sample, as one frozen config: temperature, top-k, top-p, the length, the seed, and
the penalties against repetition. Kept apart from sampling.py, which applies it to logits,
so that callers that only pass it on (the notebook's and the editor's thin clients, which
send it to a server) never import torch.

The defaults suit code: a low temperature (0.2) keeps completions on the likely path, and
top-p 0.95 cuts the long tail of junk tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

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
