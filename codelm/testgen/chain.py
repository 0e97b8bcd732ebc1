"""The filter chain: a candidate test is kept only if it passes, is stable, adds coverage and
catches a bug. The chain stops at a candidate's first failure and records why.

Per target, in order (the reason codes are `STEPS`):

0. `duplicate`: the same body as an earlier candidate (up to the test's name).
1. `parse` / `no_call`: it is one function that parses, and it calls the target.
2. `no_assert`: an `assert` or `pytest.raises` involves the target's result (static.py).
3. `fails`: it passes under pytest in the sandbox. The candidates run in one session;
   each one that fails there runs again alone, and one that then passes depends on the
   others: `flaky`. A timeout or a crash is a failure.
4. `flaky`: it passes 3 more times, in 3 fresh interpreters (so 3 fresh hash seeds) and in
   3 other orders: reversed, then two seeded shuffles.
5. `no_coverage`: it covers a line or branch of the target that the tests kept so far do not.
6. `no_kill`: it fails on at least one mutant of the target (mutate.py).

Steps 5 and 6 are a greedy choice: the survivors of 1-4 are taken in order of mutants
killed, then lines and branches covered, so the strongest test is kept first and a later
one must add something. A mutant that no candidate kills may behave like the original
(an equivalent mutant); it counts against the mutation score, never against a test.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from codelm.testgen.mutate import Mutant
from codelm.testgen.runner import Job, Runner
from codelm.testgen.static import asserts_on_target, calls_target, dedup_key, parse_test
from codelm.testgen.targets import Target

STEPS = {
    "duplicate": "repeats an earlier candidate",
    "parse": "does not parse as one test function",
    "no_call": "never calls the target",
    "no_assert": "asserts nothing about the target's result",
    "fails": "fails under pytest",
    "flaky": "does not pass again on every re-run",
    "no_coverage": "adds no line or branch coverage",
    "no_kill": "kills no mutant",
}
RERUNS = 3


@dataclass
class Candidate:
    target: Target | None
    source: str  # one test function
    origin: str  # "plain", "instruction" (model prompts) or "file" (--candidates)
    name: str = ""
    fate: str = ""  # "" while undecided, then "kept" or a key of STEPS
    detail: str = ""
    kills: set[int] = field(default_factory=set)  # indexes of the mutants it fails on
    lines: set[int] = field(default_factory=set)  # target lines it runs
    branches: set[tuple[int, int]] = field(default_factory=set)  # target branches it takes

    def drop(self, step: str, detail: str = "") -> None:
        self.fate, self.detail = step, detail


@dataclass(frozen=True)
class TargetTotals:
    """What there is to reach in one target, and what every passing candidate reached."""

    lines: frozenset[int]  # statements of its body
    branches: frozenset[tuple[int, int]]  # coverage.py's branch arcs that start inside it
    mutants: int
    killed_by_any: int  # mutants some passing candidate kills: the rest may be equivalent


def check_static(cands: list[Candidate], seen: set[str]) -> None:
    """Steps 0-2 on each undecided candidate; `seen` holds the bodies of earlier ones."""
    for c in cands:
        parsed = parse_test(c.source)
        if parsed.node is None:
            c.drop("parse", parsed.error)
            continue
        key = dedup_key(parsed.node)
        if key in seen:
            c.drop("duplicate")
        elif c.target is None or not calls_target(parsed.node, c.target):
            c.drop("no_call")
        elif not asserts_on_target(parsed.node, c.target):
            c.drop("no_assert")
        seen.add(key)


def _job(cands: list[Candidate], **kw) -> Job:
    return Job(tuple((c.name, c.source) for c in cands), **kw)


def check_runs(runner: Runner, cands: list[Candidate], seed: int) -> dict | None:
    """Steps 3-4 on `cands` (all undecided); the coverage data of a passing session."""
    if not cands:
        return None
    first = runner.run_jobs([_job(cands)])[0].outcomes
    failing = [c for c in cands if not first[c.name].passed]
    alone = runner.run_jobs([_job([c]) for c in failing])
    for c, res in zip(failing, alone, strict=True):
        out = res.outcomes[c.name]
        c.drop(*(("flaky", "passes alone, fails beside the others") if out.passed else ("fails", out.error)))
    alive = [c for c in cands if not c.fate]
    if not alive:
        return None
    orders = [alive[::-1]]
    for k in range(RERUNS - 1):
        shuffled = list(alive)
        random.Random(seed + k).shuffle(shuffled)
        orders.append(shuffled)
    reruns = runner.run_jobs([_job(order, coverage=i == 0) for i, order in enumerate(orders)])
    for c in alive:
        bad = [r.outcomes[c.name].error for r in reruns if not r.outcomes[c.name].passed]
        if bad:
            c.drop("flaky", f"failed {len(bad)} of {RERUNS} re-runs: {bad[0]}")
    return reruns[0].coverage


def check_mutants(runner: Runner, cands: list[Candidate], mutants: list[Mutant]) -> None:
    """Which mutants each candidate fails on (step 6's evidence), all mutants in parallel."""
    if not cands or not mutants:
        return
    results = runner.run_jobs([_job(cands, module_source=m.source) for m in mutants])
    for m, res in zip(mutants, results, strict=True):
        for c in cands:
            if not res.outcomes[c.name].passed:
                c.kills.add(m.index)


def select(
    cands: list[Candidate], target: Target, data: dict | None, module: dict, mutants: int
) -> TargetTotals:
    """Steps 5-6, greedy, the strongest first. `data`: the candidates' coverage, per test;
    `module`: the module's statements and branches (coverage.py)."""
    lines = target.body_lines & set(module["statements"])
    span = range(target.lineno, target.end_lineno + 1)
    branches = {tuple(b) for b in module["branches"] if b[0] in span}
    for c in cands:
        got = data["tests"].get(c.name, {}) if data else {}
        c.lines = set(got.get("lines", ())) & lines
        c.branches = {tuple(a) for a in got.get("arcs", ())} & branches
    seen_lines: set[int] = set()
    seen_branches: set[tuple[int, int]] = set()
    for c in sorted(cands, key=lambda c: (-len(c.kills), -len(c.lines) - len(c.branches))):
        if not (c.lines - seen_lines or c.branches - seen_branches):
            c.drop("no_coverage")
        elif not c.kills:
            c.drop("no_kill", f"survived all {mutants} mutants" if mutants else "the target has no mutants")
        else:
            c.fate = "kept"
            seen_lines |= c.lines
            seen_branches |= c.branches
    killed = set().union(*(c.kills for c in cands))
    return TargetTotals(frozenset(lines), frozenset(branches), mutants, len(killed))


def filter_target(
    runner: Runner,
    target: Target,
    cands: list[Candidate],
    mutants: Callable[[Target], list[Mutant]],
    module: dict,
    seed: int = 0,
) -> TargetTotals:
    """Run steps 3-6 for one target's candidates that passed the static steps."""
    alive = [c for c in cands if not c.fate]
    data = check_runs(runner, alive, seed)
    alive = [c for c in alive if not c.fate]
    ms = mutants(target)
    check_mutants(runner, alive, ms)
    return select(alive, target, data, module, len(ms))
