"""The decoding loop: prefill the prompt once, then one token per step from the KV cache.

`generate_ids` is the streaming core on token ids; `complete` adds text, stop
rules and the stop reason; `best_of` samples several completions and keeps the
most likely one that parses.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from codelm.errors import CodelmError
from codelm.generate.sampling import SamplingConfig, sample
from codelm.generate.stopping import BlockEnd
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


@dataclass
class Step:
    token: int
    logprob: float  # log-probability of the chosen token under the unfiltered distribution


@dataclass
class Completion:
    text: str
    stop_reason: str  # end_of_text | block_end | length | context_full
    tokens: list[int]
    logprobs: list[float]

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / max(len(self.logprobs), 1)


@torch.no_grad()
def generate_ids(
    model: Transformer,
    prompt: list[int],
    cfg: SamplingConfig,
    stop_ids: frozenset[int] = frozenset(),
) -> Iterator[Step]:
    """Yield sampled tokens one at a time, ending after a stop id or `max_new_tokens`."""
    if not prompt:
        raise CodelmError("empty prompt")
    device = model.head.weight.device
    cache = model.new_cache(1)
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
    logits = model(torch.tensor([prompt], device=device), cache)[:, -1]  # (1, V): the prefill
    for _ in range(cfg.max_new_tokens):
        nxt = sample(logits, cfg, gen)
        token = int(nxt.item())
        yield Step(token, float(logits.float().log_softmax(-1)[0, token]))
        if token in stop_ids or cache.pos >= model.cfg.block_size:
            return
        logits = model(nxt.view(1, 1), cache)[:, -1]


def complete(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str,
    cfg: SamplingConfig = SamplingConfig(),
    stop_at_block_end: bool = True,
) -> Completion:
    """Complete `prompt`, stopping at end-of-text, the end of the block, or the length limit."""
    if not prompt:
        raise CodelmError("empty prompt")
    ids = tok.encode(prompt)
    room = model.cfg.block_size - 1
    if len(ids) > room:  # keep the most recent context, leave room to generate
        ids = ids[-max(room - cfg.max_new_tokens, room // 2) :]
    cfg = replace(cfg, max_new_tokens=min(cfg.max_new_tokens, model.cfg.block_size - len(ids)))
    rule = BlockEnd(prompt) if stop_at_block_end else None
    out: list[int] = []
    logprobs: list[float] = []
    reason = "length"
    for step in generate_ids(model, ids, cfg, frozenset({tok.eot_id})):
        if step.token == tok.eot_id:
            reason = "end_of_text"
            break
        out.append(step.token)
        logprobs.append(step.logprob)
        if rule is not None:
            cut = rule.check(tok.decode(out))
            if cut is not None:
                return Completion(tok.decode(out)[:cut], rule.name, out, logprobs)
    else:
        if len(ids) + len(out) >= model.cfg.block_size:
            reason = "context_full"
    return Completion(tok.decode(out), reason, out, logprobs)


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def best_of(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str,
    n: int,
    cfg: SamplingConfig = SamplingConfig(),
) -> tuple[Completion, int]:
    """Sample `n` completions (the first greedy) and return the most likely one that parses
    with the prompt in front, with the number dropped for not parsing. If none parses, the
    most likely of all is returned."""
    seed = cfg.seed if cfg.seed is not None else 0
    cands = [complete(model, tok, prompt, replace(cfg, temperature=0.0))]
    cands += [complete(model, tok, prompt, replace(cfg, seed=seed + i)) for i in range(1, n)]
    good = [c for c in cands if parses(prompt + c.text)]
    pool = good or cands
    return max(pool, key=lambda c: c.mean_logprob), len(cands) - len(good)


def load_run(run: str, device: str = "cpu") -> tuple[Transformer, CodeTokenizer]:
    """The model and tokenizer of a run directory."""
    from pathlib import Path

    from codelm.model.io import load_model

    model = load_model(run, device)
    tok = CodeTokenizer.load(Path(run) / "tokenizer.json")
    return model, tok
