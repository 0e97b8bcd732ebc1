"""How likely each codelm_basic reference solution is, asked two ways: the plain prompt (a
signature and its docstring, as `codelm eval` sends it) and the layout of the mined
docstring -> function pairs (`<|instruction|> docstring <|code|> signature`).

The log-probability (nats) of a reference moves long before any sample passes, so it shows
whether a prompt layout brings a model nearer to right answers. Printed per run: the median
and the best over the problems that fit the context, and the best eight problems.

    .venv/bin/python bench/reference_layouts.py RUN [RUN...]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codelm.data.problems import Problem, load_problems  # noqa: E402
from codelm.evaluate.passk import find_problems  # noqa: E402
from codelm.generate import load_run  # noqa: E402
from codelm.generate.prompts import Prompt, encode_prompt  # noqa: E402

WHOLE = 10**6  # no truncation: a pair that does not fit the context is left out instead


@torch.no_grad()
def nats(model, tok, prompt: Prompt, solution: Prompt) -> float | None:
    """log p(solution's new tokens | prompt), scored from where the two encodings part (the
    solution's first token may re-spell the prompt's last one, as healing lets a sample do)."""
    head, ids = encode_prompt(tok, prompt, WHOLE).ids, encode_prompt(tok, solution, WHOLE).ids
    start = next((i for i, (a, b) in enumerate(zip(head, ids, strict=False)) if a != b), len(head))
    if len(ids) > model.cfg.block_size or start == 0:
        return None
    logp = model(torch.tensor([ids]))[0].float().log_softmax(-1)  # (T, V)
    return sum(logp[i - 1, ids[i]].item() for i in range(start, len(ids)))


def layouts(p: Problem) -> dict[str, tuple[Prompt, Prompt]]:
    """(prompt, prompt + reference) in each layout."""
    fn = [n for n in ast.parse(p.prompt).body if isinstance(n, ast.FunctionDef)][-1]
    code = "".join(p.prompt.splitlines(keepends=True)[: fn.body[0].lineno - 1])  # imports, signature
    doc = ast.get_docstring(fn) or ""
    return {
        "plain": (Prompt(p.prompt), Prompt(p.prompt + p.canonical_solution)),
        "pair": (Prompt(code, instruction=doc), Prompt(code + p.canonical_solution, instruction=doc)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    problems = load_problems(find_problems("codelm_basic"))
    for run in a.runs:
        model, tok = load_run(run, weights="fp32")
        scored = {p.task_id: {k: nats(model, tok, *v) for k, v in layouts(p).items()} for p in problems}
        kept = {k: v for k, v in scored.items() if None not in v.values()}
        print(f"{run}: {len(kept)} of {len(problems)} problems fit the context")
        for layout in ("plain", "pair"):
            got = [v[layout] for v in kept.values()]
            print(f"  {layout:5}  median {statistics.median(got):7.1f}  best {max(got):6.1f} nats")
        for task, v in sorted(kept.items(), key=lambda kv: -max(kv[1].values()))[:8]:
            print(f"    {task:12} plain {v['plain']:7.1f}  pair {v['pair']:7.1f}")


if __name__ == "__main__":
    main()
