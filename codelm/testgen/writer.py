"""`codelm testgen`: write unit tests for a module and keep only those that can be trusted.

`write_tests` finds the targets (targets.py), gets candidates from a model
(candidates.py) or from a file of tests written elsewhere, runs them through the
filter chain (chain.py: static checks, then pytest, re-runs, coverage and mutants in
the sandbox) and writes the kept ones with their report (report.py). The output is
checked once more as written, all kept tests in one session, before it is saved.
Nothing the model wrote runs in this process.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from rich.console import Console

from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json, atomic_write_text, check_can_create
from codelm.testgen.candidates import SampleConfig, sample, shared_header, trained_on_pairs
from codelm.testgen.chain import Candidate, TargetTotals, check_static, filter_target
from codelm.testgen.mutate import mutants
from codelm.testgen.report import Summary, render_file, summarize, summary_lines, to_json
from codelm.testgen.runner import Job, Runner
from codelm.testgen.static import attribute, parse_test, split_candidates
from codelm.testgen.targets import Module, Target, find_targets, load_module


@dataclass(frozen=True)
class TestgenConfig:
    __test__ = False  # not a pytest test class, despite its name
    functions: tuple[str, ...] = ()  # targets by name ("f", "Cls.meth"); empty: every public one
    sample: SampleConfig = field(default_factory=SampleConfig)
    max_mutants: int = 30  # per target; more sites than this are sampled (seeded)
    test_timeout_s: float = 5.0  # one test's clock in the sandbox
    workers: int = 0  # sandboxes at a time; 0: one per core
    seed: int = 0  # of the re-run orders and the mutant sample
    force: bool = False  # overwrite an existing output file

    def __post_init__(self) -> None:
        if self.sample.n < 1 or self.max_mutants < 1 or self.test_timeout_s <= 0 or self.workers < 0:
            raise CodelmError("--n and the mutant limit must be >= 1, the test timeout > 0, workers >= 0")


def default_out(module: Module) -> Path:
    # Beside the import root, pytest's default import mode puts the file's own folder on
    # sys.path, so `from pkg.mod import f` works with no configuration.
    return module.root / f"test_{module.path.stem}_generated.py"


def _imports(module: Module) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(module.source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return sorted(set(found))


def _preflight(runner: Runner, module: Module) -> dict:
    """Import the module (through the header) in the sandbox; its statements and branches."""
    res = runner.run_jobs([Job((), coverage=True)])[0]
    if not res.module_ours:
        raise CodelmError(
            f"{module.name} is frozen or built into the interpreter: the tests would import that "
            "one, and no mutant of the file would reach them"
        )
    if res.error or res.coverage is None or not res.coverage["statements"]:
        why = res.error or "its import did not finish"
        raise CodelmError(
            f"{module.name} cannot be imported in the sandbox: {why} "
            f"(it imports: {', '.join(_imports(module)) or 'nothing'})"
        )
    return res.coverage


def _from_file(path: str, targets: list[Target]) -> tuple[str, list[Candidate]]:
    p = Path(path)
    if not p.is_file():
        raise CodelmError(f"no such file: {path}")
    try:
        header, tests = split_candidates(p.read_text(encoding="utf-8"))
    except (SyntaxError, ValueError, UnicodeDecodeError) as e:
        raise CodelmError(f"{path} does not parse: {e}") from None
    cands = []
    for src in tests:
        node = parse_test(src).node
        cands.append(Candidate(attribute(node, targets) if node else None, src, "file"))
    return header, cands


def _name_uniquely(cands: list[Candidate]) -> None:
    """Give each candidate a distinct test name (the model reuses names), renaming its def."""
    used: set[str] = set()
    for i, c in enumerate(cands):
        node = parse_test(c.source).node
        base = node.name if node is not None else f"test_candidate_{i}"
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        if node is not None and name != base:
            c.source = c.source.replace(f"def {base}(", f"def {name}(", 1)
        c.name = name


def _final_check(runner: Runner, cands: list[Candidate]) -> None:
    """The kept tests together, as the file will hold them; any that fail there are dropped."""
    kept = [c for c in cands if c.fate == "kept"]
    while kept:
        res = runner.run_jobs([Job(tuple((c.name, c.source) for c in kept))])[0]
        bad = [c for c in kept if not res.outcomes[c.name].passed]
        for c in bad:
            c.drop("flaky", f"fails beside the other kept tests: {res.outcomes[c.name].error}")
        if not bad:
            return
        kept = [c for c in kept if c.fate == "kept"]


@dataclass(frozen=True)
class Written:
    out: Path
    summary: Summary
    candidates: list[Candidate]


def write_tests(
    module_path: str,
    run: str | None = None,
    candidates: str | None = None,
    out: str | None = None,
    json_path: str | None = None,
    cfg: TestgenConfig = TestgenConfig(),
    console: Console | None = None,
) -> Written:
    """Write the kept tests of `module_path` to `out`; candidates from `run` or a file."""
    err = console or Console(stderr=True)
    if (run is None) == (candidates is None):
        raise CodelmError("give a model (--run RUN) or a file of tests (--candidates FILE), not both")
    module = load_module(module_path)
    targets = find_targets(module, list(cfg.functions))
    dest = Path(out) if out else default_out(module)
    if dest.exists() and not cfg.force:
        raise CodelmError(f"{dest} exists; choose another --out or pass --force")
    check_can_create(dest.parent)  # before the model runs
    if candidates is not None:
        header, cands = _from_file(candidates, targets)
    else:
        header, cands = shared_header(module, targets), []
    runner = Runner(module, header, test_timeout_s=cfg.test_timeout_s, workers=cfg.workers)
    module_cov = _preflight(runner, module)  # before the model: an import error is found at once
    if run is not None:
        cands = _sample_all(run, module, targets, header, cfg, err)
    _name_uniquely(cands)
    check_static(cands, set())
    make = partial(_mutants_of, module, cfg)
    totals: dict[str, TargetTotals] = {}
    for i, t in enumerate(targets, 1):
        mine = [c for c in cands if c.target == t]
        totals[t.qualname] = filter_target(runner, t, mine, make, module_cov, cfg.seed)
        kept = sum(c.fate == "kept" for c in mine)
        err.print(f"[{i}/{len(targets)}] {t.qualname}: {len(mine)} candidates, {kept} kept")
    _final_check(runner, cands)
    summary = summarize(cands, totals)
    atomic_write_text(dest, render_file(module, header, cands, summary, len(targets)))
    if json_path:
        atomic_write_json(json_path, to_json(module, cands, summary, totals))
    for line in summary_lines(summary, len(targets)):
        err.print(line)
    return Written(dest, summary, cands)


def _mutants_of(module: Module, cfg: TestgenConfig, target: Target) -> list:
    return mutants(module.source, target.qualname, limit=cfg.max_mutants, seed=cfg.seed)


def _sample_all(
    run: str, module: Module, targets: list[Target], header: str, cfg: TestgenConfig, err: Console
) -> list[Candidate]:
    from codelm.generate import load_run

    model, tok = load_run(run, weights="auto")
    pairs = trained_on_pairs(run)
    cands = []
    for i, t in enumerate(targets, 1):
        scfg = replace(cfg.sample, seed=cfg.sample.seed + i)
        got = sample(model, tok, module, t, header, scfg, pairs)
        cands += [Candidate(t, src, origin) for src, origin in got]
        err.print(f"[{i}/{len(targets)}] {t.qualname}: {len(got)} candidates written")
    return cands
