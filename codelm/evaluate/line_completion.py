"""Line completion, the editor's task, scored as CodeXGLUE's line-level benchmark does.

Positions are line starts inside function bodies of held-out files (code lines
only: not blank, not comments), drawn with a seeded RNG. The model gets
everything before the position (the line's indentation included) and generates
greedily until the end of the line; the prediction and the true line are compared stripped: exact match, and
edit similarity (difflib's ratio, in [0, 1]). The same positions are scored for
a token n-gram baseline trained on the training split, to show what the model
adds over corpus statistics.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from codelm.evaluate.ngram import NGramModel
from codelm.generate.config import SamplingConfig
from codelm.generate.generator import generate_ids
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


@dataclass(frozen=True)
class LineConfig:
    positions: int = 200  # lines scored in all
    per_file: int = 5  # at most this many lines from one file, so many files count
    max_line_tokens: int = 48  # generation limit for one line
    seed: int = 0


@dataclass
class Position:
    context: str  # everything before the line
    line: str  # the true line, without its newline


@dataclass
class LineScores:
    exact_match: float
    edit_similarity: float
    count: int


def body_lines(text: str) -> list[int]:
    """0-based numbers of code lines inside function bodies."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.split("\n")
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
            for n in range(node.body[0].lineno - 1, node.end_lineno):
                s = lines[n].strip()
                if s and not s.startswith("#"):
                    out.add(n)
    return sorted(out)


def sample_positions(texts: Iterable[str], cfg: LineConfig) -> list[Position]:
    rng = np.random.default_rng(cfg.seed)
    out: list[Position] = []
    for text in texts:
        candidates = body_lines(text)
        if not candidates:
            continue
        lines = text.split("\n")
        picks = rng.choice(candidates, size=min(cfg.per_file, len(candidates)), replace=False)
        for n in sorted(int(p) for p in picks):
            # The context ends after the line's indentation: the code tokenizer makes a newline
            # and the next indent one token, so a context cut right after "\n" would end in a
            # token the model never saw before indented code.
            indent = lines[n][: len(lines[n]) - len(lines[n].lstrip())]
            out.append(Position("\n".join(lines[:n]) + "\n" + indent, lines[n]))
        if len(out) >= cfg.positions:
            break
    return out[: cfg.positions]


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def score(predictions: list[str], positions: list[Position]) -> LineScores:
    n = max(len(positions), 1)
    em = sum(p.strip() == q.line.strip() for p, q in zip(predictions, positions, strict=True))
    es = sum(similarity(p.strip(), q.line.strip()) for p, q in zip(predictions, positions, strict=True))
    return LineScores(em / n, es / n, len(positions))


def _context_ids(tok: CodeTokenizer, context: str, limit: int) -> list[int]:
    ids = [tok.bos_id] + tok.encode(context)  # as every training document starts
    return ids[-limit:]


def model_predictions(
    model: Transformer, tok: CodeTokenizer, positions: list[Position], cfg: LineConfig
) -> list[str]:
    # Plain greedy, as CodeXGLUE scores it: no repetition penalty inside a line.
    sampling = SamplingConfig(
        temperature=0.0, max_new_tokens=cfg.max_line_tokens, repetition_penalty=1.0, dry_multiplier=0.0
    )
    limit = model.cfg.block_size - cfg.max_line_tokens
    preds = []
    for pos in positions:
        out: list[int] = []
        for step in generate_ids(model, _context_ids(tok, pos.context, limit), sampling, tok.stop_ids):
            if step.token in tok.stop_ids:
                break
            out.append(step.token)
            if "\n" in tok.decode(out):
                break
        preds.append(tok.decode(out).split("\n")[0])
    return preds


def ngram_predictions(
    ngram: NGramModel, tok: CodeTokenizer, positions: list[Position], cfg: LineConfig
) -> list[str]:
    newline = {i for i in range(tok.vocab_size) if "\n" in tok.decode([i])}
    preds = []
    for pos in positions:
        ids = ngram.complete_line(
            _context_ids(tok, pos.context, 64), newline.__contains__, cfg.max_line_tokens
        )
        preds.append(tok.decode(ids))
    return preds
