"""Candidate tests from a model: n samples per target, in one batch, through the one engine.

The plain prompt is laid out as a repository would hold it: the module under its
path (cut around the target when it does not fit the context), then a test file
that imports it and opens a pytest function, `def test_<target>_`. The model
names the test and writes its body; the block-end stop rule cuts it after the
function. When the run was trained on instruction pairs, a share of the samples
comes from an instruction prompt instead (`<|instruction|>` the request and the
target's source, `<|code|>` the same test-file opening). The first plain sample
is greedy, the others sampled. Nothing here runs what the model writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import CodelmError
from codelm.generate import Prompt, SamplingConfig, generate_batch
from codelm.model import Transformer
from codelm.model.io import read_config
from codelm.testgen.targets import Module, Target, source_window
from codelm.tokenizer import CodeTokenizer


@dataclass(frozen=True)
class SampleConfig:
    n: int = 8  # candidates per target, drawn in one batch
    # Diversity matters more than the single best guess: 8 greedy-ish samples would mostly
    # be one test. The first sample is greedy all the same.
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 192  # one test function
    seed: int = 0


def shared_header(module: Module, targets: list[Target]) -> str:
    names = sorted({t.imported for t in targets})
    return f"import pytest\n\nfrom {module.name} import {', '.join(names)}\n"


def trained_on_pairs(run: str | Path) -> bool:
    """Whether the run's corpus held instruction pairs (its DATA's stats say so)."""
    try:
        stats = json.loads((Path(read_config(run)["data"]) / "stats.json").read_text())
    except (CodelmError, OSError, KeyError, TypeError, ValueError):
        return False  # the corpus is gone or the run was imported: no evidence of pairs
    return int(stats.get("train_pairs", 0)) > 0


def _fit_source(module: Module, target: Target, tok: CodeTokenizer, budget: int) -> str:
    """The module's text, cut around the target until it fits `budget` tokens."""
    max_lines = len(module.source.splitlines())
    while True:
        text = source_window(module, target, max_lines)
        if len(tok.encode(text)) <= budget or max_lines <= 8:
            return text
        max_lines = max(8, max_lines * 3 // 4)


def prompts(
    module: Module, target: Target, header: str, tok: CodeTokenizer, room: int, pairs: bool
) -> list[Prompt]:
    """The plain prompt, and the instruction prompt when the model was trained on pairs."""
    opening = f"{header}\n\ndef test_{target.slug}_"
    tests_path = f"tests/test_{module.path.stem}.py"
    budget = room - len(tok.encode(opening)) - 16  # the two path comments
    source = _fit_source(module, target, tok, budget)
    out = [Prompt(f"# {module.relpath}\n{source}\n\n# {tests_path}\n{opening}")]
    if pairs:
        lines = module.source.splitlines()[target.lineno - 1 : target.end_lineno]
        request = f"Write a pytest test of {target.qualname} from {module.name}.\n" + "\n".join(lines)
        # Rough cut: the instruction is the target's own source, which may itself be long.
        while len(tok.encode(request)) > budget and "\n" in request:
            request = request.rsplit("\n", 1)[0]
        out.append(Prompt(opening, instruction=request))
    return out


def sample(
    model: Transformer,
    tok: CodeTokenizer,
    module: Module,
    target: Target,
    header: str,
    cfg: SampleConfig,
    pairs: bool,
) -> list[tuple[str, str]]:
    """(test function source, origin) for `cfg.n` samples of one target."""
    room = model.cfg.block_size - cfg.max_new_tokens
    ps = prompts(module, target, header, tok, room, pairs)
    per_prompt = -(-cfg.n // len(ps))  # the plain prompt gets the odd one
    sampling = SamplingConfig(cfg.temperature, 0, cfg.top_p, cfg.max_new_tokens, cfg.seed)
    batches = generate_batch(model, tok, ps, sampling, n=per_prompt, greedy_first=True)
    out = [
        (f"def test_{target.slug}_{c.text}".rstrip() + "\n", origin)
        for batch, origin in zip(batches, ("plain", "instruction"), strict=False)
        for c in batch
    ]
    plain = [o for o in out if o[1] == "plain"]
    return plain + [o for o in out if o[1] != "plain"][: cfg.n - len(plain)]
