"""The test writer on modules no training split holds, against the modules' own test suites.

For each standard-library module named (default: pipes, plistlib, optparse, which the
"stdlib+site-packages" corpus put in its test split, so no model trained on that
corpus saw them) and each RUN given, `codelm testgen` writes tests for the module's
first public functions. Printed per run and module: candidates, kept, the share
each step of the filter chain dropped, line and branch coverage of the targets by
the kept tests, and their mutation score. Beside it, the module's own test suite
(`test/test_<module>.py` from the interpreter's standard library) is run in the
same sandbox against the same mutants, for its coverage and mutation score.

    .venv/bin/python bench/testgen.py --runs runs/lsp-small \
        --data runs/quality-avx2c/data/stdlib+site-packages

With `--data DATA`, the bench checks that each module is in no training split of
that corpus and says so. Sandboxes use both cores; run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sysconfig
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import machine

from codelm.data.dataset import iter_rows
from codelm.evaluate.sandbox import run_many
from codelm.testgen import SampleConfig, TestgenConfig, write_tests
from codelm.testgen.chain import STEPS
from codelm.testgen.mutate import mutants
from codelm.testgen.runner import Job, Runner, events
from codelm.testgen.targets import find_targets, load_module


def split_of(data: Path, name: str) -> str:
    """Which split of DATA holds the module's file, or "none"."""
    for split in ("train", "val", "test"):
        paths = (row["path"] for row in iter_rows(data, split, ["path"]))  # one file or shards
        if f"{name}.py" in paths:
            return split
    return "none"


def suite_files(stdlib: Path, suite: Path) -> dict[str, str]:
    """The suite and the `test` package parts it needs: the sandbox's interpreter may come
    without the standard library's tests (Debian's python3 does)."""
    files = {}
    wanted = [stdlib / "test" / "__init__.py", *sorted((stdlib / "test" / "support").rglob("*.py"))]
    wanted += [
        stdlib / "test" / f"{m}.py" for m in re.findall(r"from test import (test_\w+)", suite.read_text())
    ]
    for f in wanted:
        files[f.relative_to(stdlib).as_posix()] = f.read_text(encoding="utf-8")
    return files


def _outcomes(res) -> dict[str, bool] | None:
    """Each test's pass/fail in a suite run; None if the run did not finish."""
    evs = events(res)
    if not any(e["event"] == "exit" for e in evs):
        return None
    return {e["id"]: e["outcome"] == "passed" for e in evs if e["event"] == "outcome"}


def suite_scores(module, targets, stdlib: Path, cfg: TestgenConfig) -> dict:
    """The module's own test suite: its coverage of the targets, and the mutants it kills.
    A mutant is killed when a test that passes on the module fails on it, or the run dies."""
    suite = stdlib / "test" / f"test_{module.name}.py"
    module = replace(module, files={**module.files, **suite_files(stdlib, suite)})
    runner = Runner(module, suite.read_text(encoding="utf-8"), test_timeout_s=30.0)
    (base,) = run_many([runner.program(Job((), coverage=True))], runner.sandbox)
    passing = {name for name, ok in (_outcomes(base) or {}).items() if ok}
    cov = next((e for e in events(base) if e["event"] == "coverage"), None)
    if cov is None or not passing:
        raise SystemExit(f"{suite} did not run in the sandbox: {base.error}")
    ran = cov["tests"][""]
    lines = branches = total_lines = total_branches = 0
    for t in targets:
        mine = t.body_lines & set(cov["statements"])
        possible = {tuple(b) for b in cov["branches"] if t.lineno <= b[0] <= t.end_lineno}
        lines += len(mine & set(ran["lines"]))
        branches += len(possible & {tuple(a) for a in ran["arcs"]})
        total_lines, total_branches = total_lines + len(mine), total_branches + len(possible)
    ms = [m for t in targets for m in mutants(module.source, t.qualname, cfg.max_mutants, cfg.seed)]
    results = run_many([runner.program(Job((), module_source=m.source)) for m in ms], runner.sandbox)
    killed = 0
    for res in results:
        got = _outcomes(res)
        killed += got is None or any(not got.get(name, False) for name in passing)
    return {
        "lines": (lines, total_lines),
        "branches": (branches, total_branches),
        "mutants": (killed, len(ms)),
        "suite_tests": len(passing),
    }


def pct(pair) -> str:
    a, b = pair
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="RUN directories to write tests with")
    ap.add_argument("--modules", nargs="+", default=["pipes", "plistlib", "optparse"])
    ap.add_argument("--data", default=None, help="the runs' DATA: check the modules are in no training split")
    ap.add_argument("--max-targets", type=int, default=6, help="the module's first N public functions")
    ap.add_argument("--n", type=int, default=8, help="candidates per target")
    ap.add_argument("--max-mutants", type=int, default=15, help="mutants per target")
    ap.add_argument("--json", default=None, help="write every figure here")
    a = ap.parse_args()
    print(machine())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows, work = [], Path(tempfile.mkdtemp(prefix="codelm-bench-testgen-"))
    for name in a.modules:
        src = work / name / f"{name}.py"
        src.parent.mkdir(parents=True)
        shutil.copy(stdlib / f"{name}.py", src)
        if a.data:
            print(f"{name}: in the {split_of(Path(a.data), name)} split of {a.data}")
        module = load_module(src)
        targets = find_targets(module)[: a.max_targets]
        cfg = TestgenConfig(
            functions=tuple(t.qualname for t in targets),
            sample=SampleConfig(n=a.n),
            max_mutants=a.max_mutants,
        )
        t0 = time.perf_counter()
        suite = suite_scores(module, targets, stdlib, cfg)
        took = time.perf_counter() - t0
        rows.append({"module": name, "writer": f"test/test_{name}.py", **suite, "seconds": took})
        for run in a.runs:
            t0 = time.perf_counter()
            out = work / name / f"test_{Path(run).name}.py"
            done = write_tests(str(src), run=run, out=str(out), cfg=cfg)
            s = done.summary
            rows.append(
                {
                    "module": name,
                    "writer": run,
                    "candidates": s.candidates,
                    "kept": s.kept,
                    "dropped": {k: round(v / max(s.candidates, 1), 3) for k, v in s.dropped.items()},
                    "lines": s.lines,
                    "branches": s.branches,
                    "mutants": s.mutants,
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(out.read_text())
    print(f"\n{a.max_targets} targets per module, {a.n} candidates each, ≤ {a.max_mutants} mutants each\n")
    print("Steps: " + "; ".join(f"{k}: {v}" for k, v in STEPS.items()))
    head = "module | tests by | candidates | kept | dropped, by step | lines | branches | mutation score | s"
    print(f"| {head} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        drops = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("dropped", {}).items())
        cands = r.get("candidates", "-")
        print(
            f"| {r['module']} | {r['writer']} | {cands} | {r.get('kept', '-')} | {drops or '-'} | "
            f"{pct(r['lines'])} | {pct(r['branches'])} | {pct(r['mutants'])} | {r['seconds']:.0f} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
