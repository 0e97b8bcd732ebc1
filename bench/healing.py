"""Token healing, on and off, on completions of held-out functions by one trained run.

    .venv/bin/python bench/healing.py RUN [--functions 80]

The prompts are `bench/held_out.py`'s: a held-out function's signature and docstring,
ending at the closing quotes, and the same prompts plus a newline (where an editor's
cursor often is). Each is completed at the default sampling (seed 0, at most 128 new
tokens, as in that script's sampling check), with healing as `complete` does it and
with `heal` replaced by a no-op. Printed per row: how many prompts were healed, how
many completions parse, and the mean edit similarity to the rest of the true function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import held_out  # noqa: E402
from common import machine  # noqa: E402

import codelm.generate.prompts as prompts_module  # noqa: E402
from codelm.evaluate.line_completion import similarity  # noqa: E402
from codelm.generate import complete, load_run, parses  # noqa: E402
from codelm.generate.config import SamplingConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--functions", type=int, default=80)
    ap.add_argument("--held-out-bytes", type=int, default=600_000)
    a = ap.parse_args()
    print(machine())
    model, tok = load_run(a.run)
    prompts = held_out.function_prompts(held_out.held_out(a.held_out_bytes), a.functions)
    heal = prompts_module.heal  # `plan` heals through this name: swapped out for "off"
    cfg = SamplingConfig(max_new_tokens=128, seed=0)
    print("| prompts end | healing | functions | healed | parse | edit sim |")
    print("|---|---|---|---|---|---|")
    for healing in (False, True):
        prompts_module.heal = heal if healing else (lambda tok, ids: (ids, None))
        for end, extra in (("at the closing quotes", ""), ("after a newline", "\n")):
            done = [complete(model, tok, p + extra, cfg) for p, _ in prompts]
            parse = sum(parses(p + extra + c.text) for (p, _), c in zip(prompts, done, strict=True))
            sim = sum(
                similarity(c.text.strip(), body[len(extra) :].strip())
                for (_, body), c in zip(prompts, done, strict=True)
            )
            n, healed = max(len(done), 1), sum(bool(c.healed) for c in done)
            row = [end, "on" if healing else "off", len(done), healed, f"{parse / n:.2f}", f"{sim / n:.3f}"]
            print("| " + " | ".join(map(str, row)) + " |")
    prompts_module.heal = heal


if __name__ == "__main__":
    main()
