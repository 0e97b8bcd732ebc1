"""Functional correctness: HumanEval- or MBPP-format problems, sandboxed scoring, pass@k.

A problems file is JSONL (optionally gzipped) with `task_id`, `prompt`,
`entry_point`, `test` (which defines `check(candidate)`) and optionally
`canonical_solution` and `instruction`, or MBPP's fields; `Problem` and
`load_problems` live in codelm/data/problems.py, shared with decontamination. A completions file is
JSONL (read by codelm/data/jsonl.py) with `task_id` and `completion`, any
number of lines per task: the n samples. A sample passes when
`prompt + completion + test + check(entry_point)` runs to its end in the
sandbox (see sandbox.py; the done marker is added there, outside the program's
text, so the program cannot print it early).

pass@k is the unbiased estimator of the Codex paper (Chen et al., 2021): with
n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k), computed as a
product so that it stays exact for large n. It is reported for each k that
every scored problem has at least k samples for, as HumanEval's own harness
does.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from codelm.data.jsonl import read_jsonl, string_field
from codelm.data.problems import Problem, load_problems
from codelm.errors import CodelmError
from codelm.evaluate.sandbox import SandboxConfig, SandboxResult, resolve, run_many
from codelm.fsutil import atomic_write_json, atomic_write_text

DEFAULT_KS = (1, 10, 100)


def default_problems_path() -> Path:
    """Our own benchmark, shipped with the package: what `codelm eval` runs by default."""
    return Path(str(resources.files("codelm.evaluate") / "problems" / "codelm_basic.jsonl"))


def find_problems(name: str | Path | None) -> Path:
    """A problems file: a path, or the name of one shipped with the package ("notebook_basic");
    None is our own benchmark."""
    if name is None:
        return default_problems_path()
    path = Path(name)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = default_problems_path().with_name(f"{path.name}.jsonl")
    return shipped if shipped.is_file() else path


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): no huge binomials, no overflow.
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def load_completions(path: str | Path, known: set[str] | None = None) -> dict[str, list[str]]:
    """Read a completions file into task_id -> completions, in file order.

    With `known`, a task_id that is not among them is an error: scoring another
    benchmark's completions against ours would silently score nothing.
    """
    completions: dict[str, list[str]] = {}
    for lineno, row in read_jsonl(path, "completions"):
        where = f"{path}:{lineno}"
        task_id = string_field(row, "task_id", where)
        completion = string_field(row, "completion", where)
        if known is not None and task_id not in known:
            raise CodelmError(f"{where}: task_id {task_id!r} is not in the problems file")
        completions.setdefault(task_id, []).append(completion)
    if not completions:
        raise CodelmError(f"completions file has no completions: {path}")
    return completions


def build_program(problem: Problem, completion: str) -> str:
    """The program a sample is judged by: the prompt, the model's completion, the tests, the call."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def _sample_row(completion: str, result: SandboxResult) -> dict:
    return {
        "completion": completion,
        "passed": result.passed,
        "status": result.status,
        "error": "" if result.passed else result.error[:500],
        "duration_s": result.duration_s,
    }


def score_completions(
    problems: Sequence[Problem],
    completions: dict[str, list[str]],
    cfg: SandboxConfig | None = None,
    workers: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    on_done: Callable[[int, SandboxResult], None] | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Run every completion of every problem in the sandbox.

    Returns (one dict per problem that has completions, in problem order, with
    n, c, its pass@k and its samples; the mean pass@k over those problems for
    each k in `ks` that every one of them has n >= k for).
    """
    scored = [p for p in problems if completions.get(p.task_id)]
    jobs = [(p, c) for p in scored for c in completions[p.task_id]]
    results = run_many([build_program(p, c) for p, c in jobs], cfg, workers, on_done)
    rows, at = [], 0
    for problem in scored:
        samples = completions[problem.task_id]
        outcome = results[at : at + len(samples)]
        at += len(samples)
        n, c = len(samples), sum(r.passed for r in outcome)
        row = {"task_id": problem.task_id, "n": n, "c": c}
        row.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n})
        row["samples"] = [_sample_row(s, r) for s, r in zip(samples, outcome, strict=True)]
        rows.append(row)
    summary = {}
    for k in ks:
        if rows and all(row["n"] >= k for row in rows):
            summary[f"pass@{k}"] = sum(row[f"pass@{k}"] for row in rows) / len(rows)
    return rows, summary


def results_path_for(completions_path: str | Path) -> Path:
    """Where per-problem results go by default: beside the completions, as HumanEval's harness does."""
    path = Path(completions_path)
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return path.with_name(f"{stem}_results.jsonl")


def score_file(
    problems_path: str | Path | None,
    completions_path: str | Path,
    json_out: str | Path | None = None,
    results_out: str | Path | None = None,
    workers: int | None = None,
    cfg: SandboxConfig | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    on_done: Callable[[int, SandboxResult], None] | None = None,
) -> dict:
    """`codelm eval --problems FILE --completions DONE.jsonl [--json OUT]`: score, write, report.

    `problems_path` None means our own benchmark. Per-problem results go to
    `results_out` (default: DONE_results.jsonl); the report (returned, and
    written to `json_out` if given) has pass@k, counts and the sandbox settings.
    """
    cfg = cfg or SandboxConfig()
    path = find_problems(problems_path or None)
    problems = load_problems(path)
    completions = load_completions(completions_path, {p.task_id for p in problems})
    isolation, python = resolve(cfg)
    began = time.monotonic()
    rows, summary = score_completions(problems, completions, cfg, workers, ks, on_done)
    results_out = Path(results_out) if results_out else results_path_for(completions_path)
    atomic_write_text(results_out, "".join(json.dumps(row) + "\n" for row in rows))
    statuses = Counter(s["status"] for row in rows for s in row["samples"])
    report = {
        "problems_file": str(path),
        "completions_file": str(completions_path),
        "results_file": str(results_out),
        "problems": len(rows),
        "problems_missing": [p.task_id for p in problems if p.task_id not in completions],
        "samples": sum(row["n"] for row in rows),
        "passed": sum(row["c"] for row in rows),
        "statuses": dict(sorted(statuses.items())),
        **summary,
        "sandbox": {
            **asdict(cfg),
            "isolation": isolation,
            "isolation_requested": cfg.isolation,
            "python": python,
        },
        "workers": workers or os.cpu_count(),
        "duration_s": round(time.monotonic() - began, 3),
    }
    if json_out:
        atomic_write_json(json_out, report)
    return report
