"""Ranking best-of-n candidates: by likelihood, or Coder–Reviewer (Zhang et al., ICML 2023).

Mean token log-probability of the code given the prompt (the Coder) prefers short,
bland bodies: `def multiply(a, b):` + its docstring, best of 8, chose `return a`.
The Reviewer asks the other way round: how likely is the prompt's description given
the code? Zhang et al. get it from the same model by inverting the order of
instruction and program in the prompt; a body that ignores the description explains
it badly. Here the Reviewer reads the whole function without its docstring, then the
docstring as a comment block after it (`# Return the product of a and b.`), and scores
the comment's tokens; an instruction prompt puts its instruction there. Code followed
by a comment that describes it is a layout every code model has read; a docstring
string after the body would not be.

Rankings (`RANKS`):
- `likelihood`: mean log p(code | prompt), the Coder alone (length-normalised);
- `coder-reviewer` (the default): log p(code | prompt) + log p(description | code), both
  summed over tokens, the paper's Coder–Reviewer. On held-out functions it chose bodies
  closer to the true ones than likelihood did (edit similarity 0.184 against 0.149 with the
  demo's model, 0.203 against 0.165 with `small`; bench/rerank.py), and shorter ones;
- `n-coder-reviewer`: both as means per token, the paper's normalised variant.
A prompt without a docstring or an instruction has nothing to review: every ranking
falls back to `likelihood`. This module scores text with the model (one forward per
batch of candidates); it neither samples nor runs code.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Sequence

import torch

from codelm.generate.generator import Completion
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer
from codelm.tokenizer.roles import comment_block

RANKS = ("likelihood", "coder-reviewer", "n-coder-reviewer")
DEFAULT_RANK = "coder-reviewer"  # measured: closer to the true bodies (docs/quality.md, "Best of n")


def description(c: Completion) -> tuple[str, str] | None:
    """(code without its description, the description) of a candidate, or None where the
    prompt has neither a docstring for the completed function nor an instruction."""
    if c.prompt is None:
        return None
    if c.prompt.instruction is not None:
        return c.code, c.prompt.instruction
    code = c.code
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    where = len(c.prompt.text.splitlines())  # the function whose header the prompt holds last
    defs = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.lineno <= where
    ]
    if not defs:
        return None
    fn = max(defs, key=lambda n: n.lineno)
    doc = ast.get_docstring(fn, clean=False)
    first = fn.body[0]
    if doc is None or first.end_lineno is None:
        return None
    lines = code.splitlines(keepends=True)
    rest = "".join(lines[: first.lineno - 1] + lines[first.end_lineno :])
    return rest, inspect.cleandoc(doc)


def reviewer_text(code: str, desc: str) -> tuple[str, str]:
    """The Reviewer's layout: (context, scored part)."""
    return code.rstrip("\n") + "\n\n", comment_block(desc)


@torch.inference_mode()
def span_logprobs(
    model: Transformer, tok: CodeTokenizer, pairs: Sequence[tuple[str, str]]
) -> list[list[float]]:
    """Log-probabilities of each token of `scored` after `context`, for (context, scored)
    pairs, in one right-padded forward; a context that does not fit keeps its end."""
    seqs: list[tuple[list[int], int]] = []
    for context, scored in pairs:
        part = tok.encode(scored)[: model.cfg.block_size - 2]
        ctx = tok.encode(context)[-(model.cfg.block_size - 1 - len(part)) :]
        seqs.append(([tok.bos_id, *ctx, *part], 1 + len(ctx)))
    width = max(len(ids) for ids, _ in seqs)
    device = model.norm_f.weight.device
    idx = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in seqs], device=device)
    logp = model(idx).float().log_softmax(-1)  # (B, T, V)
    out = []
    for b, (ids, start) in enumerate(seqs):
        target = torch.tensor(ids[start:], device=device)
        out.append(logp[b, start - 1 : len(ids) - 1].gather(1, target[:, None])[:, 0].tolist())
    return out


def scores_of(
    model: Transformer, tok: CodeTokenizer, cands: list[Completion], how: str = "likelihood"
) -> list[float]:
    """A score per candidate, higher is better."""
    if how not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, got {how!r}")
    coder = [c.mean_logprob for c in cands]
    described = [description(c) for c in cands]
    if how == "likelihood" or not cands or any(d is None for d in described):
        return coder
    pairs = [reviewer_text(*d) for d in described if d is not None]
    reviewer = span_logprobs(model, tok, pairs)
    if how == "n-coder-reviewer":
        return [c + sum(r) / max(len(r), 1) for c, r in zip(coder, reviewer, strict=True)]
    return [sum(c.logprobs) + sum(r) for c, r in zip(cands, reviewer, strict=True)]
