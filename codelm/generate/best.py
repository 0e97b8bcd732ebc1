"""Best-of-n: sample n completions in one batch, drop those that do not parse, keep the
best of the rest under a ranking (rerank.py). Each completion was already trimmed
back to whole code where a start of it parses (whole.py).

The syntax check parses the whole code a completion belongs to: prompt plus
completion, or prefix plus middle plus suffix. The first sample is greedy. If none
parses, the most likely of all is returned, and the report says so. This module
does not run the code it ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from codelm.generate.config import SamplingConfig
from codelm.generate.generator import Completion, generate_batch
from codelm.generate.prompts import Prompt
from codelm.generate.rerank import DEFAULT_RANK, scores_of
from codelm.generate.stopping import DEFAULT_STOPS, StopConfig
from codelm.generate.whole import syntax_error
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


@dataclass
class BestOfReport:
    ranked: list[Completion]  # the candidates that parse, best first
    dropped: list[tuple[Completion, str]]  # those that do not, with the parser's complaint

    @property
    def none_parsed(self) -> bool:
        return not self.ranked

    def summary(self) -> str:
        """One line: how many were dropped, and why."""
        n = len(self.ranked) + len(self.dropped)
        if not self.dropped:
            return f"best of {n}: all parse"
        why: dict[str, int] = {}
        for _, err in self.dropped:
            msg = err.split(": ", 1)[-1]
            why[msg] = why.get(msg, 0) + 1
        reasons = "; ".join(f"{k} x{v}" if v > 1 else k for k, v in why.items())
        tail = " (none parsed: showing the most likely)" if not self.ranked else ""
        return f"best of {n}: {len(self.dropped)} dropped for not parsing ({reasons}){tail}"


def best_of(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str | Prompt,
    n: int,
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    trace: str = "",
    rank: str = DEFAULT_RANK,
) -> tuple[Completion, BestOfReport]:
    """The best of `n` samples that parse under `rank` (rerank.py), and the report of the others."""
    cands = generate_batch(model, tok, [prompt], cfg, stops, n=n, trace=trace, greedy_first=True)[0]
    return choose(model, tok, cands, rank)


def choose(
    model: Transformer, tok: CodeTokenizer, cands: list[Completion], rank: str = DEFAULT_RANK
) -> tuple[Completion, BestOfReport]:
    """The best of `cands` that parse, under `rank`."""
    ranked: list[Completion] = []
    dropped: list[tuple[Completion, str]] = []
    for c in cands:
        if (err := syntax_error(c.code)) is None:
            ranked.append(c)
        else:
            dropped.append((c, err))
    scores = dict(zip(map(id, ranked), scores_of(model, tok, ranked, rank), strict=True))
    ranked.sort(key=lambda c: scores[id(c)], reverse=True)
    best = ranked[0] if ranked else max(cands, key=lambda c: c.mean_logprob)
    return best, BestOfReport(ranked, dropped)
