"""The prediction trace: what the model weighed at each generated token.

For each token: the 5 most likely candidates with their probabilities and the one
chosen; with the logit lens, the top candidate after each layer, read through the
final norm and the head (nostalgebraist 2020), which shows at which depth the
prediction forms. Probabilities are the model's own (temperature 1), not those of
the sampling filter. This module computes and formats; it does not sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer

TOP = 5


@dataclass(frozen=True)
class TraceStep:
    token: int  # the chosen token
    prob: float  # its probability
    top: list[tuple[int, float]]  # the TOP most likely tokens, most likely first
    lens: list[tuple[int, float]] | None = None  # per layer: its top token and probability


def top_candidates(logprobs: torch.Tensor) -> list[list[tuple[int, float]]]:
    """The TOP most likely (token, probability) of each row of logprobs (B, V)."""
    values, ids = logprobs.topk(TOP, dim=-1)
    return [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.exp().tolist(), strict=True)]


@torch.no_grad()
def logit_lens(model: Transformer, hidden: list[torch.Tensor]) -> list[list[tuple[int, float]]]:
    """Per row: (token, probability) of the top candidate after each block, from the
    residual streams (B, T, C) that `model.forward(..., hidden=...)` collected."""
    per_layer = []
    for h in hidden:
        probs = model.head(model.norm_f(h[:, -1])).float().softmax(-1)  # (B, V)
        p, i = probs.max(-1)
        per_layer.append(list(zip(i.tolist(), p.tolist(), strict=True)))
    return [list(row) for row in zip(*per_layer, strict=True)]


def _show(tok: CodeTokenizer, token: int) -> str:
    return repr(tok.decode([token]))


def format_trace(steps: list[TraceStep], tok: CodeTokenizer) -> str:
    """A plain-text table, one line per generated token."""
    lens = any(s.lens for s in steps)
    head = f"{'#':>4}  {'chosen':<16} {'p':>6}   top {TOP} candidates"
    lines = [head + ("   |   logit lens, layer 1 .. last" if lens else "")]
    for n, s in enumerate(steps, 1):
        top = "  ".join(f"{_show(tok, t)} {p:.2f}" for t, p in s.top)
        line = f"{n:>4}  {_show(tok, s.token):<16} {s.prob:>6.3f}   {top}"
        if s.lens:
            line += "   |   " + " > ".join(_show(tok, t) for t, _ in s.lens)
        lines.append(line)
    return "\n".join(lines) + "\n"
