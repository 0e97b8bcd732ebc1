"""The test writer's results: the test file it writes, and the same report as JSON.

The file holds only the kept tests, under a docstring that says how many
candidates each step dropped and why, the targets' coverage before (no tests: the
file starts empty) and after, and the mutation score. Its imports are the shared
header's, less the names no kept test uses.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from dataclasses import dataclass

from codelm.testgen.chain import STEPS, Candidate, TargetTotals
from codelm.testgen.targets import Module


@dataclass(frozen=True)
class Summary:
    candidates: int
    kept: int
    dropped: dict[str, int]  # step -> candidates it dropped
    lines: tuple[int, int]  # (covered by the kept tests, statements in the targets)
    branches: tuple[int, int]
    mutants: tuple[int, int]  # (killed by the kept tests, mutants made)
    killed_by_any: int  # killed by some passing candidate


def summarize(cands: list[Candidate], totals: dict[str, TargetTotals]) -> Summary:
    kept = [c for c in cands if c.fate == "kept"]
    lines = branches = killed = 0
    for qual in totals:
        mine = [c for c in kept if c.target is not None and c.target.qualname == qual]
        lines += len(set().union(*(c.lines for c in mine)))
        branches += len(set().union(*(c.branches for c in mine)))
        killed += len(set().union(*(c.kills for c in mine)))
    dropped = Counter(c.fate for c in cands if c.fate != "kept")
    return Summary(
        candidates=len(cands),
        kept=len(kept),
        dropped={step: dropped[step] for step in STEPS if dropped[step]},
        lines=(lines, sum(len(t.lines) for t in totals.values())),
        branches=(branches, sum(len(t.branches) for t in totals.values())),
        mutants=(killed, sum(t.mutants for t in totals.values())),
        killed_by_any=sum(t.killed_by_any for t in totals.values()),
    )


def _share(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else f"{a}/0"


def summary_lines(s: Summary, targets: int) -> list[str]:
    drops = ", ".join(f"{n} {STEPS[step]}" for step, n in s.dropped.items()) or "none"
    return [
        f"Kept {s.kept} of {s.candidates} candidate tests for {targets} targets.",
        f"Dropped: {drops}.",
        f"Coverage of the targets: lines 0 before, {_share(*s.lines)} after; "
        f"branches 0 before, {_share(*s.branches)} after.",
        f"Mutation score: {_share(*s.mutants)} mutants killed "
        f"({s.mutants[1] - s.killed_by_any} survived every candidate: possibly equivalent).",
    ]


def _used_header(header: str, tests: str) -> str:
    """The header without the one-line imports that nothing else uses (a linter would flag
    them): not the kept tests, not the header's own helpers."""
    out = []
    lines = header.splitlines()
    frms = [re.fullmatch(r"from (\S+) import ([\w., ]+)", line) for line in lines]
    imps = [re.fullmatch(r"import ([\w., ]+)", line) for line in lines]
    rest = "\n".join(line for line, f, i in zip(lines, frms, imps, strict=True) if not (f or i))
    users = tests + "\n" + rest
    for line, frm, imp in zip(lines, frms, imps, strict=True):
        if (frm or imp) and not line.startswith("from __future__"):
            names = [n.strip() for n in (frm or imp).group(2 if frm else 1).split(",")]
            # `import a.b as c` binds c; `import a.b` binds a.
            bound = {n: n.split(" as ")[-1].split(".")[0] for n in names}
            used = [n for n in names if re.search(rf"\b{re.escape(bound[n])}\b", users)]
            if not used:
                continue
            line = f"from {frm.group(1)} import {', '.join(used)}" if frm else f"import {', '.join(used)}"
        out.append(line)
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(out)).strip()  # an emptied group leaves no gap
    return text + "\n"


def render_file(module: Module, header: str, cands: list[Candidate], s: Summary, targets: int) -> str:
    kept = [c for c in cands if c.fate == "kept"]
    tests = "\n\n\n".join(c.source.rstrip() for c in kept)
    why = [
        "Each test passed 4 times (fresh hash seeds, other orders), added coverage of its",
        "target and failed on at least one mutant of it (a bug it catches).",
    ]
    wrapped = [w for line in summary_lines(s, targets) for w in textwrap.wrap(line, 86)]
    lines = [f"Tests of {module.name}, written by `codelm testgen`.", "", *wrapped]
    doc = '"""' + "\n".join(lines + (why if kept else [])) + '\n"""\n'
    if not kept:
        return doc
    return f"{doc}\n{_used_header(header, tests)}\n\n{tests}\n"


def to_json(module: Module, cands: list[Candidate], s: Summary, totals: dict[str, TargetTotals]) -> dict:
    return {
        "module": module.name,
        "path": str(module.path),
        "summary": {
            "candidates": s.candidates,
            "kept": s.kept,
            "dropped": s.dropped,
            "lines": {"covered": s.lines[0], "total": s.lines[1]},
            "branches": {"covered": s.branches[0], "total": s.branches[1]},
            "mutants": {"killed": s.mutants[0], "total": s.mutants[1], "killed_by_any": s.killed_by_any},
        },
        "targets": {
            q: {"lines": len(t.lines), "branches": len(t.branches), "mutants": t.mutants}
            for q, t in totals.items()
        },
        "candidates": [
            {
                "target": c.target.qualname if c.target else None,
                "name": c.name,
                "origin": c.origin,
                "fate": c.fate,
                "reason": STEPS.get(c.fate, ""),
                "detail": c.detail,
                "mutants_killed": len(c.kills),
                "lines": sorted(c.lines),
                "branches": sorted(c.branches),
                "source": c.source,
            }
            for c in cands
        ],
    }
