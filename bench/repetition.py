"""Loops in completions: today's repetition penalty against DRY, on held-out functions.

For each run, the functions of the held-out packages (bench/held_out.py's `held_out`, which
no training split holds) are cut after their docstring, as a user's prompt would be, and
completed at temperature 0 and 0.2 under each sampling variant. Printed per variant:
- parse: the share of prompt + completion that parses;
- loop: the share the repetition stop rule had to cut (a line or token cycle seen more
  than 3 times in a row: generate/stopping.py);
- sim: edit similarity of the completion to the true body;
then the greedy completions of the demo's prompts under today's default and the best variant.
With `--trim`, only today's default with trimming to whole code (generate/whole.py) off
and on, and the share it trimmed.

    .venv/bin/python bench/repetition.py runs/demo/run --functions 60 [--trim]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codelm.demo import PROMPTS  # noqa: E402
from codelm.evaluate.line_completion import similarity  # noqa: E402
from codelm.generate import complete, load_run, parses  # noqa: E402
from codelm.generate.config import SamplingConfig  # noqa: E402
from codelm.generate.stopping import DEFAULT_STOPS, StopConfig  # noqa: E402

VARIANTS = {
    "no penalty": SamplingConfig(repetition_penalty=1.0),
    "penalty 1.1 (today)": SamplingConfig(),
    "DRY 0.8 (llama.cpp's)": SamplingConfig(repetition_penalty=1.0, dry_multiplier=0.8, dry_allowed_length=2),
    "DRY 0.8, allowed 4": SamplingConfig(repetition_penalty=1.0, dry_multiplier=0.8),
    "penalty 1.1 + DRY 0.8, allowed 4": SamplingConfig(dry_multiplier=0.8),
}


def score(
    model, tok, prompts: list[tuple[str, str]], cfg: SamplingConfig, stops: StopConfig = DEFAULT_STOPS
) -> dict:
    done = [complete(model, tok, p, cfg, stops) for p, _ in prompts]
    n = max(len(done), 1)
    return {
        "parse": sum(parses(p + c.text) for (p, _), c in zip(prompts, done, strict=True)) / n,
        "loop": sum(c.stop_reason == "repetition" for c in done) / n,
        "trimmed": sum(c.syntax == "trimmed" for c in done) / n,
        "sim": sum(similarity(c.text.strip(), b.strip()) for (_, b), c in zip(prompts, done, strict=True))
        / n,
    }


def trim_table(model, tok, prompts: list[tuple[str, str]], max_new_tokens: int) -> None:
    """The default sampling with trimming to whole code (generate/whole.py) off and on."""
    print("| trim | temperature | parse | trimmed | loop | sim |\n|---|---|---|---|---|---|")
    for t in (0.0, 0.2):
        cfg = SamplingConfig(temperature=t, max_new_tokens=max_new_tokens, seed=0)
        for trim in (False, True):
            s = score(model, tok, prompts, cfg, StopConfig(trim=trim))
            print(
                f"| {'on' if trim else 'off'} | {t:g} | {s['parse']:.2f} | {s['trimmed']:.2f} | "
                f"{s['loop']:.2f} | {s['sim']:.3f} |"
            )


def main() -> None:
    from common import machine  # bench/, the script's own folder, is on sys.path
    from held_out import function_prompts, held_out

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--functions", type=int, default=60)
    ap.add_argument("--held-out-bytes", type=int, default=2_000_000)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--trim", action="store_true", help="only compare trimming to whole code on and off")
    a = ap.parse_args()
    print(machine())
    prompts = function_prompts(held_out(a.held_out_bytes), a.functions)
    for run in a.runs:
        model, tok = load_run(run)
        print(f"\n{run}: {len(prompts)} held-out functions, up to {a.max_new_tokens} new tokens")
        if a.trim:
            trim_table(model, tok, prompts, a.max_new_tokens)
            continue
        print("| variant | temperature | parse | loop | sim |\n|---|---|---|---|---|")
        best, best_score = None, -1.0
        for name, variant in VARIANTS.items():
            for t in (0.0, 0.2):
                began = time.monotonic()
                cfg = replace(variant, temperature=t, max_new_tokens=a.max_new_tokens, seed=0)
                s = score(model, tok, prompts, cfg)
                print(
                    f"| {name} | {t:g} | {s['parse']:.2f} | {s['loop']:.2f} | {s['sim']:.3f} |"
                    f"  ({time.monotonic() - began:.0f} s)"
                )
                if t == 0 and s["parse"] - s["loop"] > best_score:
                    best, best_score = name, s["parse"] - s["loop"]
        for name in dict.fromkeys(["penalty 1.1 (today)", best]):
            cfg = replace(VARIANTS[name], temperature=0.0, max_new_tokens=a.max_new_tokens)
            print(f"\ngreedy, {name}:")
            for p in (*PROMPTS, "class Stack:"):
                c = complete(model, tok, p, cfg)
                verdict = "parses" if parses(p + c.text) else "does not parse"
                print(f"--- [{c.stop_reason}, {verdict}]\n{p}{c.text}")


if __name__ == "__main__":
    main()
