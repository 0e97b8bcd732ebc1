"""Remove documents that contain a benchmark problem, so evaluation scores stay honest.

A benchmark file is JSON Lines (optionally gzipped), one problem per line, with an id (`task_id`,
`id` or `name`), a `prompt` and a solution (`canonical_solution` or
`solution`). A document is contaminated by a problem when, token by token
(comments dropped, whitespace ignored):

- a part of the problem (prompt or solution) with at least `ngram` tokens shares
  at least `min_overlap` of its `ngram`-grams with the document, or
- a shorter part, of at least `min_chars` characters, occurs in it as a
  substring (a part shorter than that, like `return a + b`, is never matched).

This module does not decide what happens to a contaminated document; the build
drops it and counts it per problem.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from codelm.data.dedup import code_tokens
from codelm.errors import CodelmError

ID_FIELDS = ("task_id", "id", "name")
SOLUTION_FIELDS = ("canonical_solution", "solution")


@dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 10  # tokens per n-gram; long enough that common idioms do not match
    min_overlap: float = 0.5  # fraction of a part's n-grams that must appear in the document
    min_chars: int = 20  # a part shorter than this (normalised) is too generic to match


@dataclass(frozen=True)
class Problem:
    id: str
    parts: tuple[str, ...]  # the prompt and the solution, whichever are present


def load_problems(paths: tuple[str, ...]) -> list[Problem]:
    """Problems from benchmark JSONL files; a missing or malformed file is a one-line error."""
    problems: list[Problem] = []
    for path in paths:
        try:
            raw = Path(path).read_bytes()
            lines = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8").splitlines()
        except FileNotFoundError:
            raise CodelmError(f"benchmark file not found: {path}") from None
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
            raise CodelmError(f"cannot read benchmark file {path}: {e}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise CodelmError(f"{path} line {n} is not JSON") from None
            if not isinstance(rec, dict):
                raise CodelmError(f"{path} line {n} is not a JSON object")
            pid = next((str(rec[f]) for f in ID_FIELDS if rec.get(f) is not None), f"{Path(path).name}:{n}")
            solution = next((rec[f] for f in SOLUTION_FIELDS if isinstance(rec.get(f), str)), "")
            parts = tuple(p for p in (rec.get("prompt"), solution) if isinstance(p, str) and p.strip())
            if not parts:
                raise CodelmError(f"{path} line {n} has no 'prompt' or 'canonical_solution'")
            problems.append(Problem(pid, parts))
    if paths and not problems:
        raise CodelmError(f"no problems in {', '.join(paths)}")
    return problems


class Decontaminator:
    """An n-gram index over the problems; `matches(text)` lists the problems a text contains."""

    def __init__(self, problems: list[Problem], cfg: DecontamConfig):
        self.cfg = cfg
        self.ids = [p.id for p in problems]
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
