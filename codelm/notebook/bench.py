"""`codelm eval RUN --problems notebook_basic`: the notebook benchmark, with and without context.

For each problem (problems.py) the live context is what the magic would read: the
problem's setup runs inside the sandbox, next to this package's context.py (sent
there as source, since the sandbox's interpreter has no codelm), and `describe`'s
result comes back as JSON. Then, for two prompts, the request with the context block
before it and the request alone, the model draws `samples` cells per problem in one
batch, all alike (no greedy first, so that pass@k's estimator holds), and each cell
is judged in the sandbox by the problem's check. Reported per prompt:
- pass@k, the unbiased estimator over the samples;
- pick: the share of problems where the cell the magic would insert (the most likely
  candidate that passes the checks of checks.py) passes;
- checked: the share of candidates that pass the checks (the mean over problems). The checks read a stand-in
  namespace: the problem's names, its DataFrames as empty frames with their columns.
The sandbox must import pandas and matplotlib from this interpreter's site-packages.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from codelm.errors import CodelmError
from codelm.evaluate.passk import pass_at_k
from codelm.evaluate.report import EvalConfig
from codelm.evaluate.sandbox import SandboxConfig, resolve, run_many, site_dirs
from codelm.fsutil import atomic_write_json
from codelm.generate import SamplingConfig
from codelm.notebook import context as context_module
from codelm.notebook.assist import NotebookConfig, judge, prompt_parts
from codelm.notebook.context import Context, Frame
from codelm.notebook.local import LocalModel
from codelm.notebook.problems import NotebookProblem, load_notebook_problems, program

SANDBOX = SandboxConfig(timeout_s=30, output_bytes=262_144)  # pandas and matplotlib take ~1 s to import
MARK = "@@codelm-context@@"
MODES = ("context", "request_only")


def _describe_program(problem: NotebookProblem) -> str:
    source = Path(context_module.__file__).read_text(encoding="utf-8")
    return (
        f"{source}\n\nimport dataclasses as _dc, json as _json, os as _os, sys as _sys\n"
        "_os.environ['MPLBACKEND'] = 'Agg'\n"
        f"_sys.path += {site_dirs()!r}\n"
        "_ns = {'__name__': '__main__'}\n"
        f"exec(compile({problem.setup!r}, '<setup>', 'exec'), _ns)\n"
        f"print({MARK!r} + _json.dumps(_dc.asdict(describe(_ns))))\n"
    )


def describe_problems(problems: list[NotebookProblem], workers: int | None) -> list[Context]:
    """The live context of each problem's setup, read where its frames live: in the sandbox."""
    results = run_many([_describe_program(p) for p in problems], SANDBOX, workers)
    out = []
    for p, r in zip(problems, results, strict=True):
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith(MARK)), None)
        if not r.passed or line is None:
            raise CodelmError(f"{p.task_id}: its setup failed in the sandbox: {r.error or r.status}")
        raw = json.loads(line.removeprefix(MARK))
        frames = [Frame(**{**f, "columns": [tuple(c) for c in f["columns"]]}) for f in raw.pop("frames")]
        out.append(Context(frames=frames, **raw))
    return out


def stand_in(ctx: Context) -> dict:
    """A namespace with the problem's names, its DataFrames empty but with their columns."""
    import pandas as pd

    ns: dict = dict.fromkeys(ctx.names)
    for f in ctx.frames:
        if f.kind == "DataFrame":
            ns[f.name] = pd.DataFrame(columns=[c[0] for c in f.columns])
    return ns


@functools.cache
def sandbox_sees_pandas() -> bool:
    """Whether sandboxed programs can import pandas and matplotlib from this interpreter's
    site-packages: not where they lie in a folder the sandbox's user cannot read (a venv
    under /tmp, hidden behind the sandbox's private /tmp)."""
    probe = f"import sys\nsys.path += {site_dirs()!r}\nimport pandas, matplotlib\n"
    return run_many([probe], SANDBOX)[0].passed


def _score(rows: list[dict], ks: list[int]) -> dict:
    out = {f"pass@{k}": sum(pass_at_k(r["n"], r["c"], k) for r in rows) / len(rows) for k in ks}
    out["pick"] = sum(r["pick"] for r in rows) / len(rows)
    out["checked"] = sum(r["checked"] / r["n"] for r in rows) / len(rows)
    return out


def evaluate_notebook(
    run: str,
    problems_path: str | Path,
    cfg: EvalConfig = EvalConfig(),
    json_out: str | None = None,
    nb: NotebookConfig = NotebookConfig(),
    modes: tuple[str, ...] = MODES,
) -> dict:
    """Sample, judge and report the prompts of `modes` (both by default); write the report to
    `json_out` if given. `nb` lays out the context as the magic would (budget and layout)."""
    console = Console(stderr=True)
    if cfg.samples < 1:
        raise CodelmError("the notebook benchmark needs --samples of at least 1")
    problems = load_notebook_problems(problems_path)
    began, workers = time.monotonic(), cfg.workers or None
    if not sandbox_sees_pandas():
        raise CodelmError(f"the sandbox cannot import pandas and matplotlib from {site_dirs()}")
    model = LocalModel(run, weights="fp32")
    console.print(f"reading the frames of {len(problems)} problems' setups in the sandbox")
    contexts = describe_problems(problems, workers)
    sampled: dict[str, list] = {}
    for mode in modes:
        for i, (p, ctx) in enumerate(zip(problems, contexts, strict=True)):
            block, _ = prompt_parts(model, ctx if mode == "context" else None, p.instruction, nb)
            s = SamplingConfig(cfg.temperature, 0, nb.top_p, nb.max_new_tokens, cfg.seed * 1_000_003 + i)
            key = f"{mode}/{p.task_id}"
            sampled[key] = model.sample(block, p.instruction, cfg.samples, s, nb.max_lines, False)
        console.print(f"sampled {len(problems)} problems ({mode})")
    jobs = [(p, c) for mode in modes for p in problems for c in sampled[f"{mode}/{p.task_id}"]]
    console.print(f"judging {len(jobs)} cells in the sandbox")
    done = [0]

    def progress(_: int, __) -> None:
        done[0] += 1
        if done[0] % 50 == 0 or done[0] == len(jobs):
            console.print(f"judged {done[0]}/{len(jobs)}")

    results = run_many([program(p, c.code, site_dirs()) for p, c in jobs], SANDBOX, workers, progress)
    passed = {id(c): r.passed for (_, c), r in zip(jobs, results, strict=True)}
    ks = [k for k in (1, 5, 10) if k <= cfg.samples]
    report: dict = {"run": run, "problems_file": str(problems_path), "problems": len(problems)}
    report["settings"] = {"samples": cfg.samples, "temperature": cfg.temperature, "seed": cfg.seed}
    report["settings"]["layout"] = nb.layout
    namespaces = [stand_in(ctx) for ctx in contexts]
    for mode in modes:
        rows = []
        for p, ns in zip(problems, namespaces, strict=True):
            cands = sampled[f"{mode}/{p.task_id}"]
            ranked, _ = judge(cands, ns, p.instruction)
            pick = bool(ranked) and passed[id(ranked[0])]
            c = sum(passed[id(x)] for x in cands)
            rows.append({"task_id": p.task_id, "n": len(cands), "c": c, "pick": pick, "checked": len(ranked)})
        report[mode] = {**_score(rows, ks), "problems": rows}
    report["isolation"], _ = resolve(SANDBOX)
    report["duration_s"] = round(time.monotonic() - began, 1)
    if json_out:
        atomic_write_json(json_out, report)
    return report


def notebook_table(report: dict) -> Table:
    t = Table(title=f"codelm eval: {report['run']} on {Path(report['problems_file']).name}")
    t.add_column("prompt")
    keys = [k for k in report["context"] if k.startswith("pass@")] + ["pick", "checked"]
    for k in keys:
        t.add_column(k, justify="right")
    for mode in MODES:
        t.add_row(mode.replace("_", " "), *(f"{report[mode][k]:.3f}" for k in keys))
    return t
