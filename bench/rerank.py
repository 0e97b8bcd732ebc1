"""Best of n: which candidate each ranking picks, and whether it is right.

For each run, n candidates per prompt are sampled once in one batch (the first greedy,
as `codelm generate --n N --best` does) and every ranking of generate/rerank.py chooses
among those that parse, so the rankings are compared on the same candidates:
- codelm_basic (81 problems with tests): every candidate runs in the sandbox; printed
  per ranking is pass@1 of the chosen candidate, beside `random` (the expected pass@1 of
  a uniformly drawn candidate, c/n) and `oracle` (some candidate passes);
- held-out functions (bench/held_out.py's `held_out`, cut after the docstring): edit
  similarity of the chosen body to the true one, and how many tokens it has.

    .venv/bin/python bench/rerank.py runs/demo/run --n 8 --temperature 0.8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codelm.data.problems import load_problems  # noqa: E402
from codelm.evaluate.line_completion import similarity  # noqa: E402
from codelm.evaluate.passk import find_problems, score_completions  # noqa: E402
from codelm.generate import generate_batch, load_run  # noqa: E402
from codelm.generate.best import choose  # noqa: E402
from codelm.generate.config import SamplingConfig  # noqa: E402
from codelm.generate.rerank import RANKS  # noqa: E402


def candidates(model, tok, prompts: list[str], cfg: SamplingConfig, n: int, batch: int = 4) -> list[list]:
    out = []
    for i in range(0, len(prompts), batch):
        out += generate_batch(model, tok, prompts[i : i + batch], cfg, n=n, greedy_first=True)
        print(f"  sampled {len(out)}/{len(prompts)} prompts", file=sys.stderr, flush=True)
    return out


def on_problems(model, tok, cfg: SamplingConfig, n: int) -> dict[str, float]:
    problems = load_problems(find_problems("codelm_basic"))
    cands = candidates(model, tok, [p.prompt for p in problems], cfg, n)
    texts = {p.task_id: [c.text for c in cs] for p, cs in zip(problems, cands, strict=True)}
    print(f"  running {sum(map(len, texts.values()))} candidates in the sandbox", file=sys.stderr, flush=True)
    rows, _ = score_completions(problems, texts)
    passed = {r["task_id"]: [s["passed"] for s in r["samples"]] for r in rows}
    out = {"random": sum(r["c"] / r["n"] for r in rows) / len(rows)}
    out["oracle"] = sum(r["c"] > 0 for r in rows) / len(rows)
    for how in RANKS:
        wins = 0
        for p, cs in zip(problems, cands, strict=True):
            best, _ = choose(model, tok, cs, how)
            # trim_to_parse may have cut the chosen one: judge the text it returned
            i = next((j for j, c in enumerate(cs) if c.tokens == best.tokens), None)
            wins += (
                passed[p.task_id][i] if i is not None and cs[i].text == best.text else _judge(p, best.text)
            )
        out[how] = wins / len(problems)
    return out


def _judge(problem, text: str) -> bool:
    rows, _ = score_completions([problem], {problem.task_id: [text]})
    return bool(rows[0]["c"])


def on_functions(model, tok, cfg: SamplingConfig, n: int, count: int) -> dict[str, tuple[float, float]]:
    from held_out import function_prompts, held_out  # bench/, the script's own folder

    pairs = function_prompts(held_out(2_000_000), count)
    cands = candidates(model, tok, [p for p, _ in pairs], cfg, n)
    out = {}
    for how in RANKS:
        sims, lengths = [], []
        for (_, body), cs in zip(pairs, cands, strict=True):
            best, _ = choose(model, tok, cs, how)
            sims.append(similarity(best.text.strip(), body.strip()))
            lengths.append(len(best.tokens))
        out[how] = (sum(sims) / len(sims), sum(lengths) / len(lengths))
    return out


def main() -> None:
    from common import machine  # bench/, the script's own folder, is on sys.path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--functions", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    a = ap.parse_args()
    print(machine())
    cfg = SamplingConfig(temperature=a.temperature, max_new_tokens=a.max_new_tokens, seed=0)
    for run in a.runs:
        model, tok = load_run(run)
        began = time.monotonic()
        probs = on_problems(model, tok, cfg, a.n)
        funcs = on_functions(model, tok, cfg, a.n, a.functions)
        print(f"\n{run}: best of {a.n} at temperature {a.temperature:g} ({time.monotonic() - began:.0f} s)")
        print(f"codelm_basic: random pick {probs['random']:.3f}, oracle (any of {a.n}) {probs['oracle']:.3f}")
        print("| ranking | codelm_basic pass@1 | held-out sim | held-out tokens |\n|---|---|---|---|")
        for how in RANKS:
            sim, length = funcs[how]
            print(f"| {how} | {probs[how]:.3f} | {sim:.3f} | {length:.1f} |")


if __name__ == "__main__":
    main()
