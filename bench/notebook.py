"""The notebook benchmark for several runs and context layouts, side by side with the peers' prompts.

For each run, `codelm eval RUN --problems notebook_basic` is run once per layout of
the live context (codelm.notebook.context.LAYOUTS):
- "comments": codelm's default, a header and one comment line per column (name, dtype,
  nulls, first values);
- "code": the constructor of each frame's first rows, dtypes and nulls in comments;
- "csv": pandas-ai's prompt, the dimensions and head() as CSV (no dtypes);
and the request alone, which is what jupyter-ai's `%%ai` sends. Printed: pass@1,
pass@k, "pick" (the share of problems whose cell, as the magic would choose it,
passes) and "checked" (the share of candidates that pass the magic's checks) per run
and prompt. The samples of the request alone do not depend on the
layout, so they are drawn once per run.

    .venv/bin/python bench/notebook.py runs/nb-small-dt runs/lsp-small --samples 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codelm.evaluate.passk import find_problems  # noqa: E402
from codelm.evaluate.report import EvalConfig  # noqa: E402
from codelm.notebook.assist import NotebookConfig  # noqa: E402
from codelm.notebook.bench import evaluate_notebook  # noqa: E402
from codelm.notebook.context import LAYOUTS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--problems", default="notebook_basic")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--json", default=None, help="write every report here")
    a = p.parse_args()
    cfg = EvalConfig(samples=a.samples, temperature=a.temperature)
    reports, rows = [], []
    for run in a.runs:
        for i, layout in enumerate(a.layouts.split(",")):
            began = time.monotonic()
            modes = ("context", "request_only") if i == 0 else ("context",)
            nb = NotebookConfig(layout=layout)
            r = evaluate_notebook(run, find_problems(a.problems), cfg, nb=nb, modes=modes)
            reports.append(r)
            rows.append((run, f"context: {layout}", r["context"], time.monotonic() - began))
            if i == 0:
                rows.append((run, "request only (jupyter-ai)", r["request_only"], 0.0))
    keys = [k for k in rows[0][2] if k.startswith("pass@")] + ["pick", "checked"]
    print(f"{'run':<24} {'prompt':<28}" + "".join(f"{k:>9}" for k in keys))
    for run, prompt, scores, _ in rows:
        print(f"{run:<24} {prompt:<28}" + "".join(f"{scores[k]:>9.3f}" for k in keys))
    print(f"{reports[0]['problems']} problems, {a.samples} samples each at temperature {a.temperature}")
    if a.json:
        Path(a.json).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
