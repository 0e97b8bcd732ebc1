"""Remove documents that contain a benchmark problem, so evaluation scores stay honest.

Benchmark files are read by `codelm.data.problems.load_problems(..., runnable=False)`:
HumanEval-format JSON Lines, of which only each problem's id, prompt and
solution matter here. A document is contaminated by a problem when, token by token
(comments dropped, whitespace ignored):

- a part of the problem (prompt or solution) with at least `ngram` tokens shares
  at least `min_overlap` of its `ngram`-grams with the document, or
- a shorter part, of at least `min_chars` characters, occurs in it as a
  substring (a part shorter than that, like `return a + b`, is never matched).

This module does not decide what happens to a contaminated document; the build
drops it and counts it per problem.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from codelm.data.dedup import code_tokens
from codelm.data.problems import Problem
from codelm.errors import CodelmError


@dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 10  # tokens per n-gram; long enough that common idioms do not match
    min_overlap: float = 0.5  # fraction of a part's n-grams that must appear in the document
    min_chars: int = 20  # a part shorter than this (normalised) is too generic to match

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise CodelmError(f"decontamination ngram must be at least 1 token, got {self.ngram}")
        if not 0 < self.min_overlap <= 1:
            raise CodelmError(f"decontamination min_overlap must be in (0, 1], got {self.min_overlap}")
        if self.min_chars < 0:
            raise CodelmError(f"decontamination min_chars must be at least 0, got {self.min_chars}")


class Decontaminator:
    """An n-gram index over the problems; `matches(text)` lists the problems a text contains."""

    def __init__(self, problems: list[Problem], cfg: DecontamConfig):
        self.cfg = cfg
        self.ids = [p.task_id for p in problems]
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)  # n-gram -> part numbers
        self.part_problem: list[int] = []  # part number -> problem number
        self.part_need: list[int] = []  # part number -> n-grams that must be shared
        self.short: list[tuple[int, str]] = []  # (problem, " "-joined tokens) matched as substrings
        for pi, problem in enumerate(problems):
            for part in problem.parts:
                toks = code_tokens(part)
                if len(toks) >= cfg.ngram:
                    grams = set(self._ngrams(toks))
                    part_no = len(self.part_problem)
                    self.part_problem.append(pi)
                    self.part_need.append(max(1, math.ceil(cfg.min_overlap * len(grams))))
                    for g in grams:
                        self.index[g].append(part_no)
                elif len(joined := " ".join(toks)) >= cfg.min_chars:
                    self.short.append((pi, joined))

    def _ngrams(self, toks: list[str]):
        n = self.cfg.ngram
        return (tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))

    def matches(self, text: str) -> tuple[str, ...]:
        """Ids of the problems `text` contains, in benchmark order."""
        toks = code_tokens(text)
        hit: set[int] = set()
        if self.index:
            shared: dict[int, int] = defaultdict(int)
            for g in set(self._ngrams(toks)):
                for part_no in self.index.get(g, ()):
                    shared[part_no] += 1
            hit.update(self.part_problem[p] for p, c in shared.items() if c >= self.part_need[p])
        if self.short:
            doc = f" {' '.join(toks)} "  # padded so a match starts and ends on token boundaries
            hit.update(pi for pi, joined in self.short if pi not in hit and f" {joined} " in doc)
        return tuple(self.ids[pi] for pi in sorted(hit))
